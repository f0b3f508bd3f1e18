"""The hit path before framework routing: an ASGI app in front of falcon.

    POST /graphql, a body seen before           -+
    GET  /graphql?<a query string seen before>   -+-> Accept, Content-Type, bearer token
                                                      (verified), If-None-Match
        -> service.memo_hit: the memo gives the key, arena.get(key) decides
        hit  -> raw ASGI send: the status, headers and body falcon's path sends
        else -> falcon, unchanged (the body already read is replayed to it)

Everything else goes to falcon exactly as it came: other paths and methods,
websockets, lifespan, a request the memo does not know (falcon's path fills the
memo), a miss, a mutation, a private entry for an anonymous request, an
unacceptable Accept or Content-Type, a bad token (falcon answers the 401), a
header the fast path reads that came twice, a body without Content-Length or
above the memo's limit, Cache-Control: no-cache when honoured.

Coherency is the arena's: the memo maps a request to its cache key, never to an
answer, and every hit is one ``arena.get`` that checks the entry's dependencies,
TTL and the flush sequence, as the full path does. A private entry is served
only under the scope of a token the verifier checked (its memo of verified
tokens ends at the token's ``exp``). The counters are the full path's: REQUESTS
and the arena's HITS / MISSES; a miss found here is not looked up again (the
service reads ``PROBE``), so it is counted once.

PERF: falcon builds a Request and a Response, routes, runs middleware and
encodes headers on every request; for a cached hit that is most of the
application's time (perf/bench_cache.py prints the ratio to a constant-bytes
falcon POST; the README has the profile). Here a hit is a header scan, two dict
lookups, one C call and two sends.

INVARIANT: the response is byte for byte what falcon's path sends for the same
request, header order included (tests/integration/test_fast_hit.py compares the
two for every kind of hit). A header added on falcon's path for /graphql must be
added here too: the test fails until it is.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fraiseshm.config import Settings
from fraiseshm.errors import FraiseshmError
from fraiseshm.http.graphiql import wants_html
from fraiseshm.http.graphql_resource import _response_media_type
from fraiseshm.http.request_id import request_id
from fraiseshm.identity import Verifier
from fraiseshm.runtime import Runtime
from fraiseshm.service import GRAPHQL_RESPONSE, JSON, MEMO_BODY_BYTES, PROBE, GraphQLService, Probe, Reply, RequestMeta

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROBE_SCOPE_KEY = "fraiseshm.probe"  # set by the protocol (fraiseshm/http/worker.py) when it asked the memo already
_PATHS = frozenset(("/graphql", "/graphql/"))  # falcon strips the trailing slash (app.py)
_CONTENT_TYPES = frozenset((JSON, GRAPHQL_RESPONSE))
_MEDIA = {JSON: JSON.encode(), GRAPHQL_RESPONSE: GRAPHQL_RESPONSE.encode()}

# Slots of the request headers the answer depends on.
_ACCEPT, _CONTENT_TYPE, _CONTENT_LENGTH, _AUTHORIZATION, _IF_NONE_MATCH, _REQUEST_ID, _SCOPE, _CACHE_CONTROL = range(8)


class _Replay:
    """receive() for falcon after the fast path read the body: what was read, then the rest."""

    __slots__ = ("messages", "receive")

    def __init__(self, messages: list[Message], receive: Receive) -> None:
        self.messages = messages
        self.receive = receive

    async def __call__(self) -> Message:
        if self.messages:
            return self.messages.pop(0)
        return await self.receive()


class FastHit:
    def __init__(self, app: ASGIApp, runtime: Runtime, verifier: Verifier, settings: Settings) -> None:
        self.app = app  # falcon
        self.runtime = runtime
        self.verifier = verifier  # the GraphQL resource's: one memo of verified tokens per worker
        self.vary = verifier.vary
        self.max_body = min(MEMO_BODY_BYTES, settings.max_body_bytes)
        self.request_id_name = settings.request_id_header.lower().encode("latin-1")
        self.graphiql = settings.graphiql  # GET: a browser's page is falcon's; JSON replies Vary on Accept
        wanted = {
            b"accept": _ACCEPT,
            b"content-type": _CONTENT_TYPE,
            b"content-length": _CONTENT_LENGTH,
            b"authorization": _AUTHORIZATION,
            b"if-none-match": _IF_NONE_MATCH,
            self.request_id_name: _REQUEST_ID,
        }
        if verifier.header:
            wanted[verifier.header.encode("latin-1")] = _SCOPE
        self.honour_no_cache = settings.honour_no_cache
        if self.honour_no_cache:
            wanted[b"cache-control"] = _CACHE_CONTROL
        self.wanted = wanted
        # the app is built after fork (fraiseshm/http/asgi.py): this is the worker's pid
        self.worker = [(b"x-fraiseshm-worker", str(os.getpid()).encode())] if settings.expose_worker_header else []
        self._service: GraphQLService | None = None

    def _started(self) -> GraphQLService | None:
        """The worker's service once the lifespan startup built it."""
        try:
            self._service = self.runtime.service
        except RuntimeError:
            return None
        return self._service

    # --- the synchronous core, shared by the ASGI app and the HTTP/1.1 protocol -----------

    def inspect(self, method: str, headers: list[tuple[bytes, bytes]]) -> tuple[list[bytes | None], RequestMeta] | None:
        """The request headers the answer depends on, and the request's meta; None: falcon's to answer."""
        values: list[bytes | None] = [None] * 8
        wanted = self.wanted.get
        for name, value in headers:
            slot = wanted(name)
            if slot is not None:
                if values[slot] is not None:
                    return None  # twice: falcon's joining rules decide
                values[slot] = value
        media_type = _response_media_type(_text(values[_ACCEPT]))
        if media_type is None:
            return None  # 406
        if method == "GET" and self.graphiql and wants_html(_text(values[_ACCEPT])):
            return None  # GraphiQL's page
        if method == "POST":
            content_type = (_text(values[_CONTENT_TYPE]) or "").split(";", 1)[0].strip().lower()
            if content_type not in _CONTENT_TYPES:
                return None  # 415
            length = values[_CONTENT_LENGTH]
            if length is None or not length.isdigit() or not 0 < int(length) <= self.max_body:
                return None  # falcon reads or refuses the body
        try:
            identity = self.verifier.identify(_text(values[_AUTHORIZATION]), _text(values[_SCOPE]))
        except FraiseshmError:
            return None  # 401 / 400, answered by falcon's error handlers
        no_cache = False
        if self.honour_no_cache and values[_CACHE_CONTROL] is not None:
            cache_control = values[_CACHE_CONTROL].decode("latin-1")
            no_cache = "no-cache" in cache_control or "no-store" in cache_control
        return values, RequestMeta(method=method, media_type=media_type, identity=identity, vary=self.vary,
                                   no_cache=no_cache, if_none_match=_text(values[_IF_NONE_MATCH]))

    def headers_of(self, reply: Reply, values: list[bytes | None], get: bool = False) -> list[tuple[bytes, bytes]]:
        """Falcon's headers for this hit, in falcon's order: the request id (middleware, before the
        resource), the media type, the reply's headers, the worker (middleware, after), the length."""
        headers = [
            (self.request_id_name, request_id(_text(values[_REQUEST_ID])).encode("latin-1")),
            (b"content-type", _MEDIA[reply.content_type]),
        ]
        replied = reply.headers
        if get and self.graphiql:  # as GraphQLResource.on_get: a browser gets the page at this URL
            replied = dict(replied)
            replied["Vary"] = ", ".join(filter(None, (replied.get("Vary"), "Accept")))
        headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in replied.items()]
        headers += self.worker
        if reply.status != 304:
            headers.append((b"content-length", str(len(reply.body)).encode()))
        return headers

    def service(self) -> GraphQLService | None:
        return self._service or self._started()

    # --- the ASGI app ----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in _PATHS or scope.get("root_path"):
            return await self.app(scope, receive, send)
        probe = scope.get(PROBE_SCOPE_KEY)
        if probe is not None:  # the protocol asked already (fraiseshm/http/worker.py)
            return await self._fall_through(scope, receive, send, [], probe)
        method = scope["method"]
        if method != "POST" and method != "GET":
            return await self.app(scope, receive, send)
        service = self._service or self._started()
        if service is None:
            return await self.app(scope, receive, send)
        inspected = self.inspect(method, scope["headers"])
        if inspected is None:
            return await self.app(scope, receive, send)
        values, meta = inspected
        read: list[Message] = []
        if method == "GET":
            request = scope["query_string"]
            if not request or len(request) > MEMO_BODY_BYTES:
                return await self.app(scope, receive, send)
        else:
            chunks = []
            while True:
                message = await receive()
                read.append(message)
                if message["type"] != "http.request":  # the client went away: falcon sees it too
                    return await self.app(scope, _Replay(read, receive), send)
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            request = chunks[0] if len(chunks) == 1 else b"".join(chunks)

        reply, missed = service.memo_hit(request, method == "GET", meta)
        if reply is None:
            return await self._fall_through(scope, receive, send, read,
                                            Probe(missed=missed, get_query=request if method == "GET" else None))
        await send({"type": "http.response.start", "status": reply.status, "headers": self.headers_of(reply, values, method == "GET")})
        await send({"type": "http.response.body", "body": reply.body})

    async def _fall_through(self, scope: Scope, receive: Receive, send: Send, read: list[Message], probe: Probe) -> None:
        token = PROBE.set(probe)
        try:
            await self.app(scope, _Replay(read, receive) if read else receive, send)
        finally:
            PROBE.reset(token)


def _text(value: bytes | None) -> str | None:
    """A header value as falcon's get_header gives it."""
    return value.decode("latin-1") if value is not None else None


__all__ = ["PROBE_SCOPE_KEY", "FastHit"]
