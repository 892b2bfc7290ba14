#!/usr/bin/env bash
# Measures Troupe on this machine and writes DIR/bench.json:
#   (a) env steps/s of one actor's bare loop (env + policy forward, one process, no network);
#   (b) env steps/s of one actor streaming to the learner;
#   (c) frames/s consumed by the learner with 2 actors, and the time to solve CartPole-v1.
# Ratios (b/a, c/b) are taken within this one run, so they hold on a noisy machine.
#
#   scripts/bench.sh [--out DIR] [--seconds N]
set -euo pipefail
source "$(dirname "$0")/setup.sh"
OUT=out/bench
SECONDS_PER=15
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --seconds) SECONDS_PER=$2; shift 2 ;;
    *) echo "bench.sh: unknown argument $1 (expected --out, --seconds)" >&2; exit 64 ;;
  esac
done
troupe_setup
mkdir -p "$OUT"
cd "$TROUPE_ROOT"
a=$(cargo bench --workspace --bench bare_loop -- "$SECONDS_PER" 2>/dev/null | grep '^{')
bc=$(cargo bench --workspace --bench cluster -- "$SECONDS_PER" 2>/dev/null | grep '^{')
python3 - "$OUT/bench.json" "$a" "$bc" <<'PY'
import json, os, platform, sys
path, a, bc = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {
    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    "a_bare_loop_env_steps_per_s": a["env_steps_per_s"],
    "b_one_actor_streaming_env_steps_per_s": bc["one_actor_env_steps_per_s"],
    "c_learner_frames_per_s": bc["two_actor_learner_frames_per_s"],
    "c_time_to_solve_s": bc["time_to_solve_s"],
    "c_frames_to_solve": bc["frames_to_solve"],
    "ratio_b_over_a": bc["one_actor_env_steps_per_s"] / a["env_steps_per_s"],
    "ratio_c_over_b": bc["two_actor_learner_frames_per_s"] / bc["one_actor_env_steps_per_s"],
    "detail": {"bare_loop": a, "cluster": bc},
}
json.dump(out, open(path, "w"), indent=2)
print(f"(a) bare loop:            {out['a_bare_loop_env_steps_per_s']:>12,.0f} env steps/s")
print(f"(b) one actor streaming:  {out['b_one_actor_streaming_env_steps_per_s']:>12,.0f} env steps/s  (b/a = {out['ratio_b_over_a']:.2f})")
print(f"(c) learner, 2 actors:    {out['c_learner_frames_per_s']:>12,.0f} frames/s     (c/b = {out['ratio_c_over_b']:.2f})")
print(f"    time to solve:        {out['c_time_to_solve_s']:>12.1f} s ({out['c_frames_to_solve']:,} frames)")
print(f"wrote {path}")
PY
