"""Troupe's Python env host. The actor embeds this module (PyO3) and calls it from its env thread.

It builds N Gymnasium envs (by id with wrappers, or from a user's factory) or one EnvPool of N,
describes their spaces, and steps Gymnasium envs with SAME-STEP autoreset: when an episode ends, the observation returned
for that column is already the first of the next episode, and the ended episode's last
observation is returned separately (for truncations, the learner bootstraps from it). The step
after an episode end is therefore always a real transition; no reset step ever reaches the
learner. EnvPool resets one step late (NEXT_STEP); its host marks those steps invalid instead,
and the learner masks them out.

Every value an env returns is checked here per env (shape, dtype) and raised as HostError naming
the call and the field; the Rust side checks finiteness over the whole batch.
"""

import difflib
import importlib
import json
import sys

import numpy as np


class HostError(Exception):
    """A problem with an env's output or spaces: which call, which field, what is wrong."""

    def __init__(self, call, field, problem):
        super().__init__(f"{call}: {field}: {problem}")
        self.call = call
        self.field = field
        self.problem = problem


def _resolve(path, what):
    module, _, name = path.partition(":")
    if not module or not name:
        raise HostError("make", what, f"expected 'module:function', got {path!r}")
    return getattr(importlib.import_module(module), name)


def _wrapper(spec):
    import gymnasium as gym

    name, kwargs = spec["name"], spec.get("kwargs", {})
    if ":" in name:
        fn = _resolve(name, "env.wrappers")
    else:
        fn = getattr(gym.wrappers, name, None)
        if fn is None:
            raise HostError("make", "env.wrappers", f"gymnasium.wrappers has no {name!r}")
    return lambda env: fn(env, **kwargs)


def _check_id(env_id):
    import gymnasium as gym

    if env_id in gym.registry:
        return
    known = sorted(gym.registry.keys())
    close = difflib.get_close_matches(env_id, known, n=5)
    hint = f"; close matches: {close}" if close else ""
    # Packages that register hundreds of variants (lbforaging's Foraging-...) are summarised
    # by family, so the other ids still fit in the message.
    families = {}
    for k in known:
        families.setdefault(k.split("-")[0], []).append(k)
    if len(known) > 120:
        known = [k for fam, ids in families.items() for k in (ids if len(ids) <= 12 else [f"{fam}-... ({len(ids)} ids)"])]
    listed = known if len(known) <= 120 else known[:120] + [f"... and {len(known) - 120} more"]
    raise HostError("make", "env.id", f"unknown Gymnasium env id {env_id!r}{hint}; known ids: {listed}")


def _describe_obs(space):
    from gymnasium import spaces

    mask_in_obs = False
    if isinstance(space, spaces.Dict) and set(space.spaces) == {"observation", "action_mask"}:
        mask_in_obs = True
        space = space.spaces["observation"]
    if not isinstance(space, spaces.Box):
        raise HostError("make", "observation space", f"expected a Box (f32 or u8), got {space}")
    if space.dtype == np.float32 or space.dtype == np.float64:
        dtype = "f32"
    elif space.dtype == np.uint8 or space.dtype == np.bool_:
        dtype = "u8"
    else:
        raise HostError("make", "observation space", f"expected a Box of float32, float64, uint8 or bool, got {space}")
    return {"shape": list(space.shape), "dtype": dtype}, space, mask_in_obs


def _describe_action(space):
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "n": int(space.n)}, np.int64(space.start)
    if isinstance(space, spaces.MultiDiscrete):
        if space.nvec.ndim != 1:
            raise HostError("make", "action space", f"expected a 1-D MultiDiscrete, got {space}")
        return {"type": "multi_discrete", "nvec": [int(x) for x in space.nvec]}, space.start.astype(np.int64)
    if isinstance(space, spaces.Box):
        if len(space.shape) != 1 or not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise HostError("make", "action space", f"expected a 1-D Box with finite bounds, got {space}")
        return {"type": "box", "low": [float(x) for x in space.low], "high": [float(x) for x in space.high]}, None
    raise HostError("make", "action space", f"expected Discrete, MultiDiscrete or a 1-D Box, got {space}")


def _single_agent_spec(env_id, obs, action, action_mask):
    return {
        "id": env_id,
        "agents": [{"id": "agent_0", "observation": obs, "action": action, "action_mask": bool(action_mask)}],
        "state": None,
    }


