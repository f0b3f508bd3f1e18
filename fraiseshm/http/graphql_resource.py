"""POST/GET /graphql per the GraphQL-over-HTTP specification."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import falcon
import falcon.asgi
import msgspec

from fraiseshm.errors import BodyTooLarge, RequestError
from fraiseshm.http.errors import graphql_error
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


def _jwt_claim(authorization: str | None, claim: str) -> str:
    """The claim of a bearer JWT's payload. The signature is NOT checked here:
    the gateway in front of fraiseshm must verify tokens (docs/ARCHITECTURE.md)."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return ""
    parts = authorization[7:].strip().split(".")
    if len(parts) != 3:
        raise RequestError("Authorization bearer token is not a JWT")
    try:
        payload = msgspec.json.decode(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise RequestError("Authorization bearer token has an unreadable payload") from None
    value = payload.get(claim, "") if isinstance(payload, dict) else ""
    return str(value)


class GraphQLResource:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.max_body = settings.max_body_bytes
        self.scope_header = settings.scope_header
        self.scope_claim = settings.scope_jwt_claim

    def _meta(self, req: falcon.asgi.Request, method: str) -> RequestMeta | None:
        media_type = _response_media_type(req.get_header("Accept"))
        if media_type is None:
            return None
        scope = ""
        if self.scope_header:
            scope = req.get_header(self.scope_header) or ""
        if self.scope_claim:
            claim = _jwt_claim(req.get_header("Authorization"), self.scope_claim)
            scope = f"{scope}|{claim}" if scope else claim
        cache_control = req.get_header("Cache-Control") or ""
        return RequestMeta(
            method=method,
            media_type=media_type,
            scope=scope,
            no_cache="no-cache" in cache_control or "no-store" in cache_control,
            if_none_match=req.get_header("If-None-Match"),
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
        _send(resp, await self.runtime.service.post(body, meta))

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        meta = self._meta(req, "GET")
        if meta is None:
            return graphql_error(resp, 406, f"Accept must allow {GRAPHQL_RESPONSE} or {JSON}", "NOT_ACCEPTABLE")
        params: dict[str, Any] = {k: v if isinstance(v, str) else v[-1] for k, v in req.params.items()}
        _send(resp, await self.runtime.service.get(params, meta))


def _send(resp: falcon.asgi.Response, reply: Reply) -> None:
    resp.status = reply.status
    resp.content_type = reply.content_type
    if reply.headers:
        resp.set_headers(reply.headers)
    if reply.status != 304:
        resp.data = reply.body
