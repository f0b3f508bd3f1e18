"""/admin/*: manual invalidation, flush, and the cascade audit trail, behind a token.

    POST /admin/invalidate  {"tags": ["r:public.tb_user:<id>"]}      those tags
                            {"type": "User"}                         w: + t: of its view's read set
                            {"key": "User:<id>"}                     r:<root table>:<id>, t:<root table>
    POST /admin/flush                                                the whole arena
    GET  /admin/audit?limit=100&failures=true                        newest records first

Every route requires ``Authorization: Bearer <admin_token>`` (compared in
constant time: hmac.compare_digest); without it or with a wrong one, 401. With
an empty admin_token the routes do not exist (404). Bodies are GraphQL-shaped:
``{"data": ...}`` or ``{"errors": [{"message", "extensions": {"code"}}]}``.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import falcon
import falcon.asgi
import msgspec

from fraiseshm.db.audit import recent
from fraiseshm.errors import NotAuthorized
from fraiseshm.http.errors import graphql_error
from fraiseshm.runtime import Runtime

log = logging.getLogger("fraiseshm.admin")

_encode = msgspec.json.Encoder().encode
MAX_BODY = 64 * 1024
MAX_TAGS = 10_000
MAX_AUDIT_LIMIT = 1000


class _InvalidateBody(msgspec.Struct, forbid_unknown_fields=True):
    tags: list[str] | None = None
    type: str | None = None
    key: str | None = None


_decode_invalidate = msgspec.json.Decoder(_InvalidateBody).decode


class _Admin:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._token = runtime.settings.admin_token.encode()

    def _authorize(self, req: falcon.asgi.Request) -> None:
        if not self._token:
            raise falcon.HTTPNotFound()
        header = req.get_header("Authorization") or ""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise NotAuthorized("admin endpoints need 'Authorization: Bearer <FRAISESHM_ADMIN_TOKEN>'")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise NotAuthorized("wrong admin token")

    @staticmethod
    def _data(resp: falcon.asgi.Response, data: Any) -> None:
        resp.status = 200
        resp.content_type = "application/json"
        resp.data = _encode({"data": data})


class InvalidateResource(_Admin):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._authorize(req)
        raw = await req.stream.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            graphql_error(resp, 413, f"admin request body above {MAX_BODY} bytes", "BODY_TOO_LARGE")
            return
        try:
            body = _decode_invalidate(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            graphql_error(resp, 400, f'expected {{"tags": [...]}}, {{"type": "T"}} or {{"key": "T:id"}}: {exc}', "BAD_REQUEST")
            return
        given = [name for name in ("tags", "type", "key") if getattr(body, name) is not None]
        if len(given) != 1:
            graphql_error(resp, 400, f"give exactly one of tags, type, key (got {given or 'none'})", "BAD_REQUEST")
            return
        # Tags name tables and keys (fraiseshm/graphql/deps.py): a type maps through its view's binding.
        entities = self.runtime.served.bindings if self.runtime.served is not None else {}
        if body.tags is not None:
            if not body.tags or len(body.tags) > MAX_TAGS or any(not t for t in body.tags):
                graphql_error(resp, 400, f"tags must be 1..{MAX_TAGS} non-empty strings", "BAD_REQUEST")
                return
            tags = sorted(set(body.tags))
        elif body.type is not None:
            if body.type not in entities:
                graphql_error(resp, 400, f"unknown type {body.type!r}; known: {sorted(entities)}", "BAD_REQUEST")
                return
            tags = sorted(entities[body.type].wide)
        else:
            typename, _, ident = (body.key or "").partition(":")
            if typename not in entities or not ident:
                graphql_error(resp, 400, f"key must be 'Type:id' with Type one of {sorted(entities)}, got {body.key!r}",
                              "BAD_REQUEST")
                return
            table = entities[typename].table
            tags = [f"r:{table}:{ident}", "t:" + table]
        arena = self.runtime.arena
        seq = arena.invalidate(tags) if arena is not None else None
        log.warning("admin: invalidated %s (seq %s)", tags, seq)
        self._data(resp, {"invalidated": tags, "seq": seq})


class FlushResource(_Admin):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._authorize(req)
        arena = self.runtime.arena
        seq = arena.flush() if arena is not None else None
        log.warning("admin: arena flushed (seq %s)", seq)
        self._data(resp, {"flushed": arena is not None, "seq": seq})


class AuditResource(_Admin):
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._authorize(req)
        try:
            limit = int(req.get_param("limit") or 100)
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_AUDIT_LIMIT:
            graphql_error(resp, 400, f"limit must be an integer in 1..{MAX_AUDIT_LIMIT}", "BAD_REQUEST")
            return
        failures = (req.get_param("failures") or "false").lower() in ("1", "true", "yes")
        writer = self.runtime.audit
        if writer is not None:
            await writer.flush()  # this worker's own pending records are visible at once
        records = await recent(self.runtime.db, limit, failures) if self.runtime.db is not None else []
        auditor = self.runtime.auditor
        window = None
        if auditor is not None:
            state = auditor.window.state()
            window = {"seconds": auditor.window.window, "mutations": state.mutations, "failures": state.failures,
                      "ratio": state.ratio, "threshold": auditor.window.threshold, "alerting": state.alerting}
        self._data(resp, {"records": records, "window": window})


def add_admin_routes(app: falcon.asgi.App, runtime: Runtime) -> None:
    app.add_route("/admin/invalidate", InvalidateResource(runtime))
    app.add_route("/admin/flush", FlushResource(runtime))
    app.add_route("/admin/audit", AuditResource(runtime))