def _one_agent(obs, rewards, terminated, truncated, final, masks, valid, ended):
    """A single-agent step in the multi-agent layout every host returns: per-agent lists of
    observations, final observations and masks; [E, A] rewards, flags and validity; the env
    states and their final rows (None without a state); and [E] episode ends."""
    col = lambda x: None if x is None else x.reshape(-1, 1)  # noqa: E731 - views, no copies
    return (
        [obs],
        col(rewards),
        col(terminated),
        col(truncated),
        [final],
        [masks],
        col(valid),
        None,
        None,
        np.ascontiguousarray(ended, dtype=np.uint8),
    )


class Host:
    """N envs stepped in a loop with same-step autoreset."""

    def __init__(self, env_id, envs, seeds):
        self.env_id = env_id
        self.envs = envs
        self.seeds = [int(s) for s in seeds]
        first = envs[0]
        obs, self.obs_space, self.mask_in_obs = _describe_obs(first.observation_space)
        action, self.start = _describe_action(first.action_space)
        self.action_space = first.action_space
        self.kind = action["type"]
        self.n = len(envs)
        self.shape = tuple(self.obs_space.shape)
        self.dtype = self.obs_space.dtype
        self.binary = self.dtype == np.bool_
        out_dtype = np.float32 if obs["dtype"] == "f32" else np.uint8
        self.obs = np.zeros((self.n,) + self.shape, dtype=out_dtype)
        self.rewards = np.zeros(self.n, dtype=np.float32)
        self.terminated = np.zeros(self.n, dtype=np.uint8)
        self.truncated = np.zeros(self.n, dtype=np.uint8)
        self.nvec = [] if action["type"] == "box" else [int(k) for k in action.get("nvec", [action.get("n", 0)])]
        self.mask_width = None if action["type"] == "box" else int(sum(self.nvec))
        self.masks = None
        self.mask_in_info = False
        self.fresh = False
        self.spec = _single_agent_spec(env_id, obs, action, self.mask_in_obs)

    def _put_obs(self, call, i, o):
        """Checks one env's observation and copies it into row i; returns the mask if it has one."""
        mask = None
        if self.mask_in_obs:
            if not isinstance(o, dict) or "observation" not in o or "action_mask" not in o:
                raise HostError(call, "observation", f"env {i}: expected a dict with 'observation' and 'action_mask'")
            mask = o["action_mask"]
            o = o["observation"]
        if not isinstance(o, np.ndarray):
            raise HostError(call, "observation", f"env {i}: expected a numpy array, got {type(o).__name__}")
        if o.shape != self.shape:
            raise HostError(call, "observation", f"env {i}: expected shape {list(self.shape)}, got {list(o.shape)}")
        if o.dtype != self.dtype:
            raise HostError(call, "observation", f"env {i}: expected dtype {self.dtype}, got {o.dtype}")
        if self.binary:
            # Boolean frames (MinAtar) travel as u8 0/255, so the model's 1/255 scaling of u8
            # observations gives them back as 0.0/1.0.
            np.multiply(o, 255, out=self.obs[i], casting="unsafe")
        else:
            self.obs[i] = o
        return mask

    def _put_mask(self, call, i, mask):
        if self.masks is None:
            return
        m = np.asarray(mask)
        if m.shape != (self.mask_width,):
            raise HostError(call, "action_mask", f"env {i}: expected shape [{self.mask_width}], got {list(m.shape)}")
        offset = 0
        for c, k in enumerate(self.nvec):
            if not m[offset : offset + k].any():
                where = f" for component {c}" if len(self.nvec) > 1 else ""
                raise HostError(call, "action_mask", f"env {i}: no legal action{where}")
            offset += k
        self.masks[i] = m != 0

    def describe(self):
        return json.dumps(self.spec)

    def reset(self):
        if self.fresh:
            # make() already reset every env (to learn the mask convention): hand over those
            # observations instead of resetting twice (an Atari reset runs up to 30 no-ops).
            self.fresh = False
            return [self.obs], [self.masks], None
        for i, env in enumerate(self.envs):
            o, info = env.reset(seed=self.seeds[i])
            mask = self._put_obs("reset", i, o)
            if i == 0:
                # Masks come in the observation (PettingZoo's convention) or in info
                # (Gymnasium's, e.g. Taxi): decided by the first reset.
                self.mask_in_info = not self.mask_in_obs and isinstance(info, dict) and "action_mask" in info
                if (self.mask_in_obs or self.mask_in_info) and self.mask_width is not None:
                    self.spec["agents"][0]["action_mask"] = True
                    self.masks = np.ones((self.n, self.mask_width), dtype=np.uint8)
            self._put_mask("reset", i, info["action_mask"] if self.mask_in_info else mask)
        return [self.obs], [self.masks], None

    def _action(self, actions, i):
        if self.kind == "discrete":
            return int(actions[i, 0] + self.start)
        if self.kind == "multi_discrete":
            return actions[i] + self.start
        return actions[i].astype(self.action_space.dtype, copy=False)

    def step(self, actions):
        actions = actions[0]  # one agent: its [N, d] array
        finals = []
        for i, env in enumerate(self.envs):
            o, r, term, trunc, info = env.step(self._action(actions, i))
            try:
                self.rewards[i] = r
            except (TypeError, ValueError) as e:
                raise HostError("step", "reward", f"env {i}: expected a real number, got {r!r}") from e
            self.terminated[i] = bool(term)
            self.truncated[i] = bool(trunc)
            mask = self._put_obs("step", i, o)
            if self.mask_in_info:
                mask = info.get("action_mask")
            if term or trunc:
                if trunc:
                    finals.append(self.obs[i].copy())
                o, info = env.reset()
                mask = self._put_obs("reset", i, o)
                if self.mask_in_info:
                    mask = info.get("action_mask")
            self._put_mask("step", i, mask)
        final = np.stack(finals) if finals else None
        # Every step is a transition: no validity flags.
        ended = self.terminated | self.truncated
        return _one_agent(self.obs, self.rewards, self.terminated, self.truncated, final, self.masks, None, ended)

    def close(self):
        for env in self.envs:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing a broken env must not hide the real error
                pass


