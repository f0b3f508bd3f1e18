"""deploy/prometheus and deploy/grafana, checked without a server: promtool validates
and unit-tests the alert rules, every alert links a runbook that exists, the dashboard
is a well-formed Grafana dashboard model. The metric names are checked against a live
/metrics in tests/integration/test_operations.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.monitoring import (
    DASHBOARD,
    ROOT,
    RULES,
    RULES_TESTS,
    dashboard,
    dashboard_exprs,
    metric_names,
    promtool,
    rules,
)


def run_promtool(*args: str, cwd: Path = RULES.parent) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    print(r.stdout, r.stderr)  # shown by pytest -rA / on failure: the output the issue asks for
    return r


def test_promtool_check_rules() -> None:
    r = run_promtool("check", "rules", RULES.name)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_promtool_test_rules() -> None:
    r = run_promtool("test", "rules", RULES_TESTS.name)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize(("old", "new"), [
    ("< 0.75", "< 0.40"),  # a hit-rate threshold that misses 50 %
    ("fraiseshm_database_up == 0", "fraiseshm_database_up == 2"),  # never fires
    ("> 60\n", "> 600\n"),  # a restart 300 s after the master is missed
    ("for: 15m\n        labels:\n          severity: warning\n        annotations:\n          summary: \"hit rate",
     "for: 0m\n        labels:\n          severity: warning\n        annotations:\n          summary: \"hit rate"),
])
def test_the_rule_tests_bite(tmp_path: Path, old: str, new: str) -> None:
    text = RULES.read_text()
    assert old in text
    (tmp_path / RULES.name).write_text(text.replace(old, new, 1))
    (tmp_path / RULES_TESTS.name).write_text(RULES_TESTS.read_text())
    r = run_promtool("test", "rules", RULES_TESTS.name, cwd=tmp_path)
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr


def test_every_alert_has_a_runbook_page_and_a_unit_test() -> None:
    tested = RULES_TESTS.read_text()
    alerts = [r for r in rules() if "alert" in r]
    assert len(alerts) >= 10
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("docs/runbooks/") and (ROOT / url).is_file(), (rule["alert"], url)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert f"alertname: {rule['alert']}\n" in tested, f"{rule['alert']} has no promtool unit test"


def test_every_breaking_point_of_health_has_an_alert() -> None:
    names = {r["alert"] for r in rules() if "alert" in r}
    assert {"FraiseshmLowHitRate", "FraiseshmCascadeFailures", "FraiseshmArenaFullEvicting", "FraiseshmShardWiped",
            "FraiseshmDatabaseUnreachable", "FraiseshmListenerAbsent", "FraiseshmReadQpsNearLimit",
            "FraiseshmMutationQpsNearLimit", "FraiseshmWorkerRestarts", "FraiseshmArenaUnlinked"} <= names


def test_dashboard_is_a_grafana_dashboard_model() -> None:
    dash = dashboard()
    for key, kind in (("title", str), ("uid", str), ("panels", list), ("schemaVersion", int),
                      ("templating", dict), ("time", dict)):
        assert isinstance(dash.get(key), kind), key
    assert 1 <= len(dash["uid"]) <= 40
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["w"] >= 1 and g["h"] >= 1 and 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        assert p["type"] in ("row", "timeseries", "heatmap", "stat", "gauge"), p["type"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert 'job=~"$job"' in t["expr"], f"{p['title']}: query ignores the $job/$instance selection"


def test_dashboard_shows_what_the_issue_lists() -> None:
    used = set().union(*(metric_names(e) for e in dashboard_exprs(dashboard())))
    for name in ("fraiseshm_hits_total", "fraiseshm_worker_requests_total", "fraiseshm_db_execution_seconds_bucket",
                 "fraiseshm_db_executions_total", "fraiseshm_coalesce_followed_total", "fraiseshm_arena_fill_ratio",
                 "fraiseshm_evictions_total", "fraiseshm_cascade_failures_total", "fraiseshm_listener_up",
                 "fraiseshm_listener_lag_seconds_sum", "fraiseshm_listener_lag_seconds_count"):
        assert name in used, name


def test_metric_names_parser() -> None:
    assert metric_names('rate(a_total{job=~"$job", x="rate(b)"}[5m]) / on(job, instance) group_left() c > 0.5') == {
        "a_total", "c"}
    assert metric_names("histogram_quantile(0.99, sum by (le, instance) (rate(h_bucket[$__rate_interval])))") == {
        "h_bucket"}
    assert metric_names("count by (job) ((x - on(job) group_left() y) > 60 and (time() - x) < 9e2)") == {"x", "y"}
    assert DASHBOARD.is_file()
