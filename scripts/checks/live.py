#!/usr/bin/env python3
"""Live check: a local Troupe cluster scraped by a real Prometheus with the shipped config.

Starts, like scripts/train.sh, real processes on 127.0.0.1: redis-server on a free port, the
coordinator (configs/cartpole.toml), the learner and 2 actors on port-0 listeners (their
--ready-file says what they bound), then /usr/bin/prometheus with a config generated from
helm/troupe/files/prometheus.yml: the same job names (troupe-coordinator, troupe-learner,
troupe-actor) and relabelings (the `run` label), static targets at the local metrics ports,
scrape and evaluation interval 1 s, and the rule file (alerts.yaml) it names. Then checks:
  (a) `promtool check metrics` has nothing to say about any process's /metrics;
  (b) every target is up, carries run=<the config's name>, and PromQL sees frames flowing:
      sum(rate(troupe_actor_frames_total[15s])) > 0 and sum(rate(troupe_learner_frames_total[15s])) > 0;
  (c) scripts/checks/dashboard_check.py --live <prometheus> --wait 60: every dashboard query runs
      and every main panel returns data;
  (d) every recording and alerting rule was evaluated with health "ok".
With --teams the run is configs/lbf-two-teams.toml with one learner per policy (agent_0,
agent_1: `learner --policy P`, as scripts/train.sh and compose.teams.yaml run them), Prometheus
gets helm/troupe/files/prometheus-teams.yml's jobs (each learner target labelled with its
policy, as that file's relabelings do from the host names), and after (a)-(d):
  (e) every learner series carries its policy; then agent_1's learner is killed (SIGKILL) and
      within 30 s TroupeLearnerDown is pending or firing for policy agent_1 and for no other,
      the actors drop agent_1's rollouts (troupe_actor_rollouts_dropped_total{policy="agent_1"})
      and agent_0's learner goes on updating: one policy's learner dies, the others train on.
Everything is stopped at the end (process groups; also on errors and Ctrl-C). Deadline 120 s.

Usage: $TROUPE_TOOLS_VENV/bin/python scripts/checks/live.py [--teams] [--deadline 120] [--keep-logs DIR]
(scripts/checks/live.sh installs the tools first.) Exit 0 on success, 1 on a failed check.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request

import yaml

import proclib  # noqa: E402  (scripts/checks/, on sys.path as the script's directory)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FILES = os.path.join(ROOT, "helm", "troupe", "files")
CONFIG = os.path.join(ROOT, "configs", "cartpole.toml")
# --teams: one learner per policy.
TEAMS_CONFIG = os.path.join(ROOT, "configs", "lbf-two-teams.toml")
TEAMS_POLICIES = ("agent_0", "agent_1")
DASHBOARD_CHECK = os.path.join(ROOT, "scripts", "checks", "dashboard_check.py")
ACTORS = 2
JOBS = {"troupe-coordinator": "coordinator", "troupe-learner": "learner", "troupe-actor": "actor"}
# Jobs of the shipped config with no process here: troupe-replay scrapes the replay service when
# it runs on its own (compose.replay.yaml); this cluster's coordinator serves replay itself.
OPTIONAL_JOBS = {"troupe-replay"}
FRAMES_QUERIES = [
    "sum(rate(troupe_actor_frames_total[15s]))",
    "sum(rate(troupe_learner_frames_total[15s]))",
]
# Service discovery keys replaced by static targets in the generated config.
SD_KEYS = ("static_configs", "dns_sd_configs", "file_sd_configs", "kubernetes_sd_configs", "docker_sd_configs",
           "http_sd_configs")


class CheckError(Exception):
    pass


def log(msg=""):
    print(msg, flush=True)


def step(msg):
    log(f"\n== {msg}")


def troupe_env():
    """scripts/env.sh's environment (LD_LIBRARY_PATH for libtorch, CARGO_TARGET_DIR). Builds nothing."""
    env, err = proclib.sourced_env(ROOT, 'source "$1/scripts/env.sh" >&2')
    if env is None:
        raise CheckError("sourcing scripts/env.sh failed:\n" + err)
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def api(base, path, params=None):
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        body = json.loads(http_get(url))
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except ValueError:
            raise CheckError(f"GET {url}: HTTP {e.code}")
    except (OSError, ValueError) as e:
        raise CheckError(f"GET {url}: {e}")
    if body.get("status") != "success":
        raise CheckError(f"GET {url}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


class Proc:
    def __init__(self, name, argv, env, log_dir, cwd=None):
        self.name, self.argv = name, argv
        self.log_path = os.path.join(log_dir, f"{name}.log")
        with open(self.log_path, "wb") as f:
            self.p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self):
        return self.p.poll() is None

    def tail(self, n=15):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()[-n:]
        except OSError:
            lines = []
        state = "running" if self.alive() else f"exited {self.p.returncode}"
        return "\n".join([f"--- {self.name} ({state})"] + ["    " + l[:400] for l in lines])


