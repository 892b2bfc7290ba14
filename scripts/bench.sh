#!/usr/bin/env bash
# Measures Troupe on this machine and writes DIR/bench.json:
#   (a) env steps/s of one actor's bare loop (env + policy forward, one process, no network);
#   (b) env steps/s of one actor streaming to the learner;
#   (c) frames/s consumed by the learner with 2 actors, and the time to solve CartPole-v1.
# Ratios (b/a, c/b) are taken within this one run, so they hold on a noisy machine.
# Then, beside v0's keys (docs/BENCHMARKS.md names them all):
#   native_env_steps_per_s / gymnasium_env_steps_per_s / envpool_env_steps_per_s: raw stepping
#     of each native env, of the same env in Gymnasium's Python loop, and in EnvPool;
#   host_bare_loop_env_steps_per_s vs gymnasium_sync_vector_env_steps_per_s: the actor's bare
#     loop on Python-hosted CartPole against Gymnasium's own vector-env loop;
#   minatar_breakout_frames_per_s, pong_frames_per_s: end-to-end learner frames/s on pixels;
#   cartpole_solve: {"appo": {...}, "impala": {...}}, 5 seeds each through train.sh (median,
#     min and max frames, median seconds from the first trained frame and from launch);
#   thresholds: Acrobot, Pendulum and MinAtar Breakout (10) once each, curves in DIR/curves;
#   teams: the multi-agent configs once each (lbf-coop native and lbf-coop-python to 0.9,
#     simple-spread, lbf-two-teams), frames and seconds to their targets;
#   lbforaging_env_steps_per_s: lbforaging 2.0.0's Python loop (native_env_steps_per_s has the
#     Rust LBF beside it);
#   replay_vs_redis_ratio(_2_shards): 4 KiB items inserted and sampled through the replay
#     service against redis-benchmark SET/GET on the same Redis (tests/benches/replay.rs);
#   learner_update: update ms and frames/s against libtorch intra-op threads (1, 2; CUDA too
#     where there is one).
#
#   scripts/bench.sh [--out DIR] [--seconds N] [--skip-pixels] [--skip-solve]
set -euo pipefail
source "$(dirname "$0")/setup.sh"
OUT=out/bench
SECONDS_PER=15
PIXELS=1
SOLVE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --seconds) SECONDS_PER=$2; shift 2 ;;
    --skip-pixels) PIXELS=0; shift ;;
    --skip-solve) SOLVE=0; shift ;;
    *) echo "bench.sh: unknown argument $1 (expected --out, --seconds, --skip-pixels, --skip-solve)" >&2; exit 64 ;;
  esac
done
troupe_setup
mkdir -p "$OUT"
cd "$TROUPE_ROOT"
a=$(cargo bench --workspace --bench bare_loop -- "$SECONDS_PER" 2>/dev/null | grep '^{')
bc=$(cargo bench --workspace --bench cluster -- "$SECONDS_PER" 2>/dev/null | grep '^{')
native=$(cargo bench -p troupe --bench native_envs -- 3 2>/dev/null | grep '^{')
gym=$("$TROUPE_PYTHON" "$TROUPE_ROOT/scripts/bench_envs.py" 3 16 | grep '^{')
host=$(cargo bench -p actor --bench bare_loop -- "$SECONDS_PER" "$TROUPE_ROOT/configs/cartpole-gymnasium.toml" 2>/dev/null | grep '^{')
minatar='null'
pong='null'
if [ "$PIXELS" = 1 ]; then
  minatar=$(cargo bench -p tests --bench throughput -- 60 configs/minatar-breakout.toml 2>/dev/null | grep '^{')
  pong=$(cargo bench -p tests --bench throughput -- 60 configs/pong.toml 2>/dev/null | grep '^{')
fi
update=$(cargo bench -p learner --bench update -- 5 1 2 2>/dev/null | grep '^{')
replay=$(cargo bench -p tests --bench replay -- "$SECONDS_PER" 2>/dev/null | grep '^{')
solve='{"cartpole_solve": null, "thresholds": null, "teams": null}'
if [ "$SOLVE" = 1 ]; then
  solve=$(python3 "$TROUPE_ROOT/scripts/bench_solve.py" "$OUT" | grep '^{')
