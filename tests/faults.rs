//! Faults against real Pushgateways: a client's last acknowledged push is what survives when its owner hangs,
//! answers too late or loses the connection (ambiguous writes); nodes whose pushes fail are ejected from the
//! ring and return; one slow node cannot hold every push.

mod common;

use std::time::Duration;

use common::fault_proxy::{Fault, FaultProxy};
use common::placement::{contents, Labels};
use common::*;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};

/// Fast probes, a 1 s upstream timeout and passes every second; `extra` is appended.
fn config(servers: &[String], extra: &str) -> String {
    config_with_proxy(servers, "upstream_timeout: 1s", extra)
}

/// [`config`] with the `proxy` section's keys given.
fn config_with_proxy(servers: &[String], proxy: &str, extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "pushgateway:\n  servers: [{}]\nhealth_check: {{interval: 500ms, timeout: 400ms, unhealthy_threshold: 2, \
         healthy_threshold: 1}}\nrebalance: {{interval: 1s}}\nproxy: {{{proxy}}}\n\
         ambiguous_writes: {{settle_time: 1s, linger: 60s}}\n{extra}",
        servers.join(", ")
    )
}

/// A job whose group `/metrics/job/<job>` the gateway routes to `node` once every configured node is in the ring.
async fn job_owned_by(gateway: &Gateway, node: &str, prefix: &str) -> String {
    wait_until(secs(30), POLL_INTERVAL, || async {
        let ring = gateway.ring().await;
        let known = ring["nodes"].as_array().map_or(0, Vec::len);
        known > 0 && ring["ring_nodes"].as_array().map_or(0, Vec::len) == known
    })
    .await
    .expect("every configured node joins the ring");
    for i in 0..500 {
        let job = format!("{prefix}{i}");
        if gateway.owner_of(&format!("/metrics/job/{job}")).await == node {
            return job;
        }
    }
    panic!("no job {prefix}<n> is owned by {node}");
}

async fn push(gateway: &Gateway, job: &str, value: u64) -> Reply {
    gateway
        .request(
            Method::PUT,
            &format!("/metrics/job/{job}"),
            &format!("fault_value {value}\n"),
        )
        .await
}

