"""Rebuilds Troupe policy files (safetensors) as PyTorch modules and plays their environment.

    python3 scripts/load_policy.py POLICY.safetensors [--episodes N]     # play greedily
    python3 scripts/load_policy.py POLICY.safetensors --sample           # sample, as actors act
    python3 scripts/load_policy.py POLICY.safetensors --eval IN.json      # outputs for inputs
    python3 scripts/load_policy.py DIR/policy-agent_0.safetensors DIR/policy-agent_1.safetensors
    python3 scripts/load_policy.py DIR                                     # a run's folder

The file's metadata holds the model's spec (`spec`: the policy's spaces, its agents and the
model config) and the env config (`env_config`: backend, kwargs, wrappers), so nothing else is
needed. Any torso (mlp, nature_cnn, cnn, impala_resnet), an optional LSTM core, and any head
(categorical with masks, multi-discrete, diagonal Gaussian) load with strict names and shapes,
as do the inputs of multi-agent policies: the agent one-hot (`agent_id_input`) and a
centralized critic (an MLP over the env's global state, with the one-hot).

`--eval IN.json` prints `{"params", "value", "state"}` for the inputs `obs` [M, obs...] and
`state` [M, S] (the recurrent state); a model that reads more also takes `agents` (each row's
index among the policy's agents, [M], or the one-hot rows [M, A]) and `env_state` [M, state]
(the critic's input): the same as Troupe's model given `Model::input(obs, agents, states)`.

Multi-agent envs (a PettingZoo env, `backend = "pettingzoo"`; a Gymnasium env of Tuple spaces,
lbforaging's `Foraging-...` ids with `imports = ["lbforaging"]`; the native LBF ids, played
with the lbforaging package's env of the same id, which has the same rules) are played with one
or several policy files (a run of several policies leaves `policy-NAME.safetensors` each; a
folder stands for its `policy-*.safetensors`, else its `policy.safetensors`). Every agent of the
env acts greedily with the policy whose spec lists it, reading the one-hot of its index there
when the policy has the agent-id input; the output gives each agent's returns and the team's
(every agent's rewards summed). A single-agent env prints its mean return as before.

Needs torch and safetensors (the torch venv scripts/setup.sh makes), and gymnasium (plus the
env's own package: pettingzoo, mpe2, lbforaging, ...) to play: scripts/train.sh runs it with
the envs venv on PYTHONPATH.
"""

import argparse
import importlib
import json
import math
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file

nn = torch.nn
F = torch.nn.functional


class Torso(nn.Module):
    """`extra` more input floats (the agent one-hot) enter the first layer of an MLP, or the
    dense layer beside a conv torso's features; `mlp` builds an MLP whatever the config (the
    centralized critic's)."""

    def __init__(self, obs, m, extra=0, mlp=False):
        super().__init__()
        self.kind = "mlp" if mlp else m["torso"]
        self.channels_last = m["channels_last"]
        self.activation = torch.relu if m["activation"] == "relu" else torch.tanh
        shape = obs["shape"]
        if self.kind == "mlp":
            widths = [math.prod(shape) + extra] + m["hidden_sizes"]
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
            self.features = widths[-1]
            return
        c, h, w = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        if self.kind in ("nature_cnn", "cnn"):
            if self.kind == "nature_cnn":
                spec = list(zip([32, 64, 64], [8, 4, 3], [4, 2, 1]))
                dense = 512
            else:
                spec = list(zip(m["conv_channels"], m["conv_kernels"], m["conv_strides"]))
                dense = m["dense_size"]
            convs = []
            for out, k, s in spec:
                convs.append(nn.Conv2d(c, out, k, stride=s))
                c, h, w = out, (h - k) // s + 1, (w - k) // s + 1
            self.convs = nn.ModuleList(convs)
        else:  # impala_resnet
            stages = []
            for out in m["impala_channels"]:
                stage = nn.Module()
                stage.conv = nn.Conv2d(c, out, 3, padding=1)
                for r in range(2):
                    block = nn.Module()
                    block.conv0 = nn.Conv2d(out, out, 3, padding=1)
                    block.conv1 = nn.Conv2d(out, out, 3, padding=1)
                    setattr(stage, f"res{r}", block)
                stages.append(stage)
                c, h, w = out, (h + 1) // 2, (w + 1) // 2
            self.stages = nn.ModuleList(stages)
            dense = m["dense_size"]
        self.dense = nn.Linear(c * h * w + extra, dense)
        self.features = dense

    def forward(self, x, extra=None):
        def with_extra(h):
            return h if extra is None else torch.cat([h, extra], -1)

        if self.kind == "mlp":
            x = with_extra(x.flatten(1))
            for layer in self.layers:
                x = self.activation(layer(x))
            return x
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        if self.kind in ("nature_cnn", "cnn"):
            for conv in self.convs:
                x = torch.relu(conv(x))
        else:
            for s in self.stages:
                x = F.max_pool2d(s.conv(x), 3, 2, 1)
                for block in (s.res0, s.res1):
                    x = x + block.conv1(torch.relu(block.conv0(torch.relu(x))))
            x = torch.relu(x)
        return torch.relu(self.dense(with_extra(x.flatten(1))))


