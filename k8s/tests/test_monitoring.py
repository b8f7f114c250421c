#!/usr/bin/env python3
"""Offline tests of k8s/extras/monitoring/: the PodMonitor, the Grafana
dashboard, the alert rules and their Azure conversion.

Usage: test_monitoring.py PROMTOOL BASE.yaml EXTRAS.yaml
where PROMTOOL is the promtool binary ("" when k8s/test.sh could not get one:
the checks that need it are then left to the failure k8s/test.sh reports),
and BASE.yaml and EXTRAS.yaml are `kubectl kustomize k8s/` and
`kubectl kustomize k8s/extras/`. Prints one "ok - ..." or "not ok - ..." line
per check (k8s/test.sh counts them) and exits 1 if any failed.

The PodMonitor is a custom resource, so kubernetes-validate has no schema
for it: these checks hold it to the fields of the azmonitoring.coreos.com/v1
CRD and to k8s/deployment.yaml. Every PromQL expression of the dashboard is
checked by promtool twice: that it parses (`promtool check rules` on a rules
file made of them) and that it returns a number on series shaped like the
service's (`promtool test rules`), so a misspelt metric, label or value shows.
"""

import copy
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MON = os.path.join(ROOT, "k8s", "extras", "monitoring")
RESULTS = []


def check(name, condition, detail=""):
    RESULTS.append(bool(condition))
    if condition:
        print(f"ok - monitoring: {name}")
    else:
        detail = str(detail).strip()
        print(f"not ok - monitoring: {name}" + ("\n" + "\n".join("    " + l for l in detail.splitlines()) if detail else ""))


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- What the service exports ------------------------------------------------

# Every series name of the service's /metrics and its labels (prometheus_client
# naming: counters end in _total, histograms have _bucket/_sum/_count).
def _histogram(name, labels):
    return {f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels}


GEN_AI = {"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model"}
METRICS = {
    "ai_service_http_requests_total": {"route", "status"},
    **_histogram("ai_service_http_request_duration_seconds", {"route"}),
    "ai_service_http_requests_in_flight": set(),
    "ai_service_upstream_requests_total": {"backend", "status"},
    "ai_service_upstream_retries_total": {"backend"},
    "ai_service_token_acquisitions_total": {"credential", "outcome"},
    "ai_service_deployment_state": {"capability", "endpoint", "deployment"},
    "ai_service_failovers_total": {"capability"},
    "ai_service_build_info": {"version", "backend"},
    **_histogram("gen_ai_client_token_usage", GEN_AI | {"gen_ai_token_type"}),
    **_histogram("gen_ai_client_operation_duration_seconds", GEN_AI | {"error_type"}),
    "ai_service_upstream_ratelimit_remaining": {"deployment", "kind"},
}
# Labels a PodMonitor target adds (the Prometheus Operator's relabelings and
# Prometheus' own instance), and the cluster label Azure adds to every series.
OPERATOR_TARGET_LABELS = {"job", "namespace", "pod", "container", "endpoint", "instance"}
TARGET_LABELS = OPERATOR_TARGET_LABELS | {"cluster"}

# Fields of the azmonitoring.coreos.com/v1 PodMonitor CRD that the managed
# add-on installs (spec, and an entry of spec.podMetricsEndpoints).
CRD_SPEC_FIELDS = {"attachMetadata", "jobLabel", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
                   "namespaceSelector", "podMetricsEndpoints", "podTargetLabels", "sampleLimit", "selector",
                   "targetLimit"}
CRD_ENDPOINT_FIELDS = {"authorization", "basicAuth", "bearerTokenSecret", "enableHttp2", "filterRunning",
                       "followRedirects", "honorLabels", "honorTimestamps", "interval", "metricRelabelings",
                       "oauth2", "params", "path", "port", "proxyUrl", "relabelings", "scheme", "scrapeTimeout",
                       "targetPort", "tlsConfig"}
