"""A prometheus_client custom collector that reads the arena on every scrape.

No per-pid files, no PROMETHEUS_MULTIPROC_DIR: the arena's stats slots are
the shared store, so any worker (or the CLI) answers for every process on the
host. prometheus_client does the text exposition.

Families, by name (exposition adds ``_total`` to counters):

    fraiseshm_worker_<counter>_total{worker="<pid>"}   per live process
    fraiseshm_<counter>_total                          host totals: live + reaped
    fraiseshm_worker_db_execution_seconds{worker=...}  histogram per process
    fraiseshm_db_execution_seconds                     histogram, host
    fraiseshm_worker_hit_ratio{worker}, fraiseshm_hit_ratio, fraiseshm_worker_cpu_seconds_total{worker}
    fraiseshm_arena_*                                  size, used, fill, entries, sequence, ...
    fraiseshm_worker_start_time_seconds{worker}, fraiseshm_master_start_time_seconds
                                                       a worker much younger than its master was restarted
    fraiseshm_listener_up                              1 while a process of the host holds the listener
                                                       election (absent when listen_changes is off)
    fraiseshm_listener_lag_seconds (summary), fraiseshm_listener_last_lag_seconds
                                                       change notification -> invalidation, host-wide
    fraiseshm_database_up                              the answering worker's ping of PostgreSQL
    fraiseshm_cascade_failure_threshold                Settings.cascade_failure_threshold, for alert rules

deploy/prometheus/ alerts on these names and deploy/grafana/ charts them; a
test checks every name there against a live server's /metrics.

Per-process counters of a worker that exited vanish with it (Prometheus's
rate() handles a series that ends); its counts stay in the host totals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from fraiseshm.arena import Arena, Counter
from fraiseshm.metrics import figures as _figures

_HELP = {
    Counter.REQUESTS: "GraphQL requests received",
    Counter.HITS: "arena lookups answered from the cache",
    Counter.MISSES: "arena lookups that missed",
    Counter.BYPASSES: "queries that skipped the cache (Cache-Control: no-cache)",
    Counter.PUTS: "entries stored",
    Counter.PUT_REJECTED_STALE: "puts refused because a dep was invalidated during the fill",
    Counter.EVICTIONS: "entries evicted to make room",
    Counter.INVALIDATIONS: "invalidate calls",
    Counter.TAGS_BUMPED: "tags raised by invalidations",
    Counter.LOCK_WIPES: "shards wiped after a lock holder died",
    Counter.ENTRY_TOO_LARGE: "responses above max_entry_bytes, served uncached",
    Counter.COALESCE_LED: "coalesced flights led",
    Counter.COALESCE_FOLLOWED: "requests that followed another's flight",
    Counter.COALESCE_TAKEOVERS: "flights taken over from a dead or late leader",
    Counter.COALESCE_TIMEOUTS: "followers that gave up waiting",
    Counter.DB_EXECUTIONS: "queries executed against PostgreSQL",
    Counter.MUTATIONS: "mutations executed",
    Counter.CASCADE_FAILURES: "mutations whose cascade was missing or malformed",
    Counter.ERRORS: "requests answered with an error",
    Counter.STALE_HITS: "stale entries served (stale-while-revalidate)",
    Counter.CHECKSUM_FAILURES: "entries whose checksum did not verify (never served)",
    Counter.FLUSHES: "arena flushes",
    Counter.BYTES_READ: "bytes served from the arena",
    Counter.BYTES_WRITTEN: "bytes stored in the arena",
    Counter.CORRUPTION_WIPES: "arena shards wiped after an inconsistency was found in shared memory",
}
assert set(_HELP) == set(Counter)


def _histogram(name: str, doc: str, labels: list[str], values: list[str], latency: dict[str, Any],
               family: HistogramMetricFamily | None = None) -> HistogramMetricFamily:
    family = family or HistogramMetricFamily(name, doc, labels=labels)
    buckets, running = [], 0
    for bound, n in zip([*latency["bounds_seconds"], float("inf")], latency["counts"], strict=True):
        running += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    family.add_metric(values, buckets, latency["sum_seconds"])
    return family


def families(stats: dict[str, Any]) -> Iterator[Metric]:
    """Metric families for one figures.read() result (pure: unit tests feed it dicts)."""
    procs = stats["processes"]
    for c in Counter:
        key = c.name.lower()
        per = CounterMetricFamily(f"fraiseshm_worker_{key}", _HELP[c] + ", per live process", labels=["worker"])
        for p in procs:
            per.add_metric([str(p["pid"])], p["counters"][key])
        yield per
        yield CounterMetricFamily(f"fraiseshm_{key}", _HELP[c] + ", all processes past and present",
                                  value=stats["totals"][key])
    doc = "latency of database executions (query misses and bypasses)"
    per_h = HistogramMetricFamily("fraiseshm_worker_db_execution_seconds", doc + ", per live process", labels=["worker"])
    for p in procs:
        _histogram("", "", [], [str(p["pid"])], p["latency"], per_h)
    yield per_h
    yield _histogram("fraiseshm_db_execution_seconds", doc + ", all processes", [], [], stats["latency"])

    start = GaugeMetricFamily("fraiseshm_worker_start_time_seconds", "process start, seconds since the epoch",
                              labels=["worker"])
    for p in procs:
        if p.get("started_at") is not None:
            start.add_metric([str(p["pid"])], p["started_at"])
    yield start
    if stats.get("master_started_at") is not None:
        yield GaugeMetricFamily("fraiseshm_master_start_time_seconds",
                                "start of the processes' common parent (the gunicorn master), seconds since the epoch",
                                value=stats["master_started_at"])
    heard = stats.get("listener")
    if heard is None and stats.get("listener_pid") is not None:  # elected, nothing heard yet
        heard = {"heard": 0, "lag_sum_seconds": 0.0, "last_lag_seconds": 0.0}
    if heard is not None:
        yield SummaryMetricFamily("fraiseshm_listener_lag_seconds",
                                  "seconds from a change's trigger to its invalidation, verified notifications",
                                  count_value=heard["heard"], sum_value=heard["lag_sum_seconds"])
        yield GaugeMetricFamily("fraiseshm_listener_last_lag_seconds", "lag of the latest change notification",
                                value=heard["last_lag_seconds"])
    ratio = GaugeMetricFamily("fraiseshm_worker_hit_ratio", "hits / (hits + misses + bypasses), per live process",
                              labels=["worker"])
    cpu = CounterMetricFamily("fraiseshm_worker_cpu_seconds", "user + system CPU of the process", labels=["worker"])
    for p in procs:
        if p.get("hit_rate") is not None:
            ratio.add_metric([str(p["pid"])], p["hit_rate"])
        if p.get("cpu_seconds") is not None:
            cpu.add_metric([str(p["pid"])], p["cpu_seconds"])
    yield ratio
    yield cpu
    if stats.get("hit_rate") is not None:
        yield GaugeMetricFamily("fraiseshm_hit_ratio", "hits / (hits + misses + bypasses), all processes",
                                value=stats["hit_rate"])
    yield GaugeMetricFamily("fraiseshm_workers", "live processes with a stats slot", value=stats["workers"])
    archived = CounterMetricFamily("fraiseshm_archived_requests", "requests counted by processes that exited",
                                   value=stats["archived"]["requests"])
    yield archived

    for name, doc, key in (
        ("size_bytes", "segment size", "size"),
        ("capacity_bytes", "bytes of entry pages", "capacity_bytes"),
        ("used_bytes", "bytes in live entries", "used_bytes"),
        ("fill_ratio", "used / capacity", "fill_ratio"),
        ("entries", "live entries", "entries"),
        ("max_entry_bytes", "largest value accepted", "max_entry"),
        ("shards", "index lock stripes", "shards"),
        ("sequence", "global invalidation sequence", "global_seq"),
        ("valid_from", "sequence set by the last flush", "valid_from"),
        ("oldest_entry_age_seconds", "age of the oldest live entry", "oldest_entry_age_seconds"),
        ("linked", "1 while the segment's name is in /dev/shm", "linked"),
    ):
        yield GaugeMetricFamily(f"fraiseshm_arena_{name}", doc, value=float(stats[key]))
    per_class = GaugeMetricFamily("fraiseshm_arena_blocks", "live blocks per size class", labels=["class_bytes"])
    for size, n in sorted(stats["blocks_per_class"].items()):
        per_class.add_metric([str(size)], n)
    yield per_class
    yield CounterMetricFamily("fraiseshm_arena_lock_wipes", "shards wiped (header count)", value=stats["lock_wipes"])
    yield CounterMetricFamily("fraiseshm_arena_checksum_failures", "checksum failures (header count)",
                              value=stats["checksum_failures"])


class ArenaCollector(Collector):
    """Reads the arena at scrape time; ``arena`` is a callable so a worker can pass its current one.

    listener_expected: Settings.listen_changes (no fraiseshm_listener_up otherwise);
    database_up: the answering worker's last ping (None: not measured, no series);
    cascade_failure_threshold: exported so alert rules follow the configured value."""

    def __init__(self, arena: Callable[[], Arena | None], *, listener_expected: bool = True,
                 database_up: Callable[[], bool | None] = lambda: None,
                 cascade_failure_threshold: float | None = None) -> None:
        self._arena = arena
        self._listener_expected = listener_expected
        self._database_up = database_up
        self._cascade_failure_threshold = cascade_failure_threshold

    def collect(self) -> Iterator[Metric]:
        arena = self._arena()
        yield GaugeMetricFamily("fraiseshm_cache_enabled", "1 when the shared arena is attached",
                                value=0.0 if arena is None else 1.0)
        up = self._database_up()
        if up is not None:
            yield GaugeMetricFamily("fraiseshm_database_up", "1 when the answering worker reached PostgreSQL",
                                    value=1.0 if up else 0.0)
        if self._cascade_failure_threshold is not None:
            yield GaugeMetricFamily("fraiseshm_cascade_failure_threshold",
                                    "cascade failures per mutation above which fraiseshm alerts (setting)",
                                    value=self._cascade_failure_threshold)
        if arena is not None:
            stats = _figures.read(arena)
            yield from families(stats)
            if self._listener_expected:
                yield GaugeMetricFamily("fraiseshm_listener_up",
                                        "1 while a process of this host holds the change listener election",
                                        value=0.0 if stats.get("listener_pid") is None else 1.0)


def registry_for(arena: Callable[[], Arena | None], **options: Any) -> CollectorRegistry:
    """A private registry (not the global one) holding only the arena collector (options: ArenaCollector's)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ArenaCollector(arena, **options))
    return registry
