# Sourced by the scripts: where Troupe caches its toolchain pieces, and the build environment.
# Everything expensive lives under ~/.cache/troupe, keyed by version, so a repeat run is fast and
# a fresh machine still works.
TORCH_VERSION=2.11.0
TROUPE_CACHE=${TROUPE_CACHE:-$HOME/.cache/troupe}
TROUPE_VENV=$TROUPE_CACHE/torch-$TORCH_VERSION
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TROUPE_CACHE/target}
export LIBTORCH_USE_PYTORCH=1
export PATH="$TROUPE_VENV/bin:$PATH"
if [ -d "$TROUPE_VENV" ]; then
  export LD_LIBRARY_PATH="$("$TROUPE_VENV/bin/python3" -c 'import os,torch;print(os.path.join(os.path.dirname(torch.__file__),"lib"))' 2>/dev/null):${LD_LIBRARY_PATH:-}"
fi