class Encoder(nn.Module):
    """Torso, then an optional LSTM core (state = [h, c] concatenated)."""

    def __init__(self, obs, m, extra=0, mlp=False):
        super().__init__()
        self.torso = Torso(obs, m, extra, mlp)
        self.lstm = m["lstm_size"]
        self.features = self.torso.features
        if self.lstm:
            self.core = nn.LSTM(self.torso.features, self.lstm, batch_first=True)
            self.features = self.lstm

    def forward(self, x, state, extra=None):
        h = self.torso(x, extra)
        if not self.lstm:
            return h, None
        h0, c0 = state.chunk(2, -1)
        out, (h1, c1) = self.core(h.unsqueeze(1), (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
        return h1[0], torch.cat([h1[0], c1[0]], -1)


class Policy(nn.Module):
    """Troupe's model: tensor names match the policy file's (see troupe/src/model/mod.rs)."""

    def __init__(self, spec, names=()):
        super().__init__()
        self.spec = spec
        env, m = spec["env"], spec["model"]
        self.obs = env["observation"]
        self.action = env["action"]
        self.shared = m["share_torso"]
        # The policy's name and its agents (a single-agent file's: `default`, [agent_0]).
        self.name = env.get("policy", "default")
        self.agents = list(env.get("agents", ["agent_0"]))
        # Width of the agent one-hot (0 without the agent-id input) and the critic's state.
        self.ids = len(self.agents) if env.get("agent_id_input") else 0
        self.critic_state = env.get("state")
        self.policy = nn.Module()
        self.value = nn.Module()
        if self.critic_state is not None and self.shared:
            raise ValueError("a centralized critic needs separate torsos (model.share_torso = false)")
        if self.shared:
            self.encoder = Encoder(self.obs, m, self.ids)
            features = value_features = self.encoder.features
        else:
            self.policy.encoder = Encoder(self.obs, m, self.ids)
            if self.critic_state is not None:
                # A centralized critic: an MLP over the env's state, with the agent one-hot.
                self.value.encoder = Encoder(self.critic_state, m, self.ids, mlp=True)
            else:
                self.value.encoder = Encoder(self.obs, m, self.ids)
            features = self.policy.encoder.features
            value_features = self.value.encoder.features
        if self.action["type"] == "box":
            width = len(self.action["low"])
            self.policy.log_std = nn.Parameter(torch.zeros(width))
        elif self.action["type"] == "discrete":
            width = self.action["n"]
        else:
            width = sum(self.action["nvec"])
        self.policy.head = nn.Linear(features, width)
        self.value.head = nn.Linear(value_features, 1)
        shape = self.obs["shape"]
        self.obs_clip = m.get("observation_clip", 10.0)
        if m.get("normalize_observations"):
            # Running statistics, applied as the actors apply them.
            self.obs_norm = nn.Module()
            self.obs_norm.register_buffer("mean", torch.zeros(shape))
            self.obs_norm.register_buffer("var", torch.ones(shape))
            self.obs_norm.register_buffer("count", torch.zeros(1))
        if "value.norm.mean" in names:
            # The learner's value normalisation: the head predicts (v - mean) / std.
            self.value.norm = nn.Module()
            for b in ("mean", "var", "count"):
                self.value.norm.register_buffer(b, torch.zeros(1))
        cores = 1 if self.shared else 2
        self.state_size = cores * 2 * m["lstm_size"] if m["lstm_size"] else 0

    def initial_state(self, batch):
        return torch.zeros(batch, self.state_size)

    def prepare(self, obs):
        x = torch.as_tensor(obs)
        return x.float() / 255.0 if self.obs["dtype"] == "u8" else x.float()

    def one_hot(self, agents):
        """The agent one-hot [M, A] from indices among the policy's agents ([M]), or None
        without the agent-id input. Rows already one-hot ([M, A]) pass through."""
        if not self.ids:
            return None
        a = torch.as_tensor(agents)
        if a.dim() == 2:
            if a.shape[-1] != self.ids:
                raise ValueError(f"agents: expected one-hot rows of {self.ids}, got {list(a.shape)}")
            return a.float()
        return F.one_hot(a.long(), self.ids).float()

    def _normalize(self, x):
        if hasattr(self, "obs_norm"):
            n = self.obs_norm
            x = ((x - n.mean) / torch.sqrt(n.var + 1e-8)).clamp(-self.obs_clip, self.obs_clip)
        return x

    def _params(self, pf):
        params = self.policy.head(pf)
        if self.action["type"] == "box":
            params = torch.cat([params, self.policy.log_std.expand_as(params)], -1)
        return params

    def forward(self, x, state, ids=None, critic=None):
        """x: float [M, obs...]; ids: the agent one-hot [M, A] (with the agent-id input);
        critic: the env's state [M, S] (with a centralized critic). Returns distribution
        params [M, P], values [M], next state."""
        if self.ids and ids is None:
            raise ValueError(f"policy {self.name} reads the agent one-hot: give the agents' indices")
        if self.critic_state is not None and critic is None:
            raise ValueError(f"policy {self.name} has a centralized critic: give the env states")
        x = self._normalize(x)
        if self.shared:
            f, s = self.encoder(x, state, ids)
            pf, vf, nxt = f, f, s
        else:
            half = state.shape[-1] // 2
            pf, ps = self.policy.encoder(x, state[..., :half] if self.state_size else None, ids)
            vx = x if self.critic_state is None else critic.float()
            vf, vs = self.value.encoder(vx, state[..., half:] if self.state_size else None, ids)
            nxt = torch.cat([ps, vs], -1) if self.state_size else None
        params = self._params(pf)
        value = self.value.head(vf).squeeze(-1)
        if hasattr(self.value, "norm"):
            n = self.value.norm
            value = value * torch.sqrt(n.var.clamp_min(0)).clamp(1e-4, 1e6) + n.mean
        if nxt is None:
            nxt = torch.zeros(x.shape[0], 0)
        return params, value, nxt

    def act(self, x, state, ids=None):
        """The policy side alone (what acting needs; a critic's state is not read): params and
        the next state, whose value-core half (if any) is left as it was."""
        if self.ids and ids is None:
            raise ValueError(f"policy {self.name} reads the agent one-hot: give the agents' indices")
        x = self._normalize(x)
        if self.shared:
            pf, nxt = self.encoder(x, state, ids)
        else:
            half = state.shape[-1] // 2
            pf, ps = self.policy.encoder(x, state[..., :half] if self.state_size else None, ids)
            nxt = torch.cat([ps, state[..., half:]], -1) if self.state_size else None
        if nxt is None:
            nxt = torch.zeros(x.shape[0], 0)
        return self._params(pf), nxt

    def choose(self, params, mask=None, generator=None):
        """The most likely action (argmax per component, legal ones only; the Gaussian's mean),
        or with a generator a sample of the policy's distribution, as the actors act."""
        if self.action["type"] == "box":
            d = len(self.action["low"])
            mean = params[..., :d]
            if generator is None:
                return mean
            noise = torch.randn(mean.shape, generator=generator)
            return mean + noise * params[..., d : 2 * d].exp()
        nvec = [self.action["n"]] if self.action["type"] == "discrete" else self.action["nvec"]
        out, offset = [], 0
        for n in nvec:
            logits = params[..., offset : offset + n]
            if mask is not None:
                logits = logits.masked_fill(torch.as_tensor(mask[..., offset : offset + n]) == 0, -1e9)
            if generator is None:
                out.append(logits.argmax(-1))
            else:
                probs = torch.softmax(logits, -1).reshape(-1, n)
                out.append(torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:-1]))
            offset += n
        return torch.stack(out, -1)


