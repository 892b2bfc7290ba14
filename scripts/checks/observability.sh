#!/usr/bin/env bash
# Checks Troupe's observability files, offline: the Prometheus rules and their unit tests, the
# compose Prometheus configs (prometheus.yml; prometheus-teams.yml, one learner per policy for
# compose.teams.yaml, which must equal prometheus.yml but for its learner targets and run name;
# both with and without compose.replay.yaml's replay target file, prometheus-replay-targets.yml),
# the Grafana dashboard (schema, structure, every query through promtool, every metric in
# docs/METRICS.md, a policy filter wherever the metric has a policy label) and the YAML style of
# all of them.
#   helm/troupe/files/{alerts.yaml,alerts_test.yaml,prometheus.yml,prometheus-teams.yml,
#                      prometheus-replay-targets.yml,dashboard.json}
#   deploy/grafana/provisioning/**
# Needs promtool (Debian's prometheus package) and the deployment tools from scripts/setup.sh
# (yamllint; jsonschema in the tools venv). Usage: scripts/checks/observability.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
troupe_install_deploy_tools
troupe_install_promtool

FILES="$ROOT/helm/troupe/files"
step() { printf '\n== %s\n' "$*" >&2; }

step "promtool check rules alerts.yaml"
promtool check rules "$FILES/alerts.yaml"

step "promtool test rules alerts_test.yaml"
# The test file names its rule file relative to itself.
(cd "$FILES" && promtool test rules alerts_test.yaml)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/etc/prometheus"
cp "$FILES/alerts.yaml" "$tmp/etc/prometheus/alerts.yaml"
for config in prometheus.yml prometheus-teams.yml; do
  step "promtool check config $config"
  # Compose mounts the config and alerts.yaml side by side in /etc/prometheus; check the config
  # in a temporary copy of that layout, with the rule file's absolute path pointed into it.
  sed "s#/etc/prometheus/#$tmp/etc/prometheus/#g" "$FILES/$config" > "$tmp/etc/prometheus/prometheus.yml"
  grep -q "$tmp/etc/prometheus/alerts.yaml" "$tmp/etc/prometheus/prometheus.yml" \
    || { echo "$config does not load /etc/prometheus/alerts.yaml" >&2; exit 1; }
  promtool check config "$tmp/etc/prometheus/prometheus.yml"
  step "promtool check config $config with compose.replay.yaml's replay target file"
  cp "$FILES/prometheus-replay-targets.yml" "$tmp/etc/prometheus/replay-targets.yml"
  promtool check config "$tmp/etc/prometheus/prometheus.yml"
  rm "$tmp/etc/prometheus/replay-targets.yml"
done

step "prometheus-teams.yml is prometheus.yml with one learner target per policy"
"$TROUPE_TOOLS_VENV/bin/python" - "$FILES/prometheus.yml" "$FILES/prometheus-teams.yml" "$FILES/prometheus-replay-targets.yml" <<'PY'
import copy, sys, yaml
base, teams = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
def normal(cfg):
    """The config with the run name and the learner targets taken out."""
    cfg = copy.deepcopy(cfg)
    for job in cfg["scrape_configs"]:
        for r in job.get("relabel_configs", []):
            if r.get("target_label") == "run":
                r["replacement"] = "RUN"
        if job["job_name"] == "troupe-learner":
            job["static_configs"] = "LEARNERS"
    return cfg
def learner_job(cfg):
    return next(j for j in cfg["scrape_configs"] if j["job_name"] == "troupe-learner")
errors = []
if normal(base) != normal(teams):
    errors.append("prometheus-teams.yml differs from prometheus.yml in more than the learner targets and the run name")
if learner_job(base)["static_configs"] != [{"targets": ["learner:9102"]}]:
    errors.append("prometheus.yml: the learner job must scrape learner:9102 (compose.yaml's `learner`)")
if learner_job(teams)["static_configs"] != [{"targets": ["learner-agent_0:9102", "learner-agent_1:9102"]}]:
    errors.append("prometheus-teams.yml: the learner job must scrape learner-agent_0:9102 and learner-agent_1:9102")
runs = {r["replacement"] for j in teams["scrape_configs"] for r in j.get("relabel_configs", []) if r.get("target_label") == "run"}
if runs != {"lbf-two-teams"}:
    errors.append(f"prometheus-teams.yml: run labels {sorted(runs)}, want lbf-two-teams (configs/lbf-two-teams.toml)")
if not learner_job(base).get("honor_labels"):
    errors.append("the learner job needs honor_labels: true (learners label their own series with policy)")
# Replay on its own (compose.replay.yaml): job troupe-replay, its target from the file that only
# compose.replay.yaml mounts, so the default stack has no replay target (and no alert about it).
replay_job = next((j for j in base["scrape_configs"] if j["job_name"] == "troupe-replay"), {})
if replay_job.get("file_sd_configs") != [{"files": ["/etc/prometheus/replay-targets*.yml"]}] or "static_configs" in replay_job:
    errors.append("prometheus.yml: job troupe-replay must take its targets only from /etc/prometheus/replay-targets*.yml (file_sd)")
replay_targets = yaml.safe_load(open(sys.argv[3]))
if replay_targets != [{"targets": ["replay:9103"]}]:
    errors.append(f"prometheus-replay-targets.yml: {replay_targets}, want one group with replay:9103 (compose.yaml's replay --metrics-listen)")
if errors:
    sys.exit("\n".join(errors))
print("prometheus-teams.yml: prometheus.yml with learner-agent_0 and learner-agent_1, run lbf-two-teams")
PY

step "dashboard_check.py (static)"
"$TROUPE_TOOLS_VENV/bin/python" "$ROOT/scripts/checks/dashboard_check.py"

step "yamllint"
yaml_files=(
  "$FILES/alerts.yaml"
  "$FILES/alerts_test.yaml"
  "$FILES/prometheus.yml"
  "$FILES/prometheus-teams.yml"
  "$FILES/prometheus-replay-targets.yml"
  "$ROOT/deploy/grafana/provisioning/datasources/prometheus.yaml"
  "$ROOT/deploy/grafana/provisioning/dashboards/troupe.yaml"
)
if [ -f "$ROOT/.yamllint.yaml" ]; then
  yamllint --strict -c "$ROOT/.yamllint.yaml" "${yaml_files[@]}"
else
  yamllint --strict -d '{extends: default, rules: {line-length: {max: 160}, document-start: disable}}' "${yaml_files[@]}"
fi

step "observability checks passed"
