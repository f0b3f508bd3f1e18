"""GET /health: ok / degraded / failing, with reasons and scaling advice.

The verdict is fraiseshm.metrics.health.assess() over the arena's host-wide
figures; rates come from this worker's bounded ring of earlier /health reads
(the first call after start has no rates, only lifetime ratios). 200 for ok
and degraded (still serving), 503 for failing.
"""

from __future__ import annotations

import falcon.asgi
import msgspec

from fraiseshm.metrics import figures
from fraiseshm.metrics.health import DEGRADED, OK, Sample, SampleRing, Thresholds, Verdict, assess
from fraiseshm.db.replicas import ReplicaSet
from fraiseshm.runtime import Runtime


class HealthResource:
    def __init__(self, runtime: Runtime, ring: SampleRing | None = None) -> None:
        self.runtime = runtime
        self.ring = ring or SampleRing()

    async def on_get(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        rt = self.runtime
        db = rt.db
        db_error = None
        if db is None or not await db.ping():
            db_error = db.last_error if db is not None else "worker not started"
        arena = rt.arena
        linked = True
        figs = None
        if arena is not None and hasattr(arena, "stats"):  # perf/ stores without stats have none
            figs = figures.read(arena)
            linked = figs["linked"]
        th = Thresholds(cascade_failure_ratio=rt.settings.cascade_failure_threshold)
        if figs is not None:
            sample = Sample.of(self.ring.now(), figs)
            verdict = assess(sample, self.ring.push(sample), th, database_error=db_error, arena_linked=linked)
        else:
            verdict = assess(Sample(self.ring.now(), {}), None, th, database_error=db_error, cache_enabled=False)
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