class EnvPoolHost:
    """N envs in one EnvPool (C++, its own threads). EnvPool autoresets in NEXT_STEP mode: the
    step after an episode ends ignores its action, resets, and returns reward 0 with both flags
    false. Such steps are returned with valid = 0 so the learner leaves them out; the
    observation they return is the new episode's first."""

    def __init__(self, env_id, num_envs, seeds, kwargs):
        import envpool

        self.env_id = env_id
        self.n = num_envs
        try:
            self.env = envpool.make_gymnasium(env_id, num_envs=num_envs, seed=int(seeds[0]), **kwargs)
        except Exception as e:  # noqa: BLE001 - EnvPool raises several kinds for an unknown id
            known = sorted(envpool.list_all_envs())
            close = difflib.get_close_matches(env_id, known, n=5)
            raise HostError("make", "env.id", f"EnvPool cannot make {env_id!r} ({e}); close matches: {close}; known ids: {known}") from e
        space = self.env.observation_space
        obs, self.obs_space, mask_in_obs = _describe_obs(space)
        if mask_in_obs:
            raise HostError("make", "observation space", "EnvPool envs with masks in the observation are not supported")
        action, self.start = _describe_action(self.env.action_space)
        self.action_space = self.env.action_space
        self.kind = action["type"]
        self.spec = _single_agent_spec(env_id, obs, action, False)
        self.shape = tuple(self.obs_space.shape)
        self.binary = self.obs_space.dtype == np.bool_
        self.out_dtype = np.float32 if obs["dtype"] == "f32" else np.uint8
        self.pending = np.zeros(num_envs, dtype=bool)
        self.valid = np.ones(num_envs, dtype=np.uint8)

    def describe(self):
        return json.dumps(self.spec)

    def _obs(self, call, obs, ids):
        if obs.shape != (self.n,) + self.shape:
            raise HostError(call, "observation", f"expected shape {[self.n] + list(self.shape)}, got {list(obs.shape)}")
        order = np.argsort(ids)
        obs = obs[order]
        if self.binary:
            return (obs.astype(np.uint8) * 255), order
        return np.ascontiguousarray(obs, dtype=self.out_dtype), order

    def reset(self):
        obs, info = self.env.reset()
        out, _ = self._obs("reset", obs, info["env_id"])
        self.pending[:] = False
        return [out], [None], None

    def step(self, actions):
        actions = actions[0]  # one agent: its [N, d] array
        if self.kind == "discrete":
            a = actions[:, 0] + self.start
        elif self.kind == "multi_discrete":
            a = actions + self.start
        else:
            a = actions.astype(self.action_space.dtype, copy=False)
        obs, rew, term, trunc, info = self.env.step(a, np.arange(self.n, dtype=np.int32))
        out, order = self._obs("step", obs, info["env_id"])
        rew, term, trunc = rew[order], term[order], trunc[order]
        # A step that only reset its env reports elapsed_step 0 (a life lost under Atari's
        # episodic_life ends an episode without a reset step). Without that info, the columns
        # that ended at the previous step were the ones reset.
        elapsed = info.get("elapsed_step") if isinstance(info, dict) else None
        reset = (np.asarray(elapsed)[order] == 0) if elapsed is not None else self.pending.copy()
        self.valid[:] = ~reset
        rewards = np.where(reset, 0.0, rew).astype(np.float32)
        terminated = (term & ~reset).astype(np.uint8)
        truncated = (trunc & ~reset).astype(np.uint8)
        final = out[truncated == 1].copy() if truncated.any() else None
        self.pending = (terminated | truncated).astype(bool)
        return _one_agent(out, rewards, terminated, truncated, final, None, self.valid, terminated | truncated)

    def close(self):
        try:
            self.env.close()
        except Exception:  # noqa: BLE001
            pass


