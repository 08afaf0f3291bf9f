//! Proves the integration-test harness against the real programs: each piece starts, answers, dies on `kill()` and
//! comes back on `restart()` the way the gateway's own tests will rely on.

mod common;

use std::net::TcpStream;

use common::{
    assert_eventually_eq, free_port, labels, python_push, secs, wait_until, ChildGuard, Consul,
    Prometheus, Pushgateway, PythonPushOp, POLL_INTERVAL, PYTHON_GAUGE, SETTLE,
};
use reqwest::{Method, StatusCode};

fn refuses_connections(addr: &str) -> bool {
    TcpStream::connect(addr).is_err()
}

#[test]
fn free_port_never_repeats_within_a_process() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ports.len(),
        "free_port handed out a port twice: {ports:?}"
    );
    assert!(ports.iter().all(|port| *port != 0));
}

#[test]
fn child_guard_kills_its_process_on_drop_and_keeps_its_output() {
    let mut command = std::process::Command::new("sh");
    command.args(["-c", "echo started; exec sleep 600"]);
    let guard = ChildGuard::spawn("sleeper", command);
    let pid = guard.pid();
    let proc_entry = format!("/proc/{pid}");
    assert!(
        std::path::Path::new(&proc_entry).exists(),
        "sleeper should be running"
    );
    let started = std::time::Instant::now();
    while !guard.log_text().contains("started") {
        assert!(
            started.elapsed() < secs(30),
            "sleeper never wrote to its log"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    drop(guard);
    // Reaped, not a zombie: the /proc entry is gone (pids are not reused this quickly).
    assert!(
        !std::path::Path::new(&proc_entry).exists(),
        "sleeper (pid {pid}) survived its guard"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_until_reports_timeout_and_success() {
    let never = wait_until(
        std::time::Duration::from_millis(200),
        POLL_INTERVAL,
        || async { false },
    )
    .await;
    let timed_out = never.expect_err("a condition that is never true must time out");
    assert!(
        timed_out.polls >= 2,
        "polled only {} times",
        timed_out.polls
    );
    assert!(timed_out.to_string().contains("still false"));

    let mut calls = 0;
    wait_until(secs(10), POLL_INTERVAL, || {
        calls += 1;
        let done = calls >= 3;
        async move { done }
    })
    .await
    .expect("true on the third poll");
    assert_eq!(calls, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushgateway_accepts_a_push_lists_its_group_and_dies_on_kill() {
    let mut pushgateway = Pushgateway::start().await;
    let status = pushgateway
        .push("/metrics/job/smoke/instance/a", "smoke_value 1\n")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        pushgateway.groups().await,
        vec![labels(&[("instance", "a"), ("job", "smoke")])]
    );
    assert!(pushgateway
        .metrics_text()
        .await
        .contains("smoke_value{instance=\"a\",job=\"smoke\"} 1"));

    assert_eq!(
        pushgateway.delete("/metrics/job/smoke/instance/a").await,
        StatusCode::ACCEPTED
    );
    // The Pushgateway queues the delete and answers 202 before applying it.
    assert_eventually_eq(
        SETTLE,
        || pushgateway.groups(),
        Vec::new(),
        "the deleted group is gone",
    )
    .await;

    assert_eq!(
        pushgateway.push("/metrics/job/lost", "lost 1\n").await,
        StatusCode::OK
    );
    let addr = pushgateway.addr();
    pushgateway.kill();
    assert!(
        refuses_connections(&addr),
        "{addr} still accepts connections after kill()"
    );

    // In memory: the restarted instance answers on the same address and has forgotten the group.
    pushgateway.restart().await;
    assert_eq!(pushgateway.addr(), addr);
    assert!(pushgateway.groups().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushgateway_with_persistence_keeps_groups_across_a_crash() {
    let dir = tempfile::tempdir().expect("temp dir for the persistence file");
    let mut pushgateway =
        Pushgateway::start_with_persistence(dir.path().join("pushgateway.data")).await;
    let status = pushgateway
        .push("/metrics/job/durable/shard/survivor", "durable_value 7\n")
        .await;
    assert_eq!(status, StatusCode::OK);
    wait_until(secs(20), POLL_INTERVAL, || async {
        pushgateway.persistence_file_contains("survivor")
    })
    .await
    .expect("the pushed group is written to the persistence file");

    let addr = pushgateway.addr();
    pushgateway.kill();
    assert!(
        refuses_connections(&addr),
        "{addr} still accepts connections after kill()"
    );
    pushgateway.restart().await;

    assert_eq!(pushgateway.addr(), addr);
    assert_eq!(
        pushgateway.groups().await,
        vec![labels(&[("job", "durable"), ("shard", "survivor")])]
    );
    // The Pushgateway adds an empty `instance` label to samples whose grouping key has none.
    let expected_sample = r#"durable_value{instance="",job="durable",shard="survivor"} 7"#;
    assert!(pushgateway.metrics_text().await.contains(expected_sample));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_registers_a_service_and_restarts_empty_on_the_same_port() {
    let mut consul = Consul::start().await;
    let registration =
        r#"{"ID":"127.0.0.1_9091","Name":"pushgateway","Address":"127.0.0.1","Port":9091}"#;
    let reply = consul
        .request(Method::PUT, "/v1/agent/service/register", registration)
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "register answered {}",
        reply.body
    );

    // The agent syncs a registration into its catalog in the background, after answering.
    wait_until(secs(30), POLL_INTERVAL, || async {
        consul
            .get_json("/v1/health/service/pushgateway?passing=true")
            .await
            .as_array()
            .is_some_and(|instances| !instances.is_empty())
    })
    .await
    .expect("the registered service shows in the catalog");
    let instances = consul
        .get_json("/v1/health/service/pushgateway?passing=true")
        .await;
    let instances = instances.as_array().expect("health answer is an array");
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0]["Service"]["ID"], "127.0.0.1_9091");
    assert_eq!(instances[0]["Service"]["Port"], 9091);

    let addr = consul.addr();
    consul.restart().await;
    assert_eq!(consul.addr(), addr);
    let instances = consul.get_json("/v1/health/service/pushgateway").await;
    assert_eq!(
        instances,
        serde_json::json!([]),
        "a restarted dev agent must be empty"
    );

    consul.kill();
    assert!(
        refuses_connections(&addr),
        "{addr} still accepts connections after kill()"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_pushgateway() {
    let pushgateway = Pushgateway::start().await;
    assert_eq!(
        pushgateway
            .push("/metrics/job/scraped", "scraped_value 3\n")
            .await,
        StatusCode::OK
    );
    let prometheus = Prometheus::start(&format!(
        "- job_name: pushgateway\n  honor_labels: true\n  static_configs:\n    - targets: ['{}']\n",
        pushgateway.addr()
    ))
    .await;

    wait_until(secs(30), POLL_INTERVAL, || async {
        let up = prometheus.query("up{job=\"pushgateway\"}").await;
        up.pointer("/0/value/1").and_then(|value| value.as_str()) == Some("1")
    })
    .await
    .expect("up{job=\"pushgateway\"} == 1 in Prometheus");

    let targets = prometheus.targets().await;
    assert_eq!(targets[0]["health"], "up", "{targets}");
    // honor_labels keeps the pushed job label instead of renaming it exported_job.
    wait_until(secs(30), POLL_INTERVAL, || async {
        let value = prometheus.query("scraped_value{job=\"scraped\"}").await;
        value.pointer("/0/value/1").and_then(|value| value.as_str()) == Some("3")
    })
    .await
    .expect("the pushed sample is queryable with its own job label");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_pushes_and_deletes_on_a_pushgateway() {
    let mut pushgateway = Pushgateway::start().await;
    let grouping = [("instance", "py"), ("path", "a/b")];

    python_push(
        &pushgateway.url(),
        "pyjob",
        &grouping,
        PythonPushOp::Push(2.5),
    )
    .await
    .expect("push_to_gateway");
    assert_eq!(
        pushgateway.groups().await,
        vec![labels(&[
            ("instance", "py"),
            ("job", "pyjob"),
            ("path", "a/b")
        ])]
    );
    let expected_sample =
        format!("{PYTHON_GAUGE}{{instance=\"py\",job=\"pyjob\",path=\"a/b\"}} 2.5");
    assert!(pushgateway.metrics_text().await.contains(&expected_sample));

    python_push(
        &pushgateway.addr(),
        "pyjob",
        &grouping,
        PythonPushOp::PushAdd(4.0),
    )
    .await
    .expect("pushadd");
    let expected_sample = format!("{PYTHON_GAUGE}{{instance=\"py\",job=\"pyjob\",path=\"a/b\"}} 4");
    assert!(pushgateway.metrics_text().await.contains(&expected_sample));

    python_push(&pushgateway.url(), "pyjob", &grouping, PythonPushOp::Delete)
        .await
        .expect("delete_from_gateway");
    assert_eventually_eq(
        SETTLE,
        || pushgateway.groups(),
        Vec::new(),
        "the deleted group is gone (applied after the 202)",
    )
    .await;

    pushgateway.kill();
    let error = python_push(
        &pushgateway.url(),
        "pyjob",
        &grouping,
        PythonPushOp::Push(1.0),
    )
    .await
    .expect_err("a push to a dead Pushgateway fails");
    assert!(
        error.contains("Connection refused"),
        "unexpected error text: {error}"
    );
}
