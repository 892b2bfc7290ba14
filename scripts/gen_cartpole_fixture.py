"""Regenerates troupe/tests/fixtures/cartpole_gymnasium.json from Gymnasium's CartPole-v1.

The Rust CartPole is tested step for step against this file. Run with a Python that has
`gymnasium` (e.g. `pip install gymnasium==1.2.2`): python3 scripts/gen_cartpole_fixture.py
"""
import json

import gymnasium as gym
import numpy as np

env = gym.make("CartPole-v1")
out = {"source": f"gymnasium {gym.__version__} CartPole-v1", "episodes": []}
rng = np.random.default_rng(7)
for ep in range(3):
    obs, _ = env.reset(seed=100 + ep)
    start = [float(x) for x in env.unwrapped.state]
    steps = []
    # Random actions for episodes 0 and 1 (they terminate); a balancing rule for episode 2
    # (it runs into the 500-step truncation).
    while True:
        if ep < 2:
            a = int(rng.integers(2))
        else:
            x, xd, th, thd = env.unwrapped.state
            a = 1 if (th + 0.5 * thd + 0.01 * x + 0.1 * xd) > 0 else 0
        obs, r, term, trunc, _ = env.step(a)
        steps.append({"action": a, "obs": [float(v) for v in obs],
                      "state": [float(v) for v in env.unwrapped.state], "reward": float(r),
                      "terminated": bool(term), "truncated": bool(trunc)})
        if term or trunc:
            break
    out["episodes"].append({"initial_state": start, "steps": steps})
json.dump(out, open("troupe/tests/fixtures/cartpole_gymnasium.json", "w"))
