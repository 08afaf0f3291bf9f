//! The rebalancer with Consul membership and the Consul leader lock, against a real Consul agent, real
//! Pushgateways and the gateway binary: two replicas elect exactly one rebalancer and fail over when it stops; a
//! Pushgateway an operator registers in Consul receives its groups; a node failing its Consul check while it still
//! answers keeps its groups (it is unhealthy, not deregistered, so it is never drained).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::placement::*;
use common::*;
use reqwest::{Method, StatusCode};

/// How often the tests poll the gateway and the nodes.
const POLL: Duration = Duration::from_millis(200);
/// Placement and leadership waits: generous, the machine is shared with builds.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(45);

/// Consul membership with 1 s checks, a rebalance pass every second, registering `nodes`.
fn consul_config(consul: &Consul, nodes: &[&Pushgateway]) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    format!(
        "consul_server:\n  addr: {}\n  register_service_name: pushgateway\n  check_interval: 1s\n  \
         check_timeout: 500ms\npushgateway:\n  servers: [{}]\nrebalance: {{interval: 1s}}\n",
        consul.addr(),
        servers.join(", ")
    )
}

/// Registers `node` in Consul as an operator would (agent API, not through the gateway), with an HTTP check on
/// `/-/healthy` plus any `extra_checks` (Consul check definitions).
async fn register_directly(
    consul: &Consul,
    service_id: &str,
    node: &Pushgateway,
    extra_checks: &[serde_json::Value],
) {
    let mut checks = vec![serde_json::json!({
        "CheckID": format!("{service_id}-healthy"),
        "Name": "Pushgateway /-/healthy",
        "HTTP": format!("{}/-/healthy", node.url()),
        "Interval": "1s",
        "Timeout": "500ms",
    })];
    checks.extend_from_slice(extra_checks);
    let registration = serde_json::json!({
        "ID": service_id,
        "Name": "pushgateway",
        "Address": "127.0.0.1",
        "Port": node.port(),
        "Checks": checks,
    });
    consul.register_service(&registration).await;
}

/// Sets a TTL check's state (`pass` or `fail`) through the agent API.
async fn set_ttl_check(consul: &Consul, check_id: &str, state: &str) {
    let reply = consul
        .request(
            Method::PUT,
            &format!("/v1/agent/check/{state}/{check_id}"),
            "",
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{state} {check_id}: {}",
        reply.body
    );
}

/// The gateway's log tail, for failure messages.
fn log_tail(gateway: &Gateway, lines: usize) -> String {
    let log = gateway.log_text();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One test group: its push path and its grouping labels.
struct Spec {
    path: String,
    labels: Labels,
}

fn specs(job: &str, count: usize) -> Vec<Spec> {
    (0..count)
        .map(|i| Spec {
            path: format!("/metrics/job/{job}/instance/i{i}/zone/z{}", i % 5),
            labels: labels(&[
                ("job", job),
                ("instance", &format!("i{i}")),
                ("zone", &format!("z{}", i % 5)),
            ]),
        })
        .collect()
}

/// A gauge and a counter in every group, a histogram in every other one; values differ per group.
fn body(index: usize) -> String {
    let mut body = format!(
        "# HELP crb_temperature_celsius A gauge.\n# TYPE crb_temperature_celsius gauge\n\
         crb_temperature_celsius {}.25\n\
         # HELP crb_jobs_total A counter.\n# TYPE crb_jobs_total counter\n\
         crb_jobs_total{{result=\"ok\"}} {}\ncrb_jobs_total{{result=\"failed\"}} 2\n",
        index,
        index * 10 + 1
    );
    if index.is_multiple_of(2) {
        body.push_str(&format!(
            "# HELP crb_duration_seconds A histogram.\n# TYPE crb_duration_seconds histogram\n\
             crb_duration_seconds_bucket{{le=\"0.5\"}} 1\ncrb_duration_seconds_bucket{{le=\"5\"}} {}\n\
             crb_duration_seconds_bucket{{le=\"+Inf\"}} {}\ncrb_duration_seconds_sum {}.5\n\
             crb_duration_seconds_count {}\n",
            index + 2,
            index + 3,
            index * 3,
            index + 3
        ));
    }
    body
}

/// PUTs every group through the gateway, 16 at a time; every push must be acknowledged.
async fn push_all(gateway: &Gateway, specs: &[Spec]) {
    let pushes: Vec<(String, String)> = specs
        .iter()
        .enumerate()
        .map(|(index, spec)| (spec.path.clone(), body(index)))
        .collect();
    put_all(gateway, &pushes).await;
}

/// Every group's owner as the gateway answers it (`GET /metrics/job/...` with `Accept: application/json`).
async fn owners(gateway: &Gateway, specs: &[Spec]) -> BTreeMap<Labels, String> {
    let client = http_client();
    let mut owners = BTreeMap::new();
    for spec in specs {
        let url = format!("{}{}", gateway.url(), spec.path);
        let reply = client
            .get(&url)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap_or_else(|e| panic!("owner of {}: {e}", spec.path));
        assert_eq!(reply.status(), StatusCode::OK, "owner of {}", spec.path);
        let answer: serde_json::Value = reply.json().await.expect("owner answer is JSON");
        let node = answer["node"]
            .as_str()
            .unwrap_or_else(|| panic!("owner answer without node: {answer}"));
        owners.insert(spec.labels.clone(), node.to_string());
    }
    owners
}

/// `rebalance.leader` of each gateway's `/-/ring`.
async fn leaders(gateways: &[&Gateway]) -> Vec<bool> {
    let mut leaders = Vec::new();
    for gateway in gateways {
        leaders.push(gateway.ring().await["rebalance"]["leader"] == true);
    }
    leaders
}

/// Waits (at most `timeout`) until `survivor` is the rebalance leader, then until it has run a pass; returns how
/// long after `since` it became leader. `cause` names what happened to the old leader, for messages.
async fn wait_for_takeover(
    survivor: &Gateway,
    since: Instant,
    timeout: Duration,
    cause: &str,
) -> Duration {
    wait_until(timeout, POLL, || async {
        survivor.ring().await["rebalance"]["leader"] == true
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the survivor never became leader after {cause} ({e})\n{}",
            log_tail(survivor, 20)
        )
    });
    let failover = since.elapsed();
    eprintln!("rebalance leadership moved {failover:?} after {cause}");
    wait_until(secs(30), POLL, || async {
        survivor.ring().await["rebalance"]["last_pass"]["outcome"].is_string()
    })
    .await
    .expect("the new leader runs passes");
    failover
}

