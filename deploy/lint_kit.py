#!/usr/bin/env python3
"""Static checks of the operator kit that promtool and systemd-analyze do not make.

Run from the repository root (deploy/check.sh does). Standard library only.

- Every metric name the alert rules, their tests, the dashboard, README.md and
  docs/*.md mention is exported by the proxy (deploy/metrics.txt), and every label and label
  value in a selector is one the metric has, so a renamed metric or reason fails here.
- Every alert has a severity, a summary and a description, and alerts_test.yml has a
  case where it fires and one where it stays quiet.
- The dashboard is valid JSON, takes its data source from the DS_PROMETHEUS variable,
  filters every query by $job and $instance, and shows every exported metric.

With --dashboard-rules FILE it also writes the dashboard's queries, Grafana variables
replaced, as recording rules so that `promtool check rules FILE` parses them.
"""

import argparse
import json
import re
import sys
from pathlib import Path

METRICS_FILE = Path("deploy/metrics.txt")
ALERTS = Path("deploy/prometheus/alerts.yml")
ALERT_TESTS = Path("deploy/prometheus/alerts_test.yml")
DASHBOARD = Path("deploy/grafana/boundary-log-proxy.json")
DOCS = Path("README.md")
DOCS_DIR = Path("docs")

PREFIX = "agent_boundary_log_proxy_"
ALWAYS_ALLOWED_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SEVERITIES = {"critical", "warning"}

NAME_RE = re.compile(PREFIX + r"[a-zA-Z0-9_]*")
SELECTOR_RE = re.compile("(" + PREFIX + r"[a-zA-Z0-9_]*)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$job": "boundary-log-proxy",
    "$instance": ".*",
}


class Metric:
    def __init__(self, name, kind, labels):
        self.name = name
        self.kind = kind
        self.labels = labels  # label -> set of values


def load_metrics(path):
    metrics = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2:
            sys.exit(f"{path}:{number}: expected `name type [label=v1|v2 ...]`")
        labels = {}
        for spec in fields[2:]:
            label, _, values = spec.partition("=")
            labels[label] = set(values.split("|"))
        metrics[fields[0]] = Metric(fields[0], fields[1], labels)
    return metrics


def resolve(name, metrics):
    """The exported metric a series name belongs to, and the extra labels it allows."""
    if name in metrics:
        return metrics[name], set()
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)] if name.endswith(suffix) else None
        if base in metrics and metrics[base].kind == "histogram":
            return metrics[base], {"le"} if suffix == "_bucket" else set()
    return None, set()


