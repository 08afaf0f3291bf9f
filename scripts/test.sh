#!/usr/bin/env bash
# The one test command: installs what the integration tests start (scripts/install-test-deps.sh), then runs every
# test target. Extra arguments go to `cargo test`, e.g. `scripts/test.sh --test harness_smoke` or
# `scripts/test.sh grouping`. Without arguments the doc tests run too (cargo test --all-targets skips them).
#
# `--all-targets` also builds the criterion benches and runs them in criterion's test mode (each benchmark once),
# which checks they still work without measuring anything.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

bash scripts/install-test-deps.sh
cargo test --locked --workspace --all-targets "$@"
if [[ $# -eq 0 ]]; then
    cargo test --locked --workspace --doc
fi
