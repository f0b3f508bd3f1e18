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
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import msgspec
from graphql import ExecutionResult, GraphQLError

from fraiseshm.arena import Arena, Counter
from fraiseshm.arena.handled import HandledTransactions
from fraiseshm.cascade import spec
from fraiseshm.cascade.changes import Changes, parse_setting, verify
from fraiseshm.cascade.tags import CascadePlan, plan_invalidation, wide_tags
from fraiseshm.coalesce.coalescer import Coalescer, Filled
from fraiseshm.config import Settings
from fraiseshm.db.lsn import UNKNOWN
from fraiseshm.db.pool import ReadRoute, RequestSession, current_route, current_session
from fraiseshm.db.replicas import C_BEHIND, C_PRIMARY, C_REPLICA, C_WAITED, ReplicaSet
from fraiseshm.errors import (
    CascadeError,
    DatabaseError,
    DatabaseUnavailable,
    EntryTooLarge,
    JSONTooDeep,
    LimitExceeded,
    MutationFailed,
    PersistedQueryError,
    RequestTimeout,
)
from fraiseshm.graphql.deps import Dependencies, list_fallback
from fraiseshm.graphql.hints import query_hints
from fraiseshm.graphql.execute import ExecutionContext, Executor, GraphQLRequestError, MutationCall, Prepared
from fraiseshm.graphql.limits import fanout
from fraiseshm.graphql.persisted import PersistedQueries
from fraiseshm.graphql.schema import RootMutation, ServedSchema
from fraiseshm import _native, jsondepth
from fraiseshm.identity import ANONYMOUS, Identity
from fraiseshm.keys import base_key, scoped_key, used_variables

log = logging.getLogger("fraiseshm.service")

JSON = "application/json"
GRAPHQL_RESPONSE = "application/graphql-response+json"

_encode = msgspec.json.Encoder().encode


class _PostBody(msgspec.Struct):
    query: str | None = None  # None: a persisted query names it (extensions.persistedQuery)
    operationName: str | None = None  # noqa: N815 - wire name
    variables: dict[str, Any] | None = None
    extensions: dict[str, Any] | None = None


_decode_post = msgspec.json.Decoder(_PostBody).decode
_decode_variables = msgspec.json.Decoder(dict[str, Any] | None).decode

# Per-worker memo of requests already seen: POST body or GET query string -> (prepared,
# variables, key base). It holds parsed documents too (up to ~160 B per byte of text), so
# it is bounded in bytes. The memo never holds an answer: every use asks the arena.
MEMO_BODIES = 1024  # entries (POST and GET together), then the memo starts over
MEMO_BODY_BYTES = 4096  # larger bodies and query strings are not memoised
MEMO_TOTAL_BYTES = 256 * 1024  # their bytes, then the memo starts over (documents: <= ~40 MiB)
OFFLOAD_QUERY_BYTES = 2048  # documents above this are compiled off the event loop
OFFLOAD_BODY_BYTES = 64 * 1024  # bodies above this are decoded off the event loop


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    statuses: tuple[int, int] | None = None  # (for JSON, for GRAPHQL_RESPONSE) when they differ


@dataclass(slots=True)
class RequestMeta:
    """What the HTTP layer tells the service about a request."""

    method: str  # "GET" or "POST"
    media_type: str = JSON  # response media type chosen from Accept
    identity: Identity = ANONYMOUS  # verified (fraiseshm/identity.py); its scope keys private entries
    vary: str = ""  # the request headers a private reply depends on (Authorization, the scope header)
    no_cache: bool = False  # request Cache-Control: no-cache
    if_none_match: str | None = None
    deadline: float = 0.0  # time.monotonic() by which the database work must be done; 0 = none


@dataclass(slots=True)
class Probe:
    """What the fast path (fraiseshm/http/fast_hit.py) tells the full path of the same request."""

    missed: bytes | None = None  # the arena key it just looked up in vain: not looked up (nor counted) twice
    get_query: bytes | None = None  # a GET's raw query string: memoise the request under it


# Set by the fast path around its call into falcon, read by this request's service calls
# (the same task): the HTTP resources in between need not know about it.
PROBE: ContextVar[Probe | None] = ContextVar("fraiseshm_probe", default=None)

