"""Rebuilds a Troupe policy file (safetensors) as a PyTorch module and plays its environment.

    python3 scripts/load_policy.py POLICY.safetensors [--episodes N]     # play greedily
    python3 scripts/load_policy.py POLICY.safetensors --eval IN.json      # outputs for inputs

The file's metadata holds the model's spec (`spec`: the env's spaces and the model config) and
the env config (`env_config`: backend, kwargs, wrappers), so nothing else is needed. Any torso
(mlp, nature_cnn, cnn, impala_resnet), an optional LSTM core, and any head (categorical with
masks, multi-discrete, diagonal Gaussian) load with strict names and shapes.

Needs torch and safetensors (the torch venv scripts/setup.sh makes), and gymnasium (plus the
env's own package) to play: scripts/train.sh runs it with the envs venv on PYTHONPATH.
"""

import argparse
import importlib
import json
import math

import torch
from safetensors import safe_open
from safetensors.torch import load_file

nn = torch.nn
F = torch.nn.functional


class Torso(nn.Module):
    def __init__(self, obs, m):
        super().__init__()
        self.kind = m["torso"]
        self.channels_last = m["channels_last"]
        self.activation = torch.relu if m["activation"] == "relu" else torch.tanh
        shape = obs["shape"]
        if self.kind == "mlp":
            widths = [math.prod(shape)] + m["hidden_sizes"]
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
        self.dense = nn.Linear(c * h * w, dense)
        self.features = dense

    def forward(self, x):
        if self.kind == "mlp":
            x = x.flatten(1)
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
        return torch.relu(self.dense(x.flatten(1)))


class Encoder(nn.Module):
    """Torso, then an optional LSTM core (state = [h, c] concatenated)."""

    def __init__(self, obs, m):
        super().__init__()
        self.torso = Torso(obs, m)
        self.lstm = m["lstm_size"]
        self.features = self.torso.features
        if self.lstm:
            self.core = nn.LSTM(self.torso.features, self.lstm, batch_first=True)
            self.features = self.lstm

    def forward(self, x, state):
        h = self.torso(x)
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
        self.policy = nn.Module()
        self.value = nn.Module()
        if self.shared:
            self.encoder = Encoder(self.obs, m)
            features = self.encoder.features
        else:
            self.policy.encoder = Encoder(self.obs, m)
            self.value.encoder = Encoder(self.obs, m)
            features = self.policy.encoder.features
        if self.action["type"] == "box":
            width = len(self.action["low"])
            self.policy.log_std = nn.Parameter(torch.zeros(width))
        elif self.action["type"] == "discrete":
            width = self.action["n"]
        else:
            width = sum(self.action["nvec"])
        self.policy.head = nn.Linear(features, width)
        self.value.head = nn.Linear(features, 1)
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

    def forward(self, x, state):
        """x: float [M, obs...]; returns distribution params [M, P], values [M], next state."""
        if hasattr(self, "obs_norm"):
            n = self.obs_norm
            x = ((x - n.mean) / torch.sqrt(n.var + 1e-8)).clamp(-self.obs_clip, self.obs_clip)
        if self.shared:
            f, s = self.encoder(x, state)
            pf, vf, nxt = f, f, s
        else:
            half = state.shape[-1] // 2
            pf, ps = self.policy.encoder(x, state[..., :half] if self.state_size else None)
            vf, vs = self.value.encoder(x, state[..., half:] if self.state_size else None)
            nxt = torch.cat([ps, vs], -1) if self.state_size else None
        params = self.policy.head(pf)
        if self.action["type"] == "box":
            params = torch.cat([params, self.policy.log_std.expand_as(params)], -1)
        value = self.value.head(vf).squeeze(-1)
        if hasattr(self.value, "norm"):
            n = self.value.norm
            value = value * torch.sqrt(n.var.clamp_min(0)).clamp(1e-4, 1e6) + n.mean
        if nxt is None:
            nxt = torch.zeros(x.shape[0], 0)
        return params, value, nxt

    def greedy(self, params, mask=None):
        """The most likely action: argmax per component (legal ones only), or the Gaussian mean."""
        if self.action["type"] == "box":
            return params[..., : len(self.action["low"])]
        nvec = [self.action["n"]] if self.action["type"] == "discrete" else self.action["nvec"]
        out, offset = [], 0
        for n in nvec:
            logits = params[..., offset : offset + n]
            if mask is not None:
                logits = logits.masked_fill(torch.as_tensor(mask[..., offset : offset + n]) == 0, -1e9)
            out.append(logits.argmax(-1))
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


def play(policy, cfg, episodes, seed):
    import numpy as np

    env = make_env(cfg)
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
            a = policy.greedy(params, mask)[0].numpy()
            if policy.action["type"] == "discrete":
                a = int(a[0]) + int(getattr(env.action_space, "start", 0))
            elif policy.action["type"] == "multi_discrete":
                a = a + env.action_space.start
            obs, r, term, trunc, info = env.step(a)
            total += float(r)
            done = term or trunc
        returns.append(total)
    return returns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--eval", help="JSON with obs [M, obs...] and state [M, S]: print the model's outputs")
    args = ap.parse_args()
    policy, env_config = load(args.path)
    if args.eval:
        with open(args.eval) as f:
            inp = json.load(f)
        with torch.no_grad():
            params, value, state = policy(policy.prepare(torch.tensor(inp["obs"])), torch.tensor(inp["state"]))
        print(json.dumps({"params": params.tolist(), "value": value.tolist(), "state": state.tolist()}))
        return
    returns = play(policy, env_config, args.episodes, args.seed)
    print(json.dumps({"env": env_config["id"], "episodes": len(returns), "mean_return": sum(returns) / len(returns)}))


if __name__ == "__main__":
    main()
