#!/usr/bin/env bash
# Checks the Helm chart helm/troupe offline, failing on the first problem:
#   1. yamllint on the chart's own YAML (values, test values, files/; templates are checked by
#      rendering them) and check-jsonschema's metaschema check of values.schema.json;
#   2. for each value set (defaults, values-cpu.yaml, every helm/troupe/ci/*-values.yaml):
#      `helm lint --strict`; `helm template`; kubernetes-validate --strict (k8s 1.32) on the core
#      kinds; scripts/checks/validate_monitoring.js on the prometheus-operator kinds (which
#      kubernetes-validate has no schemas for); yamllint on the rendered output; and assertions
#      on what the manifests wire together (names, ports, probes, security settings; where
#      replay runs: inside the coordinator, or with ci/separate-replay-values.yaml a workload of
#      its own running `coordinator --role replay` beside a `--role coordinator` coordinator,
#      with its Service, probes, tokens, Redis shards and ServiceMonitor);
#   3. negative tests: values the schema or the templates must refuse.
# Usage: scripts/checks/chart.sh   (installs the pinned tools on first use: scripts/setup.sh)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
troupe_install_deploy_tools

CHART=helm/troupe
RELEASE=troupe
NAMESPACE=troupe-check
K8S_VERSION=1.32.0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

step "yamllint: chart YAML (templates excluded by .yamllint.yaml)"
yamllint --strict -c .yamllint.yaml "$CHART"

step "values.schema.json is valid draft-07"
check-jsonschema --check-metaschema "$CHART/values.schema.json"

# Splits a rendered manifest into core kinds and prometheus-operator kinds.
split_manifest() { # IN CORE_OUT MONITORING_OUT
  python3 - "$@" <<'EOF'
import sys, yaml
src, core_out, mon_out = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
core = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
mon = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
yaml.safe_dump_all(core, open(core_out, "w"), sort_keys=False)
yaml.safe_dump_all(mon, open(mon_out, "w"), sort_keys=False)
print(f"{len(core)} core object(s), {len(mon)} prometheus-operator object(s)")
EOF
}

