//! The status page at `/`, rendered by a real headless Chromium (Debian `chromium`) over a gateway in front of
//! three real Pushgateways: what a person sees, asserted on the DOM the browser built, plus a screenshot kept in
//! `target/tmp/status-page/` to look at.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use reqwest::{Method, StatusCode};

const BODY: &str = "# TYPE some_gauge gauge\nsome_gauge 42\n";
const XSS: &str = "<script>alert(1)</script>";
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

fn config(nodes: &[Pushgateway]) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    format!(
        "pushgateway:\n  servers: [{}]\nhealth_check: {{interval: 500ms, timeout: 400ms, \
         unhealthy_threshold: 2, healthy_threshold: 1}}\n",
        servers.join(", ")
    )
}

async fn wait_for_ring(gateway: &Gateway, size: usize) {
    wait_until(secs(30), Duration::from_millis(100), || async {
        gateway.ring().await["ring_nodes"]
            .as_array()
            .map_or(0, Vec::len)
            == size
    })
    .await
    .unwrap_or_else(|e| panic!("ring never had {size} nodes: {e}\n{}", gateway.log_text()));
}

/// Kills and reaps a browser that outlives its deadline or the test.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs headless Chromium with a fresh profile and `args`; returns its stdout. Panics (with its stderr) when it
/// fails or takes longer than [`CHROMIUM_TIMEOUT`].
fn chromium(args: &[String]) -> String {
    let profile = tempfile::Builder::new()
        .prefix("ds-test-chromium-")
        .tempdir()
        .expect("temp dir for the Chromium profile");
    let stdout_path = profile.path().join("stdout");
    let stderr_path = profile.path().join("stderr");
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("Chromium stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("Chromium stderr file"));
    let child = command.spawn().unwrap_or_else(|error| {
        panic!("cannot run chromium ({error}): install it with scripts/install-test-deps.sh")
    });
    let mut browser = Browser(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = browser.0.try_wait().expect("wait for Chromium") {
            break status;
        }
        if started.elapsed() > CHROMIUM_TIMEOUT {
            panic!(
                "chromium {args:?} did not finish within {CHROMIUM_TIMEOUT:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "chromium {args:?} exited with {status}; stderr:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    std::fs::read_to_string(&stdout_path).expect("Chromium output")
}

/// The DOM Chromium built for `url`, serialized.
async fn rendered_dom(url: String) -> String {
    tokio::task::spawn_blocking(move || chromium(&["--dump-dom".to_owned(), url]))
        .await
        .expect("Chromium task")
}

/// A screenshot of `url` at `file`, 1280 pixels wide and `height` high.
async fn screenshot(url: String, file: PathBuf, height: u32) {
    let shot = file.clone();
    tokio::task::spawn_blocking(move || {
        chromium(&[
            format!("--screenshot={}", shot.display()),
            format!("--window-size=1280,{height}"),
            url,
        ])
    })
    .await
    .expect("Chromium task");
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 0,
        "Chromium wrote no screenshot at {}",
        file.display()
    );
    println!("screenshot: {}", file.display());
}

fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// The group rows of the page: (job, the row's HTML).
fn group_rows(dom: &str) -> Vec<(String, String)> {
    dom.split("<tr class=\"group\" data-job=\"")
        .skip(1)
        .map(|rest| {
            let job = rest.split('"').next().unwrap_or_default().to_owned();
            let row = rest.split("</tr>").next().unwrap_or_default().to_owned();
            (job, row)
        })
        .collect()
}

fn health_of(dom: &str, node: &str) -> Option<String> {
    let marker = format!("data-node=\"{node}\" data-health=\"");
    let rest = dom.split(&marker).nth(1)?;
    Some(rest.split('"').next()?.to_owned())
}

/// How a grouping label is shown in the DOM's text (`name="value"`, the value with `<`, `>`, `&` escaped).
fn shown_label(name: &str, value: &str) -> String {
    let value = value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!("{name}=\"{value}\"")
}

/// A pushed group: job, other grouping labels, push path.
type Pushed = (&'static str, Vec<(&'static str, String)>, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_every_node_and_group_where_it_lives_and_a_killed_node_as_down() {
    let mut nodes = Pushgateway::start_many(3).await;
    let gateway = Gateway::start(&config(&nodes)).await;
    wait_for_ring(&gateway, 3).await;

    let xss_value = base64::engine::general_purpose::URL_SAFE.encode(XSS);
    let mut pushed: Vec<Pushed> = Vec::new();
    for instance in ["web-1", "web-2", "web-3", "web-4", "web-5", "db-1"] {
        pushed.push((
            "node_exporter_cron",
            vec![("instance", instance.to_owned())],
            format!("/metrics/job/node_exporter_cron/instance/{instance}"),
        ));
    }
    for day in ["mon", "tue", "wed"] {
        pushed.push((
            "backup",
            vec![("day", day.to_owned()), ("site", "eu".to_owned())],
            format!("/metrics/job/backup/site/eu/day/{day}"),
        ));
    }
    pushed.push((
        "xss",
        vec![("note", XSS.to_owned())],
        format!("/metrics/job/xss/note@base64/{xss_value}"),
    ));
    for (_, _, path) in &pushed {
        let reply = gateway.request(Method::PUT, path, BODY).await;
        assert_eq!(reply.status, StatusCode::OK, "push {path}: {}", reply.body);
    }

    // Where each group really lives, from the nodes themselves.
    let mut holder_of: BTreeMap<BTreeMap<String, String>, String> = BTreeMap::new();
    for node in &nodes {
        for group in node.groups().await {
            holder_of.insert(group, node.addr());
        }
    }
    assert_eq!(holder_of.len(), pushed.len(), "every push landed once");

    let dom = rendered_dom(format!("{}/", gateway.url())).await;
    for node in &nodes {
        assert_eq!(
            health_of(&dom, &node.addr()).as_deref(),
            Some("up"),
            "{dom}"
        );
    }
    let rows = group_rows(&dom);
    assert_eq!(rows.len(), pushed.len(), "one row per group:\n{dom}");
    for (job, grouping, _) in &pushed {
        let mut key: BTreeMap<String, String> = grouping
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect();
        key.insert("job".to_owned(), job.to_string());
        let holder = &holder_of[&key];
        let shown: Vec<String> = grouping.iter().map(|(n, v)| shown_label(n, v)).collect();
        let row = rows
            .iter()
            .find(|(row_job, row)| {
                row_job == job && shown.iter().all(|label| row.contains(label.as_str()))
            })
            .unwrap_or_else(|| panic!("no row for {key:?} in:\n{dom}"));
        assert!(
            row.1
                .contains(&format!("<span class=\"mono holder\">{holder}</span>")),
            "{key:?} shown on its node {holder}: {}",
            row.1
        );
        for other in nodes.iter().map(Pushgateway::addr).filter(|n| n != holder) {
            assert!(
                !row.1.contains(&other),
                "{key:?} shown on {other} too: {}",
                row.1
            );
        }
    }
    // The label value is text on the page, never markup: the page has no script element at all.
    assert!(
        !dom.contains("<script"),
        "a label value became markup:\n{dom}"
    );
    assert!(dom.contains("note=\"&lt;script&gt;alert(1)&lt;/script&gt;\""));
    assert!(dom.contains("<section id=\"expiry\"><h2>Group expiry<small>off</small></h2>"));
    assert!(dom.contains("<section id=\"rebalancer\">"));
    screenshot(
        format!("{}/", gateway.url()),
        output_dir().join("status-page.png"),
        900,
    )
    .await;
    // The whole page, down to the rebalancer, faults and expiry sections.
    screenshot(
        format!("{}/", gateway.url()),
        output_dir().join("status-page-full.png"),
        1900,
    )
    .await;

    // The job filter: a plain GET form, so a URL with ?job= is the filter.
    let filtered = rendered_dom(format!("{}/?job=backup", gateway.url())).await;
    let jobs: Vec<String> = group_rows(&filtered)
        .into_iter()
        .map(|(job, _)| job)
        .collect();
    assert_eq!(jobs, ["backup", "backup", "backup"], "{filtered}");
    assert!(filtered.contains("<form method=\"get\" action=\"/\">"));
    assert!(filtered.contains("name=\"job\" value=\"backup\""));

    // SIGKILL one node: once the probes notice, the page shows it down and its groups are no longer listed.
    let victim = nodes[0].addr();
    let victim_groups = holder_of
        .values()
        .filter(|holder| **holder == victim)
        .count();
    nodes[0].kill();
    wait_for_ring(&gateway, 2).await;
    let dom = rendered_dom(format!("{}/", gateway.url())).await;
    assert_eq!(health_of(&dom, &victim).as_deref(), Some("down"), "{dom}");
    for node in &nodes[1..] {
        assert_eq!(
            health_of(&dom, &node.addr()).as_deref(),
            Some("up"),
            "{dom}"
        );
    }
    assert_eq!(
        group_rows(&dom).len(),
        pushed.len() - victim_groups,
        "{dom}"
    );
    screenshot(
        format!("{}/", gateway.url()),
        output_dir().join("status-page-node-down.png"),
        900,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_answers_get_only_and_rejects_a_bad_page_number() {
    let nodes = Pushgateway::start_many(1).await;
    let gateway = Gateway::start(&config(&nodes)).await;
    wait_for_ring(&gateway, 1).await;

    let page = gateway.request(Method::GET, "/", "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(page
        .header("content-security-policy")
        .is_some_and(|csp| csp.contains("default-src 'none'")));
    assert!(page.body.contains("<section id=\"nodes\">"));

    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let reply = gateway.request(method.clone(), "/", "").await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} /");
    }
    let bad = gateway.request(Method::GET, "/?page=zero", "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("\"zero\""), "{}", bad.body);
    // The gateway keeps serving.
    assert_eq!(
        gateway.request(Method::GET, "/", "").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_a_poisoned_node_whose_reads_fail_with_its_own_error() {
    let nodes = Pushgateway::start_many(2).await;
    let gateway = Gateway::start(&config(&nodes)).await;
    wait_for_ring(&gateway, 2).await;
    // Straight to the node, bypassing the gateway: two groups whose push_time_seconds collide break its /metrics.
    let poisoned = nodes[0].addr();
    assert_eq!(
        nodes[0].push("/metrics/job/p", "a 1\n").await,
        StatusCode::OK
    );
    nodes[0]
        .push("/metrics/job/p/instance@base64/=", "a 1\n")
        .await;
    let read = gateway.request(Method::GET, "/metrics", "").await;
    assert_eq!(
        read.header("x-dynamic-sharding-missing-nodes").as_deref(),
        Some(poisoned.as_str())
    );

    let dom = rendered_dom(format!("{}/", gateway.url())).await;
    let node_row = dom
        .split(&format!("data-node=\"{poisoned}\""))
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for {poisoned}:\n{dom}"));
    assert!(node_row.contains("reads failing"), "{node_row}");
    let failures = dom
        .split("<section id=\"read-failures\">")
        .nth(1)
        .and_then(|rest| rest.split("</section>").next())
        .unwrap_or_else(|| panic!("no read-failures section:\n{dom}"));
    assert!(failures.contains(&poisoned), "{failures}");
    assert!(failures.contains("/metrics"), "{failures}");
    assert!(
        failures.contains("was collected before with the same name and label values"),
        "the node's own error: {failures}"
    );
    let other = nodes[1].addr();
    assert!(!failures.contains(&other), "{failures}");
    screenshot(
        format!("{}/", gateway.url()),
        output_dir().join("status-page-reads-failing.png"),
        900,
    )
    .await;
}
