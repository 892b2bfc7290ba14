#!/usr/bin/env bash
# Checks the container image and the docker-compose stack without a Docker engine:
#   1. hadolint Dockerfile (any warning fails; .hadolint.yaml lists the ignored rules and why);
#      yamllint on the compose files;
#   2. the Dockerfile's COPY/ADD sources exist and .dockerignore keeps them in the context, every
#      COPY --from names an earlier stage, and the runtime and actor targets exist;
#   3. docker-compose config -q on compose.yaml alone and with each override file (TLS paths
#      pointed at dummy files in a temp dir), compose.teams.yaml (one learner per policy) among
#      them;
#   4. in the resolved stacks: every bind-mounted file exists, images carry a pinned tag, build
#      targets are Dockerfile stages, the run config exists, the Troupe services have
#      healthchecks and the actor service can be scaled (no container_name, no host ports); the
#      learners (one service per policy) each have their own TROUPE_POLICY, lease id, volume and
#      advertised address (their own service name), and the stack's Prometheus config scrapes
#      exactly those learners; with compose.replay.yaml a `replay` service runs `coordinator
#      --role replay` on the coordinator's run config with its own Redis shard(s), the
#      coordinator runs --role coordinator, and Prometheus gets replay's target (job
#      troupe-replay); without it there is no replay service and the coordinator serves replay.
# Usage: scripts/checks/images.sh   (from anywhere; installs its tools on first use)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../setup.sh
source "$ROOT/scripts/setup.sh"
troupe_install_deploy_tools
cd "$ROOT"

step() { printf '[images] %s\n' "$*" >&2; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

step "hadolint Dockerfile"
hadolint --config .hadolint.yaml Dockerfile

step "yamllint compose files and .hadolint.yaml (.yamllint.yaml)"
yamllint --strict compose.yaml compose.gpu.yaml compose.tls.yaml compose.teams.yaml compose.replay.yaml .hadolint.yaml

step "Dockerfile COPY sources, stages and .dockerignore"
python3 - Dockerfile .dockerignore <<'PY'
import json, re, shlex, sys
from pathlib import Path

dockerfile, ignore_file = Path(sys.argv[1]), Path(sys.argv[2])
errors = []

# Instructions, with line continuations joined (comments dropped).
lines, buf = [], ""
for raw in dockerfile.read_text().splitlines():
    if not buf and raw.lstrip().startswith("#"):
        continue
    if raw.rstrip().endswith("\\"):
        buf += raw.rstrip()[:-1] + " "
        continue
    buf += raw
    if buf.strip():
        lines.append(buf.strip())
    buf = ""

def ignore_patterns():
    pats = []
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        pat = pat.strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**", i):
                rx += ".*"
                i += 2
                if pat.startswith("/", i):
                    rx += "/?"
                    i += 1
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        pats.append((neg, re.compile(rx + r"\Z")))
    return pats

PATTERNS = ignore_patterns()

def excluded(path):
    """True if .dockerignore leaves `path` (relative to the context) out of the context."""
    parts = Path(path).parts
    result = False
    for n in range(1, len(parts) + 1):
        prefix = "/".join(parts[:n])
        for neg, rx in PATTERNS:
            if rx.match(prefix):
                result = not neg
        if result:
            return True
    return result

stages, targets = [], set()
for line in lines:
    word, _, rest = line.partition(" ")
    word = word.upper()
    if word == "FROM":
        m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.I)
        base, name = m.group(1), m.group(2)
        if ":" not in base and base not in stages:
            errors.append(f"FROM {base}: no tag")
        if base.endswith(":latest"):
            errors.append(f"FROM {base}: pin a tag, not latest")
        if name:
            stages.append(name)
    elif word in ("COPY", "ADD"):
        rest = rest.strip()
        if rest.startswith("["):
            args = json.loads(rest)
        else:
            args = shlex.split(rest)
        flags = [a for a in args if a.startswith("--")]
        paths = [a for a in args if not a.startswith("--")]
        sources = paths[:-1]
        from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if from_stage is not None:
            if from_stage not in stages:
                errors.append(f"{word} --from={from_stage}: no earlier stage of that name")
            continue
        for src in sources:
            if src in (".", "./"):
                continue
            if not Path(src).exists():
                errors.append(f"{word} {src}: no such file in the repository")
            elif excluded(src.rstrip("/")):
                errors.append(f"{word} {src}: excluded from the build context by .dockerignore")

for need in ("runtime", "actor"):
    if need not in stages:
        errors.append(f"no stage named {need!r} (the image targets)")
# What the builder's `COPY . .` must carry for the workspace build.
for path in ("Cargo.toml", "Cargo.lock", "configs/cartpole.toml", "scripts/requirements-envs.txt"):
    if excluded(path):
        errors.append(f"{path}: excluded from the build context by .dockerignore")

if errors:
    sys.exit("Dockerfile:\n  " + "\n  ".join(errors))
