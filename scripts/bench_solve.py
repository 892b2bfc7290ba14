"""Learning benchmarks through scripts/train.sh (real processes): CartPole-v1 over 5 seeds for
APPO (configs/cartpole.toml), IMPALA (configs/cartpole-impala.toml) and IMPALA with half of each
batch replayed (configs/cartpole-replay.toml, `impala_replay`) and Ape-X DQN
(configs/cartpole-apex.toml, `apex`, not by default: its actors' mean counts the exploring
envs), then Acrobot-v1,
Pendulum-v1 and MinAtar Breakout (threshold 10) once each, with their learning curves, and
the multi-agent configs once each (`teams`): cooperative LBF native (configs/lbf-coop.toml) and
from the lbforaging package (configs/lbf-coop-python.toml) to a team return of 0.9, MPE
simple_spread (configs/simple-spread.toml) to its target, and LBF with one policy and learner
per agent (configs/lbf-two-teams.toml).

    python3 scripts/bench_solve.py OUTDIR [--seeds N] [--algorithms appo,impala] [--skip-others] [--only-teams]

Prints one JSON object: {"cartpole_solve": {"appo": {...}, "impala": {...}}, "thresholds": {...},
"teams": {...}}.
Frames count env steps reported by the actors; times are from the launch of train.sh and from
the first trained version. A seed "collapsed" if its mean return, after first passing 200,
fell under 100 before it solved.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(config, seed, out, budget):
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(
        [os.path.join(ROOT, "scripts/train.sh"), "--config", config, "--seed", str(seed), "--out", out,
         "--budget-s", str(budget)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    peak, collapsed = float("-inf"), False
    for p in s["curve"]:
        r = p["mean_return_100"]
        if r is None:
            continue
        peak = max(peak, r)
        if peak >= 200 and r < 100:
            collapsed = True
    return {
        "seed": seed,
        "solved": s["solved"],
        "frames": s["frames_to_solve"] if s["solved"] else s["frames"],
        "s_from_first_frame": s.get("solve_from_first_frame_s"),
        "s_from_launch": s.get("solve_from_launch_s"),
        "launch_to_first_frame_s": s.get("launch_to_first_frame_s"),
        "mean_return_100": s["mean_return_100"],
        "policies": {p["policy"]: p.get("mean_return_100") for p in s.get("policies") or []},
        "collapsed": collapsed,
    }


def summarise(runs):
    solved = [r for r in runs if r["solved"]]
    frames = [r["frames"] for r in solved]
    med = lambda xs: statistics.median(xs) if xs else None
    return {
        "seeds_solved": len(solved),
        "seeds": len(runs),
        "median_frames": med(frames),
        "min_frames": min(frames) if frames else None,
        "max_frames": max(frames) if frames else None,
        "worst_over_best": max(frames) / min(frames) if frames else None,
        "median_s": med([r["s_from_first_frame"] for r in solved]),
        "median_launch_s": med([r["s_from_launch"] for r in solved]),
        "median_launch_to_first_frame_s": med([r["launch_to_first_frame_s"] for r in runs if r["launch_to_first_frame_s"]]),
        "collapsed_seeds": sum(r["collapsed"] for r in runs),
        "runs": runs,
    }


def main():
    out = sys.argv[1]
    seeds = int(sys.argv[sys.argv.index("--seeds") + 1]) if "--seeds" in sys.argv else 5
    result = {"cartpole_solve": {}, "thresholds": {}}
    algos = (
        sys.argv[sys.argv.index("--algorithms") + 1].split(",")
        if "--algorithms" in sys.argv
        else ["appo", "impala", "impala_replay"]
    )
    configs = {
        "appo": "configs/cartpole.toml",
        "impala": "configs/cartpole-impala.toml",
        "impala_replay": "configs/cartpole-replay.toml",
        "apex": "configs/cartpole-apex.toml",
    }
    if "--only-teams" in sys.argv:
        algos = []
    for algo in algos:
        cfg = configs[algo]
        # Ape-X's actors' mean counts its exploring envs: it gets more time to reach 475.
        budget = 300 if algo == "apex" else 120
        runs = [run(os.path.join(ROOT, cfg), s, os.path.join(out, "solve", f"cartpole-{algo}-{s}"), budget)
                for s in range(1, seeds + 1)]
        result["cartpole_solve"][algo] = summarise(runs)
    result["teams"] = {}
    singles = [("acrobot", 300), ("pendulum", 300), ("minatar-breakout", 300)]
    teams = [("lbf-coop", 900), ("simple-spread", 300), ("lbf-two-teams", 600), ("lbf-coop-python", 1500)]
    if "--only-teams" in sys.argv:
        singles = []
    if "--skip-others" not in sys.argv:
        os.makedirs(os.path.join(out, "curves"), exist_ok=True)
        for name, budget in singles + teams:
            d = os.path.join(out, "solve", name)
            r = run(os.path.join(ROOT, "configs", f"{name}.toml"), 1, d, budget)
            png = os.path.join(d, "learning_curve.png")
            if os.path.exists(png):
                shutil.copy(png, os.path.join(out, "curves", f"{name}.png"))
                r["curve_png"] = os.path.join(out, "curves", f"{name}.png")
            result["teams" if (name, budget) in teams else "thresholds"][name] = r
    print(json.dumps(result))


if __name__ == "__main__":
    main()
