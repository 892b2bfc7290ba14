#!/usr/bin/env bash
# The wiring check (scripts/checks/wiring.py): runs the Helm chart's (values-cpu.yaml) and the
# compose file's workloads as local processes with the release binaries, after checking every
# flag, variable, port, Service and probe they wire together; a self-test first proves that broken
# copies of the manifests fail. Needs the release binaries ($CARGO_TARGET_DIR/release; this script
# builds nothing) and redis-server. Installs the pinned deployment tools on first use.
# Usage: scripts/checks/wiring.sh [--self-test | --only chart|compose] [--timeout S] [--keep-logs DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
troupe_install_deploy_tools
troupe_install_redis
exec "$TROUPE_TOOLS_VENV/bin/python" "$ROOT/scripts/checks/wiring.py" "$@"
