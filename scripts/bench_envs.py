"""Env stepping outside Troupe, for scripts/bench.sh to compare against (one JSON line):

- gymnasium: steps/s of one `gymnasium.make(id)` env in a plain Python loop (pre-drawn
  random actions, reset on episode end), for each of Troupe's native ids;
- gymnasium_sync_vector: steps/s of Gymnasium's own SyncVectorEnv over N CartPole-v1 envs
  (what the actor's Python host replaces);
- envpool: the same ids through EnvPool, one env and N envs batched, where it is installed;
- lbforaging: env steps/s of the lbforaging package (Level-Based Foraging), every agent
  acting, against Troupe's native LBF (cargo bench -p troupe --bench native_envs).

    python scripts/bench_envs.py [SECONDS] [NUM_ENVS]
"""

import json
import sys
import time

import gymnasium as gym
import numpy as np

IDS = ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1"]


def draw(space, n, rng):
    if isinstance(space, gym.spaces.Discrete):
        return [int(x) for x in rng.integers(0, space.n, n)]
    return [np.array([x], dtype=np.float32) for x in rng.uniform(space.low[0], space.high[0], n)]


def single(env_id, seconds):
    env = gym.make(env_id)
    env.reset(seed=1)
    actions = draw(env.action_space, 4096, np.random.default_rng(2))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for a in actions:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
        steps += len(actions)
    return steps / (time.perf_counter() - start)


def lbf(env_id, seconds):
    """lbforaging's env steps/s (every agent acting) in a plain Python loop."""
    import lbforaging  # noqa: F401 - registers the Foraging ids

    env = gym.make(env_id).unwrapped
    env.reset(seed=1)
    n = len(env.players)
    rng = np.random.default_rng(2)
    actions = [tuple(int(a) for a in rng.integers(0, 6, n)) for _ in range(4096)]
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for a in actions:
            _, _, done, _, _ = env.step(a)
            if done:
                env.reset()
        steps += len(actions)
    return steps / (time.perf_counter() - start)


def sync_vector(seconds, n):
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * n)
    envs.reset(seed=1)
    rng = np.random.default_rng(2)
    actions = [rng.integers(0, 2, n) for _ in range(256)]
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for a in actions:
            envs.step(a)
        steps += len(actions) * n
    return steps / (time.perf_counter() - start)


def envpool_rates(seconds, n):
    """EnvPool steps/s per id: one env (as the single-env Gymnasium loop) and n envs batched
    (as it is meant to run), pre-drawn random actions."""
    try:
        import envpool
    except ImportError:
        return {}
    out = {}
    rng = np.random.default_rng(2)
    for env_id in IDS:
        rates = {}
        for num in (1, n):
            try:
                env = envpool.make_gymnasium(env_id, num_envs=num, seed=1)
            except Exception:  # noqa: BLE001 - EnvPool does not have every id
                break
            env.reset()
            space = env.action_space
            if isinstance(space, gym.spaces.Discrete):
                actions = [rng.integers(0, space.n, num).astype(np.int32) for _ in range(256)]
            else:
                actions = [rng.uniform(space.low[0], space.high[0], (num,) + space.shape).astype(np.float32) for _ in range(256)]
            steps, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                for a in actions:
                    env.step(a)
                steps += len(actions) * num
            rates[f"num_envs_{num}"] = steps / (time.perf_counter() - start)
        if rates:
            out[env_id] = rates
    return out


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    print(
        json.dumps(
            {
                "bench": "gymnasium_envs",
                "gymnasium": {i: single(i, seconds) for i in IDS},
                "gymnasium_sync_vector": {"env": "CartPole-v1", "num_envs": n, "env_steps_per_s": sync_vector(seconds, n)},
                "envpool": envpool_rates(seconds, n),
                "lbforaging": {i: lbf(i, seconds) for i in ["Foraging-8x8-2p-2f-coop-v3", "Foraging-8x8-3p-3f-v3"]},
            }
        )
    )


if __name__ == "__main__":
    main()