# Asserts what the rendered manifests wire together. EXPECT is JSON: gpu (learner asks for a GPU),
# redis (the chart's Redis), hpa, monitoring (number of prometheus-operator objects), dashboard,
# tls / auth / clientAuth / serverName (the security settings), onFenced, learnerId, policies
# (learner.policies, default ["default"]: one learner StatefulSet + headless Service each),
# replay ({separate, shards, urls, appendfsync}; default: inside the coordinator, no Redis of
# its own).
assert_manifest() { # FILE EXPECT_JSON
  python3 - "$1" "$2" "$RELEASE" "$NAMESPACE" <<'EOF'
import json, re, sys, yaml
path, expect, release, ns = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
errors = []
def check(cond, msg):
    if not cond: errors.append(msg)
def find(kind, suffix):
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return hits[0] if hits else None
def arg(container, flag):
    args = container.get("args", [])
    return args[args.index(flag) + 1] if flag in args else None
def env(container, name):
    return next((e for e in container.get("env", []) if e["name"] == name), None)

for d in docs:
    labels = d["metadata"].get("labels", {})
    for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by", "helm.sh/chart"):
        check(key in labels, f"{d['kind']}/{d['metadata']['name']}: label {key} missing")
    check(d["metadata"].get("namespace") == ns, f"{d['kind']}/{d['metadata']['name']}: namespace")

services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
def service_port(url, scheme):
    m = re.fullmatch(scheme + r"://([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)", url or "")
    if not m: return f"{url!r} is not {scheme}://<service>.<namespace>.svc:<port>"
    name, namespace, port = m.group(1), m.group(2), int(m.group(3))
    svc = services.get(name)
    if namespace != ns or svc is None: return f"{url}: no Service {name} in {ns}"
    if port not in [p["port"] for p in svc["spec"]["ports"]]: return f"{url}: Service {name} has no port {port}"
    return None

def component(d):
    return d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
coord, actor = find("Deployment", "-coordinator"), find("Deployment", "-actor")
learners = [d for d in docs if d["kind"] == "StatefulSet" and component(d) == "learner"]
policies = expect.get("policies", ["default"])
check(coord and learners and actor, "coordinator Deployment, learner StatefulSet(s) and actor Deployment must all render")
if errors: sys.exit("\n".join(errors))

replay_expect = {"separate": False, "shards": 0, "urls": [], "appendfsync": "everysec", **expect.get("replay", {})}
replay = next((d for d in docs if d["kind"] == "Deployment" and component(d) == "replay"), None)
check((replay is not None) == replay_expect["separate"], "replay Deployment rendered iff replay.separate")
workloads = [("coordinator", coord)] + [("learner", l) for l in learners] + [("actor", actor)]
if replay: workloads.append(("replay", replay))
redis = next((d for d in docs if d["kind"] == "StatefulSet" and component(d) == "redis"), None)
check((redis is not None) == expect["redis"], "redis StatefulSet rendered iff redis.enabled")
if redis: workloads.append(("redis", redis))
shards = sorted((d for d in docs if d["kind"] == "StatefulSet" and component(d) == "replay-redis"), key=lambda d: d["metadata"]["name"])
workloads += [("replay-redis", s) for s in shards]
checksums = set()
for name, w in workloads:
    pod = w["spec"]["template"]
    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 10001 and psc.get("fsGroup") == 10001
          and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: pod securityContext")
    check(spec.get("automountServiceAccountToken") is False, f"{name}: automountServiceAccountToken must be false")
    check(any(v["name"] == "tmp" and "emptyDir" in v for v in spec.get("volumes", [])), f"{name}: /tmp emptyDir")
    for c in spec["containers"]:
        res = c.get("resources", {})
        check(res.get("requests") and res.get("limits"), f"{name}/{c['name']}: resources requests and limits")
        sc = c.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
              and sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("runAsNonRoot") is True,
              f"{name}/{c['name']}: container securityContext")
        check(any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), f"{name}/{c['name']}: /tmp mount")
    if name in ("redis", "replay-redis"): continue
    ann = pod["metadata"].get("annotations", {})
    checksums.add(ann.get("checksum/config"))
    check(pod["metadata"]["labels"].get("troupe.dev/run") == expect["run"], f"{name}: troupe.dev/run label")
    c = spec["containers"][0]
    binary = "coordinator" if name == "replay" else name
    check(c["command"] == [binary], f"{name}: command must be [{binary}]")
    check(("--log-json" in c["args"]) == expect.get("logJson", True), f"{name}: --log-json")
    # Probes target the plain-text health port (--health-listen), never the gRPC port, which
    # speaks TLS when tls.enabled and which the kubelet's gRPC probes cannot.
    health_port = {"coordinator": 50054, "replay": 50057, "learner": 50055, "actor": 50053}[name]
    ready = {"coordinator": "troupe.v1.Coordinator", "replay": "troupe.v1.Replay", "learner": "troupe.v1.Learner", "actor": "troupe.v1.Actor"}[name]
    for probe, service in (("startupProbe", ""), ("livenessProbe", ""), ("readinessProbe", ready)):
        g = c.get(probe, {}).get("grpc", {})
        check(g.get("port") == health_port and g.get("service") == service, f"{name}: {probe} grpc {health_port} {service!r}")
    check(arg(c, "--health-listen") == f"0.0.0.0:{health_port}", f"{name}: --health-listen 0.0.0.0:{health_port}")
    check(any(m["mountPath"] == "/var/lib/troupe" for m in c.get("volumeMounts", [])), f"{name}: writable /var/lib/troupe")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports.get("health") == health_port, f"{name}: containerPort health {health_port}")
    metrics_port = {"coordinator": 9100, "replay": 9103, "learner": 9102, "actor": 9101}[name]
    check(ports.get("metrics") == metrics_port, f"{name}: metrics port {metrics_port}")
    check(arg(c, "--metrics-listen") == f"0.0.0.0:{metrics_port}", f"{name}: --metrics-listen")
    if expect.get("podAnnotations", True):
        check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(metrics_port)
              and ann.get("prometheus.io/path") == "/metrics", f"{name}: prometheus.io annotations")
    for mount, enabled in (("/etc/troupe/tls", expect.get("tls", False)), ("/etc/troupe/tokens", expect.get("auth", False))):
        m = [v for v in c.get("volumeMounts", []) if v["mountPath"] == mount]
        check(bool(m) == enabled and all(v.get("readOnly") for v in m), f"{name}: {mount} mounted read-only iff enabled")
    scheme = "https" if expect.get("tls") else "http"
    if name not in ("coordinator", "replay"):
        problem = service_port(arg(c, "--coordinator"), scheme)
        check(problem is None, f"{name}: --coordinator: {problem}")
    # TLS and tokens: each process gets the settings of its roles (server: certificate and the
    # tokens it accepts; client: the CA and its own token), and only the Secret keys it needs.
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    server, client = name in ("coordinator", "replay", "learner"), name in ("learner", "actor")
    tls_on, mtls = expect.get("tls", False), expect.get("clientAuth", False)
    auth_on = expect.get("auth", False)
    want_env = {}
    if tls_on:
        want_env["TROUPE_TLS_CA"] = "/etc/troupe/tls/ca.crt"
        if server or mtls:
            want_env["TROUPE_TLS_CERT"] = "/etc/troupe/tls/tls.crt"
            want_env["TROUPE_TLS_KEY"] = "/etc/troupe/tls/tls.key"
        if mtls:
            want_env["TROUPE_TLS_CLIENT_AUTH"] = "true"
        if client and expect.get("serverName"):
            want_env["TROUPE_TLS_SERVER_NAME"] = expect["serverName"]
    if auth_on:
        if server:
            want_env["TROUPE_TOKENS_DIR"] = "/etc/troupe/tokens"
        if client:
            want_env["TROUPE_TOKEN_FILE"] = f"/etc/troupe/tokens/{name}"
    got_env = {e["name"]: e.get("value") for e in c.get("env", [])
               if e["name"].startswith(("TROUPE_TLS_", "TROUPE_TOKEN"))}
    check(got_env == want_env, f"{name}: security env {got_env} != {want_env}")
    def items(vol):
        its = (volumes.get(vol) or {}).get("secret", {}).get("items")
        return None if its is None else sorted(i["key"] for i in its)
    if tls_on:
        want = ["ca.crt", "tls.crt", "tls.key"] if server or mtls else ["ca.crt"]
        check(items("tls") == want, f"{name}: TLS Secret keys {items('tls')}, want {want}")
    if auth_on:
        # replay: Insert takes actor and learner tokens, Sample/UpdatePriorities learner,
        # TableInfo every role, admin all of them
        want = {"coordinator": ["actor", "admin", "evaluator", "learner"], "replay": ["actor", "admin", "evaluator", "learner"],
                "learner": ["actor", "learner"], "actor": ["actor"]}[name]
        check(items("tokens") == want, f"{name}: token Secret keys {items('tokens')}, want {want}")