_Memoised = tuple[Prepared, dict[str, Any] | None, bytes]  # (prepared, variables, key base)


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
        persisted: PersistedQueries | None = None,
        replicas: ReplicaSet | None = None,
        handled: HandledTransactions | None = None,
    ) -> None:
        self.handled = handled  # mutations' transactions, so the listener does not invalidate them again
        self.replicas = replicas if replicas is not None and replicas.board is not None else None  # misses may read them
        self.settings = settings
        self.served = served
        self.executor = executor
        self.arena = arena
        self.coalescer = coalescer
        self.on_cascade = on_cascade  # audit hook: (mutation, response, plan, seq, call, changes)
        self.persisted = persisted or PersistedQueries(
            arena, automatic=settings.automatic_persisted_queries, ttl=settings.default_ttl)
        self._counted = arena if settings.stats_enabled else None  # per-request counters; failures always count
        self._posted: dict[bytes, _Memoised] = {}  # POST body -> request
        self._gotten: dict[bytes, _Memoised] = {}  # GET query string -> request (filled when PROBE asks)
        self._memo_bytes = 0
        # One thread: large documents and bodies are compiled one at a time, off the loop.
        self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fraiseshm-compile")
        self._refreshing: set[asyncio.Task[Any]] = set()  # stale-while-revalidate refreshes
        self._query_names = served.query_names
        self._cascade_limits = spec.Limits(settings.cascade_max_updated, settings.cascade_max_deleted,
                                           settings.cascade_max_bytes, settings.cascade_max_invalidations)
        self.rebound()

    def rebound(self) -> None:
        """The schema was (re-)bound to the database: new tags per type, new version in every key."""
        self._tables = {name: b.table for name, b in self.served.bindings.items()}  # type -> root table
        self._wide = {name: b.wide for name, b in self.served.bindings.items()}  # type -> safe wider invalidation
        self._forget()  # its keys hold the old schema version
        self.executor.rebound()

    def close(self) -> None:
        self._compiler.shutdown(wait=False, cancel_futures=True)

    # --- entry points ---------------------------------------------------------

    async def post(self, body: bytes, meta: RequestMeta) -> Reply:
        posted = self._posted.get(body)
        if posted is not None:
            # PERF: a body seen before skips JSON decoding, parsing and key building.
            if self._counted is not None:
                self._counted.incr(Counter.REQUESTS)
            return await self._dispatch(*posted, meta)
        try:
            if len(body) > OFFLOAD_BODY_BYTES:
                request = await asyncio.get_running_loop().run_in_executor(self._compiler, self._decode, body)
            else:
                request = self._decode(body)
        except JSONTooDeep as exc:
            return self._bad_request(str(exc), meta)
        except msgspec.ValidationError as exc:
            return self._bad_request(f"request body is not a GraphQL request: {exc}", meta)
        except msgspec.DecodeError as exc:
            return self._bad_request(f"request body is not valid JSON: {exc}", meta)
        return await self.handle(request.query, request.operationName, request.variables, meta, body=body,
                                 extensions=request.extensions)

    def _decode(self, body: bytes) -> _PostBody:
        depth = self.settings.max_json_depth
        request = jsondepth.decode(_decode_post, body, "request body", depth)
        jsondepth.check_depth(request.variables, "variables", depth)
        jsondepth.check_depth(request.extensions, "extensions", depth)
        return request

    async def get(self, params: dict[str, str], meta: RequestMeta) -> Reply:
        query = params.get("query")
        if not query and not params.get("extensions"):
            return self._bad_request("GET /graphql needs a 'query' parameter", meta)
        decoded: dict[str, dict[str, Any] | None] = {"variables": None, "extensions": None}
        for name in decoded:
            if params.get(name):
                try:
                    decoded[name] = jsondepth.decode(_decode_variables, params[name], name, self.settings.max_json_depth)
                except JSONTooDeep as exc:
                    return self._bad_request(str(exc), meta)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    return self._bad_request(f"'{name}' is not a JSON object: {exc}", meta)
        probe = PROBE.get()
        return await self.handle(query, params.get("operationName") or None, decoded["variables"], meta,
                                 extensions=decoded["extensions"], get_query=probe.get_query if probe is not None else None)

    async def handle(
        self,
        query: str | None,  # None or "": a persisted query's hash names it (extensions)
        operation_name: str | None,
        variables: dict[str, Any] | None,
        meta: RequestMeta,
        body: bytes | None = None,
        extensions: dict[str, Any] | None = None,
        get_query: bytes | None = None,
    ) -> Reply:
        if self._counted is not None:
            self._counted.incr(Counter.REQUESTS)
        try:  # the text to run: the request's own, or the one its persistedQuery hash names
            resolved = self.persisted.resolve(query, extensions)
        except PersistedQueryError as exc:
            return self._persisted_error(exc, meta)
        query = resolved.query
        try:
            prepared = self.executor.cached(query, operation_name)
            if prepared is None:
                if len(query) > OFFLOAD_QUERY_BYTES:
                    # PERF: a large document is compiled in a thread: the event loop keeps
                    # serving (the GIL is handed back every few ms) while it parses.
                    compiled = await asyncio.get_running_loop().run_in_executor(
                        self._compiler, self.executor.compile, query, operation_name)
                else:
                    compiled = self.executor.compile(query, operation_name)
                prepared = self.executor.remember(compiled)
        except GraphQLRequestError as exc:
            log.info("rejected GraphQL document: %s", exc)
            return self._request_errors([e.formatted for e in exc.errors], meta)
        if resolved.register is not None:  # verified, and compiled: every worker may run it now
            self.persisted.register(resolved.register, query)
        variables = used_variables(variables, prepared.variable_names)
        if prepared.cost is not None and prepared.cost.variable_pages:
            try:  # page sizes given as variables: the fan-out limit is checked with their values
                fanout(self.served.schema, prepared.document, prepared.operation, variables, self.executor.limits)
            except LimitExceeded as exc:
                log.info("rejected GraphQL request: %s", exc)
                return self._request_errors([{"message": str(exc), "extensions": {"code": "LIMIT_EXCEEDED", "limit": exc.setting}}], meta)
        base = base_key(prepared.digest, self.served.version, variables)
        if body is not None:
            self._remember(self._posted, body, (prepared, variables, base))
        elif get_query is not None:
            self._remember(self._gotten, get_query, (prepared, variables, base))
        return await self._dispatch(prepared, variables, base, meta)

    # --- the memo and the fast path's hit ---------------------------------------

    def _remember(self, memo: dict[bytes, _Memoised], request: bytes, memoised: _Memoised) -> None:
        if len(request) > MEMO_BODY_BYTES:
            return
        if len(self._posted) + len(self._gotten) >= MEMO_BODIES or self._memo_bytes + len(request) > MEMO_TOTAL_BYTES:
            self._forget()  # bounded: a cold restart of the memo is cheap
        memo[request] = memoised
        self._memo_bytes += len(request)

    def _forget(self) -> None:
        self._posted.clear()
        self._gotten.clear()
        self._memo_bytes = 0

    def memo_hit(self, request: bytes, get: bool, meta: RequestMeta) -> tuple[Reply | None, bytes | None]:
        """The fast path's one question: a request seen before whose answer the arena holds now.

        (reply, None): the hit, counted, with the headers _query's hit has;
        (None, key):   the arena was asked for key and missed (counted once: the full
                       path, told through PROBE, does not ask again);
        (None, None):  not memoised, a mutation, or not answerable from the cache.
        The memo maps the request to its key only: the arena decides, every time,
        whether an entry exists and is still valid.
        """
        memoised = (self._gotten if get else self._posted).get(request)
        arena = self.arena
        if memoised is None or arena is None or (meta.no_cache and self.settings.honour_no_cache):
            return None, None
        prepared, _variables, base = memoised
        if prepared.is_mutation:
            return None, None
        private = _is_private(prepared)
        scope = meta.identity.scope if private else b""
        if private and not scope:
            return None, None  # BYPASS: the full path answers it
        key = scoped_key(base, scope)
        body = arena.get(key)
        if body is None:
            return None, key
        if self._counted is not None:
            self._counted.incr(Counter.REQUESTS)
        return self._hit(body, meta, private), None

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
        private = _is_private(prepared)
        scope = meta.identity.scope if private else b""
        if arena is None or (private and not scope):
            # a private result for an anonymous request is never stored: no scope to key it by
            if self._counted is not None:
                self._counted.incr(Counter.BYPASSES)
            filled = await self._execute(prepared, variables, meta, key=None)
            reply = self._own(filled.reply, meta)
            reply.headers["X-Cache"] = "BYPASS"
            return reply

        key = scoped_key(base, scope)
        if meta.no_cache and self.settings.honour_no_cache:
            # revalidate, through the coalescer: one execution per key however many ask
            reply = self._own(await self._fill(key, prepared, variables, meta, revalidate=True), meta)
            reply.headers["X-Cache"] = "MISS"
            return reply
        probe = PROBE.get()
        body = None if probe is not None and probe.missed == key else arena.get(key)
        if body is not None:
            return self._hit(body, meta, private)
        if self.settings.stale_while_revalidate:
            stale = arena.get_stale(key)  # TTL expired, dependencies still valid
            if stale is not None:
                self._refresh_in_background(key, prepared, variables, meta)
                reply = self._hit(stale, meta, private)
                reply.headers["X-Cache"] = "STALE"
                return reply
        reply = self._own(await self._fill(key, prepared, variables, meta), meta)
        reply.headers["X-Cache"] = "MISS"
        return reply

    def _own(self, reply: Reply, meta: RequestMeta) -> Reply:
        """A reply made for this request, whoever computed it (a coalesced leader
        answers for followers that may want another media type or hold the ETag)."""
        status = reply.status
        if reply.statuses is not None:
            status = reply.statuses[meta.media_type == GRAPHQL_RESPONSE]
        own = Reply(status, reply.body, meta.media_type, dict(reply.headers), reply.statuses)
        etag = own.headers.get("ETag")
        if status == 200 and etag is not None and meta.if_none_match is not None and etag in meta.if_none_match:
            own.status = 304
        return own

    async def _fill(self, key: bytes, prepared: Prepared, variables: dict[str, Any] | None, meta: RequestMeta,
                    revalidate: bool = False) -> Reply:
        """Execute and store, once per key per host when coalescing is on. revalidate: a client
        asked for a fresh answer, so a new leader executes even if the arena holds one."""
        if self.coalescer is None or self.arena is None:
            return (await self._execute(prepared, variables, meta, key=key)).reply
        return await self.coalescer.fetch(
            key,
            self.arena.current_seq(),
            execute=lambda: self._execute(prepared, variables, meta, key=key),
            read=lambda: self._read(key, meta, _is_private(prepared)),
            failed=lambda message: self._leader_failed(message, meta),
            recheck=None if revalidate else lambda: self._read(key, meta, _is_private(prepared), counted=False),
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

    def _hit(self, body: bytes, meta: RequestMeta, private: bool) -> Reply:
        etag = etag_of(body)
        headers = {"X-Cache": "HIT", "ETag": etag}
        self._caching_headers(headers, meta, private)
        if meta.if_none_match is not None and etag in meta.if_none_match:
            return Reply(304, b"", meta.media_type, headers)
        return Reply(200, body, meta.media_type, headers)

    def _read(self, key: bytes, meta: RequestMeta, private: bool, counted: bool = True) -> Reply | None:
        """A coalesced follower's answer: the leader's result, as the arena holds it now
        (counted=False: a new leader's second look, its miss already counted)."""
        arena = self.arena
        body = None if arena is None else arena.get(key) if counted else arena.peek(key)
        if body is None:
            return None
        headers = {"ETag": etag_of(body)}
        self._caching_headers(headers, meta, private)
        return Reply(200, body, meta.media_type, headers)

    def _leader_failed(self, message: str, meta: RequestMeta) -> Reply:
        status, _, text = message.partition(" ")
        code = int(status) if status.isdigit() else 500
        return error_reply(code, text or message, meta.media_type, code="COALESCED_LEADER_FAILED")

    @staticmethod
    def _caching_headers(headers: dict[str, str], meta: RequestMeta, private: bool) -> None:
        # no-cache: browsers and CDNs must revalidate (ETag), since only this server
        # hears the cascades that invalidate. A result that can hold a private type is
        # never for shared caches, and varies with the headers its identity came from.
        if private:
            headers["Cache-Control"] = "private, no-cache"
            if meta.vary:
                headers["Vary"] = meta.vary
        else:
            headers["Cache-Control"] = "no-cache"

    async def _execute(self, prepared: Prepared, variables: dict[str, Any] | None, meta: RequestMeta, key: bytes | None) -> Filled[Reply]:
        """Run the query against PostgreSQL; store the result when it may be cached."""
        arena = self.arena
        fill_seq = arena.current_seq() if arena is not None else 0  # read BEFORE the database
        started = time.perf_counter()
        session = current_session.set(self._session(meta))
        try:
            async with asyncio.timeout(self._time_left(meta)):
                result, deps = await self._run_read(prepared, variables)
        except TimeoutError:
            reply = self._timeout(meta)
            return Filled(reply, fill_seq=fill_seq, ok=False, error=f"{reply.status} request timed out")
        finally:
            current_session.reset(session)
        if self._counted is not None:
            self._counted.incr(Counter.DB_EXECUTIONS)
            self._counted.observe(time.perf_counter() - started)
        reply = self._result_reply(result, meta)
        ok = reply.status == 200 and not result.errors
        private = _is_private(prepared)
        if ok and key is not None and arena is not None:
            if deps.private and not (private and meta.identity.scope):
                log.warning("result holds a private type but its key has no scope: not cached")
            else:
                try:
                    arena.put(key, reply.body, sorted(deps.tags), fill_seq, deps.ttl)
                except EntryTooLarge:
                    log.info("response of %d bytes is above max_entry_bytes: served uncached", len(reply.body))
        if reply.status == 200:
            reply.headers["ETag"] = etag_of(reply.body)
            self._caching_headers(reply.headers, meta, private)
        error = ""
        if not ok:
            errors = msgspec.json.decode(reply.body).get("errors") if reply.body else None
            first = errors[0].get("message", "request failed") if errors else "request failed"
            error = f"{reply.status} {first}"
        return Filled(reply, fill_seq=fill_seq, ok=ok, error=error)

    async def _run_read(self, prepared: Prepared, variables: dict[str, Any] | None) -> tuple[ExecutionResult, Dependencies]:
        """Execute a read; with replicas, one whose result may be older than an invalidation
        that preceded it is run again (docs/ARCHITECTURE.md, "Read replicas").

        A result read on a replica is kept only if the replica had replayed, before the
        data statement, every WAL position the board holds for the result's tags: every
        invalidation of those tags recorded before this check (and so every one before
        the miss started) is then in the result. Otherwise it is never stored nor
        returned: wait for replay (replica_wait) and read the replica again, else the primary."""
        replicas = self.replicas
        deps = Dependencies(self.settings.default_ttl, self.served)
        if replicas is None:
            return await self.executor.run(prepared, variables, ExecutionContext(deps=deps)), deps
        route = ReadRoute()
        token = current_route.set(route)
        try:
            result = await self.executor.run(prepared, variables, ExecutionContext(deps=deps))
            if route.replica is None:
                replicas.count(C_PRIMARY)
                return result, deps
            needed = replicas.board.needed(deps.tags)
            if route.replayed is not None and route.replayed >= needed:
                replicas.count(C_REPLICA)
                return result, deps
            replicas.count(C_BEHIND)
            if replicas.wait > 0 and await replicas.wait_for(route.replica, needed, replicas.wait):
                replicas.count(C_WAITED)
                again = ReadRoute(replica=route.replica)
                current_route.set(again)
                deps = Dependencies(self.settings.default_ttl, self.served)
                result = await self.executor.run(prepared, variables, ExecutionContext(deps=deps))
                if again.replica is None or (again.replayed is not None and again.replayed >= replicas.board.needed(deps.tags)):
                    replicas.count(C_REPLICA if again.replica is not None else C_PRIMARY)
                    return result, deps
            current_route.set(ReadRoute(replica_ok=False))
            deps = Dependencies(self.settings.default_ttl, self.served)
            result = await self.executor.run(prepared, variables, ExecutionContext(deps=deps))
            replicas.count(C_PRIMARY)
            return result, deps
        finally:
            current_route.reset(token)

    def _session(self, meta: RequestMeta) -> RequestSession:
        """What PostgreSQL gets with every statement of this request (fraiseshm/db/pool.py)."""
        identity = meta.identity
        return RequestSession(
            claims=identity.claims_json(),
            headers=identity.headers_json(),
            role=identity.role or self.settings.db_role or None,
            deadline=meta.deadline or None,
        )

    def _time_left(self, meta: RequestMeta) -> float:
        if not meta.deadline:
            return self.settings.request_timeout
        return max(0.001, meta.deadline - time.monotonic())

    def _timeout(self, meta: RequestMeta) -> Reply:
        log.warning("request ran past its deadline of %.1fs: database work cancelled", self.settings.request_timeout)
        if self.arena is not None:
            self.arena.incr(Counter.ERRORS)
        return error_reply(504, f"the request ran past its deadline of {self.settings.request_timeout:g}s "
                                "(FRAISESHM_REQUEST_TIMEOUT)", meta.media_type, code="REQUEST_TIMEOUT")

    # --- mutations --------------------------------------------------------------

    async def _mutate(self, prepared: Prepared, variables: dict[str, Any] | None, meta: RequestMeta) -> Reply:
        deps = Dependencies(self.settings.default_ttl, self.served)
        context = ExecutionContext(deps=deps, on_mutation=self._apply_cascade)
        # INVARIANT: a mutation is never cancelled from here: it may have committed, and its
        # cascade must then invalidate. Its statement_timeout holds it to the deadline.
        session = current_session.set(self._session(meta))
        route = current_route.set(ReadRoute(replica_ok=False))  # call_mutation records its commit position
        try:
            result = await self.executor.run(prepared, variables, context)
        finally:
            current_route.reset(route)
            current_session.reset(session)
        reply = self._result_reply(result, meta)
        reply.headers["X-Cache"] = "BYPASS"
        reply.headers["Cache-Control"] = "no-store"
        return reply

    async def _apply_cascade(self, mutation: RootMutation, response: Any, call: MutationCall) -> dict[str, Any] | None:
        """Runs after the function committed and before the response is encoded.

        The cascade is checked against what the change triggers recorded in the
        same transaction (fraiseshm/cascade/changes.py), and every recorded item
        (derived parents included) is invalidated too; a failure is repaired
        here, before the response, by the wider invalidation. Returns the
        field's graphql-cascade payload (None: the response was unreadable).
        """
        parsed = spec.parse(response)
        plan = plan_invalidation(
            parsed,
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
        # Lists filtered by value need the entities' old and new values: without recorded items, all lists.
        plan.tags |= list_fallback(plan.entities, changes.direct if changes is not None else None)
        if self.replicas is not None:
            # INVARIANT: the positions before the arena's invalidation: a miss that passes
            # the arena's check (fill_seq after it) also sees them (fraiseshm/db/replicas.py).
            route = current_route.get()
            lsn = route.commit_lsn if route is not None and route.commit_lsn is not None else UNKNOWN
            if route is not None:
                route.commit_lsn = None
            if plan.tags:
                self.replicas.board.raise_tags(plan.tags, lsn)
            if plan.flush:
                self.replicas.board.raise_all(lsn)
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
            if changes is not None and call.transaction_id is not None and self.handled is not None:
                # INVARIANT (arena/handled.py T1): after the invalidation of every recorded item.
                self.handled.add(call.transaction_id)
        if plan.is_failure:
            log.error("cascade failure in %s (%s): %s; invalidated %s", mutation.field, plan.verdict, plan.detail, sorted(plan.tags))
        plan.spec = self._spec_cascade(mutation, parsed, plan, call)
        if self.on_cascade is not None:
            self.on_cascade(mutation, response, plan, seq, call, changes)
        return spec.to_payload(parsed, plan.spec) if isinstance(response, dict) else None

    def _spec_cascade(self, mutation: RootMutation, parsed: spec.Parsed, plan: CascadePlan,
                      call: MutationCall) -> dict[str, Any]:
        """The response's cascade: the function's, in the spec's shape, with the root queries
        the invalidated tags reach; a failure tells the client to drop the types it widened to."""
        cover = mutation.touches if plan.is_failure else ()
        hints = query_hints(self.served, plan.tags, flush=plan.flush, deleted=plan.deleted, created=plan.created)
        return spec.to_cascade(parsed, hints=hints, cover=cover, limits=self._cascade_limits,
                               walk=self.served.walk, transaction_id=call.transaction_id)

    # --- replies ------------------------------------------------------------------

    def _result_reply(self, result: ExecutionResult, meta: RequestMeta) -> Reply:
        if result.errors:
            originals = [e.original_error for e in result.errors]
            if any(isinstance(o, DatabaseUnavailable) for o in originals):
                log.error("database unavailable: %s", next(o for o in originals if isinstance(o, DatabaseUnavailable)))
                if self.arena is not None:
                    self.arena.incr(Counter.ERRORS)
                return error_reply(503, "the database is unavailable; retry shortly", meta.media_type, code="DATABASE_UNAVAILABLE")
            if any(isinstance(o, RequestTimeout) for o in originals):
                return self._timeout(meta)
            if self.arena is not None:
                self.arena.incr(Counter.ERRORS)
            if result.data is None and all(e.path is None for e in result.errors):
                # variable coercion failed: a request error, nothing executed
                return self._request_errors([_client_error(e) for e in result.errors], meta)
            formatted = result.formatted
            formatted["errors"] = [_client_error(e) for e in result.errors]
            body = _encode(formatted)
        else:
            body = _encode(result.formatted)
        statuses = (200, 500 if result.data is None else 200)
        return Reply(statuses[meta.media_type == GRAPHQL_RESPONSE], body, meta.media_type, statuses=statuses)

    def _request_errors(self, errors: list[dict[str, Any]], meta: RequestMeta) -> Reply:
        for error in errors:
            extensions = error.setdefault("extensions", {})
            syntax = str(error.get("message", "")).startswith("Syntax Error")
            extensions.setdefault("code", "GRAPHQL_PARSE_FAILED" if syntax else "GRAPHQL_VALIDATION_FAILED")
        status = 400 if meta.media_type == GRAPHQL_RESPONSE else 200
        return Reply(status, _encode({"errors": errors}), meta.media_type, statuses=(200, 400))

    def _persisted_error(self, exc: PersistedQueryError, meta: RequestMeta) -> Reply:
        log.info("persisted query refused: %s", exc)
        reply = error_reply(exc.status, str(exc), meta.media_type, code=exc.code)
        reply.headers["Cache-Control"] = "no-store"  # a hashed GET's 404 must not be kept by a CDN
        return reply

    def _bad_request(self, message: str, meta: RequestMeta) -> Reply:
        log.info("bad request: %s", message)
        if self.arena is not None:
            self.arena.incr(Counter.ERRORS)
        return error_reply(400, message, meta.media_type, code="BAD_REQUEST")


def _is_private(prepared: Prepared) -> bool:
    return prepared.cost is not None and prepared.cost.private


def _client_error(error: Any) -> dict[str, Any]:
    """The error as a client sees it: a stable extensions.code and a plain message.
    What the database said goes to the log only (values at DEBUG)."""
    formatted = dict(error.formatted)
    extensions = dict(formatted.get("extensions") or {})
    original = error.original_error
    where = ".".join(str(p) for p in error.path) if error.path else "request"
    if original is None or isinstance(original, GraphQLError):
        extensions.setdefault("code", "BAD_USER_INPUT" if error.path or original is None else "GRAPHQL_VALIDATION_FAILED")
        log.debug("field error at %s: %s", where, error.message)
    elif isinstance(original, MutationFailed):
        extensions["code"] = "MUTATION_FAILED"
        formatted["message"] = f"{where}: the mutation failed in the database; the server log has the details"
    elif isinstance(original, DatabaseError):
        extensions["code"] = "DATABASE_ERROR"
        formatted["message"] = f"{where}: the database could not answer; the server log has the details"
    else:
        log.error("internal error at %s: %s", where, type(original).__name__)
        log.debug("internal error at %s: %r", where, original)
        extensions["code"] = "INTERNAL_SERVER_ERROR"
        formatted["message"] = f"{where}: internal server error"
    formatted["extensions"] = extensions
    return formatted


__all__ = ["GraphQLService", "Reply", "RequestMeta", "error_reply"]
