#!/usr/bin/env python3
"""Checks Troupe's Grafana dashboard (helm/troupe/files/dashboard.json).

Static mode (the default; no Grafana needed):
  - validates the JSON against scripts/checks/dashboard.schema.json (with the `jsonschema`
    package when it imports, e.g. under the tools venv's python, else the `check-jsonschema` CLI);
  - checks the structure: unique panel ids, gridPos inside the 24 columns and no two panels
    overlapping, every query panel and target on datasource {"type": "prometheus",
    "uid": "${datasource}"}, refIds unique per panel, the `datasource`, `run` and `policy`
    variables, and the "main" panels (MAIN_PANELS) present;
  - checks that each row of ROW_METRICS exists and that its panels, together, query every
    metric docs/METRICS.md lists under that prefix (the Replay row: every troupe_replay_* metric);
  - checks that every series selector in every expression filters run=~"$run", names a metric
    docs/METRICS.md lists (a histogram's _bucket/_sum/_count series count as it; `up` is
    Prometheus's own), and, when docs/METRICS.md gives that metric a `policy` label (every
    learner metric: one learner per policy), filters policy=~"$policy" too;
  - substitutes Grafana's variables ($run, $policy -> .*, $__rate_interval -> 1m, ...), writes
    every expression into a temporary rules file as a recording rule and runs
    `promtool check rules`.

Live mode (--live URL, e.g. --live http://127.0.0.1:9090): runs the structural checks, then
evaluates every expression through the Prometheus HTTP API (/api/v1/query), fails on any query
error, prints which ones returned data, and fails when a main panel returned no data at all.
With --wait SECONDS it retries until every main panel has data (or the time is up).

Exit status: 0 ok, 1 a check failed, 2 bad usage.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DASHBOARD = os.path.join(ROOT, "helm", "troupe", "files", "dashboard.json")
DEFAULT_SCHEMA = os.path.join(ROOT, "scripts", "checks", "dashboard.schema.json")
METRICS_DOC = os.path.join(ROOT, "docs", "METRICS.md")

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RUN_MATCHER = ("run", "=~", "$run")
POLICY_MATCHER = ("policy", "=~", "$policy")
POLICY_QUERY = 'label_values(troupe_coordinator_policy_version{run=~"$run"}, policy)'
# Series Prometheus makes itself, not in the catalog.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

# Panels a running cluster must fill: live mode fails when one of them returns no data.
MAIN_PANELS = [
    "Frames/s",
    "Episode return",
    "Policy version",
    "Loss terms",
    "Entropy",
    "Update time",
    "Queue depths",
    "Actors up",
]

# Rows whose panels must, together, query every catalogued metric with the prefix.
ROW_METRICS = {
    "Replay": "troupe_replay_",
}

# Grafana's built-in variables as they reach Prometheus, for checking outside Grafana.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "60000",
}

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
OPERATOR_WORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}

TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<number>\d[\w.]*|\.\d[\w.]*)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<var>\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?)
    | (?P<punct>==|!=|<=|>=|=~|!~|[-+*/%^(){}\[\],<>=@])
    )""",
    re.VERBOSE,
)
MATCHER = re.compile(r"""\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*(,|$)""")


class Failure(Exception):
    pass


