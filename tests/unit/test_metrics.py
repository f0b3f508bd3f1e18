"""The Prometheus collector and figures over a real arena (real shared memory, real child processes)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from fraiseshm.arena import Arena, Counter
from fraiseshm.metrics import figures
from fraiseshm.metrics.collector import families, registry_for

_names = itertools.count()


@pytest.fixture
def arena() -> Iterator[Arena]:
    name = f"/fraiseshm-ut-metrics-{os.getpid()}-{next(_names)}"
    a = Arena.create(name, size=8 << 20, max_entry=64 << 10, shards=2)
    a.register_process()
    yield a
    a.close()
    Arena.unlink(name)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def child_counts(arena: Arena, requests: int) -> int:
    """Fork a process that counts `requests` in its own slot and exits; returns its pid (not reaped)."""
    pid = os.fork()
    if pid == 0:
        try:
            arena.register_process()
            arena.incr(Counter.REQUESTS, requests)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_exposition_parses_and_agrees_with_the_slots(arena: Arena) -> None:
    me = str(os.getpid())
    arena.incr(Counter.REQUESTS, 7)
    arena.put(b"k", b"value", ["User:1"], arena.current_seq(), 60.0)
    assert arena.get(b"k") == b"value" and arena.get(b"nope") is None
    arena.observe(0.0002)
    arena.observe(3.0)
    text = generate_latest(registry_for(lambda: arena)).decode()
    s = samples(text)
    w = (("worker", me),)
    assert s[("fraiseshm_worker_requests_total", w)] == 7
    assert s[("fraiseshm_requests_total", ())] == 7
    assert s[("fraiseshm_worker_hits_total", w)] == 1 and s[("fraiseshm_worker_misses_total", w)] == 1
    assert s[("fraiseshm_hit_ratio", ())] == 0.5
    assert s[("fraiseshm_arena_entries", ())] == 1 and s[("fraiseshm_workers", ())] == 1
    # histogram buckets are cumulative, +Inf holds every observation
    assert s[("fraiseshm_db_execution_seconds_bucket", (("le", "0.00025"),))] == 1
    assert s[("fraiseshm_db_execution_seconds_bucket", (("le", "+Inf"),))] == 2
    assert s[("fraiseshm_worker_db_execution_seconds_count", w)] == 2
    assert s[("fraiseshm_db_execution_seconds_sum", ())] == pytest.approx(3.0002)
    assert s[("fraiseshm_worker_cpu_seconds_total", w)] > 0
    # the OpenMetrics encoding of the same registry parses too
    om = generate_openmetrics(registry_for(lambda: arena)).decode()
    assert any(f.name == "fraiseshm_requests" for f in parse_openmetrics(om))


def test_a_dead_process_counts_stay_in_totals_before_and_after_reap(arena: Arena) -> None:
    arena.incr(Counter.REQUESTS, 3)
    pid = child_counts(arena, 5)
    before_reap = figures.read(arena)
    assert [p["pid"] for p in before_reap["processes"]] == [os.getpid()]  # the dead child is not "live"
    assert before_reap["totals"]["requests"] == 8 and before_reap["archived"]["requests"] == 5
    assert arena.reap(pid)
    after = figures.read(arena)
    assert after["totals"]["requests"] == 8 and after["archived"]["requests"] == 5
    # a new process takes the freed slot: its share starts at zero, totals keep growing
    child_counts(arena, 2)
    assert figures.read(arena)["totals"]["requests"] == 10
    s = samples(generate_latest(registry_for(lambda: arena)).decode())
    assert s[("fraiseshm_requests_total", ())] == 10
    assert s[("fraiseshm_archived_requests_total", ())] == 7
    assert [k for k in s if k[0] == "fraiseshm_worker_requests_total"] == [
        ("fraiseshm_worker_requests_total", (("worker", str(os.getpid())),))]


def test_sum_of_processes_plus_archived_is_the_total(arena: Arena) -> None:
    for n in (1, 2, 3):
        child_counts(arena, n)
    arena.incr(Counter.MUTATIONS, 4)
    f = figures.read(arena)
    for c in Counter:
        key = c.name.lower()
        assert sum(p["counters"][key] for p in f["processes"]) + f["archived"][key] == f["totals"][key]


def test_no_arena_exports_cache_disabled() -> None:
    s = samples(generate_latest(registry_for(lambda: None)).decode())
    assert s == {("fraiseshm_cache_enabled", ()): 0.0}


def test_families_from_injected_figures() -> None:
    zero = {c.name.lower(): 0 for c in Counter}
    latency = {"bounds_seconds": [0.1], "counts": [1, 2], "count": 3, "sum_seconds": 9.0}
    stats = {
        "processes": [{"pid": 42, "counters": {**zero, "requests": 9}, "latency": latency,
                       "hit_rate": None, "cpu_seconds": None}],
        "totals": {**zero, "requests": 12}, "archived": {**zero, "requests": 3}, "latency": latency,
        "hit_rate": None, "workers": 1, "size": 1, "capacity_bytes": 1, "used_bytes": 0, "fill_ratio": 0.0,
        "entries": 0, "max_entry": 1, "shards": 1, "global_seq": 5, "valid_from": 0,
        "oldest_entry_age_seconds": 0.0, "linked": True, "blocks_per_class": {64: 3},
        "lock_wipes": 0, "checksum_failures": 0,
    }
    fams = {f.name: f for f in families(stats)}
    assert fams["fraiseshm_worker_requests"].samples[0].value == 9
    assert fams["fraiseshm_requests"].samples[0].value == 12
    buckets = [s.value for s in fams["fraiseshm_db_execution_seconds"].samples if s.name.endswith("_bucket")]
    assert buckets == [1, 3]
    assert fams["fraiseshm_arena_blocks"].samples[0].labels == {"class_bytes": "64"}
    assert "fraiseshm_hit_ratio" not in fams  # no queries yet: no ratio rather than a fake 0