def load(path):
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    spec = json.loads(meta["spec"])
    tensors = load_file(path)
    policy = Policy(spec, names=tensors.keys())
    policy.load_state_dict(tensors, strict=True)
    policy.eval()
    env_config = json.loads(meta["env_config"]) if "env_config" in meta else {"id": spec["env"]["id"]}
    return policy, env_config


class _OneEnvPool:
    """An EnvPool of one env behind the single-env Gymnasium API (what `play` drives)."""

    def __init__(self, env_id, kwargs):
        import envpool
        import numpy as np

        self.np = np
        self.env = envpool.make_gymnasium(env_id, num_envs=1, **kwargs)
        self.action_space = self.env.action_space

    def reset(self, seed=None):
        obs, info = self.env.reset()
        return obs[0], {}

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(self.np.asarray([action]))
        return obs[0], float(r[0]), bool(term[0]), bool(trunc[0]), {}


class _TupleAgents:
    """A Gymnasium env of Tuple spaces (lbforaging's: one entry per agent, a reward list, one
    `done` for all) in PettingZoo's parallel API, agents `agent_0`..., as the actor hosts it."""

    def __init__(self, env):
        self.env = env
        self.possible_agents = [f"agent_{i}" for i in range(len(env.observation_space.spaces))]
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
        n = len(self.possible_agents)
        per = lambda x: list(x) if isinstance(x, (list, tuple)) else [x] * n  # noqa: E731
        term, trunc = per(terminated), per(truncated)
        self.agents = [a for a, d, t in zip(self.possible_agents, term, trunc) if not (d or t)]
        return (
            dict(zip(self.possible_agents, obs)),
            dict(zip(self.possible_agents, per(rewards))),
            dict(zip(self.possible_agents, term)),
            dict(zip(self.possible_agents, trunc)),
            {a: {} for a in self.possible_agents},
        )

    def close(self):
        self.env.close()