CRD_DURATION = r"(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)"


def seconds(duration):
    units = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|[ywdhms])", duration))


# --- PromQL, roughly: the metric and label names an expression uses ----------

GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan"}


def names_in(expr):
    """(metric names, label names) that a PromQL expression refers to."""
    labels = set()
    rest = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    for block in re.findall(r"\{([^}]*)\}", rest):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", block))
    rest = re.sub(r"\{[^}]*\}", " ", rest)
    for _, group in GROUPING.findall(rest):
        labels |= {l.strip() for l in group.split(",") if l.strip()}
    rest = GROUPING.sub(" ", rest)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    metrics = set()
    for m in re.finditer(r"\b([a-zA-Z_:][\w:]*)\b(\s*\()?", rest):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS or re.fullmatch(r"\d.*", word):
            continue
        metrics.add(word)
    return metrics, labels


def unknown_names(expr):
    """What in an expression is not a metric or label the service (or its target) has."""
    metrics, labels = names_in(expr)
    problems = [f"unknown metric {m}" for m in sorted(metrics - set(METRICS))]
    allowed = TARGET_LABELS.union(*(METRICS.get(m, set()) for m in metrics))
    problems += [f"label {l} is on none of {sorted(metrics)}" for l in sorted(labels - allowed)]
    if not metrics:
        problems.append("no metric")
    return problems


# --- promtool -------------------------------------------------------------------

def run(cmd, cwd=None):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def sample_series():
    """One or more series of every metric, shaped as the service exports them,
    with the labels of a scraped pod. Counters grow, histograms fill."""
    target = {"cluster": "aks-1", "namespace": "default", "pod": "ai-service-a", "job": "default/ai-service",
              "instance": "10.0.0.7:5001", "container": "ai-service"}
    series = []

    def add(name, labels, values):
        assert set(labels) <= METRICS[name], (name, labels)
        series.append((name, target | labels, values))

    for route, status in (("/generate/description", "200"), ("/generate/description", "502"),
                          ("/generate/image", "200"), ("/generate/image", "503"), ("/health", "200")):
        add("ai_service_http_requests_total", {"route": route, "status": status}, "0+10x20")

    def histogram(name, labels, buckets):
        for i, le in enumerate(buckets):
            add(f"{name}_bucket", labels | {"le": le}, f"0+{i + 1}x20")
        add(f"{name}_sum", labels, "0+30x20")
        add(f"{name}_count", labels, f"0+{len(buckets)}x20")

    for route in ("/generate/description", "/generate/image"):
        histogram("ai_service_http_request_duration_seconds", {"route": route}, ["0.1", "1", "10", "+Inf"])
    add("ai_service_http_requests_in_flight", {}, "2x20")
    for status in ("200", "429", "timeout"):
        add("ai_service_upstream_requests_total", {"backend": "azure", "status": status}, "0+5x20")
    add("ai_service_upstream_retries_total", {"backend": "azure"}, "0+1x20")
    for outcome in ("success", "failure"):
        add("ai_service_token_acquisitions_total", {"credential": "WorkloadIdentityCredential", "outcome": outcome}, "0+1x20")
    for capability, deployment in (("chat", "gpt-4o-mini"), ("image", "dall-e-3")):
        add("ai_service_deployment_state",
            {"capability": capability, "endpoint": "myaoai.openai.azure.com:443", "deployment": deployment}, "1x20")
        add("ai_service_failovers_total", {"capability": capability}, "0+1x20")
    add("ai_service_build_info", {"version": "1.0.0", "backend": "azure"}, "1x20")
    gen_ai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "azure.ai.openai",
              "gen_ai_request_model": "gpt-4o-mini", "gen_ai_response_model": "gpt-4o-mini-2024-07-18"}
    for token_type in ("input", "output"):
        histogram("gen_ai_client_token_usage", gen_ai | {"gen_ai_token_type": token_type},
                  ["64", "256", "1024", "4096", "+Inf"])
    histogram("gen_ai_client_operation_duration_seconds", gen_ai, ["0.1", "1", "10", "+Inf"])
    histogram("gen_ai_client_operation_duration_seconds", gen_ai | {"error_type": "timeout"}, ["0.1", "1", "10", "+Inf"])
    for kind, value in (("tokens", "30000x20"), ("requests", "100x20")):
        add("ai_service_upstream_ratelimit_remaining", {"deployment": "gpt-4o-mini", "kind": kind}, value)
    return [{"series": name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}", "values": values}
            for name, labels, values in series]