class TupleAgents:
    """A Gymnasium env whose spaces are Tuples of per-agent spaces (lbforaging's convention:
    reward lists, one `done` for all) in PettingZoo's parallel API, agents `agent_0`..."""

    def __init__(self, env):
        self.env = env
        n = len(env.observation_space.spaces)
        self.possible_agents = [f"agent_{i}" for i in range(n)]
        self.agents = []

    def observation_space(self, agent):
        return self.env.observation_space.spaces[self.possible_agents.index(agent)]

    def action_space(self, agent):
        return self.env.action_space.spaces[self.possible_agents.index(agent)]

    def reset(self, seed=None):
        obs, info = self.env.reset(seed=seed)
        self.agents = list(self.possible_agents)
        return dict(zip(self.possible_agents, obs)), {a: {} for a in self.possible_agents}

    def step(self, actions):
        obs, rewards, terminated, truncated, info = self.env.step(tuple(actions[a] for a in self.possible_agents))
        per = lambda x: list(x) if isinstance(x, (list, tuple)) else [x] * len(self.possible_agents)  # noqa: E731
        term, trunc = per(terminated), per(truncated)
        out = (
            dict(zip(self.possible_agents, obs)),
            dict(zip(self.possible_agents, per(rewards))),
            dict(zip(self.possible_agents, term)),
            dict(zip(self.possible_agents, trunc)),
            {a: {} for a in self.possible_agents},
        )
        self.agents = [a for a, d, t in zip(self.possible_agents, term, trunc) if not (d or t)]
        return out

    def state(self):
        raise AttributeError("no state")

    def close(self):
        self.env.close()


