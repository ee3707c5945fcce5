"""Checks on the Grafana dashboards and the metric families, run by deploy/check-manifests.sh.

A dashboard is JSON that nothing else parses before Grafana loads it: this
checks that every dashboard under deploy/grafana parses, has its uid, title,
panels and the $datasource/$namespace/$pod variables, unique panel ids, a
query in every panel, and that every query filters on $namespace. Every query
(and each query variable's label_values() selector) is written, with Grafana's
variables replaced by concrete values, as a recording rule to
WORK/dashboard-queries.rules.yaml so that the next step (`promtool check
rules`) parses its PromQL.

The dashboards' queries and the alert rules (WORK/rules/*.rules.yaml, written
by manifests.py) may only use the metric families the deployment scrapes:
dlr_ingest_*, dlr_worker_*, rabbitmq_*, process_*, kube_* and up. Whether each
dlr_* name is really exported is not checked here: tests/deploy.rs
(every_metric_in_dashboards_and_alerts_is_exported) checks every
dlr_ingest_*/dlr_worker_* name under deploy/ against the binaries' real
/metrics.

    python3 deploy/checks/dashboards.py WORK DEPLOY

Prints one line per problem; exits 1 if there is any.
"""

import glob
import json
import os
import re
import sys

import yaml

# The binaries' metrics: the prefixes tests/deploy.rs checks against their /metrics.
DLR_PREFIXES = ("dlr_ingest_", "dlr_worker_")
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "le",
    "inf",
    "nan",
}


def check_names(where, expr, errors):
    """Append to errors each metric name in the PromQL expr that is outside the allowed families."""
    # A dlr_* name outside the prefixes tests/deploy.rs looks at would be checked by nobody.
    for name in set(re.findall(r"\b(dlr_[a-z0-9_]+)", expr)):
        if not name.startswith(DLR_PREFIXES):
            errors.append(f"{where}: {name} is neither dlr_ingest_* nor dlr_worker_*")
    # Any other metric-looking identifier before a selector or range must be from an allowed family.
    for name in set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*[{\[]", expr)):
        if not re.match(r"(dlr_|rabbitmq_|process_|kube_)", name) and name != "up" and name not in PROMQL_WORDS:
            errors.append(f"{where}: {name} is not an allowed metric family")


def main():
    """Check the dashboards, write their queries for promtool, check the rules' names; 1 if any problem."""
    work, deploy = sys.argv[1], sys.argv[2]
    errors = []

    # Dashboards.
    dashboards = sorted(glob.glob(os.path.join(deploy, "grafana", "*.json")))
    if not dashboards:
        errors.append("no dashboard in deploy/grafana")
    record_rules = []
    for path in dashboards:
        fname = os.path.basename(path)
        try:
            with open(path) as f:
                dash = json.load(f)
        except ValueError as e:
            errors.append(f"{fname}: invalid JSON: {e}")
            continue
        for key in ("uid", "title", "panels", "templating"):
            if key not in dash:
                errors.append(f"{fname}: missing {key}")
        variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
        for var in ("datasource", "namespace", "pod"):
            if var not in variables:
                errors.append(f"{fname}: no ${var} template variable")
        panels = list(dash.get("panels", []))
        panels += [c for p in panels for c in p.get("panels", [])]
        ids = [p.get("id") for p in panels]
        if len(ids) != len(set(ids)):
            errors.append(f"{fname}: duplicate panel ids")
        exprs = []
        for p in panels:
            if p.get("type") == "row":
                continue
            if not p.get("targets"):
                errors.append(f"{fname}: panel {p.get('title')!r} has no query")
            for t in p.get("targets", []):
                if not t.get("expr"):
                    errors.append(f"{fname}: panel {p.get('title')!r} has an empty query")
                    continue
                if 'namespace="$namespace"' not in t["expr"]:
                    errors.append(f"{fname}: panel {p.get('title')!r} ignores $namespace")
                exprs.append((f"{fname}: panel {p.get('title')!r}", t["expr"]))
        for v in variables.values():
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if v.get("type") == "query":
                m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q or "")
                if not m:
                    errors.append(f"{fname}: variable {v['name']} is not a label_values() query")
                else:
                    exprs.append((f"{fname}: variable {v['name']}", m.group(1)))
        for where, expr in exprs:
            check_names(where, expr, errors)
            concrete = (
                expr.replace("$__rate_interval", "5m")
                .replace("$__range", "1h")
                .replace("$namespace", "dlr")
                .replace("$pod", ".*")
            )
            record_rules.append({"record": f"dashboard:check_{len(record_rules)}", "expr": concrete})
        print(f"checked {fname}: {len(panels)} panels, {len(exprs)} queries, variables {sorted(variables)}")

    with open(os.path.join(work, "dashboard-queries.rules.yaml"), "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-syntax", "rules": record_rules}]}, f)

    # Alert rules.
    for path in sorted(glob.glob(os.path.join(work, "rules", "*.rules.yaml"))):
        with open(path) as f:
            spec = yaml.safe_load(f)
        for g in spec["groups"]:
            for r in g["rules"]:
                check_names(f"{os.path.basename(path)}: {r.get('alert') or r.get('record')}", r["expr"], errors)

    for e in sorted(set(errors)):
        print("  " + e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
