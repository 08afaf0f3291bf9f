#!/usr/bin/env bash
# The one test command: installs what the integration tests start (scripts/install-test-deps.sh), then runs every
# test target of the workspace. Extra arguments go to `cargo test`, e.g. `scripts/test.sh --test harness_smoke` or
# `scripts/test.sh grouping`.
#
# `--all-targets` also builds the criterion benches and runs them in criterion's test mode (each benchmark once),
# which checks they still work without measuring anything. The crate has no doc tests.
# The last line is the total over every test binary: "N passed, N failed, N skipped".
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

bash scripts/install-test-deps.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "\n%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