def tokens(expr):
    pos = 0
    out = []
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise Failure(f"cannot read {expr[pos:pos + 20]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind), m.start(kind), m.end(kind)))
        pos = m.end()
    return out


def parse_matchers(body):
    """The label matchers inside {...}, as (label, op, value) with the value unquoted."""
    matchers = []
    pos = 0
    body = body.strip()
    while pos < len(body):
        m = MATCHER.match(body, pos)
        if not m:
            raise Failure(f"cannot read label matchers {{{body}}}")
        matchers.append((m.group(1), m.group(2), json.loads(m.group(3)) if m.group(3)[0] == '"' else m.group(3)[1:-1]))
        pos = m.end()
    return matchers


def selectors(expr):
    """Yields (metric name or '', [matchers]) for every series selector in a PromQL expression.

    A small reader, enough for dashboard queries: identifiers followed by `(` are functions or
    aggregations, the label lists after by/without/on/ignoring/group_left/group_right are skipped,
    as are range and subquery brackets; any other identifier (keywords aside) is a metric name.
    """
    toks = tokens(expr)
    i = 0
    found = []
    while i < len(toks):
        kind, text, start, end = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if kind == "ident" and text in GROUPING:
            if nxt and nxt[1] == "(":
                depth, i = 0, i + 1
                while i < len(toks):
                    depth += {"(": 1, ")": -1}.get(toks[i][1], 0)
                    if depth == 0:
                        break
                    i += 1
            i += 1
            continue
        if kind == "ident" and nxt and (nxt[1] == "(" or (text in AGGREGATIONS and nxt[1] in GROUPING)):
            i += 1  # a function or an aggregation: its arguments are read as they come
            continue
        if kind == "ident" and text.lower() in OPERATOR_WORDS:
            i += 1
            continue
        if kind == "punct" and text == "[":
            while i < len(toks) and toks[i][1] != "]":
                i += 1
            i += 1
            continue
        if (kind == "ident") or (kind == "punct" and text == "{"):
            name = text if kind == "ident" else ""
            if kind == "ident":
                i += 1
            matchers = []
            if i < len(toks) and toks[i][1] == "{":
                close = expr.find("}", toks[i][3])
                if close < 0:
                    raise Failure("unclosed {")
                # Skip to the token after the closing brace (braces never appear inside values here).
                body = expr[toks[i][3]:close]
                matchers = parse_matchers(body)
                while i < len(toks) and toks[i][2] <= close:
                    i += 1
            found.append((name, matchers))
            continue
        i += 1
    return found


def substitute(expr, run=".*", policy=".*"):
    def repl(m):
        name = m.group(1) or m.group(2)
        if name == "run":
            return run
        if name == "policy":
            return policy
        if name in BUILTINS:
            return BUILTINS[name]
        raise Failure(f"unknown variable ${name}")

    return re.sub(r"\$\{([a-zA-Z_][a-zA-Z0-9_]*)\}|\$([a-zA-Z_][a-zA-Z0-9_]*)", repl, expr)


def query_panels(dashboard):
    """Every panel that runs queries, rows' nested panels included."""
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []) if p.get("type") == "row" else [])
    return [p for p in out if p.get("type") != "row"]


