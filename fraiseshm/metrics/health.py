"""Health verdict and scaling advice: a pure function of measured figures and thresholds.

The thresholds are the design's breaking points: read QPS 20,000 and
mutation QPS 5,000 for one primary, a hit rate below 75 % (judged only on at
least ``min_queries`` queries in the window, Settings.health_min_queries),
the cascade failure ratio from Settings, an arena that is full and evicting,
shards wiped, the change listener absent, workers restarted. Rates need a
window: each worker keeps a small bounded ring of (monotonic time, totals)
samples, seeded when the worker starts and then one per /health call, and
compares the newest with the newest sample at least ``window`` old (or the
oldest it has): from the first second the window is real.

Every reason comes with advice an operator can act on: the setting to change
or the command to run, and the runbook page (docs/runbooks/) that says more.

    ok        serving, nothing to act on (advice may still say what comes next)
    degraded  serving, but a figure is past its threshold: reasons say which
    failing   cannot serve: database unreachable, arena unlinked

Nothing here reads a clock, the arena or the database: callers pass them in,
so tests inject figures and time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

OK, DEGRADED, FAILING = "ok", "degraded", "failing"


@dataclass(frozen=True, slots=True)
class Thresholds:
    min_hit_rate: float = 0.75  # below: look at what misses (runbook low-hit-rate)
    read_qps_limit: float = 20_000.0  # one primary's breaking point: add read replicas
    mutation_qps_limit: float = 5_000.0  # idem for writes
    near: float = 0.8  # "near" a limit = at this share of it: advice before it breaks
    fill_high: float = 0.9  # arena fill ratio above which evictions mean it is too small
    cascade_failure_ratio: float = 0.0005  # Settings.cascade_failure_threshold
    min_queries: int = 200  # no hit-rate verdict on fewer queries in the window (Settings.health_min_queries)
    restart_grace: float = 60.0  # seconds after the master's start during which a new worker is not a restart
    restart_horizon: float = 900.0  # seconds a restarted worker keeps the verdict degraded


@dataclass(frozen=True, slots=True)
class Sample:
    """What one /health call read: arena-wide totals and gauges at time t (seconds, monotonic)."""

    t: float
    totals: Mapping[str, int]
    fill_ratio: float = 0.0
    lock_wipes: int = 0
    workers: int = 0
    corruption_wipes: int = 0
    restarted_workers: int = 0  # live workers started after the master's start-up, lately (restart_horizon)
    listener: bool | None = None  # a process of this host LISTENs for changes; None: not expected

    @classmethod
    def of(cls, t: float, figures: Mapping[str, Any], *, wall: float, thresholds: Thresholds,
           listener_expected: bool = True) -> Sample:
        """wall: time.time() now (process start times are wall-clock)."""
        return cls(t, dict(figures["totals"]), figures["fill_ratio"], figures["lock_wipes"], figures["workers"],
                   figures.get("corruption_wipes", 0), restarted_workers(figures, wall, thresholds),
                   (figures.get("listener_pid") is not None) if listener_expected else None)


def restarted_workers(figures: Mapping[str, Any], wall: float, th: Thresholds) -> int:
    """Live processes started more than restart_grace after the master and less than
    restart_horizon ago: gunicorn replaced a worker that died or was killed."""
    master = figures.get("master_started_at")
    if master is None:
        return 0
    return sum(1 for p in figures["processes"]
               if p.get("started_at") is not None and p["started_at"] - master > th.restart_grace
               and wall - p["started_at"] < th.restart_horizon)


@dataclass(slots=True)
class Verdict:
    status: str
    reasons: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def http_status(self) -> int:
        # degraded still serves: a load balancer must not pull it
        return 503 if self.status == FAILING else 200

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reasons": self.reasons, "advice": self.advice, "figures": self.figures}


class SampleRing:
    """Bounded (time, totals) history of one worker; memory is O(size) forever."""

    def __init__(self, window: float = 60.0, size: int = 64, clock: Callable[[], float] | None = None) -> None:
        import time

        self.window = window
        self._clock = clock or time.monotonic
        self._samples: deque[Sample] = deque(maxlen=size)

    def now(self) -> float:
        return self._clock()

    def push(self, sample: Sample) -> Sample | None:
        """Record a sample; return the baseline to compare it with (None: first sample)."""
        baseline = None
        for old in self._samples:  # oldest first
            if sample.t - old.t >= self.window:
                baseline = old  # keep the newest one that is at least a window old
            else:
                break
        if baseline is None and self._samples:
            baseline = self._samples[0]
        # drop what no future call can use as a baseline: older than the newest window-old one
        while len(self._samples) > 1 and sample.t - self._samples[1].t >= self.window:
            self._samples.popleft()
        self._samples.append(sample)
        return baseline

    def __len__(self) -> int:
        return len(self._samples)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def assess(
    now: Sample,
    baseline: Sample | None,
    thresholds: Thresholds,
    *,
    database_error: str | None = None,
    arena_linked: bool = True,
    cache_enabled: bool = True,
) -> Verdict:
    """The verdict for figures `now`, rates measured since `baseline` (None: lifetime totals, no rates)."""
    th = thresholds
    reasons: list[str] = []
    advice: list[str] = []
    failing = False

    if database_error is not None:
        failing = True
        reasons.append(f"database unreachable: {database_error}")
        advice.append("cached reads are still served, misses and mutations fail: check that PostgreSQL runs "
                      "and accepts connections from this host at FRAISESHM_DATABASE_DSN (`pg_isready -d DSN`), "
                      "and its max_connections against workers x FRAISESHM_POOL_MAX_SIZE "
                      "(runbook docs/runbooks/database-down.md)")
    if cache_enabled and not arena_linked:
        failing = True
        reasons.append("arena unlinked from /dev/shm: new workers no longer share this cache")
        advice.append("restart the service (`systemctl restart fraiseshm`); to keep it from happening again run it "
                      "as a system user or set RemoveIPC=no in /etc/systemd/logind.conf "
                      "(runbook docs/runbooks/arena-unlinked.md)")

    base_totals: Mapping[str, int] = baseline.totals if baseline is not None else {}
    delta = {k: v - base_totals.get(k, 0) for k, v in now.totals.items()}
    dt = now.t - baseline.t if baseline is not None else 0.0
    figures: dict[str, Any] = {
        "window_seconds": round(dt, 3),
        "workers": now.workers,
        "fill_ratio": now.fill_ratio,
        "queries": delta.get("hits", 0) + delta.get("misses", 0) + delta.get("bypasses", 0),
        "mutations": delta.get("mutations", 0),
        "cascade_failures": delta.get("cascade_failures", 0),
        "evictions": delta.get("evictions", 0),
        "restarted_workers": now.restarted_workers,
        "listener": now.listener,
    }
    queries = figures["queries"]
    hit_rate = delta.get("hits", 0) / queries if queries else None
    figures["hit_rate"] = hit_rate

    if cache_enabled and hit_rate is not None and queries >= th.min_queries and hit_rate < th.min_hit_rate:
        reasons.append(f"hit rate {_pct(hit_rate)} over {queries} queries is below {_pct(th.min_hit_rate)}")
        advice.append(
            "see what misses with `fraiseshm stats` (per worker hit%, evictions, bypasses): many distinct "
            "variables of one query, short @cache(ttl:) on hot types, invalidations by frequent writes, or "
            "evictions (raise FRAISESHM_ARENA_SIZE); clients sending Cache-Control: no-cache bypass the cache "
            "only when FRAISESHM_HONOUR_NO_CACHE=true (runbook docs/runbooks/low-hit-rate.md)"
        )

    mutations = figures["mutations"]
    failures = figures["cascade_failures"]
    ratio = failures / mutations if mutations else 0.0
    figures["cascade_failure_ratio"] = ratio
    if failures and ratio > th.cascade_failure_ratio:
        reasons.append(
            f"cascade failure ratio {ratio:.4%} ({failures} of {mutations} mutations) "
            f"is above {th.cascade_failure_ratio:.4%}"
        )
        advice.append("run `fraiseshm audit --dsn DSN` to see which mutations leave changed rows out of their "
                      "cascade, then fix those PostgreSQL functions; meanwhile the cache invalidates their whole "
                      "types (correct, fewer hits) (runbook docs/runbooks/cascade-failures.md)")

    if dt > 0:
        read_qps = (delta.get("requests", 0) - mutations) / dt
        mutation_qps = mutations / dt
        evictions_per_s = figures["evictions"] / dt
        figures.update(read_qps=round(read_qps, 1), mutation_qps=round(mutation_qps, 1),
                       evictions_per_second=round(evictions_per_s, 2))
        for what, qps, limit in (("read", read_qps, th.read_qps_limit), ("mutation", mutation_qps, th.mutation_qps_limit)):
            if qps >= limit:
                reasons.append(f"{what} QPS {qps:,.0f} is above the single-primary limit {limit:,.0f}")
            if qps >= th.near * limit:
                advice.append(
                    f"{what} QPS {qps:,.0f} is near {limit:,.0f}, what one PostgreSQL primary serves: "
                    + ("add read replicas for the misses and keep FRAISESHM_COALESCE=true"
                       if what == "read" else
                       "batch writes in fewer mutations or shard the writes; replicas do not take mutations")
                    + " (runbook docs/runbooks/qps-limits.md)"
                )
        if cache_enabled and now.fill_ratio >= th.fill_high and figures["evictions"] > 0:
            reasons.append(
                f"arena {_pct(now.fill_ratio)} full and evicting {evictions_per_s:,.1f} entries/s"
            )
            advice.append("the working set does not fit: raise FRAISESHM_ARENA_SIZE (and the size of /dev/shm, "
                          "`df -h /dev/shm`) and restart; or lower FRAISESHM_DEFAULT_TTL / @cache(ttl:) of rarely read "
                          "types (runbook docs/runbooks/arena-full.md)")
    if baseline is not None:
        wiped = (now.lock_wipes - baseline.lock_wipes) + (now.corruption_wipes - baseline.corruption_wipes)
        if wiped > 0:
            reasons.append(f"{wiped} arena shard(s) wiped (a worker died holding a lock, or shared memory "
                           "was found inconsistent)")
            advice.append("look for killed or timed-out workers in the log (`journalctl -u fraiseshm | grep -i "
                          "'timeout\\|killed\\|wiped'`), then run `fraiseshm check` (runbook docs/runbooks/shard-wipe.md)")
    if now.restarted_workers:
        reasons.append(f"{now.restarted_workers} worker(s) restarted in the last {th.restart_horizon / 60:.0f} minutes")
        advice.append("find why gunicorn replaced them in the log (`journalctl -u fraiseshm | grep -i "
                      "'worker\\|timeout\\|signal'`): a timeout means a request outlived FRAISESHM_WORKER_TIMEOUT, "
                      "a SIGKILL from the kernel means memory ran out (runbook docs/runbooks/worker-restarts.md)")
    if cache_enabled and now.listener is False:
        reasons.append("no process of this host listens for changes: writes made outside the API "
                       "(plain SQL) do not invalidate the cache")
        advice.append("restart the service (`systemctl restart fraiseshm`): the first worker takes the listener "
                      "over; check FRAISESHM_LISTEN_CHANGES=true and the log for 'listener' "
                      "(runbook docs/runbooks/listener-gone.md)")

    status = FAILING if failing else (DEGRADED if reasons else OK)
    return Verdict(status, reasons, advice, figures)