/// Every copy of group `{job=<job>}`: (node, value of `fault_value`).
async fn copies(nodes: &[&Pushgateway], job: &str) -> Vec<(String, String)> {
    let wanted: Labels = labels(&[("job", job)]);
    let all = contents(nodes).await;
    all.get(&wanted)
        .map(|copies| {
            copies
                .iter()
                .map(|(node, families)| {
                    let value = families["fault_value"]["metrics"][0]["value"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string();
                    (node.clone(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn in_ring(ring: &serde_json::Value, node: &str) -> bool {
    ring["ring_nodes"]
        .as_array()
        .is_some_and(|nodes| nodes.iter().any(|n| n == node))
}

async fn pending_repairs(gateway: &Gateway) -> u64 {
    gateway.ring().await["ambiguous_writes"]["pending_groups"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

async fn pushes_in_flight(gateway: &Gateway, node: &str) -> u64 {
    gateway.ring().await["outlier_detection"][node]["pushes_in_flight"]
        .as_u64()
        .unwrap_or(0)
}

async fn gateway_metrics(gateway: &Gateway) -> String {
    gateway.request(Method::GET, "/-/metrics", "").await.body
}

/// Waits until the group is on exactly `owner` with `value` and no repair is pending, then checks that this
/// still holds a few passes later (a late write must not land after the check).
async fn assert_settles_on(
    gateway: &Gateway,
    nodes: &[&Pushgateway],
    job: &str,
    owner: &str,
    value: &str,
) {
    let expected = vec![(owner.to_string(), value.to_string())];
    let last = std::cell::RefCell::new(Vec::new());
    let settled = wait_until(secs(60), Duration::from_millis(250), || {
        let (last, expected) = (&last, &expected);
        async move {
            let now = copies(nodes, job).await;
            let done = now == *expected && pending_repairs(gateway).await == 0;
            *last.borrow_mut() = now;
            done
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "group {job} should end on exactly {owner} with value {value}; copies: {:?}\n{}",
        last.borrow(),
        gateway.log_text()
    );
    tokio::time::sleep(secs(3)).await;
    assert_eq!(
        copies(nodes, job).await,
        expected,
        "group {job} changed after it had settled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_owner_applying_a_timed_out_push_late_does_not_win_over_the_acknowledged_one()
{
    let nodes = Pushgateway::start_many(3).await;
    let addrs: Vec<String> = nodes.iter().map(Pushgateway::addr).collect();
    let gateway = Gateway::start(&config(&addrs, "")).await;
    let refs: Vec<&Pushgateway> = nodes.iter().collect();
    let owner = addrs[0].clone();
    let job = job_owned_by(&gateway, &owner, "stale_demo").await;

    nodes[0].pause();
    assert_eq!(push(&gateway, &job, 1).await.status, StatusCode::OK);
    // The owner's probes fail too: once it has left the ring, the next push goes to the next node at once.
    wait_until(secs(30), POLL_INTERVAL, || async {
        !in_ring(&gateway.ring().await, &owner)
    })
    .await
    .expect("the stopped owner leaves the ring");
    assert_eq!(push(&gateway, &job, 2).await.status, StatusCode::OK);
    nodes[0].resume();

    // Back in the ring, the owner holds the timed-out push (applied on SIGCONT, with the newest push time).
    assert_settles_on(&gateway, &refs, &job, &owner, "2").await;
    let metrics = gateway_metrics(&gateway).await;
    assert!(
        metric_sum(&metrics, "dynamic_sharding_ambiguous_writes_repaired_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            &format!("dynamic_sharding_ambiguous_writes_total{{node=\"{owner}\"")
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_slower_than_the_upstream_timeout_does_not_overwrite_a_later_acknowledged_push() {
    let nodes = Pushgateway::start_many(3).await;
    let slow = FaultProxy::start(&nodes[0].addr()).await;
    let addrs = vec![slow.addr(), nodes[1].addr(), nodes[2].addr()];
    let gateway = Gateway::start(&config(&addrs, "")).await;
    let job = job_owned_by(&gateway, &slow.addr(), "slow").await;

    // The first push reaches the owner 3 s late (after its timeout and the retry on the next node); the second
    // is answered at once. The late one is applied last, with the newest push time.
    slow.set(Fault::DelayPushes(secs(3)));
    assert_eq!(push(&gateway, &job, 1).await.status, StatusCode::OK);
    slow.set(Fault::None);
    assert_eq!(push(&gateway, &job, 2).await.status, StatusCode::OK);

    // The groups are listed under the Pushgateways' own addresses; the owner is the relay's Pushgateway.
    let owner = nodes[0].addr();
    let refs: Vec<&Pushgateway> = nodes.iter().collect();
    assert_settles_on(&gateway, &refs, &job, &owner, "2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_after_the_push_was_written_keeps_the_last_acknowledged_value() {
    let nodes = Pushgateway::start_many(3).await;
    let flaky = FaultProxy::start(&nodes[0].addr()).await;
    let addrs = vec![flaky.addr(), nodes[1].addr(), nodes[2].addr()];
    let gateway = Gateway::start(&config(&addrs, "")).await;
    let job = job_owned_by(&gateway, &flaky.addr(), "reset").await;

    // Applied on the owner, but the answer is lost: retried on the next node, which acknowledges it.
    flaky.set(Fault::ResetAfterPush);
    assert_eq!(push(&gateway, &job, 1).await.status, StatusCode::OK);
    flaky.set(Fault::None);
    assert_eq!(push(&gateway, &job, 2).await.status, StatusCode::OK);

    let refs: Vec<&Pushgateway> = nodes.iter().collect();
    assert_settles_on(&gateway, &refs, &job, &nodes[0].addr(), "2").await;
    let metrics = gateway_metrics(&gateway).await;
    assert!(
        metric_sum(
            &metrics,
            &format!(
                "dynamic_sharding_ambiguous_writes_total{{node=\"{}\"",
                flaky.addr()
            )
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_killed_and_restarted_with_older_persisted_copies_ends_with_the_acknowledged_value(
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut owner_node = Pushgateway::start_with_persistence(dir.path().join("owner.db")).await;
    let others = Pushgateway::start_many(2).await;
    let addrs = vec![owner_node.addr(), others[0].addr(), others[1].addr()];
    let gateway = Gateway::start(&config(&addrs, "")).await;
    let job = job_owned_by(&gateway, &owner_node.addr(), "crash").await;

    assert_eq!(push(&gateway, &job, 1).await.status, StatusCode::OK);
    wait_until(secs(30), POLL_INTERVAL, || async {
        owner_node.persistence_file_contains(&job)
    })
    .await
    .expect("the owner persisted the first push");
    // A push in flight when the owner dies (its connection is reset), then one acknowledged by the next node.
    // The kill waits until the push holds its slot on the owner (it keeps it after its timeout too, until the
    // node answers or the connection breaks), so the push has certainly been sent to the owner.
    owner_node.pause();
    let owner = owner_node.addr();
    let in_flight = push(&gateway, &job, 2);
    let kill_soon = async {
        wait_until(secs(30), POLL_INTERVAL, || async {
            pushes_in_flight(&gateway, &owner).await == 1
        })
        .await
        .expect("the push reached the stopped owner");
        owner_node.kill();
    };
    let (reply, ()) = tokio::join!(in_flight, kill_soon);
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(push(&gateway, &job, 3).await.status, StatusCode::OK);
    owner_node.restart().await;

    let refs = vec![&owner_node, &others[0], &others[1]];
    assert_settles_on(&gateway, &refs, &job, &owner_node.addr(), "3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_pushes_hang_while_its_probes_pass_is_ejected_and_returns_after_its_ejection_time(
) {
    let nodes = Pushgateway::start_many(3).await;
    let gray = FaultProxy::start(&nodes[0].addr()).await;
    let addrs = vec![gray.addr(), nodes[1].addr(), nodes[2].addr()];
    let gateway = Gateway::start(&config(
        &addrs,
        "outlier_detection: {consecutive_failures: 2, base_ejection_time: 2s, max_ejection_time: 30s}",
    ))
    .await;
    let jobs = [
        job_owned_by(&gateway, &gray.addr(), "gray_a").await,
        job_owned_by(&gateway, &gray.addr(), "gray_b").await,
        job_owned_by(&gateway, &gray.addr(), "gray_c").await,
    ];
    gray.set(Fault::HoldPushes);
    // Two timeouts in a row (each push retried on the next node and acknowledged there) eject the node.
    for job in &jobs[..2] {
        assert_eq!(push(&gateway, job, 1).await.status, StatusCode::OK);
    }
    // The ring builder applies the ejection a moment after the push that caused it was answered. The checks
    // below read the very `/-/ring` answer that showed it: the ejection lasts only 2 s.
    let ejected_ring = std::cell::RefCell::new(serde_json::Value::Null);
    wait_until(secs(30), POLL_INTERVAL, || {
        let ejected_ring = &ejected_ring;
        let gateway = &gateway;
        let gray = &gray;
        async move {
            let ring = gateway.ring().await;
            let out = !in_ring(&ring, &gray.addr());
            *ejected_ring.borrow_mut() = ring;
            out
        }
    })
    .await
    .expect("the ejected node left the ring");
    let ring = ejected_ring.into_inner();
    let status = &ring["outlier_detection"][gray.addr()];
    assert_eq!(status["ejected"], true, "{ring:#}");
    assert_eq!(status["times_ejected"], 1, "{ring:#}");
    assert!(
        status["last_ejection_reason"]
            .as_str()
            .is_some_and(|r| r.contains("2 pushes in a row failed")),
        "{ring:#}"
    );
    // The node's probes pass all along: only the push path took it out.
    assert!(ring["nodes"]
        .as_array()
        .is_some_and(|nodes| nodes.iter().all(|n| n["healthy"] == true)));
    let metrics = gateway_metrics(&gateway).await;
    assert_eq!(
        metric_sum(
            &metrics,
            &format!(
                "dynamic_sharding_node_ejections_total{{node=\"{}\"",
                gray.addr()
            )
        ),
        1.0,
        "{metrics}"
    );
    assert!(gateway.log_text().contains("node ejected from the ring"));
    // While ejected, its groups go to the next node without waiting for a timeout.
    let before = metric_sum(&metrics, "dynamic_sharding_upstream_errors_total");
    assert_eq!(push(&gateway, &jobs[2], 1).await.status, StatusCode::OK);
    assert_eq!(
        metric_sum(
            &gateway_metrics(&gateway).await,
            "dynamic_sharding_upstream_errors_total"
        ),
        before
    );

    // After its ejection time it is back; failing again ejects it for twice as long.
    wait_until(secs(30), POLL_INTERVAL, || async {
        in_ring(&gateway.ring().await, &gray.addr())
    })
    .await
    .expect("the node returns to the ring after its ejection time");
    for job in &jobs[..2] {
        assert_eq!(push(&gateway, job, 2).await.status, StatusCode::OK);
    }
    let ring = gateway.ring().await;
    let status = &ring["outlier_detection"][gray.addr()];
    assert_eq!(status["ejected"], true, "{ring:#}");
    assert_eq!(status["times_ejected"], 2, "{ring:#}");
    // How long the ejection lasts in all: what is left of it plus how long ago it started (the time left alone
    // shrinks with however long this check took to run on a slow machine).
    let left = status["ejected_for_seconds"].as_f64().unwrap_or(0.0);
    let since = status["last_ejection"]
        .as_str()
        .and_then(|at| humantime::parse_rfc3339(at).ok())
        .and_then(|at| std::time::SystemTime::now().duration_since(at).ok())
        .map_or(0.0, |since| since.as_secs_f64());
    assert!(
        left + since > 3.0,
        "the second ejection lasts 4 s, twice the first: {left} s left, ejected {since} s ago: {ring:#}"
    );

    // Healthy again: back after the ejection, and its pushes are answered by it.
    gray.set(Fault::None);
    wait_until(secs(30), POLL_INTERVAL, || async {
        in_ring(&gateway.ring().await, &gray.addr())
    })
    .await
    .expect("the node returns after its second ejection");
    let reply = push(&gateway, &jobs[0], 3).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-dynamic-sharding-node"), Some(gray.addr()));
}

/// Passive failure detection takes a node out of the push path only: while it is ejected, the groups it holds are
/// still in the merged reads and Prometheus still discovers it (a replication bench saw a third of the groups
/// vanish from the gateway's view while two nodes were ejected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_node_still_serves_its_groups_to_reads_and_discovery() {
    let nodes = Pushgateway::start_many(3).await;
    let gray = FaultProxy::start(&nodes[0].addr()).await;
    let addrs = vec![gray.addr(), nodes[1].addr(), nodes[2].addr()];
    let gateway = Gateway::start(&config(
        &addrs,
        "outlier_detection: {consecutive_failures: 2, base_ejection_time: 60s, max_ejection_time: 60s}",
    ))
    .await;
    let held = job_owned_by(&gateway, &gray.addr(), "held").await;
    let reply = push(&gateway, &held, 7).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(copies(&[&nodes[0]], &held).await.len(), 1);
    gray.set(Fault::HoldPushes);
    for prefix in ["eject_a", "eject_b"] {
        let job = job_owned_by(&gateway, &gray.addr(), prefix).await;
        assert_eq!(push(&gateway, &job, 1).await.status, StatusCode::OK);
    }
    wait_until(secs(30), POLL_INTERVAL, || async {
        !in_ring(&gateway.ring().await, &gray.addr())
    })
    .await
    .expect("the node whose pushes hang is ejected");

    let group_line = format!("fault_value{{instance=\"\",job=\"{held}\"}} 7");
    let merged = gateway.request(Method::GET, "/metrics", "").await;
    assert_eq!(merged.status, StatusCode::OK, "{}", merged.body);
    assert!(
        merged.body.contains(&group_line),
        "the ejected node's group is missing from the merged /metrics (want {group_line}):\n{}",
        merged.body
    );
    let api = gateway.request(Method::GET, "/api/v1/metrics", "").await;
    let api: serde_json::Value = serde_json::from_str(&api.body).expect("/api/v1/metrics is JSON");
    let groups: Vec<&serde_json::Value> = api["data"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .filter(|g| g["labels"]["job"] == held.as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(groups.len(), 1, "{api:#}");
    let sd = gateway.request(Method::GET, "/-/sd", "").await;
    let sd: serde_json::Value = serde_json::from_str(&sd.body).expect("/-/sd is JSON");
    let targets: Vec<&str> = sd
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["targets"].as_array().into_iter().flatten())
        .filter_map(|target| target.as_str())
        .collect();
    assert!(targets.contains(&gray.addr().as_str()), "{sd:#}");
    // Still out of the push path.
    assert!(!in_ring(&gateway.ring().await, &gray.addr()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hung_node_holds_at_most_its_in_flight_limit_and_the_rest_go_to_the_next_node() {
    let nodes = Pushgateway::start_many(3).await;
    let gray = FaultProxy::start(&nodes[0].addr()).await;
    let addrs = vec![gray.addr(), nodes[1].addr(), nodes[2].addr()];
    // The held pushes time out after 5 s: every one of the 7 concurrent pushes reaches the gateway well within
    // that, even on a slow machine, so the first 4 still hold the node when the last 3 arrive.
    let gateway = Gateway::start(&config_with_proxy(
        &addrs,
        "upstream_timeout: 5s, max_in_flight_per_node: 4",
        "outlier_detection: {consecutive_failures: 0}",
    ))
    .await;
    // 4 pushes hold the hung node; 3 more overflow to the next nodes, which stay within their own limit of 4
    // (more overflowing pushes could exceed it on one of them, and a push is retried only once).
    let mut jobs = Vec::new();
    for i in 0..7 {
        jobs.push(job_owned_by(&gateway, &gray.addr(), &format!("held{i}_")).await);
    }
    gray.set(Fault::HoldPushes);

    let replies = join_all(jobs.iter().map(|job| push(&gateway, job, 1))).await;
    let statuses: Vec<StatusCode> = replies.iter().map(|r| r.status).collect();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let metrics = gateway_metrics(&gateway).await;
    let overflow = metric_sum(
        &metrics,
        &format!(
            "dynamic_sharding_push_in_flight_overflow_total{{node=\"{}\"",
            gray.addr()
        ),
    );
    let timeouts = metric_sum(
        &metrics,
        &format!(
            "dynamic_sharding_upstream_errors_total{{node=\"{}\",kind=\"timeout\"",
            gray.addr()
        ),
    );
    assert!(overflow >= 3.0, "overflow {overflow}\n{metrics}");
    assert!(timeouts <= 4.0, "timeouts {timeouts}\n{metrics}");
    let ring = gateway.ring().await;
    assert!(
        ring["outlier_detection"][gray.addr()]["pushes_in_flight"]
            .as_u64()
            .is_some_and(|n| n <= 4),
        "{ring:#}"
    );

    // Without a next node to go to, the push is refused at once with a 503 that says why.
    let single = Gateway::start(&config_with_proxy(
        std::slice::from_ref(&gray.addr()),
        "upstream_timeout: 5s, max_in_flight_per_node: 1",
        "outlier_detection: {consecutive_failures: 0}",
    ))
    .await;
    single.wait_for_ring_size(1).await;
    // The second push is sent once the first holds the node's only slot (for up to its 5 s timeout).
    let (first, second) = tokio::join!(push(&single, "held_alone", 1), async {
        wait_until(secs(30), POLL_INTERVAL, || async {
            pushes_in_flight(&single, &gray.addr()).await == 1
        })
        .await
        .expect("the first push holds the node");
        push(&single, "held_alone", 2).await
    });
    assert_eq!(first.status, StatusCode::BAD_GATEWAY, "{}", first.body);
    assert_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        second.body
    );
    assert!(
        second.body.contains("max_in_flight_per_node"),
        "{}",
        second.body
    );
    assert_eq!(second.header("retry-after"), Some("1".to_string()));
}