def _native_foraging(env_id):
    """A native Level-Based Foraging id (`Foraging[-2s]-SxS-Pp-Ff[-coop]-v3`, troupe/src/env/
    foraging.rs): lbforaging registers the same id, with the same rules (lbforaging 2.0.0)."""
    return env_id.startswith("Foraging") and env_id.endswith("-v3") and "grid" not in env_id


def make_env(cfg):
    import sys

    import gymnasium as gym

    for path in reversed(cfg.get("python_path", [])):
        if path not in sys.path:
            sys.path.insert(0, path)
    for module in cfg.get("imports", []):
        if ":" in module:
            mod, _, fn = module.partition(":")
            getattr(importlib.import_module(mod), fn)()
        else:
            importlib.import_module(module)
    if cfg.get("backend") == "envpool":
        return _OneEnvPool(cfg["id"], cfg.get("kwargs", {}))
    if cfg.get("backend") == "factory":
        mod, _, fn = cfg["factory"].partition(":")
        return getattr(importlib.import_module(mod), fn)(**cfg.get("kwargs", {}))
    if cfg.get("backend") == "pettingzoo":
        mod, _, fn = cfg["factory"].partition(":")
        return getattr(importlib.import_module(mod), fn)(**cfg.get("kwargs", {}))
    if cfg.get("backend") == "native" and _native_foraging(cfg["id"]):
        # The native LBF (kwargs and wrappers do not apply to native envs): lbforaging's own.
        try:
            importlib.import_module("lbforaging")
        except ImportError as e:
            raise SystemExit(f"{cfg['id']} is played with the lbforaging package (pip install lbforaging==2.0.0): {e}")
        return gym.make(cfg["id"])
    env = gym.make(cfg["id"], **cfg.get("kwargs", {}))
    for w in cfg.get("wrappers", []):
        name = w["name"]
        if ":" in name:
            mod, _, fn = name.partition(":")
            wrapper = getattr(importlib.import_module(mod), fn)
        else:
            wrapper = getattr(gym.wrappers, name)
        env = wrapper(env, **w.get("kwargs", {}))
    return env


