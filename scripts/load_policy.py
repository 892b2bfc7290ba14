"""Loads a Troupe policy (safetensors) in PyTorch and runs it greedily on CartPole-v1.

    python3 scripts/load_policy.py out/train/policy.safetensors [--episodes N]

Needs torch and safetensors (the venv scripts/setup.sh makes has both). The CartPole here is a
plain-Python copy of Gymnasium's dynamics, so no gymnasium install is needed.
"""
import argparse
import json
import math
import random

import torch
from safetensors import safe_open
from safetensors.torch import load_file


class Mlp(torch.nn.Module):
    def __init__(self, sizes, out):
        super().__init__()
        self.torso = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.head = torch.nn.Linear(sizes[-1], out)

    def forward(self, x):
        for layer in self.torso:
            x = torch.relu(layer(x))
        return self.head(x)


class Policy(torch.nn.Module):
    """Troupe's network: separate policy and value MLPs (tensor names in docs/CONFIG.md)."""

    def __init__(self, obs_size, num_actions, hidden_sizes):
        super().__init__()
        self.policy = Mlp([obs_size] + hidden_sizes, num_actions)
        self.value = Mlp([obs_size] + hidden_sizes, 1)

    def forward(self, x):
        return self.policy(x), self.value(x).squeeze(-1)


def cartpole_episode(policy, rng):
    g, mc, mp, l, f, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    tm, pml = mp + mc, mp * l
    s = [rng.uniform(-0.05, 0.05) for _ in range(4)]
    for t in range(1, 501):
        with torch.no_grad():
            logits, _ = policy(torch.tensor([s], dtype=torch.float32))
        a = int(logits.argmax(-1))
        x, xd, th, thd = s
        force = f if a == 1 else -f
        c, si = math.cos(th), math.sin(th)
        temp = (force + pml * thd * thd * si) / tm
        tha = (g * si - c * temp) / (l * (4.0 / 3.0 - mp * c * c / tm))
        xa = temp - pml * tha * c / tm
        s = [x + tau * xd, xd + tau * xa, th + tau * thd, thd + tau * tha]
        if abs(s[0]) > 2.4 or abs(s[2]) > 12 * 2 * math.pi / 360:
            return t
    return 500


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--episodes", type=int, default=20)
    args = ap.parse_args()
    with safe_open(args.path, framework="pt") as f:
        meta = f.metadata()
    policy = Policy(int(meta["observation_size"]), int(meta["num_actions"]), json.loads(meta["hidden_sizes"]))
    policy.load_state_dict(load_file(args.path), strict=True)
    rng = random.Random(0)
    returns = [cartpole_episode(policy, rng) for _ in range(args.episodes)]
    print(json.dumps({"env": meta["env"], "episodes": len(returns), "mean_return": sum(returns) / len(returns)}))


if __name__ == "__main__":
    main()