fi
python3 - "$OUT/bench.json" "$a" "$bc" "$native" "$gym" "$host" "$minatar" "$pong" "$update" "$solve" "$replay" <<'PY'
import json, os, platform, sys
path, a, bc = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
native, gym, host = json.loads(sys.argv[4]), json.loads(sys.argv[5]), json.loads(sys.argv[6])
minatar, pong = json.loads(sys.argv[7]), json.loads(sys.argv[8])
update, solve = json.loads(sys.argv[9]), json.loads(sys.argv[10])
replay = json.loads(sys.argv[11])
out = {
    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    "a_bare_loop_env_steps_per_s": a["env_steps_per_s"],
    "b_one_actor_streaming_env_steps_per_s": bc["one_actor_env_steps_per_s"],
    "c_learner_frames_per_s": bc["two_actor_learner_frames_per_s"],
    "c_time_to_solve_s": bc["time_to_solve_s"],
    "c_frames_to_solve": bc["frames_to_solve"],
    "ratio_b_over_a": bc["one_actor_env_steps_per_s"] / a["env_steps_per_s"],
    "ratio_c_over_b": bc["two_actor_learner_frames_per_s"] / bc["one_actor_env_steps_per_s"],
    "native_env_steps_per_s": native["env_steps_per_s"],
    "gymnasium_env_steps_per_s": gym["gymnasium"],
    "envpool_env_steps_per_s": gym["envpool"],
    "native_over_gymnasium": {k: v / gym["gymnasium"][k] for k, v in native["env_steps_per_s"].items() if k in gym["gymnasium"]},
    "native_over_lbforaging": {k: v / gym["lbforaging"][k] for k, v in native["env_steps_per_s"].items() if k in gym.get("lbforaging", {})},
    "host_bare_loop_env_steps_per_s": host["env_steps_per_s"],
    "gymnasium_sync_vector_env_steps_per_s": gym["gymnasium_sync_vector"]["env_steps_per_s"],
    "host_over_sync_vector": host["env_steps_per_s"] / gym["gymnasium_sync_vector"]["env_steps_per_s"],
    "minatar_breakout_frames_per_s": minatar and minatar["learner_frames_per_s"],
    "pong_frames_per_s": pong and pong["learner_frames_per_s"],
    "cartpole_solve": solve["cartpole_solve"],
    "thresholds": solve["thresholds"],
    "teams": solve.get("teams"),
    "replay_vs_redis_ratio": replay["replay_vs_redis_ratio"],
    "replay_vs_redis_ratio_2_shards": replay["replay_vs_redis_ratio_2_shards"],
    "replay": replay,
    "lbforaging_env_steps_per_s": gym.get("lbforaging"),
    "learner_update": update,
    "detail": {"bare_loop": a, "cluster": bc, "native_envs": native, "gymnasium_envs": gym, "host_bare_loop": host, "minatar_breakout": minatar, "pong": pong},
}
json.dump(out, open(path, "w"), indent=2)
print(f"(a) bare loop:            {out['a_bare_loop_env_steps_per_s']:>12,.0f} env steps/s")
print(f"(b) one actor streaming:  {out['b_one_actor_streaming_env_steps_per_s']:>12,.0f} env steps/s  (b/a = {out['ratio_b_over_a']:.2f})")
print(f"(c) learner, 2 actors:    {out['c_learner_frames_per_s']:>12,.0f} frames/s     (c/b = {out['ratio_c_over_b']:.2f})")
print(f"    time to solve:        {out['c_time_to_solve_s']:>12.1f} s ({out['c_frames_to_solve']:,} frames)")
for k, v in out["native_env_steps_per_s"].items():
    ep = out["envpool_env_steps_per_s"].get(k, {})
    ep_txt = f", envpool x1 {ep['num_envs_1']:>9,.0f}, x16 {ep['num_envs_16']:>9,.0f}" if ep else ""
    print(f"{k:<26} native {v:>12,.0f} steps/s, gymnasium {out['gymnasium_env_steps_per_s'][k]:>10,.0f} ({out['native_over_gymnasium'][k]:.0f}x){ep_txt}")
print(f"host bare loop (Gymnasium CartPole x16): {out['host_bare_loop_env_steps_per_s']:,.0f} steps/s; SyncVectorEnv x16: {out['gymnasium_sync_vector_env_steps_per_s']:,.0f} ({out['host_over_sync_vector']:.2f})")
if minatar:
    print(f"MinAtar Breakout (cnn), learner frames/s: {out['minatar_breakout_frames_per_s']:,.0f}")
if pong:
    print(f"Pong (impala_resnet, CPU), learner frames/s: {out['pong_frames_per_s']:,.0f}")
print(f"wrote {path}")
for algo, r in (out["cartpole_solve"] or {}).items():
    print(f"CartPole {algo}: {r['seeds_solved']}/{r['seeds']} solved, median {r['median_frames']:,} frames "
          f"(min {r['min_frames']:,}, max {r['max_frames']:,}), median {r['median_s']:.1f} s from the first "
          f"trained frame, {r['median_launch_s']:.1f} s from launch; collapsed seeds {r['collapsed_seeds']}")
for name, r in (out["thresholds"] or {}).items():
    print(f"{name}: solved={r['solved']} {r['frames']:,} frames, return {r['mean_return_100']}, "
          f"{r['s_from_launch'] or float('nan'):.1f} s from launch")
PY
