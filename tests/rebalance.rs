//! The rebalancer against real Pushgateways: after scale-out, scale-in and a crash with persistence, every group
//! ends up exactly once, on its owner, with its newest value (histograms, summaries, NaN and ±Inf included), and
//! pushes that run while groups move are never overwritten by an older copy.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::placement::*;
use common::*;
use dynamic_sharding::grouping::GroupingKey;
use dynamic_sharding::ring::{Algorithm, Ring};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};

/// Rebalance every second, fast health checks (a node leaves after 2 failed 500 ms probes, returns after 1).
fn config(nodes: &[&Pushgateway], extra: &str) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    format!(
        "pushgateway:\n  servers: [{}]\nhealth_check: {{interval: 500ms, timeout: 400ms, unhealthy_threshold: 2, \
         healthy_threshold: 1}}\nrebalance: {{interval: 1s, concurrency: 8}}\n{extra}",
        servers.join(", ")
    )
}

/// One test group: its push path and its grouping labels.
#[derive(Clone)]
struct Spec {
    path: String,
    labels: Labels,
}

/// `count` groups; some have a label value with `/` (pushed with `@base64`) or non-ASCII text.
fn specs(job: &str, count: usize) -> Vec<Spec> {
    (0..count)
        .map(|i| {
            let mut path = format!("/metrics/job/{job}/instance/i{i}");
            let mut labels = labels(&[("job", job), ("instance", &format!("i{i}"))]);
            if i % 25 == 0 {
                // "dir/x<i>" in URL-safe base64 needs no padding care: the Pushgateway accepts either.
                let value = format!("dir/x{i}");
                path.push_str(&format!("/path@base64/{}", base64_url(&value)));
                labels.insert("path".into(), value);
            } else if i % 25 == 1 {
                path.push_str("/zone/z%C3%BCrich");
                labels.insert("zone".into(), "zürich".into());
            }
            Spec { path, labels }
        })
        .collect()
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// A body with every metric type; `version` is visible as the gauge `rb_version`.
fn body(index: usize, version: u64) -> String {
    let special = ["NaN", "+Inf", "-Inf", "1.5e-07"][index % 4];
    let mut body = format!(
        "# HELP rb_version Version of the last push.\n# TYPE rb_version gauge\nrb_version {version}\n\
         # HELP rb_requests_total Requests \"served\" \\\\ counted.\n# TYPE rb_requests_total counter\n\
         rb_requests_total{{code=\"200\"}} {}\nrb_requests_total{{code=\"500\"}} 3\n\
         # TYPE rb_untyped untyped\nrb_untyped {special}\n",
        index * 10
    );
    if index.is_multiple_of(2) {
        body.push_str(
            "# HELP rb_latency_seconds Latency.\n# TYPE rb_latency_seconds histogram\n\
             rb_latency_seconds_bucket{le=\"0.1\"} 1\nrb_latency_seconds_bucket{le=\"1\"} 3\n\
             rb_latency_seconds_bucket{le=\"+Inf\"} 4\nrb_latency_seconds_sum 2.5\nrb_latency_seconds_count 4\n",
        );
    } else {
        body.push_str(
            "# TYPE rb_size_bytes summary\nrb_size_bytes{quantile=\"0.5\"} 10\n\
             rb_size_bytes{quantile=\"0.99\"} NaN\nrb_size_bytes_sum 100\nrb_size_bytes_count 7\n",
        );
    }
    body
}

/// PUTs every group at `version` through the gateway, 16 at a time; every push must be acknowledged.
async fn push_all(gateway: &Gateway, specs: &[Spec], version: u64) {
    let pushes: Vec<(String, String)> = specs
        .iter()
        .enumerate()
        .map(|(index, spec)| (spec.path.clone(), body(index, version)))
        .collect();
    put_all(gateway, &pushes).await;
}

/// The owner of every spec on the ring over `nodes` (the gateway builds exactly this ring).
fn owners(nodes: &[&Pushgateway], specs: &[Spec]) -> BTreeMap<Labels, String> {
    let ring = Ring::build(
        Algorithm::Rendezvous,
        &nodes.iter().map(|n| n.addr()).collect::<Vec<_>>(),
    );
    specs
        .iter()
        .map(|spec| {
            let key = GroupingKey::from_labels(spec.labels.clone()).expect("valid grouping key");
            let owner = ring.owner(&key.ring_key()).expect("ring has nodes");
            (spec.labels.clone(), owner.to_string())
        })
        .collect()
}

fn version_of(families: &serde_json::Value) -> String {
    families["rb_version"]["metrics"][0]["value"]
        .as_str()
        .unwrap_or("missing")
        .to_string()
}

fn rewrite_config(gateway: &Gateway, yaml: &str) {
    std::fs::write(gateway.config_path(), yaml).expect("rewrite config");
    gateway.signal("HUP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_moves_groups_to_the_new_node_with_exact_values_and_deletes_the_old_copies() {
    let a = Pushgateway::start().await;
    let b = Pushgateway::start().await;
    let c = Pushgateway::start().await;
    let d = Pushgateway::start().await;
    let gateway = Gateway::start(&config(&[&a, &b, &c], "")).await;
    wait_for_ring(&gateway, &[&a, &b, &c]).await;
    let groups = specs("scaleout", 300);
    push_all(&gateway, &groups, 1).await;
    let before = single_copies(
        &wait_until_every_group_is_once_on_its_owner(
            &[&a, &b, &c],
            &owners(&[&a, &b, &c], &groups),
        )
        .await,
    );

    rewrite_config(&gateway, &config(&[&a, &b, &c, &d], ""));
    wait_for_ring(&gateway, &[&a, &b, &c, &d]).await;
    let new_owners = owners(&[&a, &b, &c, &d], &groups);
    let moving = new_owners.values().filter(|o| **o == d.addr()).count();
    assert!(
        moving > 30,
        "only {moving} of 300 groups move to the new node"
    );
    let after = single_copies(
        &wait_until_every_group_is_once_on_its_owner(&[&a, &b, &c, &d], &new_owners).await,
    );
    assert_eq!(before, after, "a moved group's metrics changed");

    // The pass is recorded when it ends, a moment after its last delete made the placement right.
    wait_until(secs(30), Duration::from_millis(200), || async {
        gateway_metric(&gateway, "dynamic_sharding_rebalance_groups_moved_total").await
            >= moving as f64
    })
    .await
    .expect("the moves are counted");
    let ring = gateway.ring().await;
    let last_pass = &ring["rebalance"]["last_pass"];
    assert!(last_pass["outcome"].is_string(), "{ring}");
    assert_eq!(ring["rebalance"]["leader"], true, "{ring}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_drains_the_removed_node_before_deleting_and_no_group_is_ever_missing() {
    let a = Pushgateway::start().await;
    let b = Pushgateway::start().await;
    let c = Pushgateway::start().await;
    let gateway = Gateway::start(&config(&[&a, &b, &c], "")).await;
    wait_for_ring(&gateway, &[&a, &b, &c]).await;
    let groups = specs("scalein", 300);
    push_all(&gateway, &groups, 1).await;
    let all_labels: BTreeSet<Labels> = groups.iter().map(|s| s.labels.clone()).collect();
    let before = single_copies(
        &wait_until_every_group_is_once_on_its_owner(
            &[&a, &b, &c],
            &owners(&[&a, &b, &c], &groups),
        )
        .await,
    );
    let on_c = c.groups().await.len();
    assert!(on_c > 30, "only {on_c} groups on the node to remove");

    rewrite_config(&gateway, &config(&[&a, &b], ""));
    let new_owners = owners(&[&a, &b], &groups);
    // While C drains, read C first, then A and B: a group copied to A/B before it was deleted from C is seen in
    // at least one of the reads, so any missing group means it was on zero nodes.
    let started = Instant::now();
    let mut observations = 0;
    loop {
        let mut seen: BTreeSet<Labels> = c.groups().await.into_iter().collect();
        seen.extend(a.groups().await);
        seen.extend(b.groups().await);
        let missing: Vec<&Labels> = all_labels.difference(&seen).collect();
        assert!(
            missing.is_empty(),
            "groups on no node while draining: {:?}",
            &missing[..missing.len().min(5)]
        );
        observations += 1;
        if placement_errors(&contents(&[&a, &b, &c]).await, &new_owners).is_empty() {
            break;
        }
        assert!(started.elapsed() < secs(60), "C was not drained within 60s");
    }
    let after = single_copies(
        &wait_until_every_group_is_once_on_its_owner(&[&a, &b, &c], &new_owners).await,
    );
    assert_eq!(before, after, "a drained group's metrics changed");
    assert!(c.groups().await.is_empty());
    assert!(observations >= 1);
    // The drained node is forgotten once empty.
    wait_until(secs(30), Duration::from_millis(200), || async {
        gateway.ring().await["rebalance"]["draining"]
            .as_array()
            .is_some_and(|d| d.is_empty())
    })
    .await
    .expect("drained node leaves the draining list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_returning_with_stale_persisted_copies_gets_the_newest_values_and_others_lose_theirs(
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = Pushgateway::start_with_persistence(dir.path().join("a.data")).await;
    let b = Pushgateway::start_with_persistence(dir.path().join("b.data")).await;
    let mut c = Pushgateway::start_with_persistence(dir.path().join("c.data")).await;
    let gateway = Gateway::start(&config(&[&a, &b, &c], "")).await;
    wait_for_ring(&gateway, &[&a, &b, &c]).await;
    let groups = specs("crash", 300);
    let full_owners = owners(&[&a, &b, &c], &groups);
    push_all(&gateway, &groups, 1).await;
    wait_until_every_group_is_once_on_its_owner(&[&a, &b, &c], &full_owners).await;
    // Wait until C has persisted its groups (label values appear verbatim in the file; the extra wait covers a
    // value that is a prefix of another), so the restart brings back version 1 of each.
    let c_instances: Vec<String> = full_owners
        .iter()
        .filter(|(_, owner)| **owner == c.addr())
        .map(|(labels, _)| labels["instance"].clone())
        .collect();
    assert!(c_instances.len() > 30, "C owns only {}", c_instances.len());
    wait_until(secs(30), Duration::from_millis(200), || async {
        c_instances.iter().all(|i| c.persistence_file_contains(i))
    })
    .await
    .expect("C persisted its groups");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    c.kill();
    wait_for_ring(&gateway, &[&a, &b]).await;
    // Clients keep pushing: C's groups now land on A and B at version 2.
    push_all(&gateway, &groups, 2).await;

    c.restart().await;
    wait_for_ring(&gateway, &[&a, &b, &c]).await;
    let after = wait_until_every_group_is_once_on_its_owner(&[&a, &b, &c], &full_owners).await;
    let stale: Vec<&Labels> = after
        .iter()
        .filter(|(_, copies)| version_of(&copies[0].1) != "2")
        .map(|(labels, _)| labels)
        .collect();
    assert!(
        stale.is_empty(),
        "{} groups kept an old value, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_during_a_rebalance_all_succeed_and_no_acknowledged_push_is_overwritten() {
    let a = Pushgateway::start().await;
    let b = Pushgateway::start().await;
    let c = Pushgateway::start().await;
    let d = Pushgateway::start().await;
    // One copy at a time: the pass takes long enough that many pushes land while it runs.
    let slow =
        |nodes: &[&Pushgateway]| config(nodes, "").replace("concurrency: 8", "concurrency: 1");
    let gateway = Gateway::start(&slow(&[&a, &b, &c])).await;
    wait_for_ring(&gateway, &[&a, &b, &c]).await;
    let groups = specs("concurrent", 600);
    push_all(&gateway, &groups, 1).await;
    let new_owners = owners(&[&a, &b, &c, &d], &groups);
    // The groups that move to D. Each gets exactly one more push, at a different moment while the pass plans and
    // copies: a push that reaches D after the pass listed D but before the group's copy is exactly the race an
    // older copy must not win (a later push would hide the loss, so there is none).
    let mut moving: Vec<(usize, Spec)> = groups
        .iter()
        .cloned()
        .enumerate()
        .filter(|(_, spec)| new_owners[&spec.labels] == d.addr())
        .collect();
    assert!(moving.len() > 80, "only {} groups move", moving.len());
    // A fixed shuffle, so pushes do not follow the order the rebalancer copies in.
    moving.sort_by_key(|(index, _)| (index * 7919) % 1009);

    rewrite_config(&gateway, &slow(&[&a, &b, &c, &d]));
    wait_for_ring(&gateway, &[&a, &b, &c, &d]).await;
    let client = http_client();
    let spacing = Duration::from_millis(3000 / moving.len() as u64);
    let mut acknowledged = BTreeMap::new();
    let mut failures = Vec::new();
    for (index, spec) in &moving {
        let reply = send(
            &client,
            Method::PUT,
            &format!("{}{}", gateway.url(), spec.path),
            body(*index, 2),
        )
        .await;
        match reply {
            Ok(reply) if reply.status == StatusCode::OK => {
                acknowledged.insert(spec.labels.clone(), 2);
            }
            Ok(reply) => failures.push(format!("{}: {} {}", spec.path, reply.status, reply.body)),
            Err(error) => failures.push(format!("{}: {error}", spec.path)),
        }
        tokio::time::sleep(spacing).await;
    }
    assert_eq!(
        failures,
        Vec::<String>::new(),
        "pushes failed during the rebalance"
    );
    let after = wait_until_every_group_is_once_on_its_owner(&[&a, &b, &c, &d], &new_owners).await;
    let mut lost = Vec::new();
    for (labels, version) in &acknowledged {
        let found = version_of(&after[labels][0].1);
        if found != version.to_string() {
            lost.push(format!("{labels:?}: acknowledged {version}, found {found}"));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged pushes overwritten: {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
    // The race really happened: some copies were skipped because their group was pushed during the pass.
    let log = gateway.log_text();
    assert!(
        log.contains("group was pushed during the pass"),
        "no push raced a copy; the test proves nothing\n{}",
        log.lines()
            .filter(|l| l.contains("rebalance pass"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_drops_old_groups_from_the_wrong_node_instead_of_copying_them() {
    let a = Pushgateway::start().await;
    let b = Pushgateway::start().await;
    let groups = specs("maxage", 40);
    let group_owners = owners(&[&a, &b], &groups);
    // Put every group on the node that does not own it: half of them long enough ago to be expired.
    let wrong_node = |spec: &Spec| {
        if group_owners[&spec.labels] == a.addr() {
            &b
        } else {
            &a
        }
    };
    let (old, fresh) = groups.split_at(20);
    for (index, spec) in old.iter().enumerate() {
        assert_eq!(
            wrong_node(spec).push(&spec.path, &body(index, 1)).await,
            StatusCode::OK
        );
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (index, spec) in fresh.iter().enumerate() {
        assert_eq!(
            wrong_node(spec).push(&spec.path, &body(index, 1)).await,
            StatusCode::OK
        );
    }
    let gateway = Gateway::start(
        &config(&[&a, &b], "").replace("concurrency: 8}", "concurrency: 8, max_age: 2s}"),
    )
    .await;
    let fresh_owners: BTreeMap<Labels, String> = fresh
        .iter()
        .map(|s| (s.labels.clone(), group_owners[&s.labels].clone()))
        .collect();
    wait_until_every_group_is_once_on_its_owner(&[&a, &b], &fresh_owners).await;
    // The pass counts its deletes when it ends, after the nodes already show them.
    let expired_deletes = || {
        gateway_metric(
            &gateway,
            "dynamic_sharding_rebalance_copies_deleted_total{reason=\"expired\"}",
        )
    };
    let counted = wait_until(SETTLE, POLL_INTERVAL, || async {
        expired_deletes().await >= 20.0
    })
    .await;
    let deleted = expired_deletes().await;
    assert!(
        deleted >= 20.0,
        "{deleted} expired copies counted ({counted:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_compatible_ring_disables_rebalancing_and_says_why() {
    let a = Pushgateway::start().await;
    let b = Pushgateway::start().await;
    let groups = specs("gocompat", 10);
    for (index, spec) in groups.iter().enumerate() {
        assert_eq!(a.push(&spec.path, &body(index, 1)).await, StatusCode::OK);
    }
    let gateway = Gateway::start(&config(&[&a, &b], "ring: {algorithm: go-compatible}\n")).await;
    wait_until(secs(30), Duration::from_millis(100), || async {
        gateway.ring().await["rebalance"]["inactive_reason"]
            .as_str()
            .is_some_and(|r| r.contains("go-compatible"))
    })
    .await
    .expect("/-/ring says why rebalancing is off");
    // Nothing may move: a pass every second would have moved about half of the groups within 1.5 s had it run,
    // and with rebalancing off nothing can move however long the wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.groups().await.len(), 10, "nothing moved");
    assert!(gateway
        .log_text()
        .contains("rebalancing is off with ring.algorithm go-compatible"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_replica_never_moves_groups() {
    let a = Pushgateway::start().await;
    let b = Pushgateway::start().await;
    let groups = specs("disabled", 20);
    for (index, spec) in groups.iter().enumerate() {
        assert_eq!(a.push(&spec.path, &body(index, 1)).await, StatusCode::OK);
    }
    let gateway = Gateway::start(
        &config(&[&a, &b], "").replace("rebalance: {", "rebalance: {enabled: false, "),
    )
    .await;
    wait_for_ring(&gateway, &[&a, &b]).await;
    // A window of two pass intervals: an enabled rebalancer would have moved about half of the groups by then; a
    // disabled one moves nothing however long the wait, so the check cannot fail on a slow machine.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(a.groups().await.len(), 20, "nothing moved");
    assert!(b.groups().await.is_empty());
    let ring = gateway.ring().await;
    assert_eq!(ring["rebalance"]["enabled"], false, "{ring}");
}

/// Not a timed test: measures a pass over 10,000 single-gauge groups. Seeds 3 nodes directly, then adds a 4th, so
/// about a quarter of the groups move; prints the idle pass before, the moving pass, and the idle pass after.
/// `cargo test --test rebalance -- --ignored --nocapture measure`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_a_pass_over_10000_groups_on_4_nodes() {
    let nodes = [
        Pushgateway::start().await,
        Pushgateway::start().await,
        Pushgateway::start().await,
        Pushgateway::start().await,
    ];
    let [a, b, c, d] = [&nodes[0], &nodes[1], &nodes[2], &nodes[3]];
    let groups = specs("measure", 10_000);
    let first_owners = owners(&[a, b, c], &groups);
    let seeding = Instant::now();
    let client = http_client();
    for (chunk_index, chunk) in groups.chunks(32).enumerate() {
        let pushes = chunk.iter().enumerate().map(|(offset, spec)| {
            let url = format!("http://{}{}", first_owners[&spec.labels], spec.path);
            // One gauge per group: every push makes the Pushgateway check consistency against all metrics it
            // holds, so seeding full bodies to 10,000 groups takes many minutes.
            let body = format!("rb_version {}\n", chunk_index * 32 + offset);
            let client = client.clone();
            async move { send(&client, Method::PUT, &url, body).await }
        });
        for reply in join_all(pushes).await {
            assert_eq!(reply.expect("seed push").status, StatusCode::OK);
        }
    }
    println!("seeded 10000 groups on 3 nodes in {:?}", seeding.elapsed());

    let gateway = Gateway::start(&config(&[a, b, c], "")).await;
    wait_for_ring(&gateway, &[a, b, c]).await;
    let idle_pass = |ring: serde_json::Value| ring["rebalance"]["last_pass"].clone();
    wait_until(secs(120), Duration::from_millis(200), || async {
        idle_pass(gateway.ring().await)["groups_seen"] == 10_000
    })
    .await
    .expect("a pass over every group");
    println!("idle pass, 3 nodes: {}", idle_pass(gateway.ring().await));

    rewrite_config(&gateway, &config(&[a, b, c, d], ""));
    wait_for_ring(&gateway, &[a, b, c, d]).await;
    wait_until(secs(300), Duration::from_millis(200), || async {
        let pass = idle_pass(gateway.ring().await);
        pass["moved"].as_u64().unwrap_or(0) > 0
    })
    .await
    .expect("the moving pass");
    println!(
        "moving pass, 3 -> 4 nodes: {}",
        idle_pass(gateway.ring().await)
    );
    let new_owners = owners(&[a, b, c, d], &groups);
    let started = Instant::now();
    wait_until(secs(300), Duration::from_millis(500), || async {
        idle_pass(gateway.ring().await)["misplaced"] == 0 && started.elapsed() > secs(2)
    })
    .await
    .expect("an idle pass after the move");
    println!("idle pass, 4 nodes: {}", idle_pass(gateway.ring().await));
    let all = contents(&[a, b, c, d]).await;
    assert!(placement_errors(&all, &new_owners).is_empty());
}
