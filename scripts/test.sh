#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the cluster tests in tests/, which
# start Redis and the real binaries, then the deployment checks (scripts/check_deploy.sh).
# Installs what it needs on first use (torch venv, redis, the checks' tools).
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
source "$(dirname "$0")/setup.sh"
troupe_setup
troupe_install_promtool
cd "$TROUPE_ROOT"
# Cluster tests start several processes each; run the test binaries one at a time (cargo's
# default) and keep a failure in one from hiding the others.
status=0
cargo test --release --workspace --no-fail-fast "$@" || status=$?
# Then the deployment artefacts (chart, compose, Dockerfile, alerts, dashboard), with the real
# tools, and a live Prometheus against a local cluster; a failure there fails the suite too.
scripts/check_deploy.sh || status=$((status == 0 ? 1 : status))
exit "$status"