check(len(checksums) == 1 and None not in checksums, "checksum/config must be set and equal on the Troupe workloads")

c = coord["spec"]["template"]["spec"]["containers"][0]
check(coord["spec"]["replicas"] == 1 and coord["spec"]["strategy"]["type"] == "Recreate", "coordinator: 1 replica, Recreate")
check(arg(c, "--config") == "/etc/troupe/run/run.toml" and arg(c, "--listen") == "0.0.0.0:50051", "coordinator: --config/--listen")
mount = [m for m in c["volumeMounts"] if m["mountPath"] == "/etc/troupe/run"]
cm_name = next((v["configMap"]["name"] for v in coord["spec"]["template"]["spec"]["volumes"] if "configMap" in v), None)
cm = find("ConfigMap", "-run")
check(mount and cm and cm["metadata"]["name"] == cm_name and "run.toml" in cm["data"], "coordinator: run config ConfigMap at /etc/troupe/run/run.toml")
check(re.search(r'(?m)^name = "%s"$' % re.escape(expect["run"]), cm["data"]["run.toml"]), "run.toml: top-level name = run name")
redis_env = env(c, "TROUPE_REDIS_URL")
check(redis_env is not None, "coordinator: TROUPE_REDIS_URL")
if expect["redis"]:
    problem = service_port(redis_env.get("value"), "redis")
    check(problem is None, f"coordinator: TROUPE_REDIS_URL: {problem}")
elif expect.get("redisSecret"):
    check(redis_env.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == expect["redisSecret"], "TROUPE_REDIS_URL from the Secret")
else:
    check(redis_env.get("value") == expect["redisUrl"], "TROUPE_REDIS_URL = externalRedis.url")

