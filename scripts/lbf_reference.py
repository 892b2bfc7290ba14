"""Records reference episodes from the lbforaging package (Level-Based Foraging), for
troupe/tests/foraging_vs_lbforaging.rs, which replays them on Troupe's native Rust LBF:

    python scripts/lbf_reference.py --env Foraging-8x8-2p-2f-coop-v3 --episodes 300 --seed 1 --out /tmp/lbf.json

lbforaging has no public setter, so, as its own tests do, each episode starts from a state set
on `env.unwrapped`: the field and food total of a real reset (so food is spawned by the
package's rules), then players moved to random free cells, often next to a food item (so loads,
failed loads and collisions are frequent), with random levels, and a random step counter
(sometimes just below the limit). Then random actions (LOAD more often, so loading is common)
until the episode is done. Recorded per step: the actions, every agent's observation, the
rewards, `done`, and the state after the step (field and players).
"""

import argparse
import json
import sys

try:
    import gymnasium as gym
    import lbforaging  # noqa: F401 - registers the Foraging ids
    import numpy as np
except ImportError as e:
    sys.exit(f"lbf_reference.py: {e}. Install the pinned packages: pip install -r scripts/requirements-envs.txt")


def state(u):
    return {
        "field": [int(x) for x in u.field.reshape(-1)],
        "players": [[int(p.position[0]), int(p.position[1]), int(p.level)] for p in u.players],
    }


def obs_lists(nobs):
    return [[float(x) for x in o] for o in nobs]


def free_cells(u):
    taken = {tuple(p.position) for p in u.players if p.position is not None}
    rows, cols = u.field.shape
    return [(r, c) for r in range(rows) for c in range(cols) if u.field[r, c] == 0 and (r, c) not in taken]


def place_players(u, rng):
    rows, cols = u.field.shape
    foods = list(zip(*np.nonzero(u.field)))
    for p in u.players:
        p.position = None
    for p in u.players:
        spots = []
        if foods and rng.random() < 0.7:
            fr, fc = foods[rng.integers(len(foods))]
            spots = [(fr + dr, fc + dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))]
            spots = [s for s in spots if 0 <= s[0] < rows and 0 <= s[1] < cols and s in free_cells(u)]
        if not spots:
            spots = free_cells(u)
        r, c = spots[rng.integers(len(spots))]
        p.position = (int(r), int(c))
        p.level = int(rng.integers(1, 3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", required=True)
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    env = gym.make(args.env)
    u = env.unwrapped
    episodes = []
    for k in range(args.episodes):
        env.reset(seed=args.seed * 100_000 + k)
        place_players(u, rng)
        u._food_spawned = u.field.sum()
        u.current_step = int(rng.choice([0, int(rng.integers(0, 50)), 45, 48, 49]))
        u._gen_valid_moves()
        start = state(u)
        start["food_spawned"] = int(u._food_spawned)
        start["current_step"] = int(u.current_step)
        start["obs"] = obs_lists(u.test_make_gym_obs())
        steps = []
        done = False
        while not done:
            actions = [int(5 if rng.random() < 0.35 else rng.integers(0, 6)) for _ in u.players]
            nobs, rewards, done, truncated, _ = env.step(actions)
            rec = state(u)
            rec.update(
                {
                    "actions": actions,
                    "obs": obs_lists(nobs),
                    "rewards": [repr(float(r)) for r in rewards],
                    "done": bool(done),
                    "truncated": bool(truncated),
                }
            )
            steps.append(rec)
        episodes.append({"start": start, "steps": steps})
    json.dump({"env": args.env, "episodes": episodes}, open(args.out, "w"))


if __name__ == "__main__":
    main()