class Cluster:
    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.procs = []

    def start(self, name, argv, env, cwd=None):
        p = Proc(name, argv, env, self.log_dir, cwd)
        self.procs.append(p)
        return p

    def check_alive(self):
        for p in self.procs:
            if not p.alive():
                raise CheckError(f"{p.name} exited with status {p.p.returncode}")

    def stop(self):
        """SIGTERM the process groups, last started first (Prometheus, actors, the learner; then
        the coordinator and Redis), SIGKILL what is left after a short grace."""
        workers = [p.p for p in reversed(self.procs) if p.name not in ("coordinator", "redis")]
        rest = [p.p for p in reversed(self.procs) if p.name in ("coordinator", "redis")]
        proclib.stop_groups([workers, rest])

    def tails(self):
        return "\n".join(p.tail() for p in self.procs)


def wait_ready(cluster, proc, path, deadline):
    while time.monotonic() < deadline:
        if os.path.exists(path):
            try:
                with open(path) as f:
                    return json.load(f)
            except ValueError:
                pass  # being written
        if not proc.alive():
            raise CheckError(f"{proc.name} exited at start-up (status {proc.p.returncode})")
        time.sleep(0.05)
    raise CheckError(f"{proc.name} wrote no ready file ({path}) before the deadline")


def hostport(addr):
    """host:port from a ready file's address ("127.0.0.1:123" or "http://127.0.0.1:123")."""
    return re.sub(r"^[a-z]+://", "", str(addr)).rstrip("/")