def validate_schema(dashboard_path, schema_path):
    with open(schema_path) as f:
        schema = json.load(f)
    with open(dashboard_path) as f:
        dashboard = json.load(f)
    try:
        import jsonschema  # the tools venv has it
    except ImportError:
        tool = shutil.which("check-jsonschema")
        if not tool:
            raise Failure("neither the jsonschema package nor check-jsonschema is available "
                          "(source scripts/setup.sh && troupe_install_deploy_tools)")
        r = subprocess.run([tool, "--schemafile", schema_path, dashboard_path], capture_output=True, text=True)
        if r.returncode != 0:
            raise Failure("schema: " + (r.stdout + r.stderr).strip())
        return
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(dashboard), key=lambda e: list(e.absolute_path))
    # For a oneOf (a row or a query panel) the deepest error in its context says most.
    errors = [max(e.context, key=lambda c: len(c.absolute_path)) if e.context else e for e in errors]
    if errors:
        raise Failure("schema:\n" + "\n".join(
            f"  at /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:20]))


def catalog(path=METRICS_DOC):
    """docs/METRICS.md: {metric name: (type, has a `policy` label)} from its tables' rows
    "| `name` | type | labels | meaning |"."""
    out = {}
    with open(path) as f:
        for line in f:
            cells = [c.strip() for c in line.split("|")]
            if len(cells) >= 6 and cells[1].startswith("`troupe_"):
                out[cells[1].strip("`")] = (cells[2], "`policy`" in cells[3])
    if len(out) < 40:
        raise Failure(f"{path}: read only {len(out)} metrics from its tables")
    return out


def catalog_name(name, metrics):
    """The catalog's name for a series name: itself, or its histogram's for _bucket/_sum/_count."""
    if name in metrics:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and metrics.get(base, ("",))[0] == "histogram":
            return base
    return None


def check_structure(dashboard, metrics=None):
    metrics = catalog() if metrics is None else metrics
    problems = []
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        problems.append("no `datasource` variable of type datasource")
    run = variables.get("run", {})
    run_query = run.get("query")
    run_query = run_query.get("query") if isinstance(run_query, dict) else run_query
    if run_query != "label_values(troupe_build_info, run)" or not run.get("includeAll"):
        problems.append("the `run` variable must query label_values(troupe_build_info, run) with includeAll")
    policy = variables.get("policy", {})
    policy_query = policy.get("query")
    policy_query = policy_query.get("query") if isinstance(policy_query, dict) else policy_query
    if policy_query != POLICY_QUERY or not policy.get("includeAll") or policy.get("allValue") != ".*":
        problems.append(f"the `policy` variable must query {POLICY_QUERY} with includeAll and allValue .*")

    panels = dashboard.get("panels", [])
    all_panels = list(panels) + [c for p in panels if p.get("type") == "row" for c in p.get("panels", [])]
    ids = [p.get("id") for p in all_panels]
    for dup in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        problems.append(f"panel id {dup} is used more than once")

    occupied = {}
    for p in all_panels:
        title = p.get("title", "?")
        g = p.get("gridPos")
        if not g or not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"panel {title!r}: gridPos with integer x, y, w, h is missing")
            continue
        if g["x"] < 0 or g["w"] < 1 or g["h"] < 1 or g["x"] + g["w"] > 24:
            problems.append(f"panel {title!r}: gridPos {g} is outside the 24 columns")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in occupied:
                    problems.append(f"panel {title!r} overlaps panel {occupied[(x, y)]!r} at ({x}, {y})")
                    break
                occupied[(x, y)] = title
            else:
                continue
            break

    for p in query_panels(dashboard):
        title = p.get("title", "?")
        if p.get("datasource") != DATASOURCE:
            problems.append(f"panel {title!r}: datasource is {p.get('datasource')!r}, not {DATASOURCE}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"panel {title!r}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            problems.append(f"panel {title!r}: refIds {refs} are not unique")
        for t in targets:
            where = f"panel {title!r} target {t.get('refId')}"
            if t.get("datasource") != DATASOURCE:
                problems.append(f"{where}: datasource is {t.get('datasource')!r}, not {DATASOURCE}")
            expr = t.get("expr", "")
            if not expr.strip():
                problems.append(f"{where}: empty expr")
                continue
            if 'run=~"$run"' not in expr:
                problems.append(f'{where}: expr does not filter run=~"$run": {expr}')
            try:
                sels = selectors(expr)
                substitute(expr)
            except Failure as e:
                problems.append(f"{where}: {e}: {expr}")
                continue
            if not sels:
                problems.append(f"{where}: no series selector in {expr}")
            for name, matchers in sels:
                if RUN_MATCHER not in matchers:
                    problems.append(f'{where}: selector {name or "{...}"} lacks run=~"$run": {expr}')
                if name in PROMETHEUS_SERIES:
                    continue
                known = catalog_name(name, metrics)
                if known is None:
                    problems.append(f"{where}: metric {name or '{...}'} is not in docs/METRICS.md: {expr}")
                elif metrics[known][1] and POLICY_MATCHER not in matchers:
                    problems.append(f'{where}: {name} has a policy label (docs/METRICS.md) but the selector lacks policy=~"$policy": {expr}')

    problems.extend(check_rows(dashboard, metrics))

    titles = [p.get("title") for p in query_panels(dashboard)]
    for main in MAIN_PANELS:
        if titles.count(main) != 1:
            problems.append(f"main panel {main!r} appears {titles.count(main)} times (want once)")
    if problems:
        raise Failure("structure:\n" + "\n".join("  " + p for p in problems))


def rows(dashboard):
    """{row title: [its panels]}: a row's panels are those below it (by gridPos y) down to the next
    row; rows are never collapsed here, so their panels sit at the top level."""
    out, current = {}, None
    for p in sorted(dashboard.get("panels", []), key=lambda p: (p.get("gridPos", {}).get("y", 0), p.get("gridPos", {}).get("x", 0))):
        if p.get("type") == "row":
            current = out.setdefault(p.get("title"), [])
        elif current is not None:
            current.append(p)
    return out


def check_rows(dashboard, metrics):
    problems = []
    by_row = rows(dashboard)
    for title, prefix in ROW_METRICS.items():
        if title not in by_row:
            problems.append(f"no row {title!r} (for the {prefix}* metrics)")
            continue
        queried = set()
        for p in by_row[title]:
            for t in p.get("targets", []):
                try:
                    queried.update(catalog_name(name, metrics) for name, _ in selectors(t.get("expr", "")))
                except Failure:
                    pass  # reported by the selector checks
        missing = sorted(m for m in metrics if m.startswith(prefix) and m not in queried)
        if missing:
            problems.append(f"row {title!r}: no panel queries {', '.join(missing)} (docs/METRICS.md)")
    return problems


def expressions(dashboard, run=".*", policy=".*"):
    """(panel title, record name, refId, Grafana expr, substituted expr) for every target."""
    out = []
    for p in query_panels(dashboard):
        for t in p.get("targets", []):
            out.append((p["title"], f"dashboard:panel{p['id']}_{t['refId']}", t["refId"], t["expr"],
                        substitute(t["expr"], run, policy)))
    return out


def promtool_check(dashboard):
    promtool = shutil.which("promtool")
    if not promtool:
        raise Failure("promtool is not on PATH (apt-get install prometheus)")
    rules = [{"record": rec, "expr": sub} for _, rec, _, _, sub in expressions(dashboard)]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "dashboard_rules.yaml")
        with open(path, "w") as f:  # JSON is YAML
            json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        if r.returncode != 0:
            raise Failure("promtool check rules on the dashboard's expressions:\n" + (r.stdout + r.stderr).strip())
    return len(rules)


def query(url, expr, timeout):
    req = urllib.request.Request(url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except Exception:
            return None, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return None, str(e)
    if body.get("status") != "success":
        return None, f"{body.get('errorType')}: {body.get('error')}"
    data = body.get("data", {})
    result = data.get("result")
    if data.get("resultType") in ("scalar", "string"):
        return 1, None
    return len(result or []), None


def live(dashboard, url, run, wait, timeout, policy=".*"):
    exprs = expressions(dashboard, run, policy)
    deadline = time.monotonic() + wait
    while True:
        errors, panel_data, lines = [], {}, []
        for title, _, ref, _, sub in exprs:
            n, err = query(url, sub, timeout)
            if err:
                errors.append(f"{title} {ref}: {err}\n    {sub}")
                lines.append(f"  ERROR   {title} [{ref}]: {err}")
                continue
            panel_data[title] = panel_data.get(title, 0) + n
            lines.append(f"  {'data' if n else 'empty':7} {title} [{ref}]: {n} series")
        missing = [m for m in MAIN_PANELS if not panel_data.get(m)]
        if errors or not missing or time.monotonic() >= deadline:
            break
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    print("\n".join(lines))
    with_data = sum(1 for v in panel_data.values() if v)
    print(f"{with_data} of {len({t for t, *_ in exprs})} panels returned data; main panels without data: "
          f"{', '.join(missing) if missing else 'none'}")
    if errors:
        raise Failure("queries failed:\n" + "\n".join("  " + e for e in errors))
    if missing:
        raise Failure("main panels returned no data: " + ", ".join(missing))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dashboard", default=DEFAULT_DASHBOARD)
    ap.add_argument("--schema", default=DEFAULT_SCHEMA)
    ap.add_argument("--live", metavar="URL", help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--run", default=".*", help="value for $run in live mode (a regex; default .*)")
    ap.add_argument("--policy", default=".*", help="value for $policy in live mode (a regex; default .*)")
    ap.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                    help="live mode: retry until every main panel has data, for at most this long")
    ap.add_argument("--timeout", type=float, default=10.0, help="live mode: seconds per query")
    args = ap.parse_args()
    try:
        with open(args.dashboard) as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        print(f"dashboard_check: cannot read {args.dashboard}: {e}", file=sys.stderr)
        return 1
    try:
        if args.live:
            check_structure(dashboard)
            live(dashboard, args.live, args.run, args.wait, args.timeout, args.policy)
            print(f"dashboard_check: live OK ({args.live})")
        else:
            validate_schema(args.dashboard, args.schema)
            check_structure(dashboard)
            n = promtool_check(dashboard)
            print(f"dashboard_check: OK ({len(query_panels(dashboard))} panels, {n} expressions pass "
                  f"promtool check rules)")
    except Failure as e:
        print(f"dashboard_check: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