# Replay: inside the coordinator (--role all, no --role flag), or alone (replay.separate): a
# one-replica Recreate Deployment running `coordinator --role replay` on 50056 (health 50057,
# metrics 9103) with the run config and a Service of its own, the coordinator at --role
# coordinator. Its Redis: --replay-redis-url once per shard (the chart's shards, then
# replay.redisUrls), on the process that serves replay only; each chart shard a StatefulSet (append-only file) with
# a Service of its own.
fullname = coord["metadata"]["name"].removesuffix("-coordinator")
def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())
c = coord["spec"]["template"]["spec"]["containers"][0]
if replay_expect["separate"]:
    check(arg(c, "--role") == "coordinator", "coordinator: --role coordinator when replay runs alone")
    rc = replay["spec"]["template"]["spec"]["containers"][0]
    check(arg(rc, "--role") == "replay", "replay: --role replay")
    check(arg(rc, "--config") == "/etc/troupe/run/run.toml" and arg(rc, "--listen") == "0.0.0.0:50056", "replay: --config/--listen 0.0.0.0:50056")
    check(replay["spec"]["replicas"] == 1 and replay["spec"]["strategy"]["type"] == "Recreate", "replay: 1 replica, Recreate")
    rvols = replay["spec"]["template"]["spec"]["volumes"]
    check(any(m["mountPath"] == "/etc/troupe/run" for m in rc["volumeMounts"])
          and any(v.get("configMap", {}).get("name") == cm_name for v in rvols), "replay: the run config ConfigMap at /etc/troupe/run")
    ports = {p["name"]: p["containerPort"] for p in rc["ports"]}
    check(ports.get("grpc") == 50056, "replay: containerPort grpc 50056")
    svc = services.get(replay["metadata"]["name"])
    check(svc is not None, f"replay: a Service named {replay['metadata']['name']}")
    if svc:
        pod_labels = replay["spec"]["template"]["metadata"]["labels"]
        check(selects(svc["spec"]["selector"], pod_labels), "replay Service selects the replay pod")
        for other_name, other in workloads:
            if other is not replay:
                check(not selects(svc["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"]),
                      f"replay Service also selects {other_name} pods")
        check({p["port"]: p["targetPort"] for p in svc["spec"]["ports"]} == {50056: "grpc", 9103: "metrics"}, "replay Service ports grpc 50056, metrics 9103")
    serving = rc
else:
    check(arg(c, "--role") in (None, "all"), "coordinator: serves replay itself (no --role, or --role all)")
    serving = c
# Learners (which sample and may write) and actors (which write with learner.replay_inserter =
# "actors") dial the replay process when it runs alone, and the coordinator (no --replay) else.
for wname, w in [("learner", l) for l in learners] + [("actor", actor)]:
    url = arg(w["spec"]["template"]["spec"]["containers"][0], "--replay")
    if replay_expect["separate"]:
        problem = service_port(re.sub(r"^https?", "grpc", url or ""), "grpc")
        check(problem is None and url.endswith(f"{replay['metadata']['name']}.{ns}.svc:50056"),
              f"{w['metadata']['name']}: --replay {url!r} names the replay Service ({problem})")
    else:
        check(url is None, f"{w['metadata']['name']}: no --replay while the coordinator serves replay")
def replay_urls(container):
    args = container.get("args", [])
    return [args[i + 1] for i, a in enumerate(args) if a == "--replay-redis-url"]
want_urls = [f"redis://{s['metadata']['name']}.{ns}.svc:6379" for s in shards] + replay_expect["urls"]
check(replay_urls(serving) == want_urls, f"replay: --replay-redis-url {replay_urls(serving)} != {want_urls} (the chart's shards, then replay.redisUrls)")
for u in want_urls[:len(shards)]:
    problem = service_port(u, "redis")
    check(problem is None, f"replay: --replay-redis-url: {problem}")
for w in (coord, replay):
    if w is not None:
        check(env(w["spec"]["template"]["spec"]["containers"][0], "TROUPE_REPLAY_REDIS_URLS") is None, f"{w['metadata']['name']}: shards as flags, not TROUPE_REPLAY_REDIS_URLS")
if replay_expect["separate"]:
    check(replay_urls(c) == [], "coordinator: no --replay-redis-url when replay runs alone")
    check((env(serving, "TROUPE_REDIS_URL") is None) == bool(want_urls), "replay: TROUPE_REDIS_URL only without Redis of its own")
