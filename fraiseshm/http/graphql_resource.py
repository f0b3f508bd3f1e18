"""POST/GET /graphql per the GraphQL-over-HTTP specification.

Besides single requests: a POST body that is a JSON array is a batch
(fraiseshm/http/batch.py); a persisted query's hash rides in ``extensions``
(POST body or GET parameter, fraiseshm/graphql/persisted.py); a browser's GET
(Accept: text/html) gets GraphiQL (fraiseshm/http/graphiql.py) unless the
``graphiql`` setting is off.
"""

from __future__ import annotations

import time
from typing import Any

import falcon
import falcon.asgi

from fraiseshm.errors import BodyTooLarge
from fraiseshm.http import batch
from fraiseshm.http.errors import graphql_error
from fraiseshm.http.graphiql import GraphiQL, wants_html
from fraiseshm.identity import Verifier
from fraiseshm.runtime import Runtime
from fraiseshm.service import GRAPHQL_RESPONSE, JSON, Reply, RequestMeta

_ACCEPTABLE = (GRAPHQL_RESPONSE, JSON)


def _response_media_type(accept: str | None) -> str | None:
    """GRAPHQL_RESPONSE or JSON; None when the client accepts neither (406)."""
    if not accept:
        return JSON
    best = None
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media == GRAPHQL_RESPONSE:
            return GRAPHQL_RESPONSE
        if media in (JSON, "*/*", "application/*") and best is None:
            best = JSON
    return best


class GraphQLResource:
    def __init__(self, runtime: Runtime, graphiql: GraphiQL | None = None) -> None:
        self.runtime = runtime
        self.graphiql = graphiql  # None: the setting is off, a browser's GET is answered as any GET
        settings = runtime.settings
        self.max_batch = settings.max_batch_size
        self.max_body = settings.max_body_bytes
        self.request_timeout = settings.request_timeout
        self.verifier = Verifier(settings)
        self.scope_header = self.verifier.header
        self.honour_no_cache = settings.honour_no_cache

    def _meta(self, req: falcon.asgi.Request, method: str) -> RequestMeta | None:
        media_type = _response_media_type(req.get_header("Accept"))
        if media_type is None:
            return None
        deadline = time.monotonic() + self.request_timeout
        # Unauthenticated (401) or a RequestError (400) for a bad token propagate to http/errors.py.
        identity = self.verifier.identify(
            req.get_header("Authorization"), req.get_header(self.scope_header) if self.scope_header else None
        )
        no_cache = False
        if self.honour_no_cache:
            cache_control = req.get_header("Cache-Control") or ""
            no_cache = "no-cache" in cache_control or "no-store" in cache_control
        return RequestMeta(
            method=method,
            media_type=media_type,
            identity=identity,
            vary=self.verifier.vary,
            no_cache=no_cache,
            if_none_match=req.get_header("If-None-Match"),
            deadline=deadline,
        )

    async def _read_body(self, req: falcon.asgi.Request) -> bytes:
        length = req.content_length
        if length is not None and length > self.max_body:
            raise BodyTooLarge(f"request body is {length} bytes; the limit is {self.max_body} (FRAISESHM_MAX_BODY_BYTES)")
        body = await req.stream.read(self.max_body + 1)
        if len(body) > self.max_body:
            raise BodyTooLarge(f"request body is over the limit of {self.max_body} bytes (FRAISESHM_MAX_BODY_BYTES)")
        return body

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        meta = self._meta(req, "POST")
        if meta is None:
            return graphql_error(resp, 406, f"Accept must allow {GRAPHQL_RESPONSE} or {JSON}", "NOT_ACCEPTABLE")
        content_type = (req.content_type or "").split(";", 1)[0].strip().lower()
        if content_type not in (JSON, GRAPHQL_RESPONSE):
            return graphql_error(resp, 415, f"Content-Type must be {JSON}, got {content_type or 'none'}", "UNSUPPORTED_MEDIA_TYPE")
        body = await self._read_body(req)
        if batch.is_batch(body):
            return _send(resp, await batch.answer(self.runtime.service, body, meta, self.max_batch))
        _send(resp, await self.runtime.service.post(body, meta))

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if self.graphiql is not None and wants_html(req.get_header("Accept")):
            return self.graphiql.serve_page(resp)
        meta = self._meta(req, "GET")
        if meta is None:
            return graphql_error(resp, 406, f"Accept must allow {GRAPHQL_RESPONSE} or {JSON}", "NOT_ACCEPTABLE")
        params: dict[str, Any] = {k: v if isinstance(v, str) else v[-1] for k, v in req.params.items()}
        reply = await self.runtime.service.get(params, meta)
        if self.graphiql is not None:  # a browser gets the page at this URL: shared caches must tell them apart
            reply.headers["Vary"] = ", ".join(filter(None, (reply.headers.get("Vary"), "Accept")))
        _send(resp, reply)


def _send(resp: falcon.asgi.Response, reply: Reply) -> None:
    resp.status = reply.status
    resp.content_type = reply.content_type
    if reply.headers:
        resp.set_headers(reply.headers)
    if reply.status != 304:
        resp.data = reply.body
