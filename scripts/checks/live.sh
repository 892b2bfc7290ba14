#!/usr/bin/env bash
# The live check (scripts/checks/live.py): a local cluster (Redis, coordinator, learner, 2 actors)
# scraped by a real Prometheus with helm/troupe/files/prometheus.yml's jobs and alerts.yaml;
# checks promtool's lint of every /metrics, frame rates through PromQL, every dashboard query
# (dashboard_check.py --live) and the rules' health. Needs the release binaries
# ($CARGO_TARGET_DIR/release; this script builds nothing). Installs the pinned tools on first use.
# --teams: configs/lbf-two-teams.toml with one learner per policy, and one of them killed.
# Usage: scripts/checks/live.sh [--teams] [--deadline S] [--keep-logs DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
troupe_install_deploy_tools
troupe_install_redis
troupe_install_promtool
exec "$TROUPE_TOOLS_VENV/bin/python" "$ROOT/scripts/checks/live.py" "$@"
