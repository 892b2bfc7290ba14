#!/usr/bin/env bash
# Checks Troupe's observability files, offline: the Prometheus rules and their unit tests, the
# compose Prometheus config, the Grafana dashboard (schema, structure, every query through
# promtool) and the YAML style of all of them.
#   helm/troupe/files/{alerts.yaml,alerts_test.yaml,prometheus.yml,dashboard.json}
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

step "promtool check config prometheus.yml"
# Compose mounts prometheus.yml and alerts.yaml side by side in /etc/prometheus; check the config
# in a temporary copy of that layout, with the rule file's absolute path pointed into it.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/etc/prometheus"
cp "$FILES/alerts.yaml" "$tmp/etc/prometheus/alerts.yaml"
sed "s#/etc/prometheus/#$tmp/etc/prometheus/#g" "$FILES/prometheus.yml" > "$tmp/etc/prometheus/prometheus.yml"
grep -q "$tmp/etc/prometheus/alerts.yaml" "$tmp/etc/prometheus/prometheus.yml" \
  || { echo "prometheus.yml does not load /etc/prometheus/alerts.yaml" >&2; exit 1; }
promtool check config "$tmp/etc/prometheus/prometheus.yml"

step "dashboard_check.py (static)"
"$TROUPE_TOOLS_VENV/bin/python" "$ROOT/scripts/checks/dashboard_check.py"

step "yamllint"
yaml_files=(
  "$FILES/alerts.yaml"
  "$FILES/alerts_test.yaml"
  "$FILES/prometheus.yml"
  "$ROOT/deploy/grafana/provisioning/datasources/prometheus.yaml"
  "$ROOT/deploy/grafana/provisioning/dashboards/troupe.yaml"
)
if [ -f "$ROOT/.yamllint.yaml" ]; then
  yamllint --strict -c "$ROOT/.yamllint.yaml" "${yaml_files[@]}"
else
  yamllint --strict -d '{extends: default, rules: {line-length: {max: 160}, document-start: disable}}' "${yaml_files[@]}"
fi

step "observability checks passed"