def promtool_checks(promtool, exprs, what, work):
    """exprs: {rule name: PromQL}. Checks that promtool parses them all, and
    that each returns at least one number (not NaN) on the sample series."""
    rules = os.path.join(work, f"{what}.rules.yaml")
    with open(rules, "w") as f:
        yaml.safe_dump({"groups": [{"name": what, "rules": [{"record": n, "expr": e} for n, e in exprs.items()]}]},
                       f, sort_keys=False)
    rc, out = run([promtool, "check", "rules", rules])
    check(f"promtool check rules accepts every PromQL expression of the {what} ({len(exprs)})",
          rc == 0 and f"SUCCESS: {len(exprs)} rules found" in out, out)
    tests = os.path.join(work, f"{what}.test.yaml")
    with open(tests, "w") as f:
        yaml.safe_dump({"rule_files": [os.path.basename(rules)], "evaluation_interval": "1m", "tests": [{
            "interval": "1m", "input_series": sample_series(),
            "promql_expr_test": [{"expr": f"count(({e}) == ({e})) > bool 0", "eval_time": "10m",
                                  "exp_samples": [{"labels": "{}", "value": 1}]} for e in exprs.values()]}]},
            f, sort_keys=False, width=1000)
    rc, out = run([promtool, "test", "rules", os.path.basename(tests)], cwd=work)
    check(f"every PromQL expression of the {what} returns a number on series shaped like the service's",
          rc == 0 and "SUCCESS" in out, out)


# --- The PodMonitor ---------------------------------------------------------------

def podmonitor_problems(pm, dep):
    """What keeps this PodMonitor from scraping the Deployment's pods, as sentences."""
    problems = []
    tpl = dep["spec"]["template"]
    labels = tpl["metadata"].get("labels", {})
    sel = pm.get("spec", {}).get("selector", {})
    match = sel.get("matchLabels") or {}
    if not match or sel.get("matchExpressions"):
        problems.append(f"the selector should be matchLabels only, not empty: {sel}")
    wrong = {k: v for k, v in match.items() if labels.get(k) != v}
    if wrong:
        problems.append(f"selector labels {wrong} are not on the pod template (labels {labels})")
    ports = {p.get("name"): p.get("containerPort") for c in tpl["spec"]["containers"] for p in c.get("ports", [])}
    eps = pm.get("spec", {}).get("podMetricsEndpoints") or []
    for ep in eps:
        if ep.get("port") not in ports:
            problems.append(f"port {ep.get('port')!r} is not the name of a container port ({sorted(ports, key=str)})")
    if not eps:
        problems.append("no podMetricsEndpoints")
    return problems


