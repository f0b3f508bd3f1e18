"""GET /metrics: Prometheus exposition of every process's figures, read from the arena.

Any worker answers for the whole host (the stats slots are shared), so a
scrape that lands on one worker still sees all of them. prometheus_client
chooses the format from Accept (text 0.0.4 or OpenMetrics) and encodes it.
Each scrape pings PostgreSQL first (fraiseshm_database_up): the alert on an
unreachable database needs no other exporter.
"""

from __future__ import annotations

import falcon.asgi
from prometheus_client.exposition import choose_encoder

from fraiseshm.metrics.collector import registry_for
from fraiseshm.push.metrics import PushCollector
from fraiseshm.runtime import Runtime, push_gauge_prefix


class MetricsResource:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._database_up: bool | None = None
        s = runtime.settings
        self.registry = registry_for(lambda: runtime.arena, listener_expected=s.listen_changes and s.cache_enabled,
                                     database_up=lambda: self._database_up,
                                     cascade_failure_threshold=s.cascade_failure_threshold)
        self.registry.register(PushCollector(lambda: runtime.push_hub, push_gauge_prefix(runtime.settings)))

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        db = self.runtime.db
        self._database_up = None if db is None else await db.ping()
        # A scrape reads ~256 slots and takes each shard lock once, briefly: well
        # under a millisecond, so it runs on the event loop rather than a thread.
        encoder, content_type = choose_encoder(req.get_header("Accept") or "")
        resp.data = encoder(self.registry)
        resp.content_type = content_type
        resp.cache_control = ["no-store"]
