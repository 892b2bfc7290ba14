#!/usr/bin/env bash
# The deployment checks, each with the real tool (scripts/test.sh runs them after the Rust tests):
#   chart.sh          helm lint --strict, helm template | kubernetes-validate --strict, yamllint,
#                     the prometheus-operator objects against their schemas, schema negatives;
#                     one learner (StatefulSet, Service, claim, --policy) per policy for the
#                     two-policy values (ci/lbf-two-teams-values.yaml); replay on its own for
#                     ci/separate-replay-values.yaml (a `coordinator --role replay` Deployment with
#                     its Service, probes, tokens and Redis shards, the coordinator at --role
#                     coordinator, a troupe-replay ServiceMonitor);
#   observability.sh  promtool check/test rules (per-policy alerts tested with two policies; the
#                     replay alerts firing and quiet), promtool check config on both compose
#                     Prometheus configs (with and without replay's target file), the dashboard's
#                     schema, every panel's PromQL, its metrics in docs/METRICS.md, its policy
#                     filters and a Replay row that shows every troupe_replay_* metric;
#   images.sh         hadolint on the Dockerfile, docker-compose config -q on every compose file
#                     (compose.teams.yaml: a learner service per policy; compose.replay.yaml:
#                     replay as its own service, `--role replay`, the coordinator at --role
#                     coordinator, its Redis shard and Prometheus target);
#   wiring.py         the chart's and compose's workloads started as local processes: they train;
#   live.py           a local cluster scraped by a real Prometheus: promtool check metrics, a
#                     non-zero frames rate, every dashboard query, the alert rules loaded;
#   live.py --teams   the same with configs/lbf-two-teams.toml, one learner per policy; then one
#                     learner is killed: its policy's TroupeLearnerDown alone fires, the other
#                     policy trains on.
# Installs the tools on first use (scripts/setup.sh, cached under ~/.cache/troupe). Runs every
# check and fails if any failed.
set -uo pipefail
source "$(dirname "$0")/setup.sh"
set -e
troupe_install_deploy_tools
troupe_install_promtool
troupe_install_redis
set +e
cd "$TROUPE_ROOT"
TROUPE_BIN=${TROUPE_BIN:-$CARGO_TARGET_DIR/release}
export TROUPE_BIN
failed=()
run_check() {
  local name=$1; shift
  troupe_log "deploy check: $name"
  if ! "$@"; then failed+=("$name"); troupe_log "deploy check FAILED: $name"; fi
}
run_check chart bash scripts/checks/chart.sh
run_check observability bash scripts/checks/observability.sh
run_check images bash scripts/checks/images.sh
run_check wiring "$TROUPE_TOOLS_VENV/bin/python" scripts/checks/wiring.py
run_check live "$TROUPE_TOOLS_VENV/bin/python" scripts/checks/live.py
run_check live-teams "$TROUPE_TOOLS_VENV/bin/python" scripts/checks/live.py --teams
if [ ${#failed[@]} -gt 0 ]; then
  troupe_log "deploy checks failed: ${failed[*]}"
  exit 1
fi
troupe_log "deploy checks passed"
