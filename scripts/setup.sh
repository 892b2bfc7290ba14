# Sourced by train.sh, test.sh and bench.sh: installs what Troupe needs on a fresh machine and
# sets up the build environment. Idempotent and cached under ~/.cache/troupe (keyed by version).
#   - libtorch: PyPI torch==2.11.0 in a venv (tch 0.24.0 expects exactly this version);
#   - redis-server: Debian's package, via apt, if missing;
#   - a release build of the workspace (cargo's target dir is cached too).
set -euo pipefail
TROUPE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$TROUPE_ROOT/scripts/env.sh"

troupe_log() { printf '[troupe] %s\n' "$*" >&2; }

troupe_install_torch() {
  if [ -f "$TROUPE_VENV/.complete" ]; then return; fi
  troupe_log "installing torch==$TORCH_VERSION into $TROUPE_VENV (once; ~5 GB)"
  rm -rf "$TROUPE_VENV"
  mkdir -p "$TROUPE_CACHE"
  python3 -m venv "$TROUPE_VENV"
  "$TROUPE_VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" "safetensors>=0.4" numpy
  touch "$TROUPE_VENV/.complete"
}

# The Python packages hosted envs import (gymnasium, minatar, ale-py...), pinned, in their own
# venv keyed by the requirements file's hash. The actor embeds CPython and finds them through
# PYTHONPATH; the tests compare native envs against Gymnasium with this venv's python.
troupe_install_envs() {
  if [ -f "$TROUPE_ENVS_VENV/.complete" ]; then return; fi
  troupe_log "installing hosted-env packages into $TROUPE_ENVS_VENV (once)"
  rm -rf "$TROUPE_ENVS_VENV"
  mkdir -p "$TROUPE_CACHE"
  python3 -m venv "$TROUPE_ENVS_VENV"
  "$TROUPE_ENVS_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$TROUPE_ROOT/scripts/requirements-envs.txt"
  touch "$TROUPE_ENVS_VENV/.complete"
}

troupe_install_redis() {
  if command -v redis-server >/dev/null 2>&1; then return; fi
  troupe_log "installing redis-server (apt)"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
}

# promtool lints the /metrics output in the tests (Debian's prometheus package ships it).
troupe_install_promtool() {
  if command -v promtool >/dev/null 2>&1; then return; fi
  troupe_log "installing promtool (apt: prometheus)"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}

troupe_build() {
  troupe_log "building (release; target dir $CARGO_TARGET_DIR)"
  (cd "$TROUPE_ROOT" && cargo build --release --workspace --bins "$@")
  TROUPE_BIN="$CARGO_TARGET_DIR/release"
}

troupe_setup() {
  troupe_install_torch
  troupe_install_envs
  troupe_install_redis
  troupe_build "$@"
}