def as_parallel(env):
    """The env in PettingZoo's parallel API if it has several agents (a PettingZoo env, an AEC
    one through PettingZoo's own conversion, or a Gymnasium env of Tuple spaces), else None."""
    if hasattr(env, "possible_agents"):
        if hasattr(env, "agent_iter"):
            from pettingzoo.utils.conversions import aec_to_parallel

            env = aec_to_parallel(env)
        return env
    from gymnasium import spaces

    if isinstance(getattr(env, "observation_space", None), spaces.Tuple):
        return _TupleAgents(env)
    return None


def play(policy, cfg, episodes, seed, env=None, generator=None):
    import numpy as np

    env = make_env(cfg) if env is None else env
    returns = []
    for e in range(episodes):
        obs, info = env.reset(seed=seed + e)
        state = policy.initial_state(1)
        total, done = 0.0, False
        while not done:
            mask = None
            if isinstance(obs, dict):
                obs, mask = obs["observation"], np.asarray(obs["action_mask"])[None]
            elif isinstance(info, dict) and "action_mask" in info:
                mask = np.asarray(info["action_mask"])[None]
            x = np.asarray(obs)
            if x.dtype == np.bool_:
                x = x.astype(np.uint8) * 255  # as the host sends boolean frames
            with torch.no_grad():
                params, _, state = policy(policy.prepare(x[None]), state)
            a = policy.choose(params, mask, generator)[0].numpy()
            if policy.action["type"] == "discrete":
                a = int(a[0]) + int(getattr(env.action_space, "start", 0))
            elif policy.action["type"] == "multi_discrete":
                a = a + env.action_space.start
            obs, r, term, trunc, info = env.step(a)
            total += float(r)
            done = term or trunc
        returns.append(total)
    return returns


def assign(policies, agents):
    """Each agent of the env: (its policy, its index among the policy's agents). Every agent
    needs exactly one policy, and every policy's agents must be the env's."""
    owner = {}
    for path, p in policies:
        for i, a in enumerate(p.agents):
            if a not in agents:
                raise SystemExit(f"{path}: policy {p.name} acts for agent {a!r}, but the env's agents are {agents}")
            if a in owner:
                raise SystemExit(f"agent {a!r} is in two policy files: {owner[a][2]} and {path}")
            owner[a] = (p, i, path)
    missing = [a for a in agents if a not in owner]
    if missing:
        have = ", ".join(f"{path} ({p.name}: {p.agents})" for path, p in policies)
        raise SystemExit(
            f"no policy file acts for agents {missing} of the env (agents {agents}); given {have}. "
            "A run of several policies leaves policy-NAME.safetensors each: pass them all, or the run's folder"
        )
    return {a: (p, i) for a, (p, i, _) in owner.items()}


def play_multi(policies, env, episodes, seed, generator=None):
    """Episodes of a parallel env, every agent acting with its policy (greedily, or sampling
    with `generator`). Returns the per-agent returns of each episode: a list of {agent: return}."""
    import numpy as np

    agents = list(env.possible_agents)
    owner = assign(policies, agents)
    out = []
    for e in range(episodes):
        obs, infos = env.reset(seed=seed + e)
        # Each policy's recurrent state, one row per agent of it.
        states = {id(p): p.initial_state(len(p.agents)) for _, p in policies}
        totals = {a: 0.0 for a in agents}
        while env.agents:
            live = [a for a in env.agents if a in obs]
            actions = {}
            for _, p in policies:
                mine = [a for a in live if owner[a][0] is p]
                if not mine:
                    continue
                rows = torch.tensor([owner[a][1] for a in mine])
                xs, masks = [], []
                for a in mine:
                    o, mask = obs[a], None
                    if isinstance(o, dict):
                        o, mask = o["observation"], o["action_mask"]
                    elif isinstance(infos.get(a), dict) and "action_mask" in infos[a]:
                        mask = infos[a]["action_mask"]
                    x = np.asarray(o)
                    if x.dtype == np.bool_:
                        x = x.astype(np.uint8) * 255  # as the host sends boolean frames
                    xs.append(x)
                    masks.append(mask)
                mask = None
                if all(m is not None for m in masks):
                    mask = np.stack([np.asarray(m) for m in masks])
                with torch.no_grad():
                    params, nxt = p.act(p.prepare(np.stack(xs)), states[id(p)][rows], p.one_hot(rows))
                states[id(p)][rows] = nxt
                chosen = p.choose(params, mask, generator).numpy()
                for a, g in zip(mine, chosen):
                    space = env.action_space(a)
                    if p.action["type"] == "discrete":
                        actions[a] = int(g[0]) + int(getattr(space, "start", 0))
                    elif p.action["type"] == "multi_discrete":
                        actions[a] = g + space.start
                    else:
                        actions[a] = g.astype(getattr(space, "dtype", np.float32), copy=False)
            obs, rewards, term, trunc, infos = env.step(actions)
            for a, r in rewards.items():
                totals[a] += float(r)
        out.append(totals)
    return out


