"""GET /health: ok / degraded / failing, with reasons and advice an operator can act on.

The verdict is fraiseshm.metrics.health.assess() over the arena's host-wide
figures; rates come from this worker's bounded ring of samples, seeded at the
worker's start (so the first call already measures a real window) and then
one per /health read. 200 for ok and degraded (still serving), 503 for failing.
"""

from __future__ import annotations

import time
from typing import Any

import falcon.asgi
import msgspec

from fraiseshm.db.replicas import ReplicaSet
from fraiseshm.metrics import figures
from fraiseshm.metrics.health import DEGRADED, OK, Sample, SampleRing, Thresholds, Verdict, assess
from fraiseshm.runtime import Runtime


class HealthResource:
    """Also a falcon middleware: process_startup seeds the ring once the worker's runtime started."""

    def __init__(self, runtime: Runtime, ring: SampleRing | None = None) -> None:
        self.runtime = runtime
        self.ring = ring if ring is not None else SampleRing()  # an empty ring is falsy (__len__)
        s = runtime.settings
        self.thresholds = Thresholds(cascade_failure_ratio=s.cascade_failure_threshold,
                                     min_queries=s.health_min_queries)

    def _figures(self) -> dict[str, Any] | None:
        arena = self.runtime.arena
        if arena is not None and hasattr(arena, "stats"):  # perf/ stores without stats have none
            return figures.read(arena)
        return None

    def _sample(self, figs: dict[str, Any] | None) -> Sample:
        if figs is None:
            return Sample(self.ring.now(), {})
        return Sample.of(self.ring.now(), figs, wall=time.time(), thresholds=self.thresholds,
                         listener_expected=self.runtime.settings.listen_changes)

    async def process_startup(self, _scope: dict[str, Any], _event: dict[str, Any]) -> None:
        self.ring.push(self._sample(self._figures()))

    async def on_get(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        rt = self.runtime
        db = rt.db
        db_error = None
        if db is None or not await db.ping():
            db_error = db.last_error if db is not None else "worker not started"
        figs = self._figures()
        sample = self._sample(figs)
        if figs is not None:
            verdict = assess(sample, self.ring.push(sample), self.thresholds, database_error=db_error,
                             arena_linked=figs["linked"])
        else:
            verdict = assess(sample, self.ring.push(sample), self.thresholds, database_error=db_error,
                             cache_enabled=False)
        if rt.replicas is not None:
            _replica_section(verdict, rt.replicas)
        resp.status = verdict.http_status
        resp.content_type = "application/json"
        resp.cache_control = ["no-store"]
        resp.data = msgspec.json.encode(verdict.as_dict())


def _replica_section(verdict: Verdict, replicas: ReplicaSet) -> None:
    """Each replica's state and lag (this worker's checks), misses by where they were
    read (host-wide), and what the figures advise; no replica in rotation is degraded."""
    described = replicas.describe()
    reasons, advice = replicas.advice(described)
    verdict.figures["replicas"] = described
    verdict.advice.extend(advice)
    if reasons:
        verdict.reasons.extend(reasons)
        if verdict.status == OK:
            verdict.status = DEGRADED
