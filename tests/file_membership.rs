//! `file_sd` with real files: the ring follows a target file as it is rewritten (noticed by inotify well before
//! the refresh interval), and a broken file keeps its last targets, says why (log, `/-/ring`, metric) and is
//! picked up again once fixed; the status page shows the broken file and its error.

mod common;

use std::path::Path;
use std::time::Duration;

use common::placement::*;
use common::*;
use reqwest::Method;

fn targets_json(nodes: &[&Pushgateway]) -> String {
    let targets: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    format!(
        "[{{\"targets\": [{}], \"labels\": {{\"env\": \"test\"}}}}]\n",
        targets.join(", ")
    )
}

/// Replaces `path` in one step (write a sibling, rename), as config management tools do.
fn replace_file(path: &Path, contents: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents).expect("write the new targets");
    std::fs::rename(&temporary, path).expect("rename the targets into place");
}

fn config(dir: &Path) -> String {
    // A refresh interval far beyond the test's deadlines: only the file watch can make it pass.
    format!(
        "file_sd:\n  files: ['{}/*.json', '{}/more.yml']\n  refresh_interval: 10m\n\
         health_check: {{interval: 500ms, timeout: 400ms, unhealthy_threshold: 2, healthy_threshold: 1}}\n\
         rebalance: {{interval: 1s}}\n",
        dir.display(),
        dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_follows_a_rewritten_file_and_a_broken_one_keeps_its_last_targets() {
    let nodes = Pushgateway::start_many(3).await;
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    // A directory name with markup in it: the status page shows file names, escaped.
    let dir = tempfile::Builder::new()
        .prefix("ds-test-file-sd-<i>&")
        .tempdir()
        .expect("temp dir");
    let main_file = dir.path().join("pushgateways.json");
    std::fs::write(&main_file, targets_json(&[a, b])).expect("write targets");
    let gateway = Gateway::start(&config(dir.path())).await;
    wait_for_ring(&gateway, &[a, b]).await;
    assert_eq!(gateway.ring().await["membership"]["source"], "file_sd");

    // Rewritten: the new target joins, the removed one leaves (and is drained).
    let path = "/metrics/job/file/instance/one";
    assert_eq!(
        gateway
            .request(Method::PUT, path, "# TYPE file_value gauge\nfile_value 1\n")
            .await
            .status,
        200
    );
    replace_file(&main_file, &targets_json(&[b, c]));
    wait_for_ring(&gateway, &[b, c]).await;
    let owner = gateway.owner_of(path).await;
    let owners = [(labels(&[("job", "file"), ("instance", "one")]), owner)].into();
    wait_until_every_group_is_once_on_its_owner(&[a, b, c], &owners).await;

    // A second file (YAML) adds its targets to the first one's.
    std::fs::write(
        dir.path().join("more.yml"),
        format!("- targets: ['{}']\n", a.addr()),
    )
    .expect("write more.yml");
    wait_for_ring(&gateway, &[a, b, c]).await;

    // Broken JSON: its last targets stay, the error is shown and counted.
    replace_file(&main_file, "[{\"targets\": [\"127.0.0.1:1\"");
    wait_until(secs(30), Duration::from_millis(100), || async {
        gateway.ring().await["membership"]["detail"]["discovery"]["failing_since"].is_string()
    })
    .await
    .expect("the broken file shows in /-/ring");
    let ring = gateway.ring().await;
    let last_error = ring["membership"]["detail"]["discovery"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        last_error.contains("pushgateways.json") && last_error.contains("invalid JSON"),
        "{last_error}"
    );
    wait_for_ring(&gateway, &[a, b, c]).await;
    let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    assert!(
        metric_sum(
            &metrics,
            "dynamic_sharding_membership_discovery_failures_total{source=\"file_sd\""
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        gateway.log_text().contains("invalid JSON"),
        "logged with the reason"
    );
    // The status page says the same: the source, that it is failing, since when, the last success, and the
    // broken file with its own error.
    let section = gateway.status_page_section("membership").await;
    assert!(
        section.starts_with(" data-source=\"file_sd\" data-state=\"failing\">"),
        "{section}"
    );
    assert!(
        section.contains("last look-up failed</span> since 20"),
        "{section}"
    );
    assert!(
        section.contains("<dd id=\"discovery-last-success\">20"),
        "{section}"
    );
    let shown_file = main_file
        .display()
        .to_string()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let failing_row = section
        .split("<tr class=\"failing-part\">")
        .nth(1)
        .unwrap_or_else(|| panic!("no failing part:\n{section}"));
    assert!(
        failing_row.starts_with(&format!(
            "<td class=\"mono\">{shown_file}</td><td class=\"err\">invalid JSON"
        )),
        "{failing_row}"
    );
    assert!(
        !section.contains("<i>"),
        "a file name became markup:\n{section}"
    );

    // Fixed: read again at once; the failure is over.
    replace_file(&main_file, &targets_json(&[b]));
    wait_until(secs(30), Duration::from_millis(100), || async {
        gateway.ring().await["membership"]["detail"]["discovery"]["failing_since"].is_null()
    })
    .await
    .expect("the fixed file is read again");
    wait_for_ring(&gateway, &[a, b]).await;
}