def start_cluster(cluster, env, binaries, work, deadline, config=CONFIG, policies=None):
    """Redis, the coordinator on `config`, a learner (one per policy of `policies`, with
    --policy), ACTORS actors. Returns the metrics targets by role and, per learner, (policy,
    its process, its metrics address)."""
    redis_port = free_port()
    redis = cluster.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", work, "--daemonize", "no"], env)
    while True:
        try:
            socket.create_connection(("127.0.0.1", redis_port), timeout=1).close()
            break
        except OSError:
            if not redis.alive() or time.monotonic() > deadline:
                raise CheckError("redis-server did not start")
            time.sleep(0.05)
    ready = {}
    coord = cluster.start("coordinator", [
        binaries["coordinator"], "--config", config, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
        "--redis-url", f"redis://127.0.0.1:{redis_port}", "--ready-file", os.path.join(work, "coordinator.json")], env)
    ready["coordinator"] = wait_ready(cluster, coord, os.path.join(work, "coordinator.json"), deadline)
    coord_url = "http://" + hostport(ready["coordinator"]["grpc"])
    learners = []
    for policy in policies or [None]:
        name = f"learner-{policy}" if policy else "learner"
        flags = ["--policy", policy] if policy else []
        learners.append((policy, name, cluster.start(name, [
            binaries["learner"], "--coordinator", coord_url, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--device", "cpu", "--seed", "1", "--ready-file", os.path.join(work, f"{name}.json")] + flags, env)))
    actors = []
    for i in range(1, ACTORS + 1):
        actors.append(cluster.start(f"actor-{i}", [
            binaries["actor"], "--coordinator", coord_url, "--metrics-listen", "127.0.0.1:0",
            "--health-listen", "127.0.0.1:0", "--ready-file", os.path.join(work, f"actor-{i}.json")], env))
    for _, name, proc in learners:
        ready[name] = wait_ready(cluster, proc, os.path.join(work, f"{name}.json"), deadline)
    for i, a in enumerate(actors, 1):
        ready[f"actor-{i}"] = wait_ready(cluster, a, os.path.join(work, f"actor-{i}.json"), deadline)
    targets = {
        "coordinator": [hostport(ready["coordinator"]["metrics"])],
        "learner": [hostport(ready[name]["metrics"]) for _, name, _ in learners],
        "actor": [hostport(ready[f"actor-{i}"]["metrics"]) for i in range(1, ACTORS + 1)],
    }
    log(f"cluster up: redis 127.0.0.1:{redis_port}, coordinator {coord_url}, "
        + ", ".join(f"{name} {hostport(ready[name]['grpc'])} (device {ready[name].get('device')})" for _, name, _ in learners)
        + f", {ACTORS} actors; metrics: " + ", ".join(f"{k} {' '.join(v)}" for k, v in targets.items()))
    return targets, [(policy, proc, hostport(ready[name]["metrics"])) for policy, name, proc in learners]


def prometheus_config(targets, run_name, work, src_name="prometheus.yml", learner_policies=None):
    """helm/troupe/files/<src_name> with static local targets, 1 s intervals and the rule files
    it names taken from helm/troupe/files/. With learner_policies ({metrics address: policy}),
    each learner target gets its policy as a label, in place of the relabelings that derive it
    from the compose host names (which local addresses do not have)."""
    src = os.path.join(FILES, src_name)
    with open(src) as f:
        cfg = yaml.safe_load(f)
    cfg.setdefault("global", {}).update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
    rules = []
    for path in cfg.get("rule_files", []) or []:
        local = os.path.join(FILES, os.path.basename(path))
        if not os.path.exists(local):
            raise CheckError(f"prometheus.yml loads {path}, but helm/troupe/files/ has no {os.path.basename(path)}")
        rules.append(local)
    if not any(os.path.basename(r) == "alerts.yaml" for r in rules):
        raise CheckError("prometheus.yml does not load alerts.yaml")
    cfg["rule_files"] = rules
    jobs = {}
    scrape_configs = []
    for job in cfg.get("scrape_configs", []) or []:
        name = job.get("job_name")
        if name not in JOBS and name not in OPTIONAL_JOBS:
            raise CheckError(f"prometheus.yml: job {name!r} is not one of {', '.join(list(JOBS) + sorted(OPTIONAL_JOBS))}")
        if not any(r.get("target_label") == "run" for r in job.get("relabel_configs", []) or []):
            raise CheckError(f"prometheus.yml: job {name} has no relabeling that sets the `run` label")
        if name in OPTIONAL_JOBS:
            continue  # nothing to scrape: left out of the generated config
        scrape_configs.append(job)
        for k in SD_KEYS:
            job.pop(k, None)
        job["static_configs"] = [{"targets": targets[JOBS[name]]}]
        if name == "troupe-learner" and learner_policies:
            job["static_configs"] = [{"targets": [t], "labels": {"policy": learner_policies[t]}} for t in targets["learner"]]
            job["relabel_configs"] = [r for r in job.get("relabel_configs", []) or [] if r.get("target_label") != "policy"]
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        jobs[name] = job
    missing = set(JOBS) - set(jobs)
    if missing:
        raise CheckError(f"prometheus.yml has no job {', '.join(sorted(missing))}")
    cfg["scrape_configs"] = scrape_configs
    path = os.path.join(work, "prometheus.yml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    r = subprocess.run(["promtool", "check", "config", path], capture_output=True, text=True)
    if r.returncode != 0:
        raise CheckError("promtool check config on the generated config:\n" + (r.stdout + r.stderr).strip())
    log(f"generated {path}: jobs {', '.join(jobs)}; rules {', '.join(os.path.relpath(r, ROOT) for r in rules)}; run label "
        f"expected {run_name!r}")
    return path


def start_prometheus(cluster, env, cfg_path, work, deadline):
    port = free_port()
    prom = cluster.start("prometheus", [
        "prometheus", f"--config.file={cfg_path}", f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={os.path.join(work, 'tsdb')}", "--log.level=warn"], env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            http_get(url + "/-/ready", timeout=2)
            break
        except OSError:
            if not prom.alive():
                raise CheckError(f"prometheus exited at start-up:\n{prom.tail()}")
            if time.monotonic() > deadline:
                raise CheckError("prometheus not ready before the deadline")
            time.sleep(0.2)
    log(f"prometheus ready at {url}")
    return url


def check_targets_and_frames(cluster, url, run_name, n_targets, deadline):
    """(b): every target up with the run label, then non-zero frame rates."""
    last = "no targets yet"
    while True:
        cluster.check_alive()
        active = api(url, "/api/v1/targets", {"state": "active"})["activeTargets"]
        up = [t for t in active if t["health"] == "up"]
        if len(active) == n_targets and len(up) == n_targets:
            break
        last = "; ".join(f"{t['labels'].get('job')} {t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}" for t in active)
        if time.monotonic() > deadline:
            raise CheckError(f"targets not all up ({len(up)} of {len(active)}, want {n_targets}): {last}")
        time.sleep(0.5)
    for t in active:
        if t["labels"].get("run") != run_name:
            raise CheckError(f"target {t['scrapeUrl']} (job {t['labels'].get('job')}) has run={t['labels'].get('run')!r}, "
                             f"not the config's name {run_name!r}")
    log(f"(b) {n_targets} targets up: " + ", ".join(f"{t['labels']['job']}={t['labels']['instance']}" for t in active)
        + f"; all with run={run_name!r}")
    values = {}
    while True:
        cluster.check_alive()
        for q in FRAMES_QUERIES:
            res = api(url, "/api/v1/query", {"query": q})["result"]
            values[q] = float(res[0]["value"][1]) if res else None
        if all(v and v > 0 for v in values.values()):
            break
        if time.monotonic() > deadline:
            raise CheckError("frame rates not above 0 before the deadline: " + ", ".join(f"{q} = {v}" for q, v in values.items()))
        time.sleep(1)
    log("(b) " + "; ".join(f"{q} = {v:.0f}/s" for q, v in values.items()))


def check_metrics_lint(targets):
    """(a): promtool check metrics on every process's /metrics."""
    problems = []
    for role, addrs in targets.items():
        for addr in addrs:
            text = http_get(f"http://{addr}/metrics")
            r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
            if lines or r.returncode != 0:
                problems.append(f"{role} {addr} (exit {r.returncode}):\n    " + "\n    ".join(lines))
            else:
                n = len({m.group(1) for m in re.finditer(r"(?m)^# TYPE (\S+)", text)})
                log(f"(a) promtool check metrics: {role} {addr}: clean ({n} metric families)")
    if problems:
        raise CheckError("promtool check metrics:\n  " + "\n  ".join(problems))


def check_rules(cluster, url, deadline):
    """(d): every rule evaluated, health ok."""
    while True:
        cluster.check_alive()
        groups = api(url, "/api/v1/rules")["groups"]
        rules = [(g["name"], r) for g in groups for r in g["rules"]]
        bad = [(g, r) for g, r in rules if r.get("health") == "err"]
        if bad:
            raise CheckError("rules with errors:\n  " + "\n  ".join(
                f"{g}/{r.get('name')}: {r.get('lastError')}" for g, r in bad))
        pending = [(g, r) for g, r in rules if r.get("health") != "ok"]
        if rules and not pending:
            break
        if time.monotonic() > deadline:
            raise CheckError(f"{len(pending)} of {len(rules)} rules not evaluated ok: "
                             + ", ".join(f"{g}/{r.get('name')}={r.get('health')}" for g, r in pending[:20]))
        time.sleep(0.5)
    kinds = {}
    for _, r in rules:
        kinds[r["type"]] = kinds.get(r["type"], 0) + 1
    firing = [(r["name"], r["state"]) for _, r in rules if r["type"] == "alerting" and r.get("state") != "inactive"]
    log(f"(d) {len(groups)} rule groups, {len(rules)} rules ({', '.join(f'{v} {k}' for k, v in kinds.items())}), "
        f"all health ok; alerts not inactive: {', '.join(f'{n} ({s})' for n, s in firing) or 'none'}")


def check_one_learner_down(cluster, url, learners, deadline):
    """(e), --teams: each learner's series carry its policy; then the last policy's learner is
    killed, and its policy alone gets TroupeLearnerDown while the first policy trains on."""
    for policy, _, addr in learners:
        res = api(url, "/api/v1/query", {"query": f'troupe_learner_updates_total{{instance="{addr}"}}'})["result"]
        got = {r["metric"].get("policy") for r in res}
        if got != {policy}:
            raise CheckError(f"learner {addr} (--policy {policy}): troupe_learner_updates_total has policy {sorted(map(str, got))}")
        ups = api(url, "/api/v1/query", {"query": f'up{{instance="{addr}"}}'})["result"]
        if [r["metric"].get("policy") for r in ups] != [policy]:
            raise CheckError(f"learner {addr}: its up series has policy {[r['metric'].get('policy') for r in ups]}, want {policy}")
    log("(e) every learner's series carry its policy: " + ", ".join(f"{a} {p}" for p, _, a in learners))
    (alive, _, _), (dead, proc, _) = learners[0], learners[-1]
    os.killpg(proc.p.pid, signal.SIGKILL)
    proc.p.wait(timeout=10)
    killed = time.monotonic()
    log(f"(e) killed the learner of policy {dead}")

    def value(q):
        res = api(url, "/api/v1/query", {"query": q})["result"]
        return float(res[0]["value"][1]) if res else 0.0

    updates_at_kill = value(f'sum(troupe_learner_updates_total{{policy="{alive}"}})')
    # Actors may have dropped some of a policy's rollouts while its learner was starting.
    dropped_at_kill = value(f'sum(troupe_actor_rollouts_dropped_total{{policy="{dead}"}})')
    wait_until = min(deadline, killed + 30)
    state = {}
    while True:
        for p in cluster.procs:
            if p is not proc and not p.alive():
                raise CheckError(f"{p.name} exited with status {p.p.returncode} after the learner of {dead} was killed")
        alerts = [a for a in api(url, "/api/v1/alerts")["alerts"] if a["labels"].get("alertname") == "TroupeLearnerDown"]
        state = {
            "down for": sorted(a["labels"].get("policy", "") for a in alerts),
            f"{dead} rollouts dropped": value(f'sum(troupe_actor_rollouts_dropped_total{{policy="{dead}"}})') - dropped_at_kill,
            f"{alive} updates since": value(f'sum(troupe_learner_updates_total{{policy="{alive}"}})') - updates_at_kill,
        }
        if any(p != dead for p in state["down for"]):
            raise CheckError(f"TroupeLearnerDown for {state['down for']} with only {dead}'s learner down")
        if state["down for"] == [dead] and state[f"{dead} rollouts dropped"] > 0 and state[f"{alive} updates since"] > 0:
            break
        if time.monotonic() > wait_until:
            raise CheckError(f"{wait_until - killed:.0f} s after the learner of {dead} was killed: {state}")
        time.sleep(0.5)
    log(f"(e) after {time.monotonic() - killed:.1f} s: TroupeLearnerDown for policy {dead} only; "
        f"{state[f'{dead} rollouts dropped']:.0f} {dead} rollouts dropped by the actors; the learner of {alive} "
        f"took {state[f'{alive} updates since']:.0f} more updates")


def check_dashboard(url, wait):
    """(c): the dashboard's queries against the live Prometheus."""
    cmd = [sys.executable, DASHBOARD_CHECK, "--live", url, "--wait", str(int(wait))]
    log("(c) $ " + " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    out = (r.stdout + r.stderr).rstrip()
    log("\n".join("    " + l for l in out.splitlines()))
    if r.returncode != 0:
        raise CheckError(f"dashboard_check.py --live failed (exit {r.returncode})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deadline", type=float, default=120.0, help="seconds for the whole check")
    ap.add_argument("--keep-logs", metavar="DIR", help="keep the processes' logs (and the Prometheus config) in DIR")
    ap.add_argument("--teams", action="store_true",
                    help=f"run {os.path.relpath(TEAMS_CONFIG, ROOT)} with one learner per policy, and check (e)")
    args = ap.parse_args()

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    deadline = started + args.deadline
    work = tempfile.mkdtemp(prefix="troupe-live-")
    log_dir = args.keep_logs or os.path.join(work, "logs")
    os.makedirs(log_dir, exist_ok=True)
    cluster = Cluster(log_dir)
    try:
        env = troupe_env()
        bin_dir = env.get("TROUPE_BIN") or os.path.join(env["CARGO_TARGET_DIR"], "release")
        binaries = {b: os.path.join(bin_dir, b) for b in ("coordinator", "learner", "actor")}
        for b in binaries.values():
            if not os.access(b, os.X_OK):
                raise CheckError(f"{b} is missing: build the release binaries first (scripts/train.sh does)")
        for tool in ("redis-server", "prometheus", "promtool"):
            if not shutil.which(tool, path=env.get("PATH")):
                raise CheckError(f"{tool} is not on PATH (apt-get install redis-server prometheus)")
        env = {k: v for k, v in env.items() if not k.startswith("TROUPE_") or k == "TROUPE_PYTHON_PATH"}
        config = TEAMS_CONFIG if args.teams else CONFIG
        policies = TEAMS_POLICIES if args.teams else None
        prom_src = "prometheus-teams.yml" if args.teams else "prometheus.yml"
        with open(config, "rb") as f:
            run_name = tomllib.load(f)["name"]

        step(f"cluster: redis, coordinator ({os.path.relpath(config, ROOT)}), "
             + (f"a learner per policy ({', '.join(policies)})" if policies else "learner") + ", 2 actors (like scripts/train.sh)")
        targets, learners = start_cluster(cluster, env, binaries, work, deadline, config, policies)
        step(f"prometheus with helm/troupe/files/{prom_src}'s jobs and relabelings")
        cfg_path = prometheus_config(targets, run_name, work, prom_src,
                                     {addr: p for p, _, addr in learners} if policies else None)
        if args.keep_logs:
            shutil.copy(cfg_path, os.path.join(log_dir, "prometheus.yml"))
        url = start_prometheus(cluster, env, cfg_path, work, deadline)

        step("(b) targets up and frames flowing (PromQL)")
        check_targets_and_frames(cluster, url, run_name, sum(len(v) for v in targets.values()), deadline)
        step("(a) promtool check metrics on every /metrics")
        check_metrics_lint(targets)
        step("(d) rules loaded and evaluated")
        check_rules(cluster, url, deadline)
        step("(c) dashboard queries against the live Prometheus")
        check_dashboard(url, min(60, max(5, deadline - time.monotonic())))
        cluster.check_alive()
        if policies:
            step("(e) one policy's learner dies: its alert alone fires, the other policy trains on")
            check_one_learner_down(cluster, url, learners, deadline)
        log(f"\nlive check passed ({time.monotonic() - started:.1f} s)")
        return 0
    except CheckError as e:
        print(f"\nlive check FAILED: {e}", file=sys.stderr, flush=True)
        if cluster.procs:
            print("logs (tails):\n" + cluster.tails(), file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as e:
        print(f"live check interrupted ({e or 'Ctrl-C'})", file=sys.stderr, flush=True)
        return 130
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
