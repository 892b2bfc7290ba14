"""Records reference transitions from Gymnasium's classic-control environments.

troupe/tests/classic_control_vs_gymnasium.rs runs this script and replays every transition on
Troupe's native (Rust) environment of the same id, so the two are compared live against the
installed Gymnasium (pinned in scripts/requirements-envs.txt):

    python scripts/gym_reference.py --env Acrobot-v1 --n 3000 --seed 1 --out /tmp/acrobot.json

For each of N transitions the script puts the environment into a random state (a broad region
of valid states, with extra weight on the goal, the walls and the velocity bounds), sets the
TimeLimit wrapper's step counter to a random value (sometimes max - 1, so that the step
truncates), takes a random action (for Box actions sometimes out of bounds, to exercise the
clipping) and records what `env.step` did. It also records a few thousand `reset()` states and
observations, and the spaces.

Output: one JSON document. Every float is written as a string holding Python's `repr`, which
Rust's `str::parse::<f64>` reads back to the same bits (and which can hold inf and nan).
"""

import argparse
import json
import math
import sys
import warnings

try:
    import gymnasium as gym
    import numpy as np
    from gymnasium.wrappers import TimeLimit
except ImportError as e:
    sys.exit(
        f"gym_reference.py: {e}. Install the pinned packages: "
        "pip install -r scripts/requirements-envs.txt"
    )

RESETS = 3000


def num(x):
    """A float as an exact, JSON-safe string."""
    return repr(float(x))


def nums(xs):
    return [num(x) for x in xs]


def pick(rng, weights):
    """One key of `weights`, with probability proportional to its value."""
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=np.float64)
    return keys[rng.choice(len(keys), p=p / p.sum())]


def sample_cartpole(rng):
    x, x_dot, theta, theta_dot = (
        rng.uniform(-2.6, 2.6),
        rng.uniform(-3.0, 3.0),
        rng.uniform(-0.25, 0.25),
        rng.uniform(-3.0, 3.0),
    )
    kind = pick(rng, {"broad": 6, "x_edge": 2, "theta_edge": 2})
    if kind == "x_edge":
        x = rng.choice([-1, 1]) * (2.4 + rng.uniform(-0.05, 0.05))
    elif kind == "theta_edge":
        theta = rng.choice([-1, 1]) * (12 * 2 * math.pi / 360 + rng.uniform(-0.01, 0.01))
    return [x, x_dot, theta, theta_dot], np.float64


def sample_acrobot(rng):
    max_v1, max_v2 = 4 * math.pi, 9 * math.pi
    t1, t2 = rng.uniform(-math.pi, math.pi, 2)
    v1, v2 = rng.uniform(-max_v1, max_v1), rng.uniform(-max_v2, max_v2)
    kind = pick(rng, {"broad": 5, "rest": 2, "vel_bound": 1.5, "near_goal": 1.5})
    dtype = np.float64
    if kind == "rest":
        # Like a reset state (float32, small); steps from here stay far from the goal.
        t1, t2, v1, v2 = rng.uniform(-0.1, 0.1, 4)
        dtype = pick(rng, {np.float32: 1, np.float64: 1})
    elif kind == "vel_bound":
        v1 = rng.choice([-1, 1]) * max_v1 * rng.choice([1.0, 0.99])
        v2 = rng.choice([-1, 1]) * max_v2 * rng.choice([1.0, 0.99])
    elif kind == "near_goal":
        # The tip height -cos(t1) - cos(t1 + t2) close to the goal line at 1, moving slowly.
        t1 = rng.choice([-1, 1]) * rng.uniform(math.pi / 2, math.pi)
        c = float(np.clip(-1 - math.cos(t1) + rng.uniform(-0.05, 0.05), -1, 1))
        t2 = rng.choice([-1, 1]) * math.acos(c) - t1
        t2 = (t2 + math.pi) % (2 * math.pi) - math.pi
        v1, v2 = rng.uniform(-0.5, 0.5, 2)
    return [t1, t2, v1, v2], dtype


def sample_mountain_car(rng, goal, dtypes):
    pos, vel = rng.uniform(-1.2, 0.6), rng.uniform(-0.07, 0.07)
    kind = pick(rng, {"broad": 4, "wall": 2, "goal": 2, "max_speed": 1, "right_end": 0.5, "exact": 0.5})
    if kind == "wall":
        pos, vel = rng.choice([-1.2, rng.uniform(-1.2, -1.1)]), rng.uniform(-0.07, 0.01)
    elif kind == "goal":
        pos, vel = rng.uniform(goal - 0.1, 0.6), rng.uniform(-0.02, 0.07)
    elif kind == "max_speed":
        vel = rng.choice([-0.07, 0.07])
    elif kind == "right_end":
        pos, vel = 0.6, rng.uniform(0.0, 0.07)
    elif kind == "exact":
        # Bounds and the goal, at rest: the comparisons with them decide the branch.
        pos, vel = rng.choice([-1.2, goal, 0.6]), 0.0
    return [pos, vel], pick(rng, dtypes)


