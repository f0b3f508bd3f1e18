"""asyncpg access for one worker: a lazily (re)created pool, one query per root field.

The pool is created on first use, not at worker start, so a worker boots and
answers 503 while PostgreSQL is down, then recovers by itself when it is back.
Only this package knows asyncpg; callers see DatabaseUnavailable / MutationFailed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from fraiseshm.db.lsn import primary_position
from fraiseshm.errors import DatabaseError, DatabaseUnavailable, MutationFailed, RequestTimeout

log = logging.getLogger("fraiseshm.db")

_json_decode = msgspec.json.decode
_json_encode = msgspec.json.Encoder()

# Errors that mean "the server or the connection is gone", not "your SQL is wrong".
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InterfaceError,
    # "cannot switch to state N; another operation is in progress": the protocol broke
    # mid-statement, seen while PostgreSQL shut down under load (fault campaign).
    asyncpg.exceptions.InternalClientError,
)


@dataclass(frozen=True, slots=True)
class RequestSession:
    """What every statement of one request runs with, as transaction-local settings.

    claims   -> set_config('request.jwt.claims', <json>, true)  (PostgREST's name)
    headers  -> set_config('request.headers', <json>, true)
    role     -> SET LOCAL ROLE <role> (from the allowed list; validated in Settings)
    deadline -> SET LOCAL statement_timeout = what is left of the request's time
    """

    claims: str | None = None
    headers: str | None = None
    role: str | None = None
    deadline: float | None = None  # time.monotonic() by which the request must answer

    @property
    def scoped(self) -> bool:
        return self.claims is not None or self.headers is not None or self.role is not None


@dataclass(slots=True)
class ReadRoute:
    """What one execution may use and did use, beyond the primary (fraiseshm/db/replicas.py).

    Set by the service around a miss or a mutation (current_route); a mutable holder,
    so what the statements record reaches the service whatever task ran them."""

    replica_ok: bool = True  # False: every statement on the primary
    replica: Any = None  # the replicas.Replica that served this miss's statements
    replayed: int | None = None  # lowest replay position a replica statement saw
    commit_lsn: int | None = None  # a mutation's WAL position read after its commit


current_route: ContextVar[ReadRoute | None] = ContextVar("fraiseshm_read_route", default=None)


# The request being served. Set by the service around execution, so resolvers need
# not pass it along; an explicit session= argument wins.
current_session: ContextVar[RequestSession | None] = ContextVar("fraiseshm_request_session", default=None)


def _literal(text: str) -> str:
    # E'' strings read the same whatever standard_conforming_strings is.
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def session_prelude(session: RequestSession, timeout_ms: int | None = None) -> str:
    """BEGIN and the transaction-local settings, one simple-protocol round trip.
    timeout_ms: the statement_timeout when the request has no deadline (a pooler
    gets no session settings)."""
    parts = ["BEGIN"]
    if session.role is not None:
        parts.append(f"SET LOCAL ROLE {_identifier(session.role)}")
    settings = []
    if session.claims is not None:
        settings.append(f"set_config('request.jwt.claims', {_literal(session.claims)}, true)")
    if session.headers is not None:
        settings.append(f"set_config('request.headers', {_literal(session.headers)}, true)")
    if session.deadline is not None:
        left_ms = max(1, int((session.deadline - time.monotonic()) * 1000))
        settings.append(f"set_config('statement_timeout', '{left_ms}', true)")
    elif timeout_ms is not None:
        settings.append(f"set_config('statement_timeout', '{int(timeout_ms)}', true)")
    if settings:
        parts.append("SELECT " + ", ".join(settings))
    return "; ".join(parts)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: _json_encode.encode(v).decode(),
        decoder=_json_decode,
        schema="pg_catalog",
        format="text",
    )


async def _init_pooled_connection(conn: asyncpg.Connection) -> None:
    async with conn.transaction():  # the codec's type introspection is two round trips too
        await _init_connection(conn)


class Database:
    """One asyncpg pool per worker process."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: float = 5.0,
        statement_timeout_ms: int = 10_000,
        retry_interval: float = 0.5,
        transaction_pooler: bool = False,
    ) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = statement_timeout_ms
        self._retry_interval = retry_interval  # seconds between reconnect attempts while down
        self._pool: asyncpg.Pool | None = None
        self._creating: asyncio.Lock | None = None
        self._down_until = 0.0  # monotonic time before which we answer "down" at once
        self._last_error = ""
        self._mutation_sql: dict[str, str] = {}  # function -> its call_mutation statement
        # Behind a transaction-mode pooler (PgBouncer): no named prepared statements, and
        # every statement inside BEGIN ... COMMIT, because asyncpg prepares (Parse/Describe/
        # Sync) and executes (Bind/Execute/Sync) in two round trips that the pooler may
        # otherwise send to two server connections. Session settings go per transaction.
        self.transaction_pooler = transaction_pooler
        self.replicas: Any = None  # replicas.ReplicaSet: misses may read a replica (fetch_column)
        self.track_commit_lsn = False  # call_mutation reads the WAL position after its commit

    def sibling(self, dsn: str) -> Database:
        """A Database for another server (a replica) with this one's options."""
        return Database(dsn, min_size=self._min_size, max_size=self._max_size, connect_timeout=self._connect_timeout,
                        statement_timeout_ms=self._statement_timeout_ms, retry_interval=self._retry_interval,
                        transaction_pooler=self.transaction_pooler)

    @property
    def is_connected(self) -> bool:
        return self._pool is not None

    @property
    def last_error(self) -> str:
        return self._last_error

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if time.monotonic() < self._down_until:
            raise DatabaseUnavailable(f"PostgreSQL is unreachable: {self._last_error}")
        if self._creating is None:
            self._creating = asyncio.Lock()
        async with self._creating:
            if self._pool is None:
                try:
                    pooled = self.transaction_pooler
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=self._min_size,
                        max_size=self._max_size,
                        timeout=self._connect_timeout,
                        command_timeout=self._statement_timeout_ms / 1000 + 1,
                        # PgBouncer refuses unknown startup parameters; pooled: SET LOCAL instead
                        server_settings=None if pooled else {"statement_timeout": str(self._statement_timeout_ms)},
                        statement_cache_size=0 if pooled else 100,
                        init=_init_pooled_connection if pooled else _init_connection,
                    )
                except _UNAVAILABLE as exc:
                    self._mark_down(exc)
                    raise DatabaseUnavailable(f"PostgreSQL is unreachable: {self._last_error}") from exc
                log.info("connected to PostgreSQL (pool %d..%d)", self._min_size, self._max_size)
        return self._pool

    def _mark_down(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._down_until = time.monotonic() + self._retry_interval
        log.error("PostgreSQL unavailable: %s", self._last_error)

    async def _reset_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def _on_connection(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[Any]],
        function: str | None = None,
        session: RequestSession | None = None,
        before: Callable[[asyncpg.Connection], Awaitable[Any]] | None = None,
        after: Callable[[asyncpg.Connection], Awaitable[Any]] | None = None,
    ) -> Any:
        """Run work on a pooled connection. A lost server becomes DatabaseUnavailable
        (and the pool is rebuilt on next use); an error raised inside PostgreSQL
        becomes MutationFailed naming the function, or DatabaseError (its detail is
        logged here, never sent to clients), or RequestTimeout.

        A scoped session (claims, headers, role) runs work inside BEGIN ... COMMIT
        with the settings made transaction-local: three round trips instead of one,
        on misses only, and nothing can leak to the next user of the connection."""
        pool = await self._get_pool()
        session = session if session is not None else current_session.get()
        try:
            async with pool.acquire() as conn:
                if before is not None:
                    if self.transaction_pooler:  # its own transaction: see __init__
                        async with conn.transaction():
                            await before(conn)
                    else:
                        await before(conn)
                if self.transaction_pooler:
                    result = await self._in_transaction(conn, work, session or RequestSession(), self._statement_timeout_ms)
                elif session is None or not session.scoped:
                    result = await work(conn)
                else:
                    result = await self._in_transaction(conn, work, session)
                if after is not None:
                    await self._after_commit(conn, after)
                return result
        except asyncpg.exceptions.OutdatedSchemaCacheError as exc:
            # A served view was replaced under a prepared statement inside a transaction
            # (asyncpg retries it by itself outside one): new connections, not "down".
            await self._reset_pool()
            raise DatabaseError("the database schema changed during the request; retry it") from exc
        except _UNAVAILABLE as exc:
            self._mark_down(exc)
            await self._reset_pool()
            raise DatabaseUnavailable(f"PostgreSQL connection lost: {self._last_error}") from exc
        except asyncpg.exceptions.QueryCanceledError as exc:
            log.warning("statement cancelled (%s): %s", exc.sqlstate, exc)
            raise RequestTimeout("the request ran past its deadline; its database work was cancelled") from exc
        except asyncpg.PostgresError as exc:
            detail = getattr(exc, "detail", None)
            log.error("%s failed: %s (SQLSTATE %s)", function or "query", exc.__class__.__name__, exc.sqlstate)
            log.debug("%s failed: %s%s", function or "query", exc, f" ({detail})" if detail else "")
            if function is not None:
                raise MutationFailed(f"{function} failed ({exc.__class__.__name__}, SQLSTATE {exc.sqlstate})") from exc
            raise DatabaseError(f"query failed ({exc.__class__.__name__}, SQLSTATE {exc.sqlstate})") from exc

    async def _after_commit(self, conn: asyncpg.Connection, after: Callable[[asyncpg.Connection], Awaitable[Any]]) -> None:
        # The work committed: whatever fails now must not turn it into an error (its
        # cascade still has to invalidate); after() leaves its result unset instead.
        try:
            if self.transaction_pooler:
                async with conn.transaction():
                    await after(conn)
            else:
                await after(conn)
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            log.error("reading the WAL position after a commit failed: %s: %s", type(exc).__name__, exc)

    @staticmethod
    async def _in_transaction(conn: asyncpg.Connection, work: Callable[[asyncpg.Connection], Awaitable[Any]],
                              session: RequestSession, timeout_ms: int | None = None) -> Any:
        await conn.execute(session_prelude(session, timeout_ms))
        try:
            result = await work(conn)
        except Exception:  # a cancellation is left to the pool: release resets the connection
            if not conn.is_closed():
                try:
                    await conn.execute("ROLLBACK")
                except (asyncpg.PostgresError, *_UNAVAILABLE):
                    pass  # the pool resets (or drops) the connection on release
            raise
        await conn.execute("COMMIT")
        return result

    async def fetch_column(self, sql: str, args: Sequence[Any], *, session: RequestSession | None = None) -> list[Any]:
        """Run a read; return the first column of every row. Inside a ReadRoute that
        allows it, a replica answers (and the route records its replay position)."""
        route = current_route.get()
        if route is not None and route.replica_ok and self.replicas is not None:
            values = await self.replicas.fetch_column(sql, args, session if session is not None else current_session.get(),
                                                      route)
            if values is not None:
                return values
        rows = await self._on_connection(lambda conn: conn.fetch(sql, *args), session=session)
        return [row[0] for row in rows]

    async def on_connection_after(self, before: Callable[[asyncpg.Connection], Awaitable[Any]],
                                  work: Callable[[asyncpg.Connection], Awaitable[Any]],
                                  session: RequestSession | None) -> Any:
        """work on a pooled connection, after before() ran on it outside the request's transaction."""
        return await self._on_connection(work, session=session, before=before)

    async def fetchrow_plain(self, sql: str) -> Any:
        """One row of a parameterless statement, no session, never routed (checks, positions)."""
        return await self._on_connection(lambda conn: conn.fetchrow(sql), session=RequestSession())

    async def fetchval_plain(self, sql: str) -> Any:
        return (await self.fetchrow_plain(sql))[0]

    async def call_function(self, function: str, payload: dict[str, Any], *, session: RequestSession | None = None) -> Any:
        """SELECT fn($1::jsonb) in its own transaction; committed when this returns."""
        return await self._on_connection(
            # to_jsonb: a jsonb response unchanged, a composite (FraiseQL's mutation_response) as an object
            lambda conn: conn.fetchval(f"SELECT to_jsonb({function}($1::jsonb))", payload), function, session
        )

    async def call_mutation(
        self, function: str, payload: dict[str, Any], *, session: RequestSession | None = None
    ) -> tuple[Any, str | None, str | None]:
        """Like call_function, and in the same transaction (one statement, one round trip)
        read what the change triggers recorded for it: (response, fraiseshm.changes, txid).

        The MATERIALIZED CTE runs the function before the outer SELECT reads the
        transaction-local setting its triggers appended to (examples/blog/schema.sql).
        """
        sql = self._mutation_sql.get(function)
        if sql is None:
            sql = self._mutation_sql[function] = (
                f"WITH m AS MATERIALIZED (SELECT {function}($1::jsonb) AS r) "
                "SELECT to_jsonb(r), current_setting('fraiseshm.changes', true), txid_current_if_assigned()::text FROM m"
            )
        if not self.track_commit_lsn:
            row = await self._on_connection(lambda conn: conn.fetchrow(sql, payload), function, session)
            return row[0], row[1], row[2]
        route = current_route.get()
        row = await self._on_connection(lambda conn: conn.fetchrow(sql, payload), function, session,
                                        after=self._commit_position(route))
        return row[0], row[1], row[2]

    @staticmethod
    def _commit_position(route: ReadRoute | None) -> Callable[[asyncpg.Connection], Awaitable[None]]:
        async def after(conn: asyncpg.Connection) -> None:
            lsn = await primary_position(conn.fetchrow)
            if route is not None:
                route.commit_lsn = lsn
        return after

    async def ping(self) -> bool:
        try:
            await self.fetch_column("SELECT 1", ())
        except DatabaseUnavailable:
            return False
        return True

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
