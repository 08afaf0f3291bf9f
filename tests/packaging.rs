//! `deploy/systemd/dynamic-sharding.service` as systemd itself reads it: `systemd-analyze verify` finds nothing to
//! complain about (with `ExecStart` pointing at the binary cargo built), and `systemd-analyze security` rates its
//! sandboxing. `systemd-analyze` comes with Debian's `systemd` package (scripts/install-test-deps.sh); neither
//! command needs a running systemd.

use std::path::Path;
use std::process::Command;

const UNIT: &str = "dynamic-sharding.service";
/// `systemd-analyze security` rates exposure from 0 (locked down) to 10; "OK" ends at 2.
const MAX_EXPOSURE: f64 = 2.0;

/// The unit, with the installed binary's path replaced by the one cargo built, in a fresh directory.
fn unit_under_test() -> tempfile::TempDir {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit =
        std::fs::read_to_string(repo.join("deploy/systemd").join(UNIT)).expect("the unit file");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/dynamic-sharding "),
        "{unit}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit.replace(
        "/usr/local/bin/dynamic-sharding",
        env!("CARGO_BIN_EXE_dynamic-sharding"),
    );
    std::fs::write(dir.path().join(UNIT), unit).expect("write the unit");
    dir
}

fn systemd_analyze(args: &[&str], dir: &Path) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run systemd-analyze ({error}): install Debian's systemd package (scripts/install-test-deps.sh)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_without_a_warning() {
    let dir = unit_under_test();
    // An unknown or unparsable setting is only a warning (exit 0), so the output must be empty too.
    let (ok, output) = systemd_analyze(&["verify", UNIT], dir.path());
    assert!(
        ok && output.trim().is_empty(),
        "systemd-analyze verify {UNIT}:\n{output}"
    );
}

#[test]
fn systemd_unit_reloads_with_sighup_and_is_sandboxed() {
    let dir = unit_under_test();
    let unit = std::fs::read_to_string(dir.path().join(UNIT)).expect("the unit");
    assert!(
        unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"),
        "{unit}"
    );
    let (ok, output) = systemd_analyze(
        &["security", "--offline=yes", "--no-pager", UNIT],
        dir.path(),
    );
    assert!(ok, "systemd-analyze security {UNIT}:\n{output}");
    let exposure: f64 = output
        .split("Overall exposure level for ")
        .nth(1)
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{output}"));
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{output}"
    );
}
