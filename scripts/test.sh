#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the cluster tests in tests/, which
# start Redis and the real binaries. Installs what it needs on first use (torch venv, redis).
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
source "$(dirname "$0")/setup.sh"
troupe_setup
troupe_install_promtool
cd "$TROUPE_ROOT"
# Cluster tests start several processes each; run the test binaries one at a time (cargo's
# default) and keep a failure in one from hiding the others.
cargo test --release --workspace --no-fail-fast "$@"