check(len(shards) == replay_expect["shards"], f"{len(shards)} replay Redis shards, want {replay_expect['shards']}")
for i, s in enumerate(shards):
    sname = s["metadata"]["name"]
    check(sname == f"{fullname}-replay-redis-{i}" and len(sname) <= 52, f"replay shard {i}: named {sname}")
    sc = s["spec"]["template"]["spec"]["containers"][0]
    check(sc["args"][:4] == ["--appendonly", "yes", "--appendfsync", replay_expect["appendfsync"]],
          f"{sname}: --appendonly yes --appendfsync {replay_expect['appendfsync']}")
    labels = s["spec"]["template"]["metadata"]["labels"]
    check(s["spec"]["selector"]["matchLabels"].get("troupe.dev/shard") == str(i) and selects(s["spec"]["selector"]["matchLabels"], labels),
          f"{sname}: selector with troupe.dev/shard={i} selects its pods")
    ssvc = services.get(s["spec"]["serviceName"])
    check(ssvc is not None and ssvc["metadata"]["name"] == sname, f"{sname}: its Service")
    if ssvc:
        for _, other in workloads:
            check(selects(ssvc["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"]) == (other is s),
                  f"Service {sname} must select the pods of {sname} only")
    claims = [t["metadata"]["name"] for t in s["spec"].get("volumeClaimTemplates", [])]
    check(claims == ["data"] or any(v["name"] == "data" and "emptyDir" in v for v in s["spec"]["template"]["spec"]["volumes"]),
          f"{sname}: a data volume at /data")
if redis:
    check(redis["spec"]["template"]["spec"]["containers"][0]["args"][:4] == ["--appendonly", "yes", "--appendfsync", "everysec"],
          "redis: --appendonly yes --appendfsync everysec")

# One learner per policy: a StatefulSet and a headless Service each, named <fullname>-learner
# with one policy (the single-learner names and selector), <fullname>-learner-<policy as a DNS
# label> with several; each runs --policy NAME and carries troupe.dev/policy on its pods.
multi = len(policies) > 1
check(len(learners) == len(policies), f"{len(learners)} learner StatefulSets for policies {policies}")
learner_services = [s for s in services.values() if component(s) == "learner"]
check(len(learner_services) == len(policies), f"{len(learner_services)} learner Services for policies {policies}")
by_policy = {}
for learner in learners:
    spec = learner["spec"]["template"]["spec"]
    c = spec["containers"][0]
    policy = arg(c, "--policy")
    by_policy[policy] = learner
    lname = learner["metadata"]["name"]
    want_name = f"{fullname}-learner" + (f"-{policy.lower().replace('_', '-')}" if multi else "")
    check(lname == want_name, f"learner of policy {policy}: named {lname}, want {want_name}")
    check(len(lname) <= 52, f"{lname}: over 52 characters (the pods' controller-revision-hash label)")
    pod_labels = learner["spec"]["template"]["metadata"]["labels"]
    check(pod_labels.get("troupe.dev/policy") == policy and learner["metadata"]["labels"].get("troupe.dev/policy") == policy,
          f"{lname}: troupe.dev/policy={policy} on the StatefulSet and its pods")
    sel = learner["spec"]["selector"]["matchLabels"]
    check(("troupe.dev/policy" in sel) == multi and selects(sel, pod_labels),
          f"{lname}: selector {sel} (troupe.dev/policy in it iff several policies) must select its pods")
    for other in learners:
        if other is not learner:
            check(not selects(sel, other["spec"]["template"]["metadata"]["labels"]), f"{lname}: selector also selects {other['metadata']['name']}'s pods")
    headless = services.get(learner["spec"]["serviceName"])
    check(headless and headless["spec"].get("clusterIP") == "None", f"{lname}: governing Service must be headless")
    if headless:
        check(headless["metadata"]["name"] == lname, f"{lname}: its Service is named {headless['metadata']['name']}")
        for other in learners:
            check(selects(headless["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"]) == (other is learner),
                  f"Service {headless['metadata']['name']} must select the pods of {lname} only")
    want = f"{'https' if expect.get('tls') else 'http'}://{lname}-0.{learner['spec']['serviceName']}.{ns}.svc:50052"
    check(arg(c, "--advertise") == want, f"{lname}: --advertise {arg(c, '--advertise')} != {want}")
    check(arg(c, "--listen") == "0.0.0.0:50052", f"{lname}: --listen")
    check(arg(c, "--checkpoint-dir") == "/var/lib/troupe/checkpoints", f"{lname}: --checkpoint-dir")
    check(arg(c, "--on-fenced") == expect.get("onFenced", "exit"), f"{lname}: --on-fenced {expect.get('onFenced', 'exit')}")
    lid = env(c, "TROUPE_LEARNER_ID") or {}
    if expect.get("learnerId"):
        check(lid.get("value") == expect["learnerId"], f"{lname}: TROUPE_LEARNER_ID = {expect['learnerId']}")
    else:
        check(lid.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
              f"{lname}: TROUPE_LEARNER_ID from the pod name (downward API)")
    check(any(m["mountPath"] == "/var/lib/troupe" and m["name"] == "data" for m in c["volumeMounts"]), f"{lname}: volume data at /var/lib/troupe")
    claims = [t["metadata"]["name"] for t in learner["spec"].get("volumeClaimTemplates", [])]
    emptydir = any(v["name"] == "data" and "emptyDir" in v for v in spec.get("volumes", []))
    check(claims == ["data"] or (not claims and emptydir), f"{lname}: its own checkpoint volume (claim template data-{lname}-0, or an emptyDir)")
    check(arg(c, "--device") == expect["device"], f"{lname}: --device {expect['device']}")
    check(spec["terminationGracePeriodSeconds"] == 120, f"{lname}: terminationGracePeriodSeconds 120")
    check(("nvidia.com/gpu" in c["resources"]["limits"]) == expect["gpu"], f"{lname}: nvidia.com/gpu limit iff learner.gpu.enabled")
    check(bool(spec.get("tolerations")) == expect["gpu"], f"{lname}: GPU toleration with the GPU values only")