print(f"Dockerfile: stages {', '.join(stages)}; COPY sources present", file=sys.stderr)
PY

# Dummy TLS material and tokens for compose.tls.yaml.
mkdir -p "$TMP/secrets/tls" "$TMP/secrets/tokens"
touch "$TMP/secrets/tls/tls.crt" "$TMP/secrets/tls/tls.key" "$TMP/secrets/tls/ca.crt" \
  "$TMP/secrets/tokens/actor" "$TMP/secrets/tokens/learner" "$TMP/secrets/tokens/evaluator" "$TMP/secrets/tokens/admin"
export TROUPE_SECRETS_DIR="$TMP/secrets"
# Checks run on the defaults, whatever the caller's shell sets.
unset COMPOSE_FILE COMPOSE_PROFILES TROUPE_TAG TROUPE_CONFIG_NAME TROUPE_DEVICE TROUPE_BIND

stacks=(
  "compose.yaml"
  "compose.yaml compose.gpu.yaml"
  "compose.yaml compose.tls.yaml"
  "compose.yaml compose.gpu.yaml compose.tls.yaml"
  "compose.yaml compose.teams.yaml"
  "compose.yaml compose.teams.yaml compose.gpu.yaml compose.tls.yaml"
  "compose.yaml compose.replay.yaml"
  "compose.yaml compose.replay.yaml compose.tls.yaml"
  "compose.yaml compose.teams.yaml compose.replay.yaml compose.gpu.yaml compose.tls.yaml"
)
i=0
for stack in "${stacks[@]}"; do
  args=()
  for f in $stack; do args+=(-f "$f"); done
  step "docker-compose ${args[*]} config -q"
  docker-compose "${args[@]}" config -q
  docker-compose "${args[@]}" config --format json >"$TMP/stack-$i.json"
  i=$((i + 1))
done

step "compose stacks: mounts, images, targets, healthchecks, scaling"
python3 - "$ROOT" "$TMP" "${#stacks[@]}" <<'PY'
import json, re, sys
from pathlib import Path
import yaml