class ParallelHost:
    """N multi-agent envs in PettingZoo's parallel API, stepped in a loop with same-step
    autoreset. Columns are (env, agent) pairs, agents in `possible_agents` order. An agent that
    finished before the others is absent (valid 0, zero observation) until its env's episode
    ends and resets. With `time_limit`, an episode that ends at that step is reported truncated
    rather than terminated (EPyMARL's reading of lbforaging's step limit)."""

    def __init__(self, env_id, envs, seeds, time_limit):
        self.env_id = env_id
        self.envs = envs
        self.seeds = [int(s) for s in seeds]
        self.time_limit = time_limit
        first = envs[0]
        self.agents = list(first.possible_agents)
        if not self.agents:
            raise HostError("make", "agents", "the env has no possible_agents")
        self.n = len(envs)
        a_n = len(self.agents)
        specs, self.spaces, self.mask_in_obs, self.start, self.kind, self.nvec = [], [], [], [], [], []
        for a in self.agents:
            obs, space, mask_in_obs = _describe_obs(first.observation_space(a))
            action, start = _describe_action(first.action_space(a))
            specs.append({"id": str(a), "observation": obs, "action": action, "action_mask": bool(mask_in_obs)})
            self.spaces.append(space)
            self.mask_in_obs.append(mask_in_obs)
            self.start.append(start)
            self.kind.append(action["type"])
            self.nvec.append([] if action["type"] == "box" else [int(k) for k in action.get("nvec", [action.get("n", 0)])])
        self.obs = [np.zeros((self.n,) + tuple(sp.shape), dtype=np.float32 if sp.dtype != np.uint8 else np.uint8) for sp in self.spaces]
        self.masks = [np.ones((self.n, sum(nv)), dtype=np.uint8) if m else None for nv, m in zip(self.nvec, self.mask_in_obs)]
        self.rewards = np.zeros((self.n, a_n), dtype=np.float32)
        self.terminated = np.zeros((self.n, a_n), dtype=np.uint8)
        self.truncated = np.zeros((self.n, a_n), dtype=np.uint8)
        self.valid = np.ones((self.n, a_n), dtype=np.uint8)
        self.ended = np.zeros(self.n, dtype=np.uint8)
        self.steps = [0] * self.n
        # The global state: the env's own (PettingZoo's state()), else every agent's 1-D
        # observation side by side (EPyMARL's state for envs without one).
        self.own_state = False
        state_space = getattr(first, "state_space", None)
        if state_space is not None:
            st, _, _ = _describe_obs(state_space)
            self.own_state = st["dtype"] == "f32" and len(st["shape"]) == 1
        if self.own_state:
            state = st
        elif all(len(sp.shape) == 1 for sp in self.spaces):
            state = {"shape": [int(sum(sp.shape[0] for sp in self.spaces))], "dtype": "f32"}
        else:
            state = None
        self.states = None if state is None else np.zeros((self.n, state["shape"][0]), dtype=np.float32)
        self.spec = {"id": env_id, "agents": specs, "state": state}
        self.fresh = False

    def describe(self):
        return json.dumps(self.spec)

    def _put(self, call, i, k, o):
        if self.mask_in_obs[k]:
            if not isinstance(o, dict) or "observation" not in o or "action_mask" not in o:
                raise HostError(call, "observation", f"env {i} agent {self.agents[k]}: expected a dict with 'observation' and 'action_mask'")
            m = np.asarray(o["action_mask"])
            if m.shape != self.masks[k].shape[1:]:
                raise HostError(call, "action_mask", f"env {i} agent {self.agents[k]}: expected shape {list(self.masks[k].shape[1:])}, got {list(m.shape)}")
            self.masks[k][i] = m != 0
            o = o["observation"]
        o = np.asarray(o)
        want = self.obs[k].shape[1:]
        if o.shape != want:
            raise HostError(call, "observation", f"env {i} agent {self.agents[k]}: expected shape {list(want)}, got {list(o.shape)}")
        self.obs[k][i] = o

    def _absent(self, i, k):
        self.obs[k][i] = 0
        if self.masks[k] is not None:
            self.masks[k][i] = 1

    def _state(self, i, env):
        if self.states is None:
            return
        if self.own_state:
            self.states[i] = np.asarray(env.state(), dtype=np.float32).reshape(-1)
        else:
            self.states[i] = np.concatenate([self.obs[k][i].reshape(-1) for k in range(len(self.agents))])

    def _reset_env(self, call, i, env, seed):
        obs, _ = env.reset(seed=seed)
        for k, a in enumerate(self.agents):
            if a in obs:
                self._put(call, i, k, obs[a])
            else:
                self._absent(i, k)
        self.steps[i] = 0
        self._state(i, env)

    def reset(self):
        if self.fresh:
            self.fresh = False
        else:
            for i, env in enumerate(self.envs):
                self._reset_env("reset", i, env, self.seeds[i])
        return self.obs, self.masks, self.states

    def _action(self, actions, k, i):
        if self.kind[k] == "discrete":
            return int(actions[k][i, 0] + self.start[k])
        if self.kind[k] == "multi_discrete":
            return actions[k][i] + self.start[k]
        return actions[k][i].astype(self.spaces[k].dtype if hasattr(self.spaces[k], "dtype") else np.float32, copy=False)

    def step(self, actions):
        finals = [[] for _ in self.agents]
        final_states = [[] for _ in self.agents]
        self.ended[:] = 0
        for i, env in enumerate(self.envs):
            live = list(env.agents)
            obs, rew, term, trunc, _ = env.step({a: self._action(actions, self.agents.index(a), i) for a in live})
            self.steps[i] += 1
            at_limit = self.time_limit is not None and self.steps[i] >= self.time_limit
            for k, a in enumerate(self.agents):
                if a not in live:
                    self.valid[i, k] = 0
                    self.rewards[i, k] = 0.0
                    self.terminated[i, k] = 0
                    self.truncated[i, k] = 0
                    self._absent(i, k)
                    continue
                self.valid[i, k] = 1
                try:
                    self.rewards[i, k] = rew.get(a, 0.0)
                except (TypeError, ValueError) as e:
                    raise HostError("step", "reward", f"env {i} agent {a}: expected a real number, got {rew.get(a)!r}") from e
                t, u = bool(term.get(a, False)), bool(trunc.get(a, False))
                if at_limit and t:
                    t, u = False, True
                self.terminated[i, k], self.truncated[i, k] = t, u
                if a in obs:
                    self._put("step", i, k, obs[a])
            self._state(i, env)
            for k in range(len(self.agents)):
                if self.valid[i, k] and self.truncated[i, k]:
                    finals[k].append(self.obs[k][i].copy())
                    if self.states is not None:
                        final_states[k].append(self.states[i].copy())
            if not env.agents:
                self.ended[i] = 1
                self._reset_env("reset", i, env, None)
        stack = lambda rows: np.stack(rows) if rows else None  # noqa: E731
        return (
            self.obs,
            self.rewards,
            self.terminated,
            self.truncated,
            [stack(f) for f in finals],
            self.masks,
            self.valid,
            self.states,
            None if self.states is None else [stack(f) for f in final_states],
            self.ended,
        )

    def close(self):
        for env in self.envs:
            try:
                env.close()
            except Exception:  # noqa: BLE001
                pass