check(sorted(by_policy, key=str) == sorted(policies), f"learners run --policy {sorted(by_policy, key=str)}, want {sorted(policies)}")

c = actor["spec"]["template"]["spec"]["containers"][0]
check(actor["spec"]["template"]["spec"]["containers"][0]["image"].startswith("ghcr.io/troupe-rl/troupe-actor:"), "actor image")
check(arg(c, "--health-listen") == "0.0.0.0:50053", "actor: --health-listen")
hpa = find("HorizontalPodAutoscaler", "-actor")
check((hpa is not None) == expect["hpa"], "HPA rendered iff actor.autoscaling.enabled")
check(("replicas" in actor["spec"]) != expect["hpa"], "actor replicas omitted iff HPA")
if hpa:
    check(hpa["spec"]["scaleTargetRef"]["name"] == actor["metadata"]["name"], "HPA targets the actor Deployment")

mon = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
check(len(mon) == expect["monitoring"], f"{len(mon)} prometheus-operator objects, expected {expect['monitoring']}")
service_monitors = {m["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component"): m for m in mon if m["kind"] == "ServiceMonitor"}
if service_monitors:
    # the replay process alone is scraped as job troupe-replay (the dashboard and TroupeReplayUnreachable)
    check(("replay" in service_monitors) == replay_expect["separate"], "a replay ServiceMonitor iff replay.separate")
    for comp, m in service_monitors.items():
        jobs = [r.get("replacement") for r in m["spec"]["endpoints"][0].get("relabelings", []) if r.get("targetLabel") == "job"]
        check(jobs == [f"troupe-{comp}"], f"ServiceMonitor/{m['metadata']['name']}: job {jobs}, want troupe-{comp}")