root, tmp, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", (root / "Dockerfile").read_text(), re.M | re.I))
errors = []
for i in range(count):
    stack = json.loads((tmp / f"stack-{i}.json").read_text())
    for name, svc in stack["services"].items():
        where = f"stack {i}, service {name}"
        image = svc.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            errors.append(f"{where}: image {image!r} needs a pinned tag")
        build = svc.get("build")
        if build:
            if Path(build["context"]).resolve() != root:
                errors.append(f"{where}: build context {build['context']} is not the repository root")
            if build.get("target") not in stages:
                errors.append(f"{where}: build target {build.get('target')!r} is not a Dockerfile stage")
        for vol in svc.get("volumes", []):
            if vol.get("type") != "bind":
                continue
            src = Path(vol["source"])
            if not src.exists():
                errors.append(f"{where}: bind source {src} does not exist")
            elif not (src.resolve().is_relative_to(root) or src.resolve().is_relative_to(tmp.resolve())):
                errors.append(f"{where}: bind source {src} lies outside the repository")
        if name in ("coordinator", "replay", "actor") or name.startswith("learner"):
            test = (svc.get("healthcheck") or {}).get("test") or []
            if "troupe-health" not in test:
                errors.append(f"{where}: no troupe-health healthcheck")
    actor = stack["services"].get("actor", {})
    if actor.get("container_name") or actor.get("ports"):
        errors.append(f"stack {i}: the actor service must have no container_name and no host ports (--scale)")
    # One learner service per policy: `learner` (policy default), or compose.teams.yaml's
    # learner-<policy> services. Each its own policy, lease id, checkpoint volume and address.
    learners = {n: s for n, s in stack["services"].items() if n.startswith("learner") and (s.get("command") or [""])[0] == "learner"}
    if not learners:
        errors.append(f"stack {i}: no learner service")
    seen = {}
    for name, learner in learners.items():
        env = learner.get("environment") or {}
        if learner.get("stop_grace_period") not in ("2m0s", "120s"):
            errors.append(f"stack {i}: {name} stop_grace_period is {learner.get('stop_grace_period')}, want 120s")
        policy = env.get("TROUPE_POLICY")
        want = "default" if name == "learner" else name.removeprefix("learner-")
        if policy != want:
            errors.append(f"stack {i}: {name} has TROUPE_POLICY={policy!r}, want {want!r}")
        adv = env.get("TROUPE_LEARNER_ADVERTISE", "")
        if not re.fullmatch(r"https?://" + re.escape(name) + r":50052", adv):
            errors.append(f"stack {i}: {name} advertises {adv!r}, not its own service name {name}:50052")
        vols = tuple(v.get("source") for v in learner.get("volumes", []) if v.get("target") == "/var/lib/troupe")
        for key, value in (("TROUPE_LEARNER_ID", env.get("TROUPE_LEARNER_ID")), ("volume", vols)):
            if not value:
                errors.append(f"stack {i}: {name} has no {key}")
            elif (key, value) in seen:
                errors.append(f"stack {i}: {name} and {seen[(key, value)]} share {key} {value}")
            seen[(key, value)] = name
    prom = stack["services"].get("prometheus", {})
    cfg = next((v["source"] for v in prom.get("volumes", []) if v.get("target") == "/etc/prometheus/prometheus.yml"), None)
    if cfg:
        jobs = {j["job_name"]: j for j in yaml.safe_load(Path(cfg).read_text())["scrape_configs"]}
        targets = {t for sc in jobs.get("troupe-learner", {}).get("static_configs", []) for t in sc.get("targets", [])}
        if targets != {f"{n}:9102" for n in learners}:
            errors.append(f"stack {i}: {Path(cfg).name} scrapes learners {sorted(targets)}, the stack runs {sorted(learners)}")
    command = stack["services"].get("coordinator", {}).get("command", [])
    for arg in command:
        if arg.startswith("/etc/troupe/configs/"):
            if not (root / "configs" / arg.removeprefix("/etc/troupe/configs/")).is_file():
                errors.append(f"stack {i}: coordinator config {arg} is not in configs/")
    # Replay: inside the coordinator (--role all, the default), or with compose.replay.yaml the
    # `replay` service (`coordinator --role replay`) beside a --role coordinator coordinator.
    def flag(cmd, name):
        return cmd[cmd.index(name) + 1] if name in cmd[:-1] else None
    services = stack["services"]
    coord = services.get("coordinator", {})
    coord_role = flag(coord.get("command", []), "--role") or (coord.get("environment") or {}).get("TROUPE_ROLE") or "all"
    replay = services.get("replay")
    targets_mount = next((v for v in prom.get("volumes", []) if v.get("target") == "/etc/prometheus/replay-targets.yml"), None)
    if replay is None:
        if coord_role != "all":
            errors.append(f"stack {i}: the coordinator runs --role {coord_role} but no replay service runs")
        if targets_mount:
            errors.append(f"stack {i}: Prometheus gets replay's target, but no replay service runs")
    else:
        rcmd, renv = replay.get("command", []), replay.get("environment") or {}
        if coord_role != "coordinator":
            errors.append(f"stack {i}: replay runs alone, so the coordinator must run --role coordinator, not {coord_role}")
        if rcmd[:1] != ["coordinator"] or flag(rcmd, "--role") != "replay":
            errors.append(f"stack {i}: the replay service must run `coordinator --role replay`, not {rcmd}")
        coord_config = flag(coord.get("command", []), "--config")
        replay_config = flag(rcmd, "--config") or renv.get("TROUPE_CONFIG")
        if replay_config != coord_config:
            errors.append(f"stack {i}: replay reads {replay_config}, the coordinator {coord_config}: replay's tables and policies come from the run config")
        test = (replay.get("healthcheck") or {}).get("test") or []
        if flag(test, "--service") != "troupe.v1.Replay" or flag(test, "--address") != "127.0.0.1:" + (flag(rcmd, "--health-listen") or ":").rsplit(":", 1)[1]:
            errors.append(f"stack {i}: replay's healthcheck must ask its --health-listen port for troupe.v1.Replay: {test}")
        urls = (flag(rcmd, "--replay-redis-url") or renv.get("TROUPE_REPLAY_REDIS_URLS") or "").split(",")
        for url in urls:
            m = re.fullmatch(r"redis://([a-z0-9_-]+):(\d+)(/\d+)?", url)
            shard = services.get(m.group(1)) if m else None
            if shard is None:
                errors.append(f"stack {i}: replay's Redis {url!r} is not a service of the stack")
            elif (shard.get("command") or [])[:3] != ["redis-server", "--appendonly", "yes"]:
                errors.append(f"stack {i}: replay's Redis {m.group(1)} runs without --appendonly yes")
        if not targets_mount:
            errors.append(f"stack {i}: Prometheus does not get replay's target (helm/troupe/files/prometheus-replay-targets.yml)")
        else:
            listed = [t for group in yaml.safe_load(Path(targets_mount["source"]).read_text()) for t in group["targets"]]
            want = ["replay:" + (flag(rcmd, "--metrics-listen") or ":").rsplit(":", 1)[1]]
            if listed != want:
                errors.append(f"stack {i}: replay's Prometheus targets {listed}, want {want} (its --metrics-listen)")
    if cfg:
        job = jobs.get("troupe-replay")
        files = [f for sd in (job or {}).get("file_sd_configs", []) for f in sd.get("files", [])]
        if files != ["/etc/prometheus/replay-targets*.yml"]:
            errors.append(f"stack {i}: {Path(cfg).name}: job troupe-replay must read /etc/prometheus/replay-targets*.yml (file_sd), not {files}")
if errors:
    sys.exit("compose:\n  " + "\n  ".join(errors))
print(f"compose: {count} stacks resolved; bind mounts present", file=sys.stderr)
PY

step "ok"
