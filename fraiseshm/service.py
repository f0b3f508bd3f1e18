"""One GraphQL request from bytes to bytes: the product's request flow, without HTTP framing.

    query, hit   key -> arena.get -> the stored JSON bytes are the response body
    query, miss  coalesce (lead or wait) -> leader: S0 = current_seq -> execute
                 -> deps -> encode -> arena.put(key, body, deps, fill_seq=S0, ttl)
    mutation     PostgreSQL function (commits) -> cascade -> invalidate -> respond

The falcon resources in fraiseshm/http/ only translate HTTP to calls of
``GraphQLService.handle`` and its Reply back. Status codes follow the
GraphQL-over-HTTP specification: with ``application/json`` a well-formed
request that fails GraphQL validation still gets 200; with
``application/graphql-response+json`` it gets 400.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from graphql import ExecutionResult

from fraiseshm.arena import Arena, Counter
from fraiseshm.cascade.changes import Changes, parse_setting, verify
from fraiseshm.cascade.tags import CascadePlan, plan_invalidation, wide_tags
from fraiseshm.coalesce.coalescer import Coalescer, Filled
from fraiseshm.config import Settings
from fraiseshm.errors import CascadeError, DatabaseUnavailable, EntryTooLarge, MutationFailed
from fraiseshm.graphql.deps import Dependencies
from fraiseshm.graphql.execute import ExecutionContext, Executor, GraphQLRequestError, MutationCall, Prepared
from fraiseshm.graphql.schema import RootMutation, ServedSchema
from fraiseshm import _native
from fraiseshm.keys import base_key, scoped_key

log = logging.getLogger("fraiseshm.service")

JSON = "application/json"
GRAPHQL_RESPONSE = "application/graphql-response+json"

_encode = msgspec.json.Encoder().encode


class _PostBody(msgspec.Struct):
    query: str
    operationName: str | None = None  # noqa: N815 - wire name
    variables: dict[str, Any] | None = None
    extensions: dict[str, Any] | None = None


_decode_post = msgspec.json.Decoder(_PostBody).decode
_decode_variables = msgspec.json.Decoder(dict[str, Any] | None).decode

# Per-worker memo of request bodies already seen: body -> (prepared, variables, key base).
MEMO_BODIES = 1024  # entries, then the memo starts over
MEMO_BODY_BYTES = 4096  # larger bodies are not memoised (bounds the memo to ~4 MiB)


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class RequestMeta:
    """What the HTTP layer tells the service about a request."""

    method: str  # "GET" or "POST"
    media_type: str = JSON  # response media type chosen from Accept
    scope: str = ""  # tenant / role / user from the configured header or JWT claim
    no_cache: bool = False  # request Cache-Control: no-cache
    if_none_match: str | None = None


def _error_body(message: str, **extensions: Any) -> bytes:
    error: dict[str, Any] = {"message": message}
    if extensions:
        error["extensions"] = extensions
    return _encode({"errors": [error]})


def error_reply(status: int, message: str, media_type: str = JSON, **extensions: Any) -> Reply:
    return Reply(status, _error_body(message, **extensions), media_type)


def etag_of(body: bytes) -> str:
    # The same 64-bit hash the arena keeps as each entry's value checksum.
    return f'"{_native.hash(body):016x}"'


class GraphQLService:
    def __init__(
        self,
        settings: Settings,
        served: ServedSchema,
        executor: Executor,
        arena: Arena | None,
        *,
        coalescer: Coalescer[Reply] | None = None,
        on_cascade: Callable[[RootMutation, Any, CascadePlan, int | None, MutationCall, Changes | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.served = served
        self.executor = executor
        self.arena = arena
        self.coalescer = coalescer
        self.on_cascade = on_cascade  # audit hook: (mutation, response, plan, seq, call, changes)
        self._counted = arena if settings.stats_enabled else None  # per-request counters; failures always count
        self._posted: dict[bytes, tuple[Prepared, dict[str, Any] | None, bytes]] = {}
        self._refreshing: set[asyncio.Task[Any]] = set()  # stale-while-revalidate refreshes
        self._query_names = served.query_names
        self.rebound()

    def rebound(self) -> None:
        """The schema was (re-)bound to the database: new tags per type, new version in every key."""
        self._tables = {name: b.table for name, b in self.served.bindings.items()}  # type -> root table
        self._wide = {name: b.wide for name, b in self.served.bindings.items()}  # type -> safe wider invalidation
        self._posted.clear()  # its keys hold the old schema version
        self.executor.rebound()

    # --- entry points ---------------------------------------------------------

    async def post(self, body: bytes, meta: RequestMeta) -> Reply:
        posted = self._posted.get(body)
        if posted is not None:
            # PERF: a body seen before skips JSON decoding, parsing and key building.
            if self._counted is not None:
                self._counted.incr(Counter.REQUESTS)
            return await self._dispatch(*posted, meta)
        try:
            request = _decode_post(body)
        except msgspec.ValidationError as exc:
            return self._bad_request(f"request body is not a GraphQL request: {exc}", meta)
        except msgspec.DecodeError as exc:
            return self._bad_request(f"request body is not valid JSON: {exc}", meta)
        return await self.handle(request.query, request.operationName, request.variables, meta, body=body)

    async def get(self, params: dict[str, str], meta: RequestMeta) -> Reply:
        query = params.get("query")
        if not query:
            return self._bad_request("GET /graphql needs a 'query' parameter", meta)
        variables = None
        if params.get("variables"):
            try:
                variables = _decode_variables(params["variables"])
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return self._bad_request(f"'variables' is not a JSON object: {exc}", meta)
        return await self.handle(query, params.get("operationName") or None, variables, meta)

    async def handle(
        self,
        query: str,
        operation_name: str | None,
        variables: dict[str, Any] | None,
        meta: RequestMeta,
        body: bytes | None = None,
    ) -> Reply:
        if self._counted is not None:
            self._counted.incr(Counter.REQUESTS)
        try:
            prepared = self.executor.prepare(query, operation_name)
        except GraphQLRequestError as exc:
            log.info("rejected GraphQL document: %s", exc)
            return self._request_errors([e.formatted for e in exc.errors], meta)
        base = base_key(prepared.digest, self.served.version, variables)
        if body is not None and len(body) <= MEMO_BODY_BYTES:
            if len(self._posted) >= MEMO_BODIES:
                self._posted.clear()  # bounded: a cold restart of the memo is cheap
            self._posted[body] = (prepared, variables, base)
        return await self._dispatch(prepared, variables, base, meta)

    async def _dispatch(self, prepared: Prepared, variables: dict[str, Any] | None, base: bytes, meta: RequestMeta) -> Reply:
        if prepared.is_mutation:
            if meta.method != "POST":
                reply = error_reply(405, "mutations are only accepted over POST", meta.media_type)
                reply.headers["Allow"] = "POST"
                return reply
            return await self._mutate(prepared, variables, meta)
        return await self._query(prepared, variables, base, meta)

    # --- queries ----------------------------------------------------------------

    async def _query(self, prepared: Prepared, variables: dict[str, Any] | None, base: bytes, meta: RequestMeta) -> Reply:
        arena = self.arena
        if arena is None or meta.no_cache:
            if self._counted is not None:
                self._counted.incr(Counter.BYPASSES)
            filled = await self._execute(prepared, variables, meta, key=None)
            filled.reply.headers["X-Cache"] = "BYPASS"
            return filled.reply

        key = scoped_key(base, meta.scope)
        body = arena.get(key)
        if body is not None:
            return self._hit(body, meta)
        if self.settings.stale_while_revalidate:
            stale = arena.get_stale(key)  # TTL expired, dependencies still valid
            if stale is not None:
                self._refresh_in_background(key, prepared, variables, meta)
                reply = self._hit(stale, meta)
                reply.headers["X-Cache"] = "STALE"
                return reply
        reply = await self._fill(key, prepared, variables, meta)
        reply.headers["X-Cache"] = "MISS"
        return reply

    async def _fill(self, key: bytes, prepared: Prepared, variables: dict[str, Any] | None, meta: RequestMeta) -> Reply:
        """Execute and store, once per key per host when coalescing is on."""
        if self.coalescer is None or self.arena is None:
            return (await self._execute(prepared, variables, meta, key=key)).reply
        return await self.coalescer.fetch(
            key,
            self.arena.current_seq(),
            execute=lambda: self._execute(prepared, variables, meta, key=key),
            read=lambda: self._read(key, meta),
            failed=lambda message: self._leader_failed(message, meta),
        )

    def _refresh_in_background(self, key: bytes, prepared: Prepared, variables: dict[str, Any] | None, meta: RequestMeta) -> None:
        """One refresh per key per host: the coalescer shares it with every other request."""
        task = asyncio.get_running_loop().create_task(self._fill(key, prepared, variables, meta))
        self._refreshing.add(task)
        task.add_done_callback(self._refresh_done)

    def _refresh_done(self, task: asyncio.Task[Any]) -> None:
        self._refreshing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("stale-while-revalidate refresh failed: %s", task.exception())

    def _hit(self, body: bytes, meta: RequestMeta) -> Reply:
        etag = etag_of(body)
        headers = {"X-Cache": "HIT", "ETag": etag, "Cache-Control": self._cache_control(meta)}
        if meta.if_none_match is not None and etag in meta.if_none_match:
            return Reply(304, b"", meta.media_type, headers)
        return Reply(200, body, meta.media_type, headers)

    def _read(self, key: bytes, meta: RequestMeta) -> Reply | None:
        """A coalesced follower's answer: the leader's result, as the arena holds it now."""
        body = self.arena.get(key) if self.arena is not None else None
        if body is None:
            return None
        return Reply(200, body, meta.media_type, {"ETag": etag_of(body), "Cache-Control": self._cache_control(meta)})

    def _leader_failed(self, message: str, meta: RequestMeta) -> Reply:
        status, _, text = message.partition(" ")
        code = int(status) if status.isdigit() else 500
        return error_reply(code, text or message, meta.media_type, code="COALESCED_LEADER_FAILED")

    def _cache_control(self, meta: RequestMeta) -> str:
        # no-cache: browsers and CDNs must revalidate (ETag), since only this server
        # hears the cascades that invalidate; scoped entries are never for shared caches.
        return "private, no-cache" if meta.scope else "no-cache"

    async def _execute(self, prepared: Prepared, variables: dict[str, Any] | None, meta: RequestMeta, key: bytes | None) -> Filled[Reply]:
        """Run the query against PostgreSQL; store the result when it may be cached."""
        arena = self.arena
        fill_seq = arena.current_seq() if arena is not None else 0  # read BEFORE the database
        deps = Dependencies(self.settings.default_ttl, self.served)
        started = time.perf_counter()
        result = await self.executor.run(prepared, variables, ExecutionContext(deps=deps))
        if self._counted is not None:
            self._counted.incr(Counter.DB_EXECUTIONS)
            self._counted.observe(time.perf_counter() - started)
        reply = self._result_reply(result, meta)
        ok = reply.status == 200 and not result.errors
        if ok and key is not None and arena is not None:
            if deps.private and not meta.scope:
                log.debug("result holds a private type and the request has no scope: not cached")
            else:
                try:
                    arena.put(key, reply.body, sorted(deps.tags), fill_seq, deps.ttl)
                except EntryTooLarge:
                    log.info("response of %d bytes is above max_entry_bytes: served uncached", len(reply.body))
        if reply.status == 200:
            reply.headers["ETag"] = etag_of(reply.body)
            reply.headers["Cache-Control"] = self._cache_control(meta)
        error = ""
        if not ok:
            first = result.errors[0].message if result.errors else "request failed"
            error = f"{reply.status} {first}"
        return Filled(reply, fill_seq=fill_seq, ok=ok, error=error)

    # --- mutations --------------------------------------------------------------

    async def _mutate(self, prepared: Prepared, variables: dict[str, Any] | None, meta: RequestMeta) -> Reply:
        deps = Dependencies(self.settings.default_ttl, self.served)
        context = ExecutionContext(deps=deps, on_mutation=self._apply_cascade)
        result = await self.executor.run(prepared, variables, context)
        reply = self._result_reply(result, meta)
        reply.headers["X-Cache"] = "BYPASS"
        reply.headers["Cache-Control"] = "no-store"
        return reply

    async def _apply_cascade(self, mutation: RootMutation, response: Any, call: MutationCall) -> None:
        """Runs after the function committed and before the response is encoded.

        The cascade is checked against what the change triggers recorded in the
        same transaction (fraiseshm/cascade/changes.py), and every recorded item
        (derived parents included) is invalidated too; a failure is repaired
        here, before the response, by the wider invalidation.
        """
        plan = plan_invalidation(
            response,
            touches=mutation.touches,
            query_names=self._query_names,
            tables=self._tables,
            wide=self._wide,
        )
        changes = None
        try:
            changes = parse_setting(call.changes, call.transaction_id)
        except CascadeError as exc:
            log.error("%s: %s; invalidating its types", mutation.field, exc)
            plan.tags |= wide_tags(mutation.touches, self._wide)
        else:
            verify(plan, changes, touches=mutation.touches, tables=self._tables, wide=self._wide)
        seq = None
        arena = self.arena
        if arena is not None:
            arena.incr(Counter.MUTATIONS)
            if plan.tags:
                seq = arena.invalidate(plan.tags)
            if plan.flush:
                seq = arena.flush()
            if plan.is_failure:
                arena.incr(Counter.CASCADE_FAILURES)
        if plan.is_failure:
            log.error("cascade failure in %s (%s): %s; invalidated %s", mutation.field, plan.verdict, plan.detail, sorted(plan.tags))
        if self.on_cascade is not None:
            self.on_cascade(mutation, response, plan, seq, call, changes)

    # --- replies ------------------------------------------------------------------

    def _result_reply(self, result: ExecutionResult, meta: RequestMeta) -> Reply:
        if result.errors:
            originals = [e.original_error for e in result.errors]
            if any(isinstance(o, DatabaseUnavailable) for o in originals):
                log.error("database unavailable: %s", result.errors[0].message)
                if self.arena is not None:
                    self.arena.incr(Counter.ERRORS)
                return error_reply(503, "the database is unavailable; retry shortly", meta.media_type, code="DATABASE_UNAVAILABLE")
            for error in result.errors:
                if isinstance(error.original_error, MutationFailed):
                    log.error("%s", error.original_error)
                elif error.original_error is not None:
                    log.warning("field error: %s", error.message)
            if self.arena is not None:
                self.arena.incr(Counter.ERRORS)
            if result.data is None and all(e.path is None for e in result.errors):
                # variable coercion failed: a request error, nothing executed
                return self._request_errors([e.formatted for e in result.errors], meta)
        body = _encode(result.formatted)
        status = 200
        if meta.media_type == GRAPHQL_RESPONSE and result.data is None:
            status = 500
        return Reply(status, body, meta.media_type)

    def _request_errors(self, errors: list[dict[str, Any]], meta: RequestMeta) -> Reply:
        status = 400 if meta.media_type == GRAPHQL_RESPONSE else 200
        return Reply(status, _encode({"errors": errors}), meta.media_type)

    def _bad_request(self, message: str, meta: RequestMeta) -> Reply:
        log.info("bad request: %s", message)
        if self.arena is not None:
            self.arena.incr(Counter.ERRORS)
        return error_reply(400, message, meta.media_type, code="BAD_REQUEST")


__all__ = ["GraphQLService", "Reply", "RequestMeta", "error_reply"]