def policy_paths(paths):
    """The policy files the arguments name: files as given; a folder, its policy-*.safetensors
    (a run of several policies), else its policy.safetensors."""
    import glob

    files = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        several = sorted(glob.glob(os.path.join(path, "policy-*.safetensors")))
        if several:
            files.extend(several)
        elif os.path.exists(os.path.join(path, "policy.safetensors")):
            files.append(os.path.join(path, "policy.safetensors"))
        else:
            raise SystemExit(f"{path}: no policy.safetensors or policy-NAME.safetensors in this folder")
    return files


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+", metavar="path", help="policy files, or a run's folder")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument(
        "--sample",
        action="store_true",
        help="act by sampling the policy's distribution (seeded by --seed), as the actors do, instead of greedily: "
        "greedy play can loop where a trained policy relies on its randomness (LBF agents waiting on each other)",
    )
    ap.add_argument(
        "--eval",
        help="JSON with obs [M, obs...] and state [M, S] (and agents [M], env_state [M, state] where the model reads them): print the model's outputs",
    )
    args = ap.parse_args()
    generator = torch.Generator().manual_seed(args.seed) if args.sample else None
    files = policy_paths(args.paths)
    if args.eval:
        if len(files) != 1:
            raise SystemExit("--eval takes one policy file")
        policy, _ = load(files[0])
        with open(args.eval) as f:
            inp = json.load(f)
        ids = policy.one_hot(inp["agents"]) if policy.ids else None
        critic = torch.tensor(inp["env_state"]) if policy.critic_state is not None else None
        with torch.no_grad():
            params, value, state = policy(policy.prepare(torch.tensor(inp["obs"])), torch.tensor(inp["state"]), ids, critic)
        print(json.dumps({"params": params.tolist(), "value": value.tolist(), "state": state.tolist()}))
        return
    policies = [(path, *load(path)) for path in files]
    policy, env_config = policies[0][1], policies[0][2]
    for path, p, cfg in policies[1:]:
        if p.spec["env"]["id"] != policy.spec["env"]["id"]:
            raise SystemExit(f"{path} is a policy of env {p.spec['env']['id']}, {files[0]} of {policy.spec['env']['id']}")
    env = make_env(env_config)
    parallel = as_parallel(env)
    if parallel is None:
        if len(policies) > 1:
            raise SystemExit(f"env {env_config['id']} has one agent: give one policy file, not {len(policies)}")
        returns = play(policy, env_config, args.episodes, args.seed, env, generator)
        print(json.dumps({"env": env_config["id"], "episodes": len(returns), "mean_return": sum(returns) / len(returns)}))
        return
    import warnings

    # lbforaging returns a list of rewards, which Gymnasium's env checker warns about.
    warnings.filterwarnings("ignore", message=".*reward returned by `step\\(\\)` must be a float")
    loaded = [(path, p) for path, p, _ in policies]
    episodes = play_multi(loaded, parallel, args.episodes, args.seed, generator)
    n = len(episodes)
    team = [sum(ep.values()) for ep in episodes]
    owner = assign(loaded, list(parallel.possible_agents))
    agents = {
        a: {
            "policy": owner[a][0].name,
            "mean_return": sum(ep[a] for ep in episodes) / n,
            "returns": [ep[a] for ep in episodes],
        }
        for a in parallel.possible_agents
    }
    by_policy = {}
    for _, p in loaded:
        by_policy[p.name] = sum(agents[a]["mean_return"] for a in p.agents)
    print(
        json.dumps(
            {
                "env": env_config["id"],
                "episodes": n,
                "mean_return": sum(team) / n,
                "team_returns": team,
                "agents": agents,
                "policies": by_policy,
            }
        )
    )


if __name__ == "__main__":
    main()
