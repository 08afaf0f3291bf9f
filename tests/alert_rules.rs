//! `examples/alerts.yml` with Debian's `promtool` (package `prometheus`, `/usr/bin/promtool`; another binary with
//! `$DS_PROMTOOL_BIN`): the rules are valid, their unit tests (`examples/alerts.test.yml`) fire and stay silent
//! where they should, and every gateway metric they use is one the gateway registers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str]) -> String {
    let binary = std::env::var_os("DS_PROMTOOL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("promtool"));
    let output = Command::new(&binary)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {} ({error}): install Debian's prometheus package (scripts/install-test-deps.sh)",
                binary.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        output.status
    );
    text
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    let output = promtool(&["check", "rules", "examples/alerts.yml"]);
    assert!(output.contains("SUCCESS"), "{output}");
}

#[test]
fn alert_rules_fire_on_synthetic_series_as_their_unit_tests_expect() {
    let output = promtool(&["test", "rules", "examples/alerts.test.yml"]);
    assert!(output.contains("SUCCESS"), "{output}");
}

/// The metric names (`dynamic_sharding_...`) used outside comments, without the `_total` a counter's samples
/// carry.
fn metrics_used_by_rules(rules: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in rules.lines() {
        let line = line.trim_start();
        if line.starts_with('#') || !line.starts_with("expr:") {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("dynamic_sharding_") {
            let tail = &rest[start + "dynamic_sharding_".len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            names.insert(name.strip_suffix("_total").unwrap_or(name).to_owned());
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn alert_rules_use_only_metrics_the_gateway_registers() {
    let rules =
        std::fs::read_to_string(repo().join("examples/alerts.yml")).expect("examples/alerts.yml");
    let telemetry =
        std::fs::read_to_string(repo().join("src/telemetry.rs")).expect("src/telemetry.rs");
    let used = metrics_used_by_rules(&rules);
    assert!(used.len() >= 8, "the rules use {used:?}");
    for name in &used {
        // Registered as `registry.register("<name>", ...)`, the prefix added by the registry.
        assert!(
            telemetry.contains(&format!("\"{name}\",")),
            "examples/alerts.yml uses dynamic_sharding_{name}, which src/telemetry.rs does not register"
        );
    }
}
