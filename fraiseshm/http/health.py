"""GET /health: is this worker able to serve? (scaling advice comes with the metrics.)"""

from __future__ import annotations

import falcon.asgi
import msgspec

from fraiseshm.runtime import Runtime


class HealthResource:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def on_get(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        db = self.runtime.db
        reasons = []
        if db is None or not await db.ping():
            reasons.append(f"database unreachable: {db.last_error if db else 'not started'}")
        status = "failing" if reasons else "ok"
        resp.status = 503 if reasons else 200
        resp.content_type = "application/json"
        resp.data = msgspec.json.encode({"status": status, "reasons": reasons})