def make(cfg_json, num_envs, seeds):
    cfg = json.loads(cfg_json)
    for path in reversed(cfg.get("python_path", [])):
        if path not in sys.path:
            sys.path.insert(0, path)
    for module in cfg.get("imports", []):
        # "module" is imported; "module:function" is imported and called (e.g. MinAtar's
        # "minatar.gym:register_envs", which registers its Gymnasium ids).
        if ":" in module:
            import gymnasium as gym

            # Register once per process: an env rebuilt after a failure finds its id there.
            if cfg["id"] not in gym.registry:
                _resolve(module, "env.imports")()
        else:
            importlib.import_module(module)
    backend = cfg["backend"]
    wrappers = [_wrapper(w) for w in cfg.get("wrappers", [])]
    kwargs = cfg.get("kwargs", {})
    time_limit = cfg.get("time_limit")
    if backend == "pettingzoo":
        factory = _resolve(cfg["factory"], "env.factory")

        def build_parallel():
            env = factory(**kwargs)
            if not hasattr(env, "possible_agents"):
                raise HostError("make", "env.factory", f"{cfg['factory']} returned {type(env).__name__}, not a PettingZoo env")
            if hasattr(env, "agent_iter"):
                # A turn-based AEC env: PettingZoo's own conversion to the parallel API.
                from pettingzoo.utils.conversions import aec_to_parallel

                env = aec_to_parallel(env)
            return env

        host = ParallelHost(cfg["id"], [build_parallel() for _ in range(num_envs)], seeds, time_limit)
        host.reset()
        host.fresh = True
        return host
    if backend == "gymnasium":
        import gymnasium as gym

        _check_id(cfg["id"])

        def build():
            env = gym.make(cfg["id"], **kwargs)
            for w in wrappers:
                env = w(env)
            return env

    elif backend == "factory":
        factory = _resolve(cfg["factory"], "env.factory")

        def build():
            return factory(**kwargs)

    elif backend == "envpool":
        # Its spaces come from the pool itself; the runner's first reset starts the episodes.
        return EnvPoolHost(cfg["id"], num_envs, seeds, kwargs)
    else:
        raise HostError("make", "env.backend", f"the Python host runs 'gymnasium', 'factory', 'envpool' and 'pettingzoo', not {backend!r}")
    envs = [build() for _ in range(num_envs)]
    from gymnasium import spaces as gym_spaces

    if isinstance(envs[0].observation_space, gym_spaces.Tuple):
        # One env of several agents with Tuple spaces (lbforaging): the parallel host.
        host = ParallelHost(cfg["id"], [TupleAgents(e) for e in envs], seeds, time_limit)
        host.reset()
        host.fresh = True
        return host
    host = Host(cfg["id"], envs, seeds)
    # The first reset settles whether masks come in info, which is part of the spec.
    host.reset()
    host.fresh = True
    return host