/// Waits until exactly one of the two replicas is the leader and stays so for 3 s of polling; returns
/// `(leader, follower)` indices.
async fn one_stable_leader(replicas: &[Gateway; 2]) -> (usize, usize) {
    // Exactly one leader, and it stays the same one for 3 s of polling.
    let stable_since: std::cell::Cell<Option<(Instant, usize)>> = std::cell::Cell::new(None);
    wait_until(SETTLE_TIMEOUT, POLL, || {
        let stable_since = &stable_since;
        async move {
            let now = leaders(&[&replicas[0], &replicas[1]]).await;
            let leader = match now.as_slice() {
                [true, false] => 0,
                [false, true] => 1,
                _ => {
                    stable_since.set(None);
                    return false;
                }
            };
            match stable_since.get() {
                Some((since, same)) if same == leader => since.elapsed() >= secs(3),
                _ => {
                    stable_since.set(Some((Instant::now(), leader)));
                    false
                }
            }
        }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "never exactly one stable leader ({e})\nreplica 0:\n{}\nreplica 1:\n{}",
            log_tail(&replicas[0], 15),
            log_tail(&replicas[1], 15)
        )
    });
    match stable_since.get() {
        Some((_, 0)) => (0, 1),
        _ => (1, 0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_consul_elect_one_rebalancer_and_it_fails_over() {
    let consul = Consul::start().await;
    let a = Pushgateway::start().await;
    let b = Pushgateway::start().await;
    // Two replicas with the same file, as a fleet runs them: both register the same nodes, both may rebalance.
    let config = consul_config(&consul, &[&a, &b]);
    let mut replicas = [Gateway::start(&config).await, Gateway::start(&config).await];
    for replica in &replicas {
        wait_for_ring(replica, &[&a, &b]).await;
    }

    let (leader, follower) = one_stable_leader(&replicas).await;
    let leader_ring = replicas[leader].ring().await;
    assert!(
        leader_ring["rebalance"]["last_pass"]["outcome"].is_string(),
        "the leader runs passes: {leader_ring}"
    );
    let follower_ring = replicas[follower].ring().await;
    assert_eq!(
        follower_ring["rebalance"]["inactive_reason"], "another replica is the leader",
        "{follower_ring}"
    );
    assert!(
        follower_ring["rebalance"]["last_pass"].is_null(),
        "the follower never ran a pass: {follower_ring}"
    );
    let lock_key = dynamic_sharding::app::rebalance_lock_key("pushgateway");
    let lock = consul.get_json(&format!("/v1/kv/{lock_key}")).await;
    assert!(
        lock[0]["Session"].is_string(),
        "{lock_key} is locked: {lock}"
    );

    // Stop the leader gracefully; the follower takes over.
    let stopped_at = Instant::now();
    replicas[leader].signal("TERM");
    wait_until(secs(30), POLL, || {
        let exited = replicas[leader].exit_status().is_some();
        async move { exited }
    })
    .await
    .unwrap_or_else(|e| panic!("the leader did not exit after SIGTERM ({e})"));
    let status = replicas[leader].exit_status();
    assert!(
        status.is_some_and(|s| s.success()),
        "the leader exits 0 after SIGTERM: {status:?}\n{}",
        log_tail(&replicas[leader], 15)
    );
    // A clean stop releases the lock and destroys the session before the process exits; a session left behind
    // would keep the lock until its TTL runs out.
    let sessions = consul.get_json("/v1/session/list").await;
    assert_eq!(
        sessions.as_array().map(Vec::len),
        Some(1),
        "only the survivor's session is left after the leader stopped: {sessions}\n{}",
        log_tail(&replicas[leader], 10)
    );
    let failover = wait_for_takeover(
        &replicas[follower],
        stopped_at,
        secs(60),
        "SIGTERM to the leader",
    )
    .await;
    // A released lock is taken over at once; an unreleased one only after the session TTL (10 s) expires.
    assert!(
        failover < dynamic_sharding::consul::leader::SESSION_TTL,
        "failover took {failover:?}: the stopped leader did not release the lock, it expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_once_its_consul_session_expires() {
    let consul = Consul::start().await;
    let a = Pushgateway::start().await;
    let b = Pushgateway::start().await;
    let config = consul_config(&consul, &[&a, &b]);
    let replicas = [Gateway::start(&config).await, Gateway::start(&config).await];
    for replica in &replicas {
        wait_for_ring(replica, &[&a, &b]).await;
    }
    let (leader, follower) = one_stable_leader(&replicas).await;

    // SIGKILL: no release, no session destroy. The lock stays until Consul invalidates the session (TTL, up to
    // twice as long in practice) plus the lock delay; until then the follower must not take over.
    let killed_at = Instant::now();
    replicas[leader].signal("KILL");
    let ttl = dynamic_sharding::consul::leader::SESSION_TTL;
    let bound = ttl * 2 + dynamic_sharding::consul::leader::LOCK_DELAY + secs(15);
    let failover = wait_for_takeover(
        &replicas[follower],
        killed_at,
        bound,
        "SIGKILL of the leader",
    )
    .await;
    // The dead leader renewed its session at most TTL/3 before the kill, and Consul never invalidates a session
    // sooner than TTL after its last renewal.
    assert!(
        failover >= ttl * 2 / 3,
        "the survivor took the lock {failover:?} after the kill, while the crashed leader's session was still valid"
    );
    let lock_key = dynamic_sharding::app::rebalance_lock_key("pushgateway");
    let lock = consul.get_json(&format!("/v1/kv/{lock_key}")).await;
    let sessions = consul.get_json("/v1/session/list").await;
    let session_ids: Vec<&serde_json::Value> = sessions
        .as_array()
        .map(|all| all.iter().map(|s| &s["ID"]).collect())
        .unwrap_or_default();
    assert_eq!(
        session_ids.len(),
        1,
        "the crashed leader's session expired: {sessions}"
    );
    assert_eq!(
        &lock[0]["Session"], session_ids[0],
        "the lock is held by the survivor's session: {lock}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_through_consul_moves_groups_to_the_new_instance() {
    let consul = Consul::start().await;
    let a = Pushgateway::start().await;
    let b = Pushgateway::start().await;
    let gateway = Gateway::start(&consul_config(&consul, &[&a, &b])).await;
    wait_for_ring(&gateway, &[&a, &b]).await;
    let groups = specs("consul_scaleout", 100);
    push_all(&gateway, &groups).await;
    let before = single_copies(
        &wait_until_every_group_is_once_on_its_owner(&[&a, &b], &owners(&gateway, &groups).await)
            .await,
    );

    let c = Pushgateway::start().await;
    register_directly(&consul, "pushgateway-added-by-operator", &c, &[]).await;
    wait_for_ring(&gateway, &[&a, &b, &c]).await;
    let new_owners = owners(&gateway, &groups).await;
    let moving = new_owners.values().filter(|o| **o == c.addr()).count();
    assert!(
        moving >= 15,
        "only {moving} of 100 groups move to the new node"
    );
    let after = single_copies(
        &wait_until_every_group_is_once_on_its_owner(&[&a, &b, &c], &new_owners).await,
    );
    assert_eq!(before, after, "a moved group's metrics changed");
    // The pass counts its moves when it ends, a moment after its last delete made the placement right.
    let moved = || gateway_metric(&gateway, "dynamic_sharding_rebalance_groups_moved_total");
    let counted = wait_until(SETTLE_TIMEOUT, POLL, || async {
        moved().await >= moving as f64
    })
    .await;
    let moved = moved().await;
    assert!(
        moved >= moving as f64,
        "every group that moved is counted: {moved} of {moving} ({counted:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_failing_its_consul_check_is_never_drained() {
    let consul = Consul::start().await;
    let a = Pushgateway::start().await;
    let b = Pushgateway::start().await;
    let c = Pushgateway::start().await;
    // C is registered by an operator with a second, TTL check: failing it makes C critical in Consul while the
    // Pushgateway keeps answering, like a node in maintenance or failing a check of its host.
    let ttl_check = "pushgateway-c-ttl";
    register_directly(
        &consul,
        "pushgateway-c",
        &c,
        &[serde_json::json!({"CheckID": ttl_check, "Name": "operator TTL", "TTL": "10m"})],
    )
    .await;
    set_ttl_check(&consul, ttl_check, "pass").await;
    let gateway = Gateway::start(&consul_config(&consul, &[&a, &b])).await;
    wait_for_ring(&gateway, &[&a, &b, &c]).await;
    let groups = specs("consul_failing", 90);
    push_all(&gateway, &groups).await;
    let group_owners = owners(&gateway, &groups).await;
    let placed = wait_until_every_group_is_once_on_its_owner(&[&a, &b, &c], &group_owners).await;
    let on_c_before = single_copies(&contents(&[&c]).await);
    assert!(
        on_c_before.len() >= 15,
        "C owns only {} of 90 groups",
        on_c_before.len()
    );

    set_ttl_check(&consul, ttl_check, "fail").await;
    wait_for_ring(&gateway, &[&a, &b]).await;

    // Several passes run while C is failing; none may touch C's groups.
    let passes = gateway_metric(&gateway, "dynamic_sharding_rebalance_passes_total").await;
    wait_until(SETTLE_TIMEOUT, POLL, || async {
        gateway_metric(&gateway, "dynamic_sharding_rebalance_passes_total").await >= passes + 3.0
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "fewer than 3 passes while C fails ({e})\n{}",
            log_tail(&gateway, 20)
        )
    });
    let ring = gateway.ring().await;
    assert_eq!(
        ring["rebalance"]["leader"], true,
        "the only replica rebalances: {ring}"
    );
    assert_eq!(
        ring["rebalance"]["draining"],
        serde_json::json!([]),
        "a failing node is not draining: {ring}"
    );
    let on_c_after = single_copies(&contents(&[&c]).await);
    let changed: Vec<&Labels> = on_c_before
        .iter()
        .filter(|(labels, families)| on_c_after.get(*labels) != Some(*families))
        .map(|(labels, _)| labels)
        .collect();
    assert!(
        changed.is_empty(),
        "{} of the failing node's {} groups were drained or changed, e.g. {:?}",
        changed.len(),
        on_c_before.len(),
        &changed[..changed.len().min(3)]
    );
    let now = contents(&[&a, &b, &c]).await;
    let misplaced = placement_errors(&now, &group_owners);
    assert!(
        misplaced.is_empty(),
        "groups were copied or deleted while a node failed its check: {:?}",
        &misplaced[..misplaced.len().min(5)]
    );
    assert_eq!(single_copies(&now), single_copies(&placed));

    let c_status = ring["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == c.addr().as_str()))
        .unwrap_or_else(|| {
            panic!(
                "/-/ring does not list the failing node {}: {ring}",
                c.addr()
            )
        });
    assert_eq!(c_status["healthy"], false, "{ring}");

    // C passes again: it rejoins and everything is still exactly where it belongs.
    set_ttl_check(&consul, ttl_check, "pass").await;
    wait_for_ring(&gateway, &[&a, &b, &c]).await;
    let after = wait_until_every_group_is_once_on_its_owner(&[&a, &b, &c], &group_owners).await;
    assert_eq!(single_copies(&after), single_copies(&placed));
}