for m in mon:
    if m["kind"] in ("ServiceMonitor", "PodMonitor"):
        eps = m["spec"].get("endpoints") or m["spec"].get("podMetricsEndpoints")
        for ep in eps:
            rl = ep.get("relabelings", [])
            check(any(r.get("targetLabel") == "run" and r.get("sourceLabels") == ["__meta_kubernetes_pod_label_troupe_dev_run"] for r in rl),
                  f"{m['kind']}/{m['metadata']['name']}: run relabeling")
            check(any(r.get("targetLabel") == "job" and str(r.get("replacement", "")).startswith("troupe-") for r in rl),
                  f"{m['kind']}/{m['metadata']['name']}: job relabeling")
    if m["kind"] == "ServiceMonitor":
        sel = m["spec"]["selector"]["matchLabels"]
        targets = [s for s in services.values() if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        comp = sel.get("app.kubernetes.io/component")
        want = [s for s in services.values() if component(s) == comp]
        check(targets and targets == want and all(any(p["name"] == "metrics" for p in t["spec"]["ports"]) for t in targets),
              f"ServiceMonitor/{m['metadata']['name']}: selects every {comp} Service ({len(want)}; one per policy for the learner), each with a metrics port")
        if comp == "learner":
            # Learners label their own series with policy; the monitor gives `up` the label too,
            # and honorLabels keeps the learner's value on its series (no exported_policy).
            ep = m["spec"]["endpoints"][0]
            check(ep.get("honorLabels") is True, f"ServiceMonitor/{m['metadata']['name']}: honorLabels")
            check(any(r.get("targetLabel") == "policy" and r.get("sourceLabels") == ["__meta_kubernetes_pod_label_troupe_dev_policy"]
                      for r in ep.get("relabelings", [])), f"ServiceMonitor/{m['metadata']['name']}: policy relabeling from troupe.dev/policy")
dash = find("ConfigMap", "-dashboard")
check((dash is not None) == expect["dashboard"], "dashboard ConfigMap iff dashboards.enabled")
if dash:
    check(dash["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard: grafana_dashboard label")
    json.loads(dash["data"]["troupe.json"])

if errors:
    sys.exit("manifest assertions failed:\n  " + "\n  ".join(errors))
print(f"manifest assertions passed ({len(docs)} objects)")
EOF
}

# name | helm value flags | expectations
CASES=(
  "default||{\"gpu\":true,\"redis\":true,\"hpa\":false,\"monitoring\":0,\"dashboard\":true,\"device\":\"auto\",\"run\":\"cartpole\"}"
  "cpu|-f $CHART/values-cpu.yaml|{\"gpu\":false,\"redis\":true,\"hpa\":false,\"monitoring\":0,\"dashboard\":true,\"device\":\"cpu\",\"run\":\"cartpole\"}"
  "full|-f $CHART/ci/full-values.yaml|{\"gpu\":true,\"redis\":false,\"redisSecret\":\"troupe-redis\",\"hpa\":true,\"monitoring\":4,\"dashboard\":true,\"device\":\"auto\",\"run\":\"cartpole\",\"tls\":true,\"auth\":true,\"clientAuth\":true,\"serverName\":\"troupe.internal\",\"onFenced\":\"wait\"}"
  "external-url|-f $CHART/ci/external-url-values.yaml|{\"gpu\":false,\"redis\":false,\"redisUrl\":\"redis://redis.example.internal:6379/0\",\"hpa\":false,\"monitoring\":0,\"dashboard\":false,\"device\":\"cpu\",\"run\":\"acrobot-cpu\",\"podAnnotations\":false}"
  "lbf-two-teams|-f $CHART/ci/lbf-two-teams-values.yaml|{\"gpu\":false,\"redis\":true,\"hpa\":false,\"monitoring\":4,\"dashboard\":true,\"device\":\"cpu\",\"run\":\"lbf-two-teams\",\"policies\":[\"agent_0\",\"agent_1\"]}"
  "separate-replay|-f $CHART/ci/separate-replay-values.yaml|{\"gpu\":false,\"redis\":true,\"hpa\":false,\"monitoring\":5,\"dashboard\":true,\"device\":\"cpu\",\"run\":\"cartpole-replay\",\"tls\":true,\"auth\":true,\"replay\":{\"separate\":true,\"shards\":2,\"urls\":[\"redis://replay-extra.example.internal:6379/0\"],\"appendfsync\":\"always\"}}"
  "replay-inside-with-shards|-f $CHART/values-cpu.yaml --set replay.shards=1,replay.shard.persistence.enabled=false|{\"gpu\":false,\"redis\":true,\"hpa\":false,\"monitoring\":0,\"dashboard\":true,\"device\":\"cpu\",\"run\":\"cartpole\",\"replay\":{\"shards\":1}}"
  "set-flags|-f $CHART/values-cpu.yaml --set metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true,metrics.prometheusRule.enabled=true,actor.autoscaling.enabled=true,redis.enabled=false,externalRedis.url=redis://redis:6379,tls.enabled=true,tls.secretName=troupe-tls,logJson=false,learner.id=trainer-a|{\"gpu\":false,\"redis\":false,\"redisUrl\":\"redis://redis:6379\",\"hpa\":true,\"monitoring\":4,\"dashboard\":true,\"device\":\"cpu\",\"run\":\"cartpole\",\"tls\":true,\"logJson\":false,\"learnerId\":\"trainer-a\"}"
)
# every test value file under ci/ must be covered above
for f in "$CHART"/ci/*.yaml; do
  printf '%s\n' "${CASES[@]}" | grep -q -- "-f $f" || fail "$f is not in CASES"
done

for case in "${CASES[@]}"; do
  IFS='|' read -r name flags expect <<<"$case"
  # shellcheck disable=SC2206  # the flags are word-split on purpose
  args=($flags)
  out="$WORK/$name"
  step "[$name] helm lint --strict ${args[*]}"
  helm lint --strict "$CHART" --namespace "$NAMESPACE" "${args[@]}"
  step "[$name] helm template | kubernetes-validate --strict -k $K8S_VERSION"
  helm template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "${args[@]}" >"$out.yaml"
  split_manifest "$out.yaml" "$out.core.yaml" "$out.monitoring.yaml"
  kubernetes-validate --strict -k "$K8S_VERSION" --quiet - <"$out.core.yaml"
  if [ -s "$out.monitoring.yaml" ] && grep -q '^kind:' "$out.monitoring.yaml"; then
    step "[$name] prometheus-operator objects (validate_monitoring.js)"
    node scripts/checks/validate_monitoring.js "$out.monitoring.yaml"
  fi
  step "[$name] yamllint (rendered)"
  yamllint --strict -c .yamllint.yaml - <"$out.yaml"
  step "[$name] manifest assertions"
  assert_manifest "$out.yaml" "$expect"
done

# Values the chart must refuse: NAME | helm flags | text the error must contain.
NEGATIVE=(
  "device enum|--set learner.device=tpu|learner.device"
  "unknown key|--set coordinator.replicaz=2|replicaz"
  "whenUnsatisfiable enum|--set actor.topologySpread.whenUnsatisfiable=Sometimes|whenUnsatisfiable"
  "replicas type|--set-string actor.replicas=two|actor.replicas"
  "run name pattern|--set run.name=bad/name|run.name"
  "run name vs config|--set run.name=other|differs from the name"
  "redis off, no external|--set redis.enabled=false|externalRedis"
  "tls without secret|--set tls.enabled=true|secretName"
  "auth without secret|--set auth.enabled=true|secretName"
  "onFenced enum|--set learner.onFenced=retry|onFenced"
  "tls unknown key|--set tls.mutual=true|mutual"
  "resources need limits|--set learner.resources.limits=null|limits"
  "policies required|--set learner.policies=null|policies"
  "policy name pattern|--set learner.policies={-x}|learner.policies"
  "policies unique|--set learner.policies={default,default}|learner.policies"
  "policies vs shared config|--set learner.policies={agent_0}|mapping is \"shared\""
  "policies vs per_agent config|-f $CHART/ci/lbf-two-teams-values.yaml --set learner.policies={default}|mapping is \"per_agent\""
  "policies with one DNS name|-f $CHART/ci/lbf-two-teams-values.yaml --set learner.policies={agent_0,Agent-0}|both make the learner name"
  "replay.separate type|--set-string replay.separate=yes|replay.separate"
  "replay shards range|--set replay.shards=17|replay.shards"
  "replay URL scheme|--set replay.redisUrls={http://x:6379}|replay.redisUrls"
  "replay appendfsync enum|--set replay.shard.appendfsync=sometimes|appendfsync"
  "replay URL twice|--set replay.shards=1 --set replay.redisUrls={redis://troupe-replay-redis-0.troupe-check.svc:6379}|listed twice"
  "replay shard name too long|--set replay.shards=1 --set fullnameOverride=abcdefghijabcdefghijabcdefghijabcdefghij|at most 52"
  "learner name too long|-f $CHART/ci/lbf-two-teams-values.yaml --set fullnameOverride=abcdefghijabcdefghijabcdefghijabcdefghij|at most 52"
)
for neg in "${NEGATIVE[@]}"; do
  IFS='|' read -r name flags want <<<"$neg"
  # shellcheck disable=SC2206
  args=($flags)
  step "negative: $name (helm template ${args[*]} must fail)"
  if helm template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "${args[@]}" >"$WORK/neg.out" 2>"$WORK/neg.err"; then
    fail "helm template ${args[*]} succeeded"
  fi
  grep -q -- "$want" "$WORK/neg.err" || { cat "$WORK/neg.err" >&2; fail "error for '${args[*]}' does not mention '$want'"; }
  head -c 300 "$WORK/neg.err" | tr '\n' ' '
  echo
done

step "chart checks passed"