def json_strings(value):
    """Every string in a decoded JSON document, so queries are read without JSON escapes."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_strings(item)


def check_names_and_labels(path, text, metrics, errors, with_lines=True):
    def at(offset):
        return f"{path}:{text.count(chr(10), 0, offset) + 1}" if with_lines else str(path)

    for match in NAME_RE.finditer(text):
        name = match.group(0)
        if resolve(name, metrics)[0] is None:
            errors.append(f"{at(match.start())}: `{name}` is not an exported metric (deploy/metrics.txt)")
    for match in SELECTOR_RE.finditer(text):
        name, body = match.group(1), match.group(2)
        metric, extra = resolve(name, metrics)
        if metric is None:
            continue
        where = f"{at(match.start())}: {name}"
        consumed = 0
        for matcher in MATCHER_RE.finditer(body):
            if matcher.start() != consumed:
                break
            consumed = matcher.end()
            label, op, value = matcher.groups()
            if label in ALWAYS_ALLOWED_LABELS or label in extra:
                continue
            if label not in metric.labels:
                errors.append(f"{where}: has no label `{label}`")
                continue
            known = metric.labels[label]
            wanted = value.split("|") if op in ("=~", "!~") else [value]
            for item in wanted:
                if item not in known:
                    errors.append(
                        f"{where}: {label}{op}\"{value}\": `{item}` is not one of {sorted(known)}"
                        " (spell regex alternatives out literally)"
                    )
        if body[consumed:].strip():
            errors.append(f"{where}: cannot read the matchers `{body}`")


def check_alerts(errors):
    text = ALERTS.read_text()
    blocks = re.split(r"^\s*- alert:\s*", text, flags=re.M)[1:]
    names = []
    for block in blocks:
        name = block.split()[0]
        names.append(name)
        severity = re.search(r"^\s*severity:\s*(\S+)", block, flags=re.M)
        if not severity or severity.group(1) not in SEVERITIES:
            errors.append(f"{ALERTS}: {name}: needs labels.severity, one of {sorted(SEVERITIES)}")
        for annotation in ("summary", "description"):
            if not re.search(rf"^\s*{annotation}:\s*\S", block, flags=re.M):
                errors.append(f"{ALERTS}: {name}: needs annotations.{annotation}")
    if len(set(names)) != len(names):
        errors.append(f"{ALERTS}: alert names are not unique: {names}")

    fires, quiet, current = set(), set(), None
    for line in ALERT_TESTS.read_text().splitlines():
        found = re.match(r"\s*(?:-\s+)?alertname:\s*(\S+)\s*$", line)
        if found:
            current = found.group(1)
            continue
        found = re.match(r"\s*exp_alerts:\s*(\S.*)?$", line)
        if found and current:
            (quiet if (found.group(1) or "").strip() == "[]" else fires).add(current)
    for name in names:
        if name not in fires:
            errors.append(f"{ALERT_TESTS}: no case where {name} fires")
        if name not in quiet:
            errors.append(f"{ALERT_TESTS}: no case where {name} stays quiet (exp_alerts: [])")
    for name in (fires | quiet) - set(names):
        errors.append(f"{ALERT_TESTS}: tests an alert that alerts.yml does not define: {name}")
    return names


def panels_of(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def check_dashboard(metrics, errors):
    try:
        dashboard = json.loads(DASHBOARD.read_text())
    except json.JSONDecodeError as error:
        errors.append(f"{DASHBOARD}: invalid JSON: {error}")
        return []
    if dashboard.get("schemaVersion", 0) < 36:
        errors.append(f"{DASHBOARD}: schemaVersion {dashboard.get('schemaVersion')} is older than Grafana 9")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    source = variables.get("DS_PROMETHEUS", {})
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        errors.append(f"{DASHBOARD}: needs a `DS_PROMETHEUS` data source variable of type prometheus")
    for name in ("job", "instance"):
        if variables.get(name, {}).get("type") != "query":
            errors.append(f"{DASHBOARD}: needs a `{name}` query variable")

    exprs, ids = [], []
    for panel in panels_of(dashboard):
        ids.append(panel.get("id"))
        grid = panel.get("gridPos", {})
        title = panel.get("title", "?")
        if grid.get("x", 0) + grid.get("w", 0) > 24:
            errors.append(f"{DASHBOARD}: panel `{title}` is wider than the 24-column grid")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            errors.append(f"{DASHBOARD}: panel `{title}` has no queries")
        for item in [panel] + targets:
            uid = (item.get("datasource") or {}).get("uid")
            if uid != "${DS_PROMETHEUS}":
                errors.append(f"{DASHBOARD}: panel `{title}` uses data source `{uid}`, not ${{DS_PROMETHEUS}}")
        for target in targets:
            expr = target.get("expr", "")
            if not expr.strip():
                errors.append(f"{DASHBOARD}: panel `{title}` has an empty query")
                continue
            exprs.append(expr)
            for selector in re.finditer(r"(\b[a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
                body = selector.group(2)
                if 'job=~"$job"' not in body or 'instance=~"$instance"' not in body:
                    errors.append(
                        f"{DASHBOARD}: panel `{title}`: `{selector.group(1)}` is not filtered by $job and $instance"
                    )
    if len(set(ids)) != len(ids):
        errors.append(f"{DASHBOARD}: panel ids are not unique")

    shown = " ".join(exprs)
    for name, metric in metrics.items():
        probe = name + "_bucket" if metric.kind == "histogram" else name
        if not re.search(re.escape(probe) + r"\b", shown):
            errors.append(f"{DASHBOARD}: no panel shows `{probe}`")
    return exprs


def write_dashboard_rules(exprs, out):
    lines = ["groups:", "  - name: dashboard-queries", "    rules:"]
    for number, expr in enumerate(exprs, 1):
        for variable, value in GRAFANA_VARS.items():
            expr = expr.replace(variable, value)
        if "$" in expr:
            sys.exit(f"{DASHBOARD}: query uses a variable this check does not know: {expr}")
        lines.append(f"      - record: dashboard:query_{number}")
        lines.append(f"        expr: {json.dumps(expr)}")
    Path(out).write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dashboard-rules", metavar="FILE", help="write the dashboard queries as recording rules")
    args = parser.parse_args()

    errors = []
    metrics = load_metrics(METRICS_FILE)
    alerts = check_alerts(errors)
    exprs = check_dashboard(metrics, errors)
    scanned = [ALERTS, ALERT_TESTS, DASHBOARD, DOCS, *sorted(DOCS_DIR.glob("*.md"))]
    for path in scanned:
        if not path.exists():
            errors.append(f"{path}: missing")
            continue
        text = path.read_text()
        if path.suffix == ".json":
            try:
                text = "\n".join(json_strings(json.loads(text)))
            except json.JSONDecodeError:
                continue  # reported by check_dashboard
        check_names_and_labels(path, text, metrics, errors, with_lines=path.suffix != ".json")
    if args.dashboard_rules and exprs:
        write_dashboard_rules(exprs, args.dashboard_rules)

    for error in errors:
        print(f"FAIL: {error}")
    if errors:
        return 1
    print(
        f"ok: {len(alerts)} alerts each tested firing and quiet; {len(exprs)} dashboard queries; "
        f"metric names and labels in {len(scanned)} files match the {len(metrics)} exported metrics"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
