"""What the monitoring files under deploy/ refer to: alert rules, their runbooks, the
dashboard's queries, and the metric names a PromQL expression uses (shared by the
offline checks in tests/unit/test_monitoring_files.py and the live check against
/metrics in tests/integration/test_operations.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy/prometheus/fraiseshm.rules.yml"
RULES_TESTS = ROOT / "deploy/prometheus/fraiseshm.rules.test.yml"
DASHBOARD = ROOT / "deploy/grafana/fraiseshm.json"

# PromQL words that look like identifiers but are not metrics
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
             "offset", "inf", "nan", "atan2"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        raise AssertionError("promtool is missing: `bash scripts/bootstrap.sh test` installs Debian's prometheus "
                             "package (run as root), or apt-get install prometheus")
    return path


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", var["definition"]))
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, label matchers, label
    lists of by/on/..., ranges, strings, numbers and Grafana variables removed)."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    e = re.sub(r"\$\w+", "", e)  # Grafana variables ($__rate_interval, $job)
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group()
        rest = e[m.end():].lstrip()
        if word.lower() in _KEYWORDS or rest.startswith("("):  # a function call
            continue
        if re.fullmatch(r"\d+[smhdwy]|e\d+", word):
            continue
        # a number's exponent or unit suffix (1e3, 5m) is glued to digits
        if m.start() > 0 and e[m.start() - 1].isdigit():
            continue
        names.add(word)
    return names


def exposed_names(exposition: str) -> set[str]:
    """Sample names in a Prometheus text exposition (`name{labels} value` or `name value`)."""
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in exposition.splitlines()
            if line and not line.startswith("#")}
