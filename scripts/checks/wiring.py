#!/usr/bin/env python3
"""Wiring check: runs what the Helm chart and the compose file deploy, as local processes.

For each of
  chart:   helm template troupe helm/troupe -f helm/troupe/values-cpu.yaml --namespace troupe
  compose: docker-compose -f compose.yaml config --format json
it takes every workload's container command, args and environment and starts them with the real
binaries ($CARGO_TARGET_DIR/release/{coordinator,learner,actor}, /usr/bin/redis-server): Redis,
the coordinator, the learner and the actor replicas (2). Before anything starts it checks, and
fails loudly on:
  - a flag the binary does not have (from its --help), a positional argument, a TROUPE_* variable
    the workload's binary does not read ([env: ...] in its --help);
  - every port: each `0.0.0.0:PORT` value in a flag or variable is a port the process listens on;
    a declared containerPort (or compose published port) must be one of them; every Service port
    must reach one through its targetPort (a number or a named container port); every reference
    `host:PORT` to a Service (chart: <svc>, <svc>.<ns>, <svc>.<ns>.svc[.cluster.local], and
    <pod>.<svc>... for the StatefulSet's headless Service; compose: the service names) is resolved
    as Kubernetes (or compose) would: ClusterIP Service port -> targetPort -> container port;
    headless or compose: the container port itself; each probe's port must be listened on (a
    Kubernetes probe from the kubelet needs 0.0.0.0, a compose healthcheck runs in the container);
  - file paths: ConfigMap files are written to a temporary directory, emptyDir/PVC/volumes are
    temporary directories, the image's /etc/troupe/configs/X.toml is configs/X.toml; a path on no
    volume under a read-only root filesystem is an error.
Every service name maps to 127.0.0.1 and every listening port to a free local port per process.
The stack passes when it trains (the coordinator's /metrics shows troupe_coordinator_policy_version
> 0 and troupe_coordinator_frames_total > 0) and every probe answers: the chart's gRPC probes
(startup, liveness, readiness: port and service from the pod spec) and exec probes, compose's
healthchecks, run as `troupe-health --address 127.0.0.1:<mapped port> --service <service>`.

It also requires the learner's troupe_learner_frames_total and troupe_learner_updates_total > 0
(the coordinator's version 1 is the learner's initial publish, before any rollout reached it), and
compares each process's peak resident memory with its container's memory limit.
Ports are picked free (bind to port 0, close) just before the processes start.

A self-test (also run first by default) breaks one thing at a time in copies of the rendered
manifests (a Service's targetPort, a named targetPort, a flag's name, a variable's name, a probe's
port, the learner's advertised port and listen address, a compose healthcheck, Redis URL, run
config and Prometheus target) and asserts the static checks refuse each with a message naming it;
then one break only a run shows (a healthcheck asking for an unregistered health service) must
fail a running compose stack within 15 s.

Usage: $TROUPE_TOOLS_VENV/bin/python scripts/checks/wiring.py [--self-test | --only chart|compose]
       [--timeout 90] [--keep-logs DIR]
(scripts/checks/wiring.sh installs the tools first.) Exit 0 on success, 1 on a failed check.
"""
import argparse
import copy
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

import proclib  # noqa: E402  (scripts/checks/, on sys.path as the script's directory)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RELEASE = "troupe"
NAMESPACE = "troupe"
CHART = "helm/troupe"
CHART_VALUES = "helm/troupe/values-cpu.yaml"
COMPOSE_FILE = "compose.yaml"
COMPOSE_ACTORS = 2  # docker compose up --scale actor=2
TROUPE_ROLES = ("coordinator", "learner", "actor")
HELPER_BINARIES = ("troupe-health",)
TRAINED_METRICS = ("troupe_coordinator_policy_version", "troupe_coordinator_frames_total",
                   "troupe_learner_frames_total", "troupe_learner_updates_total")
START_ORDER = {"redis-server": 0, "coordinator": 1, "learner": 2, "actor": 3}
# What the images provide on their root filesystem (Dockerfile): path prefix -> local path.
IMAGE_FILES = {"/etc/troupe/configs": os.path.join(ROOT, "configs")}
# Image working directories when the pod spec sets none.
IMAGE_WORKDIR = {"redis-server": "/data"}
DEFAULT_WORKDIR = "/var/lib/troupe"
EXTERNAL_HOSTS = ("0.0.0.0", "::", "[::]", "")
LISTEN_RE = re.compile(r"^(?P<host>0\.0\.0\.0|\[::\]|::|127\.0\.0\.1|localhost|\[::1\]|)?:(?P<port>\d{1,5})$")
HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
REFERENCE_RE = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)?(?P<host>%s(?:\.%s)*):(?P<port>\d{1,5})(?![0-9])" % (HOST_LABEL, HOST_LABEL))


class WiringError(Exception):
    pass


def log(msg=""):
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# Tools and binaries


def tool_env():
    """The environment of scripts/setup.sh with troupe_install_deploy_tools: helm and
    docker-compose on PATH, libtorch on LD_LIBRARY_PATH. Builds nothing."""
    env, err = proclib.sourced_env(ROOT, 'source "$1/scripts/setup.sh" >&2 && troupe_install_deploy_tools >&2')
    if env is None:
        raise WiringError("sourcing scripts/setup.sh failed:\n" + err)
    return env


class Binary:
    """A binary's flags and environment variables, read from its --help (clap)."""

    def __init__(self, name, path, env):
        self.name, self.path = name, path
        if not os.access(path, os.X_OK):
            raise WiringError(f"{path} is missing: build the release binaries first (scripts/train.sh does)")
        clean = {k: v for k, v in env.items() if not k.startswith("TROUPE_")}
        r = subprocess.run([path, "--help"], capture_output=True, text=True, env=clean, timeout=60)
        if r.returncode != 0:
            raise WiringError(f"{path} --help failed: {r.stderr.strip()[-500:]}")
        self.flags = {}  # long name -> {"value": bool, "env": str|None, "default": str|None}
        current = None
        for line in r.stdout.splitlines():
            m = re.match(r"^ {2,6}(?:-\w, )?--([a-z0-9][a-z0-9-]*)(?:[ =]<([^>]+)>)?", line)
            if m:
                current = m.group(1)
                self.flags[current] = {"value": bool(m.group(2)), "env": None, "default": None}
            if current:
                e = re.search(r"\[env: ([A-Z0-9_]+)=", line)
                if e:
                    self.flags[current]["env"] = e.group(1)
                d = re.search(r"\[default: ([^\]]*)\]", line)
                if d:
                    self.flags[current]["default"] = d.group(1)
        self.envs = {f["env"]: name for name, f in self.flags.items() if f["env"]}
        if not self.flags:
            raise WiringError(f"could not read any flag from `{path} --help`")