def sample_pendulum(rng):
    theta, theta_dot = rng.uniform(-3 * math.pi, 3 * math.pi), rng.uniform(-8.0, 8.0)
    kind = pick(rng, {"broad": 6, "max_speed": 2, "exact_angle": 1, "reset_like": 1})
    if kind == "max_speed":
        theta_dot = rng.choice([-8.0, 8.0]) * rng.choice([1.0, 0.999])
    elif kind == "exact_angle":
        theta = rng.choice([-math.pi, 0.0, math.pi, 2 * math.pi, -3 * math.pi])
    elif kind == "reset_like":
        theta, theta_dot = rng.uniform(-math.pi, math.pi), rng.uniform(-1.0, 1.0)
    return [theta, theta_dot], np.float64


SAMPLERS = {
    "CartPole-v1": sample_cartpole,
    "Acrobot-v1": sample_acrobot,
    # Gymnasium keeps MountainCar's state in float64 throughout.
    "MountainCar-v0": lambda rng: sample_mountain_car(rng, 0.5, {np.float64: 1}),
    # MountainCarContinuous holds float32 after a step and float64 after a reset.
    "MountainCarContinuous-v0": lambda rng: sample_mountain_car(
        rng, 0.45, {np.float32: 3, np.float64: 1}
    ),
    "Pendulum-v1": sample_pendulum,
}


def sample_action(space, rng):
    """A random action; for a Box, sometimes on or beyond the bounds. Returns (action, record)."""
    if isinstance(space, gym.spaces.Discrete):
        a = int(space.start + rng.integers(space.n))
        return a, a
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    kind = pick(rng, {"inside": 6, "outside": 3, "edge": 1})
    if kind == "inside":
        a = rng.uniform(low, high)
    elif kind == "outside":
        a = rng.uniform(2 * low, 2 * high)
    else:
        a = np.array([rng.choice([lo, hi, 0.0]) for lo, hi in zip(low, high)])
    a = a.astype(space.dtype)
    return a, nums(a)


def describe_space(space):
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": nums(space.low.ravel()),
            "high": nums(space.high.ravel()),
        }
    raise ValueError(f"unexpected space {space}")


def time_limit(env):
    """The TimeLimit wrapper that gym.make put around the env."""
    while not isinstance(env, TimeLimit):
        env = env.env
    return env


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, choices=sorted(SAMPLERS))
    parser.add_argument("--n", type=int, required=True, help="transitions to record")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    # The env checker warns about states we put in on purpose (e.g. out-of-bounds actions).
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(args.seed)

    env = gym.make(args.env)
    limit = time_limit(env)
    max_steps = limit._max_episode_steps
    base = env.unwrapped
    env.reset(seed=args.seed)
    transitions = []
    for _ in range(args.n):
        state, dtype = SAMPLERS[args.env](rng)
        base.state = np.array(state, dtype=dtype)
        if hasattr(base, "steps_beyond_terminated"):
            # CartPole gives reward 0 on steps after a terminal one; each record stands alone.
            base.steps_beyond_terminated = None
        elapsed = int(pick(rng, {0: 1, max_steps - 1: 2, int(rng.integers(max_steps)): 7}))
        limit._elapsed_steps = elapsed
        action, action_record = sample_action(env.action_space, rng)
        before = nums(base.state)
        obs, reward, terminated, truncated, _ = env.step(action)
        transitions.append(
            {
                "state": before,
                "state_dtype": np.dtype(dtype).name,
                "elapsed": elapsed,
                "action": action_record,
                "next_state": nums(base.state),
                "obs": nums(obs),
                "reward": num(reward),
                "terminated": bool(terminated),
                "truncated": bool(truncated),
            }
        )

    resets = []
    env = gym.make(args.env)
    env.reset(seed=args.seed + 1)
    for _ in range(RESETS):
        obs, _ = env.reset()
        resets.append({"state": nums(env.unwrapped.state), "obs": nums(obs)})

    doc = {
        "env": args.env,
        "gymnasium": gym.__version__,
        "numpy": np.__version__,
        "max_episode_steps": max_steps,
        "observation_space": describe_space(env.observation_space),
        "action_space": describe_space(env.action_space),
        "transitions": transitions,
        "resets": resets,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f)


if __name__ == "__main__":
    main()