def test_podmonitor(base, extras):
    path = os.path.join(MON, "podmonitor.yaml")
    try:
        docs = load_yaml_docs(path)
    except yaml.YAMLError as e:
        check("podmonitor.yaml parses", False, e)
        return
    check("podmonitor.yaml parses, to one object", len(docs) == 1, f"{len(docs)} documents")
    pm = docs[0] if docs else {}
    with open(os.path.join(ROOT, "k8s", "deployment.yaml")) as f:
        dep = yaml.safe_load(f)
    check("it is an azmonitoring.coreos.com/v1 PodMonitor (the CRD Azure Managed Prometheus watches) named ai-service",
          pm.get("apiVersion") == "azmonitoring.coreos.com/v1" and pm.get("kind") == "PodMonitor"
          and pm.get("metadata", {}).get("name") == "ai-service", {k: pm.get(k) for k in ("apiVersion", "kind", "metadata")})
    spec = pm.get("spec", {})
    eps = spec.get("podMetricsEndpoints") or []
    extra = sorted(set(spec) - CRD_SPEC_FIELDS) + sorted(k for ep in eps for k in set(ep) - CRD_ENDPOINT_FIELDS)
    check("it uses only fields the PodMonitor CRD defines", not extra, f"unknown: {extra}")
    check("it has no namespace of its own (kubectl apply --namespace decides) and selects pods of its namespace only",
          "namespace" not in pm.get("metadata", {}) and "namespaceSelector" not in spec, pm.get("metadata"))
    problems = podmonitor_problems(pm, dep)
    check("its selector matches the pod template labels of k8s/deployment.yaml, and its port is a container port name",
          not problems, "\n".join(problems))
    ports = {p.get("name"): p.get("containerPort") for c in dep["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    ep = eps[0] if eps else {}
    check("one endpoint: port http (5001), path /metrics, scheme http",
          len(eps) == 1 and ep.get("port") == "http" and ports.get("http") == 5001 and ep.get("path") == "/metrics"
          and ep.get("scheme", "http") == "http", eps)
    interval, timeout = str(ep.get("interval", "")), str(ep.get("scrapeTimeout", "10s"))
    check("scraped every 30s, with a timeout the CRD accepts and shorter than the interval",
          interval == "30s" and re.fullmatch(CRD_DURATION, timeout) and 0 < seconds(timeout) <= seconds(interval),
          f"interval {interval!r}, scrapeTimeout {timeout!r}")
    check("it states the label limits Azure's pod monitor template asks for (63, 511, 1023)",
          (spec.get("labelLimit"), spec.get("labelNameLengthLimit"), spec.get("labelValueLengthLimit")) == (63, 511, 1023),
          spec)
    # A target label of the same name as a metric label pushes the metric's
    # aside as exported_<name>, unless the PodMonitor drops it or honors labels.
    metric_labels = set().union(*METRICS.values())
    dropped = set()
    for r in ep.get("relabelings") or []:
        if str(r.get("action", "replace")).lower() == "labeldrop":
            dropped |= {l for l in OPERATOR_TARGET_LABELS if re.fullmatch(r.get("regex", "(.*)"), l)}
    clashes = sorted((OPERATOR_TARGET_LABELS & metric_labels) - dropped) if not ep.get("honorLabels") else []
    check("no target label the operator adds renames a metric's own label (endpoint of ai_service_deployment_state)",
          (OPERATOR_TARGET_LABELS & metric_labels) and not clashes and not (dropped & {"namespace", "pod"}),
          f"clashing: {clashes}; dropped: {sorted(dropped)}")
    # The check above must be able to fail.
    bad_sel, bad_port = copy.deepcopy(pm), copy.deepcopy(pm)
    bad_sel.setdefault("spec", {}).setdefault("selector", {})["matchLabels"] = {"app": "product-service"}
    for e in bad_port.get("spec", {}).get("podMetricsEndpoints") or [{}]:
        e["port"] = "metrics"
    check("the selector and port checks reject a selector that matches no pod and a port name the container lacks",
          podmonitor_problems(bad_sel, dep) and podmonitor_problems(bad_port, dep))
    # Nothing applies it by accident: no kustomization lists it.
    listed = []
    for k in ("k8s/kustomization.yaml", "k8s/extras/kustomization.yaml"):
        with open(os.path.join(ROOT, k)) as f:
            kust = yaml.safe_load(f)
        listed += [f"{k}: {r}" for key in ("resources", "components", "bases")
                   for r in kust.get(key) or [] if "monitoring" in str(r)]
    kinds = [(d.get("apiVersion"), d.get("kind")) for d in base + extras]
    check("no kustomization includes monitoring/, and kubectl kustomize k8s/ and k8s/extras/ render no PodMonitor",
          not listed and not any(k == "PodMonitor" or "monitoring.coreos.com" in str(a) for a, k in kinds),
          f"listed: {listed}; rendered: {kinds}")


# --- The dashboard -------------------------------------------------------------------

BUILTIN_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def substitute(expr, defined):
    """The expression with Grafana's variables replaced as promtool can read it:
    the interval variables by durations, the template variables (used in
    regex matchers) by ".*". Returns (expr, undefined variable names)."""
    undefined = []

    def repl(m):
        name = m.group(1) or m.group(2)
        if name in BUILTIN_VARS:
            return BUILTIN_VARS[name]
        if name not in defined:
            undefined.append(name)
        return ".*"

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr), undefined


def test_dashboard(promtool, work):
    path = os.path.join(MON, "dashboard.json")
    try:
        with open(path) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        check("dashboard.json is JSON", False, e)
        return
    check("dashboard.json is JSON, with a title and a fixed uid", dash.get("title") and dash.get("uid"),
          {k: dash.get(k) for k in ("title", "uid")})
    check("schemaVersion is 39 or later (current Grafana, Azure Managed Grafana 10/11)",
          isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 39, dash.get("schemaVersion"))
    variables = (dash.get("templating") or {}).get("list") or []
    ds_vars = [v for v in variables if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    check("a Prometheus data source variable, so the dashboard works with whichever data source it is imported next to",
          len(ds_vars) == 1 and "__inputs" not in dash, [v.get("name") for v in variables])
    ds_name = ds_vars[0]["name"] if ds_vars else "datasource"
    ds_refs = {f"${ds_name}", f"${{{ds_name}}}"}
    panels = dash.get("panels") or []
    flat = panels + [p for row in panels for p in row.get("panels") or []]
    ids = [p.get("id") for p in flat]
    check("panel ids are unique integers", all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), ids)

    def uses_var(ds):
        return isinstance(ds, dict) and ds.get("type") == "prometheus" and ds.get("uid") in ds_refs

    graphs = [p for p in flat if p.get("type") != "row"]
    bad = [p.get("title") for p in graphs
           if not uses_var(p.get("datasource")) or not all(uses_var(t.get("datasource")) for t in p.get("targets") or [])]
    bad += [v["name"] for v in variables if v.get("type") == "query" and not uses_var(v.get("datasource"))]
    check(f"every panel, query and query variable uses the data source variable ${ds_name}", graphs and not bad, bad)
    grid_bad, cells = [], {}
    for p in flat:
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["w"] < 1 or g["h"] < 1 or g["x"] < 0 or g["x"] + g["w"] > 24:
            grid_bad.append(f"{p.get('title')}: {g}")
            continue
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    grid_bad.append(f"{p.get('title')} overlaps {cells[(x, y)]}")
                cells[(x, y)] = p.get("title")
    check("every panel has a gridPos within the 24 columns, and none overlap", not grid_bad, "\n".join(sorted(set(grid_bad))))
    no_query = [p.get("title") for p in graphs
                if not p.get("targets") or not all(t.get("expr") for t in p["targets"])
                or len({t.get("refId") for t in p["targets"]}) != len(p["targets"])]
    check("every panel has queries, each with an expression and its own refId", not no_query, no_query)

    defined = {v.get("name") for v in variables}
    exprs, undefined, names_bad = {}, [], []
    for n, p in enumerate(graphs, 1):
        for t in p.get("targets") or []:
            expr, missing = substitute(t.get("expr", ""), defined)
            exprs[f"dashboard:panel{n}_id{p.get('id')}_{t.get('refId')}"] = expr
            undefined += missing
            names_bad += [f"{p.get('title')}: {x}" for x in unknown_names(expr)]
    for v in variables:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else str(q or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q)
        if not m:
            names_bad.append(f"variable {v.get('name')}: not label_values(selector, label): {q!r}")
            continue
        expr, missing = substitute(m.group(1), defined)
        exprs[f"dashboard:variable_{v.get('name')}"] = expr
        undefined += missing
        names_bad += [f"variable {v.get('name')}: {x}" for x in unknown_names(f"{expr} by ({m.group(2)})")]
        if v.get("includeAll") and v.get("allValue") != ".*":
            names_bad.append(f"variable {v.get('name')}: All must be .* so that series without the label match")
    check("every variable an expression uses is defined", not undefined, sorted(set(undefined)))
    check("every expression names only the service's metrics, and labels those metrics (or their target) have",
          not names_bad, "\n".join(names_bad))

    joined = "\n".join(exprs.values())
    wanted = {
        "requests per second by route": r"by \(route\) \(rate\(ai_service_http_requests_total\{",
        "latency p50": r"histogram_quantile\(0\.5, [^\n]*ai_service_http_request_duration_seconds_bucket",
        "latency p95": r"histogram_quantile\(0\.95, [^\n]*ai_service_http_request_duration_seconds_bucket",
        "latency p99": r"histogram_quantile\(0\.99, [^\n]*ai_service_http_request_duration_seconds_bucket",
        "errors by status (non-2xx)": r"by \(status[^)]*\) \(rate\(ai_service_http_requests_total\{[^}]*status!~\"2\.\.\"",
        "tokens per minute by deployment and token type":
            r"by \(gen_ai_request_model, gen_ai_token_type\) \(rate\(gen_ai_client_token_usage_sum\{[^\n]*\* 60",
        "quota headroom by deployment, tokens": r"by \(deployment\) \(ai_service_upstream_ratelimit_remaining\{[^}]*kind=\"tokens\"",
        "quota headroom by deployment, requests": r"by \(deployment\) \(ai_service_upstream_ratelimit_remaining\{[^}]*kind=\"requests\"",
        "failovers": r"rate\(ai_service_failovers_total\{",
        "deployment state": r"ai_service_deployment_state\{",
        "token acquisitions by credential and outcome": r"by \(credential, outcome\) \(increase\(ai_service_token_acquisitions_total\{",
        "upstream operation duration p95 by model":
            r"histogram_quantile\(0\.95, sum by \([^)]*gen_ai_request_model[^)]*\) \(rate\(gen_ai_client_operation_duration_seconds_bucket",
    }
    missing = [k for k, pattern in wanted.items() if not re.search(pattern, joined)]
    check("it has the panels: requests by route, latency p50/p95/p99, non-2xx by status, tokens per minute, "
          "quota headroom, failovers, deployment state, token acquisitions, upstream duration p95 by model",
          not missing, f"missing: {missing}")
    if promtool:
        promtool_checks(promtool, exprs, "dashboard", work)


# --- The alert rules ------------------------------------------------------------------

REQUIRED_ALERTS = {
    "AIServiceQuotaHeadroomLow": ["ai_service_upstream_ratelimit_remaining"],
    "AIServiceErrorRatioHigh": ["ai_service_http_requests_total", "/generate/", "5.."],
    "AIServiceNoEntraToken": ["ai_service_token_acquisitions_total", 'outcome="failure"', 'outcome="success"'],
}


def test_alerts():
    sys.path.insert(0, MON)
    sys.dont_write_bytecode = True  # no __pycache__ beside the rules
    import azure_rules  # noqa: E402  (the converter beside the rules)

    with open(os.path.join(MON, "alerts.yaml")) as f:
        doc = yaml.safe_load(f)
    groups = doc.get("groups") or []
    rules = [r for g in groups for r in g.get("rules") or []]
    alerts = {r.get("alert"): r for r in rules}
    check("alerts.yaml is a rules file of alert rules, in groups run every 1 to 15 minutes (Azure's range)",
          groups and rules and all("alert" in r for r in rules)
          and all(60 <= seconds(str(g.get("interval", "1m"))) <= 900 for g in groups), [g.get("interval") for g in groups])
    for name, needles in REQUIRED_ALERTS.items():
        expr = alerts.get(name, {}).get("expr", "")
        check(f"alert {name} is there, on {', '.join(needles)}", all(n in expr for n in needles), expr or "missing")
    incomplete = [r.get("alert") for r in rules
                  if r.get("labels", {}).get("severity") not in azure_rules.SEVERITY
                  or not r.get("annotations", {}).get("summary") or not r.get("annotations", {}).get("description")
                  or not re.search(r"`[^`]+`", r.get("annotations", {}).get("description", ""))
                  or not re.fullmatch(r"\d+[mh]", str(r.get("for", "")))]
    check("every alert has a severity, a `for`, a summary and a description with a command to run", not incomplete, incomplete)
    token = alerts.get("AIServiceNoEntraToken", {}).get("annotations", {}).get("description", "")
    check("the no-token alert says to check the federated credential and run /ai-service check in the pod",
          "federated credential" in token and "kubectl exec deploy/ai-service -- /ai-service check" in token, token)
    bad = [f"{r.get('alert')}: {x}" for r in rules for x in unknown_names(r.get("expr", ""))]
    check("every alert expression names only the service's metrics and their labels", not bad, "\n".join(bad))

    with open(os.path.join(MON, "alerts.test.yaml")) as f:
        tests = yaml.safe_load(f)
    fires, quiet = set(), set()
    for t in tests.get("tests") or []:
        for a in t.get("alert_rule_test") or []:
            (fires if a.get("exp_alerts") else quiet).add(a.get("alertname"))
    untested = sorted(n for n in alerts if n not in fires or n not in quiet)
    check("alerts.test.yaml has, for every alert, series that fire it and series that must not",
          tests.get("rule_files") == ["alerts.yaml"] and alerts and not untested, f"not both ways: {untested}")

    out = azure_rules.azure_rules(groups, "/subscriptions/0/resourceGroups/rg/providers/microsoft.insights/actionGroups/ag")
    same = all(o["alert"] == r["alert"] and o["expression"] == r["expr"] and o["labels"] == r.get("labels")
               and o["annotations"] == r.get("annotations") and o["actions"][0]["actionGroupId"].endswith("/ag")
               for o, r in zip(out, rules))
    iso = all(re.fullmatch(r"P(\d+D)?(T(\d+H)?(\d+M)?(\d+S)?)?", o["for"]) and o["for"] not in ("P", "PT")
              and 0 <= o["severity"] <= 4 for o in out)
    check("azure_rules.py gives Azure's rule group the same alerts, expressions, labels and annotations, "
          "`for` in ISO 8601 and a severity 0-4", len(out) == len(rules) and same and iso, json.dumps(out, indent=1)[:2000])
    check("azure_rules.py writes 5m as PT5M, 1h30m as PT1H30M, 1d as P1D",
          [azure_rules.iso_duration(d) for d in ("5m", "1h30m", "1d", "30s")] == ["PT5M", "PT1H30M", "P1D", "PT30S"])
    with open(os.path.join(MON, "README.md")) as f:
        readme = f.read()
    interval = "PT" + str(groups[0].get("interval", "1m")).upper() if groups else ""
    check(f"the README's rule group command runs it every {interval}, as alerts.yaml's group does",
          f"--interval {interval}" in readme and "azure_rules.py" in readme, interval)


def main(promtool, base_path, extras_path):
    base, extras = load_yaml_docs(base_path), load_yaml_docs(extras_path)
    with tempfile.TemporaryDirectory() as work:
        test_podmonitor(base, extras)
        test_dashboard(promtool, work)
        test_alerts()
    return 0 if all(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