def load_binaries(env):
    bin_dir = env.get("TROUPE_BIN") or os.path.join(env.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/troupe/target")), "release")
    return {name: Binary(name, os.path.join(bin_dir, name), env) for name in TROUPE_ROLES + HELPER_BINARIES}


# ---------------------------------------------------------------------------------------------
# Rendering


def render_chart(env):
    r = subprocess.run(["helm", "template", RELEASE, CHART, "-f", CHART_VALUES, "--namespace", NAMESPACE],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise WiringError("helm template failed:\n" + r.stderr)
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def render_compose(env):
    # Settings left at their defaults, as documented in compose.yaml.
    clean = {k: v for k, v in env.items() if not (k.startswith("TROUPE_") or k.startswith("GRAFANA_"))}
    r = subprocess.run(["docker-compose", "-f", COMPOSE_FILE, "config", "--format", "json"],
                       cwd=ROOT, env=clean, capture_output=True, text=True)
    if r.returncode != 0:
        raise WiringError("docker-compose config failed:\n" + r.stderr)
    return json.loads(r.stdout)


# ---------------------------------------------------------------------------------------------
# The model both sources are read into


class Mount:
    def __init__(self, path, kind, name, files=None, source=None, sub_path=None, read_only=False):
        self.path = path.rstrip("/") or "/"
        self.kind = kind          # configMap | emptyDir | pvc | secret | bind | volume | other
        self.name = name          # volume name
        self.files = files or {}  # configMap: relative path -> content
        self.source = source      # bind: host path
        self.sub_path = sub_path
        self.read_only = read_only


class Probe:
    def __init__(self, label, kind, port=None, service="", command=None, path=None, loopback_ok=False):
        self.label = label        # e.g. "readinessProbe" or "healthcheck"
        self.kind = kind          # grpc | exec | httpGet | tcpSocket | troupe-health
        self.port = port          # container port (number or name)
        self.service = service
        self.command = command or []
        self.path = path
        self.loopback_ok = loopback_ok  # compose healthchecks run inside the container


class Container:
    def __init__(self, workload, role, argv, env, replicas):
        self.workload = workload  # "Deployment/troupe-actor", "service actor"
        self.role = role          # basename of argv[0]
        self.argv = argv
        self.env = env            # name -> value
        self.replicas = replicas  # pod names
        self.port_names = {}      # containerPort name -> number
        self.declared_ports = []  # (number, where) that must be listened on
        self.mounts = []
        self.probes = []
        self.labels = {}
        self.read_only_root = False
        self.memory_limit = None  # bytes: resources.limits.memory (chart), mem_limit/deploy limits (compose)
        self.workdir = None
        self.notes = []
        self.hostnames = set()    # compose: the names other services reach it by
        self.scrape_ports = []    # (port, where): ports Prometheus scrapes
        # Filled by analyse():
        self.listens = {}         # container port -> (host, where)
        self.added_flags = []     # [flag, default value] for *-listen flags left at their defaults


class Stack:
    def __init__(self, name):
        self.name = name
        self.containers = []
        self.services = {}        # chart: name -> Service object
        self.statefulsets = {}    # chart: serviceName -> (StatefulSet name, replicas, Container)
        self.skipped = []
        self.prometheus_configs = []  # compose: (service, prometheus.yml path) scraping the stack

    def find(self, role):
        return [c for c in self.containers if c.role == role]


def k8s_env(c_spec, configmaps, pod, notes):
    env = {}
    for cm_ref in c_spec.get("envFrom", []) or []:
        if "configMapRef" in cm_ref:
            data = configmaps.get(cm_ref["configMapRef"]["name"], {})
            for k, v in data.items():
                env[cm_ref.get("prefix", "") + k] = v
        else:
            notes.append(f"envFrom {cm_ref} skipped (a Secret)")
    for e in c_spec.get("env", []) or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                env[e["name"]] = configmaps.get(ref["name"], {}).get(ref["key"], "")
            elif "fieldRef" in vf:
                field = vf["fieldRef"]["fieldPath"]
                value = {"metadata.name": pod, "metadata.namespace": NAMESPACE, "status.podIP": "127.0.0.1",
                         "status.hostIP": "127.0.0.1", "spec.nodeName": "local"}.get(field)
                if value is None:
                    notes.append(f"env {e['name']} from fieldRef {field} skipped")
                else:
                    env[e["name"]] = value
            else:
                notes.append(f"env {e['name']} from {list(vf)[0]} skipped (not used with values-cpu)")
        else:
            env[e["name"]] = ""
    return env


def quantity(value):
    """Bytes in a Kubernetes or compose memory quantity (512Mi, 3Gi, 1G, 100m...), or None."""
    if value in (None, ""):
        return None
    m = re.fullmatch(r"([0-9.]+)\s*([A-Za-z]*)", str(value).strip())
    if not m:
        raise WiringError(f"cannot read the memory quantity {value!r}")
    units = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
             "Ti": 2**40, "b": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "m": 2**20, "g": 2**30}
    unit = m.group(2)
    factor = units.get(unit, units.get(unit.lower()))
    if factor is None:
        raise WiringError(f"cannot read the memory quantity {value!r}")
    return int(float(m.group(1)) * factor)


def rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def k8s_expand(value, env):
    """Kubernetes's $(VAR) expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def read_chart(docs):
    stack = Stack("chart")
    configmaps = {d["metadata"]["name"]: d.get("data", {}) or {} for d in docs if d["kind"] == "ConfigMap"}
    stack.services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        name = d["metadata"]["name"]
        n = d["spec"].get("replicas", 1) if d["kind"] != "DaemonSet" else 1
        pods = [f"{name}-{i}" for i in range(n)]
        pod_spec = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod_spec.get("volumes", []) or []}
        for t in d["spec"].get("volumeClaimTemplates", []) or []:
            volumes[t["metadata"]["name"]] = {"name": t["metadata"]["name"], "persistentVolumeClaim": {}}
        for c_spec in pod_spec["containers"]:
            workload = f"{d['kind']}/{name}" + (f" container {c_spec['name']}" if len(pod_spec["containers"]) > 1 else "")
            notes = []
            env = k8s_env(c_spec, configmaps, pods[0], notes)
            argv = [k8s_expand(str(a), env) for a in (c_spec.get("command") or []) + (c_spec.get("args") or [])]
            if not c_spec.get("command"):
                stack.skipped.append(f"{workload}: no command (the image's entrypoint): not started")
                continue
            c = Container(workload, os.path.basename(argv[0]), argv, env, pods)
            c.notes = notes
            c.labels = d["spec"]["template"]["metadata"].get("labels", {})
            ann = d["spec"]["template"]["metadata"].get("annotations", {}) or {}
            if ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port"):
                c.scrape_ports.append((int(ann["prometheus.io/port"]), "annotation prometheus.io/port"))
            c.workdir = c_spec.get("workingDir")
            csc = c_spec.get("securityContext", {}) or {}
            c.read_only_root = bool(csc.get("readOnlyRootFilesystem"))
            c.memory_limit = quantity(((c_spec.get("resources") or {}).get("limits") or {}).get("memory"))
            for p in c_spec.get("ports", []) or []:
                if p.get("name"):
                    c.port_names[p["name"]] = p["containerPort"]
                c.declared_ports.append((p["containerPort"], f"containerPort {p.get('name') or p['containerPort']}"))
            for vm in c_spec.get("volumeMounts", []) or []:
                v = volumes.get(vm["name"])
                if v is None:
                    raise WiringError(f"{workload}: volumeMount {vm['name']} names no volume")
                if "configMap" in v:
                    data = configmaps.get(v["configMap"]["name"])
                    if data is None and not v["configMap"].get("optional"):
                        raise WiringError(f"{workload}: ConfigMap {v['configMap']['name']} is not in the manifests")
                    data = data or {}
                    items = v["configMap"].get("items")
                    files = {i["path"]: data.get(i["key"], "") for i in items} if items else dict(data)
                    m = Mount(vm["mountPath"], "configMap", vm["name"], files=files, sub_path=vm.get("subPath"), read_only=True)
                    m.source = v["configMap"]["name"]
                elif "emptyDir" in v:
                    m = Mount(vm["mountPath"], "emptyDir", vm["name"], sub_path=vm.get("subPath"))
                elif "persistentVolumeClaim" in v:
                    m = Mount(vm["mountPath"], "pvc", vm["name"], sub_path=vm.get("subPath"))
                elif "secret" in v:
                    m = Mount(vm["mountPath"], "secret", vm["name"], read_only=True)
                    notes.append(f"Secret volume {vm['name']} at {vm['mountPath']}: an empty directory here")
                else:
                    m = Mount(vm["mountPath"], "other", vm["name"])
                m.read_only = m.read_only or bool(vm.get("readOnly"))
                c.mounts.append(m)
            for label in ("startupProbe", "livenessProbe", "readinessProbe"):
                p = c_spec.get(label)
                if not p:
                    continue
                if "grpc" in p:
                    c.probes.append(Probe(label, "grpc", port=p["grpc"]["port"], service=p["grpc"].get("service", "")))
                elif "exec" in p:
                    c.probes.append(Probe(label, "exec", command=list(p["exec"]["command"])))
                elif "httpGet" in p:
                    c.probes.append(Probe(label, "httpGet", port=p["httpGet"]["port"], path=p["httpGet"].get("path", "/")))
                elif "tcpSocket" in p:
                    c.probes.append(Probe(label, "tcpSocket", port=p["tcpSocket"]["port"]))
            if d["kind"] == "StatefulSet" and d["spec"].get("serviceName"):
                stack.statefulsets[d["spec"]["serviceName"]] = (name, n, c)
            stack.containers.append(c)
    return stack


def read_compose(cfg):
    stack = Stack("compose")
    for svc_name, s in cfg["services"].items():
        for v in s.get("volumes", []) or []:
            if v["type"] == "bind" and v["target"] == "/etc/prometheus/prometheus.yml":
                stack.prometheus_configs.append((svc_name, v["source"]))
        argv = [str(a) for a in (s.get("entrypoint") or []) + (s.get("command") or [])]
        if not argv:
            stack.skipped.append(f"service {svc_name} ({s.get('image')}): the image's own command, not started")
            continue
        role = os.path.basename(argv[0])
        if role not in START_ORDER:
            stack.skipped.append(f"service {svc_name}: {role} is not part of the training cluster: not started")
            continue
        n = s.get("scale") or (s.get("deploy") or {}).get("replicas") or (COMPOSE_ACTORS if role == "actor" else 1)
        pods = [f"{svc_name}-{i + 1}" for i in range(n)]
        env = {k: str(v) for k, v in (s.get("environment") or {}).items() if v is not None}
        c = Container(f"service {svc_name}", role, argv, env, pods)
        c.hostnames = {svc_name}
        for net in (s.get("networks") or {}).values():
            c.hostnames.update((net or {}).get("aliases") or [])
        if s.get("container_name"):
            c.hostnames.add(s["container_name"])
        if s.get("hostname"):
            c.hostnames.add(s["hostname"])
        c.workdir = s.get("working_dir")
        c.read_only_root = bool(s.get("read_only"))
        c.memory_limit = quantity(s.get("mem_limit") or
                                  (((s.get("deploy") or {}).get("resources") or {}).get("limits") or {}).get("memory"))
        for p in s.get("ports", []) or []:
            c.declared_ports.append((int(p["target"]), f"published port {p.get('published')}:{p['target']}"))
        for p in s.get("expose", []) or []:
            c.declared_ports.append((int(str(p).split("/")[0]), f"expose {p}"))
        for v in s.get("volumes", []) or []:
            kind = {"bind": "bind", "volume": "volume", "tmpfs": "emptyDir"}.get(v["type"], "other")
            c.mounts.append(Mount(v["target"], kind, v.get("source") or v["target"], source=v.get("source"),
                                  read_only=bool(v.get("read_only"))))
        hc = s.get("healthcheck")
        if hc and not hc.get("disable"):
            test = hc.get("test")
            if isinstance(test, str):
                test = ["CMD-SHELL", test]
            if test and test[0] == "CMD":
                cmd = test[1:]
            elif test and test[0] == "CMD-SHELL":
                cmd = ["/bin/sh", "-c", test[1]]
            else:
                cmd = []
            if cmd and os.path.basename(cmd[0]) == "troupe-health":
                c.probes.append(Probe("healthcheck", "troupe-health", command=cmd, loopback_ok=True))
            elif cmd:
                c.probes.append(Probe("healthcheck", "exec", command=cmd, loopback_ok=True))
        stack.containers.append(c)
    return stack


# ---------------------------------------------------------------------------------------------
# Analysis: listening ports, flags, variables, Services, references, probes


def parse_argv(c, binary, errors):
    """[(flag or None, value or None, index of the value token)] of a Troupe binary's argv."""
    out = []
    args = c.argv[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            flag, eq, value = a[2:].partition("=")
            info = binary.flags.get(flag)
            if info is None:
                errors.append(f"{c.workload}: unknown flag --{flag} (`{binary.name} --help` has "
                              f"{', '.join('--' + f for f in sorted(binary.flags) if f != 'help')})")
                out.append((flag, value if eq else None, i + 1 if eq else None))
                i += 1
                continue
            if info["value"]:
                if eq:
                    out.append((flag, value, i + 1))
                elif i + 1 < len(args):
                    out.append((flag, args[i + 1], i + 2))
                    i += 1
                else:
                    errors.append(f"{c.workload}: --{flag} needs a value")
            else:
                if eq:
                    errors.append(f"{c.workload}: --{flag} takes no value (got --{a[2:]})")
                out.append((flag, None, None))
        else:
            errors.append(f"{c.workload}: unexpected argument {a!r} ({binary.name} takes no positional arguments)")
        i += 1
    return out


def analyse_container(c, binaries, errors):
    """Finds the ports c listens on, checks its flags and variables."""
    listens = {}

    def listen(port, host, where):
        port = int(port)
        if port in listens and listens[port][1] != where:
            errors.append(f"{c.workload}: port {port} is listened on twice ({listens[port][1]} and {where})")
        listens[port] = (host, where)

    if c.role == "redis-server":
        args = c.argv[1:]
        port, bind = 6379, "0.0.0.0"
        for i, a in enumerate(args):
            if a == "--port" and i + 1 < len(args):
                port = int(args[i + 1])
            if a == "--bind" and i + 1 < len(args):
                bind = args[i + 1].split()[0]
        listen(port, bind if bind not in ("*", "-::*") else "0.0.0.0", "--port" if "--port" in args else "redis's default port")
        for name in c.env:
            if name.startswith("TROUPE_"):
                errors.append(f"{c.workload}: env {name} set on redis-server, which reads no TROUPE_* variable")
        c.listens = listens
        return
    binary = binaries.get(c.role)
    if binary is None:
        errors.append(f"{c.workload}: command {c.argv[0]!r} is not a Troupe binary ({', '.join(TROUPE_ROLES)})")
        return
    flags = parse_argv(c, binary, errors)
    given = {f for f, _, _ in flags}
    for flag, value, _ in flags:
        m = LISTEN_RE.match(value or "")
        if m:
            listen(m.group("port"), m.group("host") or "", f"--{flag} {value}")
    for name, value in c.env.items():
        if not name.startswith("TROUPE_"):
            continue
        flag = binary.envs.get(name)
        if flag is None:
            readers = [b.name for b in binaries.values() if name in b.envs]
            errors.append(f"{c.workload}: env {name} is not read by {binary.name}"
                          + (f" (only by {', '.join(readers)})" if readers else " nor by any Troupe binary")
                          + f"; {binary.name} reads {', '.join(sorted(binary.envs))}")
            continue
        if flag in given:
            c.notes.append(f"env {name} is overridden by --{flag}")
            continue
        given.add(flag)
        m = LISTEN_RE.match(value)
        if m:
            listen(m.group("port"), m.group("host") or "", f"env {name}={value}")
    for flag, info in binary.flags.items():
        m = LISTEN_RE.match(info["default"] or "")
        if flag.endswith("-listen") and flag not in given and m:
            listen(m.group("port"), m.group("host") or "", f"the default of --{flag} ({info['default']})")
            c.added_flags.append((flag, int(m.group("port"))))
    c.listens = listens


def describe_listens(c):
    return ", ".join(f"{p} ({where})" for p, (_, where) in sorted(c.listens.items())) or "nothing"


def require_listen(c, port, what, errors, loopback_ok=False):
    """Checks c listens on port (reachable from outside the pod unless loopback_ok)."""
    got = c.listens.get(int(port))
    if got is None:
        errors.append(f"{what}: {c.workload} does not listen on port {port}; it listens on {describe_listens(c)}")
        return False
    if not loopback_ok and got[0] not in EXTERNAL_HOSTS:
        errors.append(f"{what}: {c.workload} listens on port {port} only on {got[0]} ({got[1]}), "
                      f"which nothing outside the container reaches")
        return False
    return True


def named_port(c, port, what, errors):
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    if port not in c.port_names:
        errors.append(f"{what}: {c.workload} has no container port named {port!r} "
                      f"(it has {', '.join(f'{k}={v}' for k, v in c.port_names.items()) or 'none'})")
        return None
    return c.port_names[port]


def selected(stack, svc):
    sel = svc["spec"].get("selector") or {}
    return [c for c in stack.containers if sel and all(c.labels.get(k) == v for k, v in sel.items())]


def check_services(stack, errors):
    for name, svc in stack.services.items():
        targets = selected(stack, svc)
        if not targets:
            errors.append(f"Service {name}: its selector {svc['spec'].get('selector')} matches no workload")
            continue
        for sp in svc["spec"].get("ports", []):
            tp = sp.get("targetPort", sp["port"])
            what = f"Service {name} port {sp.get('name', '')} {sp['port']} -> targetPort {tp}"
            for c in targets:
                cp = named_port(c, tp, what, errors)
                if cp is not None:
                    require_listen(c, cp, what, errors)


def resolve_chart_host(stack, host):
    """(Service, pod index or None) for a cluster DNS name, or raises WiringError with the reason."""
    labels = host.lower().split(".")
    if labels[-2:] == ["cluster", "local"]:
        labels = labels[:-2]
        if labels[-1:] != ["svc"]:
            raise WiringError(f"{host}: not <service>.<namespace>.svc.cluster.local")
    pod = None
    if labels[-1] == "svc":
        labels = labels[:-1]
        if len(labels) == 2:
            svc, ns = labels
        elif len(labels) == 3:
            pod, svc, ns = labels
        else:
            raise WiringError(f"{host}: not <service>.<namespace>.svc or <pod>.<service>.<namespace>.svc")
    elif len(labels) == 1:
        svc, ns = labels[0], NAMESPACE
    elif len(labels) == 2:
        # The resolver's search list tries <a>.<b>.<ns>.svc.cluster.local (pod a of headless service b) first.
        if labels[1] in stack.services:
            pod, svc, ns = labels[0], labels[1], NAMESPACE
        else:
            svc, ns = labels
    else:
        raise WiringError(f"{host}: not a Service name of this release")
    if ns != NAMESPACE:
        raise WiringError(f"{host}: namespace {ns!r} is not the release namespace {NAMESPACE!r}")
    if svc not in stack.services:
        raise WiringError(f"{host}: there is no Service {svc!r} (Services: {', '.join(sorted(stack.services))})")
    s = stack.services[svc]
    if pod is not None:
        if s["spec"].get("clusterIP") != "None":
            raise WiringError(f"{host}: pod DNS names need a headless Service, and {svc} is not headless")
        if svc not in stack.statefulsets:
            raise WiringError(f"{host}: no StatefulSet has serviceName {svc}, so no pod has a name under it")
        sts, n, _ = stack.statefulsets[svc]
        m = re.fullmatch(re.escape(sts) + r"-(\d+)", pod)
        if not m or int(m.group(1)) >= n:
            raise WiringError(f"{host}: StatefulSet {sts} has pods {', '.join(f'{sts}-{i}' for i in range(n))}, not {pod}")
        return s, int(m.group(1))
    return s, None


def resolve_reference(stack, c, host, port, errors, what):
    """The (container, replica index, container port) a `host:port` reference reaches, or None."""
    if host.lower() == "localhost" and c is not None:
        return (c, None, port) if require_listen(c, port, what, errors, loopback_ok=True) else None
    if stack.name == "compose":
        targets = [t for t in stack.containers if host in t.hostnames]
        if not targets:
            errors.append(f"{what}: {host} is not a service of the compose file")
            return None
        t = targets[0]
        return (t, 0, port) if require_listen(t, port, what + f" (service {host}, container port {port})", errors) else None
    try:
        svc, pod = resolve_chart_host(stack, host)
    except WiringError as e:
        errors.append(f"{what}: {e}")
        return None
    name = svc["metadata"]["name"]
    if pod is not None:
        _, _, t = stack.statefulsets[name]
        ok = require_listen(t, port, what + f" (pod DNS name of headless Service {name}: clients dial the pod's port {port} directly)", errors)
        return (t, pod, port) if ok else None
    targets = selected(stack, svc)
    if not targets:
        errors.append(f"{what}: Service {name} selects no workload")
        return None
    t = targets[0]
    if svc["spec"].get("clusterIP") == "None":
        ok = require_listen(t, port, what + f" (headless Service {name}: clients dial the pod's port {port} directly)", errors)
        return (t, 0, port) if ok else None
    sp = next((p for p in svc["spec"].get("ports", []) if p["port"] == port), None)
    if sp is None:
        errors.append(f"{what}: Service {name} has no port {port} (its ports: "
                      f"{', '.join(str(p['port']) for p in svc['spec'].get('ports', []))})")
        return None
    tp = sp.get("targetPort", sp["port"])
    cp = named_port(t, tp, what + f" (Service {name} port {port} -> targetPort {tp})", errors)
    if cp is None:
        return None
    ok = require_listen(t, cp, what + f" (Service {name} port {port} -> targetPort {tp} -> container port {cp})", errors)
    return (t, 0, cp) if ok else None


def references_in(value):
    """`host:port` references to DNS names (not IP addresses) in a value."""
    for m in REFERENCE_RE.finditer(value):
        host = m.group("host")
        if re.fullmatch(r"[0-9.]+", host):
            continue
        yield m


def analyse(stack, binaries):
    """All static checks; returns the list of problems."""
    errors = []
    for c in stack.containers:
        analyse_container(c, binaries, errors)
    for c in stack.containers:
        for port, where in c.declared_ports:
            require_listen(c, port, f"{c.workload} {where}", errors)
        for p in c.probes:
            what = f"{c.workload} {p.label}"
            if p.kind in ("grpc", "httpGet", "tcpSocket"):
                cp = named_port(c, p.port, what, errors)
                if cp is not None:
                    require_listen(c, cp, f"{what} ({p.kind} port {p.port}, from the kubelet)", errors)
            elif p.kind == "troupe-health":
                addr = health_address(p.command, binaries)
                m = re.fullmatch(r"(?:https?://)?(127\.0\.0\.1|localhost|\[::1\]):(\d+)", addr)
                if not m:
                    errors.append(f"{what}: troupe-health --address {addr} is not 127.0.0.1:PORT inside the container")
                else:
                    require_listen(c, int(m.group(2)), f"{what} (troupe-health --address {addr})", errors, loopback_ok=True)
            elif p.kind == "exec":
                for port in redis_cli_ports(p.command):
                    require_listen(c, port, f"{what} (redis-cli -p {port})", errors, loopback_ok=p.loopback_ok)
        if c.role in TROUPE_ROLES and not any(p.label in ("readinessProbe", "healthcheck") for p in c.probes):
            errors.append(f"{c.workload}: no readiness probe / healthcheck")
    for c in stack.containers:
        for port, where in c.scrape_ports:
            require_listen(c, port, f"{c.workload} {where}", errors)
    if stack.name == "chart":
        check_services(stack, errors)
    for svc, path in stack.prometheus_configs:
        check_prometheus_targets(stack, svc, path, errors)
    for c in stack.containers:
        values = [(arg_label(c.argv, i), a) for i, a in enumerate(c.argv) if i > 0] + [(f"env {k}", v) for k, v in c.env.items()]
        for where, value in values:
            for m in references_in(value):
                resolve_reference(stack, c, m.group("host"), int(m.group("port")), errors,
                                  f"{c.workload} {where} {m.group(0)}")
    return errors


def check_prometheus_targets(stack, svc, path, errors):
    """Every target of a compose Prometheus's scrape configs must reach a metrics port."""
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    for job in cfg.get("scrape_configs", []) or []:
        shown = os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path
        where = f"service {svc} {shown} job {job.get('job_name')}"
        for sc in job.get("static_configs", []) or []:
            for target in sc.get("targets", []) or []:
                host, _, port = target.rpartition(":")
                resolve_reference(stack, None, host, int(port), errors, f"{where} target {target}")
        for sd in job.get("dns_sd_configs", []) or []:
            if sd.get("type", "SRV") != "A" or "port" not in sd:
                errors.append(f"{where}: dns_sd_configs of type {sd.get('type', 'SRV')} cannot be checked")
                continue
            for name in sd.get("names", []) or []:
                resolve_reference(stack, None, name, int(sd["port"]), errors, f"{where} dns_sd {name}:{sd['port']}")


def arg_label(argv, i):
    """How to name argv[i] in a message: the flag it is the value of, else its position."""
    return argv[i - 1] if i > 1 and argv[i - 1].startswith("--") else f"argument {i}"


def health_address(cmd, binaries):
    for i, a in enumerate(cmd):
        if a == "--address" and i + 1 < len(cmd):
            return cmd[i + 1]
        if a.startswith("--address="):
            return a.split("=", 1)[1]
    return binaries["troupe-health"].flags["address"]["default"] or "127.0.0.1:50051"


def redis_cli_ports(cmd):
    text = " ".join(cmd)
    if "redis-cli" not in text:
        return []
    ports = [int(p) for p in re.findall(r"redis-cli[^;|)]*?\s-p\s+(\d+)", text)]
    return ports or [6379]


# ---------------------------------------------------------------------------------------------
# Local plan: ports, paths, argv


def free_ports(n):
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class Local:
    """One replica as a local process."""

    def __init__(self, c, index, pod):
        self.c, self.index, self.pod = c, index, pod
        self.ports = {}  # container port -> local port
        self.argv, self.env, self.cwd = [], {}, None
        self.proc, self.log_path = None, None


def sanitize(path):
    return path.strip("/").replace("/", "_") or "root"


class Planner:
    def __init__(self, stack, binaries, base_env, work):
        self.stack, self.binaries, self.base_env, self.work = stack, binaries, base_env, work
        self.locals = {}  # (container id, index) -> Local
        self.errors = []

    def local_of(self, c, index):
        return self.locals[(id(c), index or 0)]

    def plan(self):
        reps = [(c, i, pod) for c in self.stack.containers for i, pod in enumerate(c.replicas)]
        ports = iter(free_ports(sum(len(c.listens) for c, _, _ in reps)))
        for c, i, pod in reps:
            loc = Local(c, i, pod)
            for p in sorted(c.listens):
                loc.ports[p] = next(ports)
            self.locals[(id(c), i)] = loc
        for loc in self.locals.values():
            self.plan_local(loc)
        if self.errors:
            raise WiringError("\n".join(self.errors))
        return sorted(self.locals.values(), key=lambda l: (START_ORDER.get(l.c.role, 9), l.c.workload, l.index))

    # paths ------------------------------------------------------------------------------------
    def mount_dir(self, loc, m):
        if m.kind == "bind":
            return m.source
        if m.kind == "volume":  # compose named volumes are shared by the replicas
            d = os.path.join(self.work, "volumes", sanitize(m.name))
        else:
            d = os.path.join(self.work, loc.pod, "mnt", sanitize(m.path))
        os.makedirs(d, exist_ok=True)
        if m.kind == "configMap":
            for rel, content in m.files.items():
                f = os.path.join(d, rel)
                os.makedirs(os.path.dirname(f), exist_ok=True)
                with open(f, "w") as fh:
                    fh.write(content)
        if m.sub_path:
            return os.path.join(d, m.sub_path)
        return d

    def map_path(self, loc, path, what):
        c = loc.c
        best = None
        for m in c.mounts:
            if path == m.path or path.startswith(m.path.rstrip("/") + "/"):
                if best is None or len(m.path) > len(best.path):
                    best = m
        if best is not None:
            local = self.mount_dir(loc, best) + path[len(best.path):]
            if best.kind == "configMap" and not os.path.exists(local):
                self.errors.append(f"{c.workload} {what}: {path} is on the ConfigMap {best.source} volume "
                                   f"at {best.path}, which has no such key (keys: {', '.join(best.files)})")
            return local
        for prefix, local in IMAGE_FILES.items():
            if path == prefix or path.startswith(prefix + "/"):
                mapped = local + path[len(prefix):]
                if not os.path.exists(mapped):
                    self.errors.append(f"{c.workload} {what}: {path} is not in the image (no {os.path.relpath(mapped, ROOT)})")
                return mapped
        if c.read_only_root:
            self.errors.append(f"{c.workload} {what}: {path} is on no volume and the root filesystem is read-only")
        d = os.path.join(self.work, loc.pod, "rootfs") + path
        os.makedirs(os.path.dirname(d), exist_ok=True)
        return d

    # values -----------------------------------------------------------------------------------
    def rewrite(self, loc, value, what):
        m = LISTEN_RE.match(value)
        if m and int(m.group("port")) in loc.ports:
            return f"127.0.0.1:{loc.ports[int(m.group('port'))]}"

        def ref(m):
            got = resolve_reference(self.stack, loc.c, m.group("host"), int(m.group("port")), self.errors,
                                    f"{loc.c.workload} {what} {m.group(0)}")
            if got is None:
                return m.group(0)
            t, index, cp = got
            target = loc if index is None else self.local_of(t, index)
            return f"{m.group('scheme') or ''}127.0.0.1:{target.ports[cp]}"

        value = REFERENCE_RE.sub(lambda m: m.group(0) if re.fullmatch(r"[0-9.]+", m.group("host")) else ref(m), value)
        if value.startswith("/"):
            value = self.map_path(loc, value, what)
        return value

    def plan_local(self, loc):
        c = loc.c
        workdir = c.workdir or IMAGE_WORKDIR.get(c.role, DEFAULT_WORKDIR)
        loc.cwd = self.map_path(loc, workdir, "working directory")
        os.makedirs(loc.cwd, exist_ok=True)
        loc.env = dict(self.base_env)
        loc.env["HOME"] = loc.cwd
        for k, v in c.env.items():
            loc.env[k] = self.rewrite(loc, v, f"env {k}")
        if c.role == "redis-server":
            args = [self.rewrite(loc, a, arg_label(c.argv, i)) for i, a in enumerate(c.argv) if i > 0]
            port = next(iter(c.listens))
            loc.argv = ["/usr/bin/redis-server"] + args + [
                "--port", str(loc.ports[port]), "--bind", "127.0.0.1", "--dir", loc.cwd, "--daemonize", "no"]
        else:
            args = [self.rewrite(loc, a, arg_label(c.argv, i)) for i, a in enumerate(c.argv) if i > 0]
            for flag, port in c.added_flags:
                args += [f"--{flag}", f"127.0.0.1:{loc.ports[port]}"]
            loc.argv = [self.binaries[c.role].path] + args
        loc.probes = [self.plan_probe(loc, p) for p in c.probes]

    def plan_probe(self, loc, p):
        c = loc.c
        health = self.binaries["troupe-health"].path
        if p.kind == "grpc":
            port = loc.ports.get(named_port(c, p.port, "", []))
            return (p, [health, "--address", f"127.0.0.1:{port}", "--service", p.service])
        if p.kind == "troupe-health":
            cmd = list(p.command)
            addr = health_address(cmd, self.binaries)
            port = int(addr.rsplit(":", 1)[1])
            new = f"127.0.0.1:{loc.ports[port]}"
            if "--address" in cmd:
                cmd[cmd.index("--address") + 1] = new
            elif any(a.startswith("--address=") for a in cmd):
                cmd = [f"--address={new}" if a.startswith("--address=") else a for a in cmd]
            else:
                cmd += ["--address", new]
            return (p, [health] + cmd[1:])
        if p.kind == "exec":
            cmd = list(p.command)
            if cmd and os.path.basename(cmd[0]) == "redis-cli":  # argv form
                if "-p" in cmd:
                    i = cmd.index("-p")
                    cmd[i + 1] = str(loc.ports[int(cmd[i + 1])])
                else:
                    cmd = [cmd[0], "-p", str(loc.ports[6379])] + cmd[1:]
                return (p, cmd)
            out = []
            for a in cmd:  # shell strings
                if "redis-cli" in a:
                    if re.search(r"redis-cli[^;|)]*?\s-p\s+\d+", a):
                        a = re.sub(r"(redis-cli[^;|)]*?\s-p\s+)(\d+)", lambda m: m.group(1) + str(loc.ports[int(m.group(2))]), a)
                    else:
                        a = a.replace("redis-cli", f"redis-cli -p {loc.ports[6379]}")
                out.append(a)
            return (p, out)
        port = loc.ports.get(named_port(c, p.port, "", []))
        return (p, ("http" if p.kind == "httpGet" else "tcp", port, p.path))


# ---------------------------------------------------------------------------------------------
# Running


class Cluster:
    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.started = []

    def start(self, loc):
        loc.log_path = os.path.join(self.log_dir, f"{loc.pod}.log")
        with open(loc.log_path, "wb") as logf:
            loc.proc = subprocess.Popen(loc.argv, env=loc.env, cwd=loc.cwd, stdout=logf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.append(loc)

    def check_alive(self):
        for loc in self.started:
            rc = loc.proc.poll()
            if rc is not None:
                raise WiringError(f"{loc.pod} ({loc.c.workload}) exited with status {rc}")

    def stop(self):
        """SIGTERM to every process group, the actors and the learner first, then the coordinator
        and Redis; SIGKILL to whatever is left after a short grace (this is a check, not a run)."""
        workers = [l.proc for l in self.started if l.c.role in ("actor", "learner")]
        rest = [l.proc for l in self.started if l.c.role not in ("actor", "learner")]
        proclib.stop_groups([workers, rest])

    def tails(self, lines=15):
        out = []
        for loc in self.started:
            try:
                with open(loc.log_path, "rb") as f:
                    text = f.read().decode(errors="replace").splitlines()[-lines:]
            except OSError:
                text = ["(no log)"]
            rc = loc.proc.poll()
            out.append(f"--- {loc.pod} ({'running' if rc is None else f'exited {rc}'}): {' '.join(loc.argv)}")
            out.extend("    " + line[:400] for line in text)
        return "\n".join(out)


def scrape(port, names):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return None
    values = {n: 0.0 for n in names}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) in values:
            try:
                values[m.group(1)] += float(m.group(3))
            except ValueError:
                pass
    return values


def run_probe(plan, env, timeout=5):
    if isinstance(plan, tuple) and plan and plan[0] in ("http", "tcp"):
        kind, port, path = plan
        try:
            if kind == "http":
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
                    return 200 <= r.status < 400, f"HTTP {r.status}"
            with socket.create_connection(("127.0.0.1", port), timeout=timeout):
                return True, "connected"
        except OSError as e:
            return False, str(e)
    try:
        r = subprocess.run(plan, env=env, capture_output=True, text=True, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    return r.returncode == 0, (r.stdout + r.stderr).strip().replace("\n", " ")[:200]


def metrics_port(loc):
    for flag, port in loc.c.added_flags:
        if flag == "metrics-listen":
            return loc.ports[port]
    for p, (_, where) in loc.c.listens.items():
        if "metrics-listen" in where or "TROUPE_METRICS_LISTEN" in where:
            return loc.ports[p]
    raise WiringError(f"{loc.c.workload}: cannot tell its metrics port")


def run_stack(stack, binaries, base_env, timeout, keep_logs, say=log):
    started_at = time.monotonic()
    errors = analyse(stack, binaries)
    if errors:
        raise WiringError("\n".join(errors))
    for role in ("redis-server",) + TROUPE_ROLES:
        if not stack.find(role):
            raise WiringError(f"no {role} workload in the {stack.name}")
    work = tempfile.mkdtemp(prefix=f"troupe-wiring-{stack.name}-")
    log_dir = os.path.join(keep_logs, stack.name) if keep_logs else os.path.join(work, "logs")
    os.makedirs(log_dir, exist_ok=True)
    cluster = Cluster(log_dir)
    try:
        locs = Planner(stack, binaries, base_env, work).plan()
        for s in stack.skipped:
            say(f"  skipped: {s}")
        for c in stack.containers:
            for n in c.notes:
                say(f"  note: {c.workload}: {n}")
        for loc in locs:
            ports = ", ".join(f"{p}->{loc.ports[p]}" for p in sorted(loc.ports))
            say(f"  {loc.pod}: ports {ports}")
            say(f"    $ {shlex.join(loc.argv)}")
            extra = {k: v for k, v in loc.env.items() if k in loc.c.env}
            if extra:
                say(f"    env {' '.join(f'{k}={v}' for k, v in extra.items())}")
        health_env = {k: v for k, v in base_env.items() if not k.startswith("TROUPE_")}
        for loc in locs:
            cluster.start(loc)
        coord_port = metrics_port(next(l for l in locs if l.c.role == "coordinator"))
        learner_port = metrics_port(next(l for l in locs if l.c.role == "learner"))
        deadline = time.monotonic() + timeout
        trained, passed, last = None, set(), {}
        peak = {}
        while True:
            cluster.check_alive()
            for loc in locs:
                peak[loc.pod] = max(peak.get(loc.pod, 0), rss_bytes(loc.proc.pid))
            if trained is None:
                # The coordinator's view (the check's condition) and the learner's: rollouts reached
                # it through the address it advertises, and it took updates.
                m = scrape(coord_port, ("troupe_coordinator_policy_version", "troupe_coordinator_frames_total")) or {}
                m.update(scrape(learner_port, ("troupe_learner_frames_total", "troupe_learner_updates_total")) or {})
                if all(m.get(k, 0) > 0 for k in TRAINED_METRICS):
                    trained = m
                    say(f"  trained after {time.monotonic() - started_at:.1f} s: "
                        + ", ".join(f"{k} {m[k]:.0f}" for k in TRAINED_METRICS))
                else:
                    last["coordinator /metrics"] = ", ".join(f"{k} {m.get(k, 'unreadable')}" for k in TRAINED_METRICS)
            if trained is not None:
                for loc in locs:
                    for p, plan in loc.probes:
                        key = (loc.pod, p.label)
                        if key in passed:
                            continue
                        ok, out = run_probe(plan, health_env)
                        if ok:
                            passed.add(key)
                            shown = shlex.join(plan) if isinstance(plan, list) else str(plan)
                            say(f"  probe ok: {loc.pod} {p.label}: {shown}")
                        else:
                            last[f"{loc.pod} {p.label}"] = out
                todo = [(l.pod, p.label) for l in locs for p, _ in l.probes if (l.pod, p.label) not in passed]
                if not todo:
                    break
            if time.monotonic() > deadline:
                waiting = "the coordinator's policy version and frames (and the learner's frames and updates) to pass 0" \
                    if trained is None else \
                    "probes: " + "; ".join(f"{pod} {label}: {last.get(f'{pod} {label}', '?')}" for pod, label in todo)
                raise WiringError(f"timed out after {timeout:.1f} s waiting for {waiting}"
                                  + (f" (last scrape: {last.get('coordinator /metrics')})" if trained is None else ""))
            time.sleep(1)
        cluster.check_alive()
        # Resident memory over this short run (a floor for a long one) against the memory limit:
        # over it, the kernel would OOM-kill the container.
        over = []
        for loc in locs:
            lim = loc.c.memory_limit
            used = peak.get(loc.pod, 0)
            say(f"  memory: {loc.pod} peak RSS {used / 2**20:.0f} MiB"
                + (f" of the {lim / 2**20:.0f} MiB limit ({100 * used / lim:.0f}%)" if lim else " (no limit)"))
            if lim and used > lim:
                over.append(f"{loc.pod}: peak RSS {used / 2**20:.0f} MiB > memory limit {lim / 2**20:.0f} MiB")
        if over:
            raise WiringError("processes use more memory than their containers may:\n  " + "\n  ".join(over))
        return time.monotonic() - started_at
    except (WiringError, KeyboardInterrupt):
        if cluster.started:
            say("  logs (tails):\n" + cluster.tails())
        raise
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Self-test: the static checks must refuse broken copies of the rendered manifests


def chart_doc(docs, kind, suffix):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix))


def chart_container(docs, kind, suffix):
    return chart_doc(docs, kind, suffix)["spec"]["template"]["spec"]["containers"][0]


def replace_arg(c, old, new):
    args = c["args"]
    args[args.index(old)] = new


def mutate_target_port(docs):
    svc = chart_doc(docs, "Service", "-learner")
    port = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
    port["targetPort"] = 50099


def mutate_coordinator_target_port(docs):
    svc = chart_doc(docs, "Service", "-coordinator")
    next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")["targetPort"] = "grpcx"


def mutate_flag(docs):
    replace_arg(chart_container(docs, "Deployment", "-coordinator"), "--metrics-listen", "--metrics-address")


def mutate_env(docs):
    c = chart_container(docs, "Deployment", "-coordinator")
    next(e for e in c["env"] if e["name"] == "TROUPE_REDIS_URL")["name"] = "TROUPE_REDIS_ADDR"


def mutate_probe(docs):
    chart_container(docs, "Deployment", "-actor")["readinessProbe"]["grpc"]["port"] = 50054


def mutate_advertise(docs):
    c = chart_container(docs, "StatefulSet", "-learner")
    i = c["args"].index("--advertise")
    c["args"][i + 1] = c["args"][i + 1].replace(":50052", ":50062")


def mutate_listen(docs):
    c = chart_container(docs, "StatefulSet", "-learner")
    i = c["args"].index("--listen")
    c["args"][i + 1] = "127.0.0.1:50052"


def mutate_compose_health(cfg):
    cmd = cfg["services"]["actor"]["command"]
    cmd[cmd.index("--health-listen") + 1] = "0.0.0.0:50054"


def mutate_compose_redis(cfg):
    cmd = cfg["services"]["coordinator"]["command"]
    cmd[cmd.index("--redis-url") + 1] = "redis://redis:6380"


def mutate_compose_config(cfg):
    cmd = cfg["services"]["coordinator"]["command"]
    cmd[cmd.index("--config") + 1] = "/etc/troupe/configs/cartpol.toml"


def mutate_compose_prometheus(cfg):
    vol = next(v for v in cfg["services"]["prometheus"]["volumes"] if v["target"] == "/etc/prometheus/prometheus.yml")
    with open(vol["source"]) as f:
        text = f.read()
    fd, path = tempfile.mkstemp(prefix="troupe-wiring-prometheus-", suffix=".yml")
    with os.fdopen(fd, "w") as f:
        f.write(text.replace("learner:9102", "learner:9103"))
    vol["source"] = path
    MUTATION_FILES.append(path)


MUTATION_FILES = []
LIVE_SELF_TEST_TIMEOUT = 15.0

SELF_TESTS = [
    ("chart", "learner Service grpc targetPort grpc -> 50099", mutate_target_port,
     "targetPort 50099: StatefulSet/troupe-learner does not listen on port 50099"),
    ("chart", "coordinator Service grpc targetPort -> named port grpcx", mutate_coordinator_target_port,
     "has no container port named 'grpcx'"),
    ("chart", "coordinator flag --metrics-listen renamed --metrics-address", mutate_flag,
     "unknown flag --metrics-address"),
    ("chart", "coordinator env TROUPE_REDIS_URL renamed TROUPE_REDIS_ADDR", mutate_env,
     "env TROUPE_REDIS_ADDR is not read by coordinator"),
    ("chart", "actor readinessProbe port 50053 -> 50054", mutate_probe,
     "readinessProbe (grpc port 50054, from the kubelet): Deployment/troupe-actor does not listen on port 50054"),
    ("chart", "learner --advertise port 50052 -> 50062", mutate_advertise,
     "clients dial the pod's port 50062 directly): StatefulSet/troupe-learner does not listen on port 50062"),
    ("chart", "learner --listen 0.0.0.0:50052 -> 127.0.0.1:50052", mutate_listen,
     "listens on port 50052 only on 127.0.0.1"),
    ("compose", "actor --health-listen 0.0.0.0:50053 -> :50054 (healthcheck still 50053)", mutate_compose_health,
     "healthcheck (troupe-health --address 127.0.0.1:50053): service actor does not listen on port 50053"),
    ("compose", "coordinator --redis-url redis://redis:6380", mutate_compose_redis,
     "service redis does not listen on port 6380"),
    ("compose", "coordinator --config /etc/troupe/configs/cartpol.toml", mutate_compose_config,
     "is not in the image (no configs/cartpol.toml)"),
    ("compose", "prometheus.yml scrapes learner:9103", mutate_compose_prometheus,
     "job troupe-learner target learner:9103 (service learner, container port 9103): service learner does not listen on port 9103"),
]


def self_test(chart_docs, compose_cfg, binaries, base_env):
    """Each mutation must make the static checks fail with the expected message; the unbroken
    manifests must pass them."""
    failures = []
    for source, desc, mutate, expect in [("chart", "unbroken", None, None), ("compose", "unbroken", None, None)] + SELF_TESTS:
        doc = copy.deepcopy(chart_docs if source == "chart" else compose_cfg)
        if mutate:
            try:
                mutate(doc)
            except (StopIteration, ValueError, KeyError) as e:
                failures.append(f"[{source}] {desc}: cannot apply the mutation (did the manifests change?): {e!r}")
                continue
        stack = read_chart(doc) if source == "chart" else read_compose(doc)
        errors = analyse(stack, binaries)
        if not errors:
            work = tempfile.mkdtemp(prefix="troupe-wiring-selftest-")
            try:
                Planner(stack, binaries, base_env, work).plan()
            except WiringError as e:
                errors = str(e).splitlines()
            finally:
                shutil.rmtree(work, ignore_errors=True)
        text = "\n".join(errors)
        if expect is None:
            if errors:
                failures.append(f"[{source}] the unbroken manifests fail the static checks:\n    " + "\n    ".join(errors))
            else:
                log(f"  ok   [{source}] unbroken: passes the static checks")
        elif not errors:
            failures.append(f"[{source}] {desc}: the check did NOT fail")
        elif expect not in text:
            failures.append(f"[{source}] {desc}: failed, but without {expect!r}:\n    " + "\n    ".join(errors))
        else:
            first = next(e for e in errors if expect in e)
            log(f"  ok   [{source}] {desc}\n         -> {first}")
    for path in MUTATION_FILES:
        os.unlink(path)
    if not failures:
        # One break only a run shows: a probe asking for a health service nobody registers. The
        # static checks pass; the running stack must fail on that probe.
        doc = copy.deepcopy(compose_cfg)
        test = doc["services"]["learner"]["healthcheck"]["test"]
        test[test.index("--service") + 1] = "troupe.v1.Learnr"
        lines = []
        try:
            run_stack(read_compose(doc), binaries, base_env, LIVE_SELF_TEST_TIMEOUT, None, say=lines.append)
            failures.append("[compose] learner healthcheck --service troupe.v1.Learnr: the running stack passed")
        except WiringError as e:
            expect = "learner-1 healthcheck"
            if expect in str(e):
                log(f"  ok   [compose] learner healthcheck --service troupe.v1.Learnr (run for up to "
                    f"{LIVE_SELF_TEST_TIMEOUT:.0f} s)\n         -> {str(e)[:400]}")
            else:
                failures.append(f"[compose] learner healthcheck --service troupe.v1.Learnr: failed, but not on "
                                f"that probe:\n    {e}")
    if failures:
        raise WiringError("self-test failed:\n  " + "\n  ".join(failures))


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-test", action="store_true", help="only run the self-test (no processes)")
    ap.add_argument("--no-self-test", action="store_true", help="skip the self-test")
    ap.add_argument("--only", choices=("chart", "compose"), help="run one stack only")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds per stack to train and pass the probes")
    ap.add_argument("--keep-logs", metavar="DIR", help="keep the processes' logs in DIR/<stack>/")
    args = ap.parse_args()

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        env = tool_env()
        os.environ.update({k: env[k] for k in ("PATH", "HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME") if k in env})
        binaries = load_binaries(env)
        base_env = {k: env[k] for k in ("PATH", "LD_LIBRARY_PATH", "LANG", "TZ") if k in env}
        # The images set TROUPE_PYTHON_PATH (Dockerfile): this machine's envs venv stands for it.
        if env.get("TROUPE_PYTHON_PATH"):
            base_env["TROUPE_PYTHON_PATH"] = env["TROUPE_PYTHON_PATH"]
        log(f"== rendering: helm template {RELEASE} {CHART} -f {CHART_VALUES} --namespace {NAMESPACE}; "
            f"docker-compose -f {COMPOSE_FILE} config --format json")
        chart_docs = render_chart(env)
        compose_cfg = render_compose(env)
        if not args.no_self_test:
            log("== self-test: broken copies of the rendered manifests must fail")
            self_test(chart_docs, compose_cfg, binaries, base_env)
            log("== self-test passed")
        if args.self_test:
            return 0
        for name in ("chart", "compose"):
            if args.only and args.only != name:
                continue
            log(f"== {name}: starting its workloads as local processes")
            stack = read_chart(chart_docs) if name == "chart" else read_compose(compose_cfg)
            took = run_stack(stack, binaries, base_env, args.timeout, args.keep_logs)
            log(f"== {name}: PASS ({took:.1f} s)")
        log("wiring check passed")
        return 0
    except WiringError as e:
        print(f"wiring check FAILED:\n{e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as e:
        print(f"wiring check interrupted ({e or 'Ctrl-C'})", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
