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


# The request being served. Set by the service around execution, so resolvers need
# not pass it along; an explicit session= argument wins.
current_session: ContextVar[RequestSession | None] = ContextVar("fraiseshm_request_session", default=None)


def _literal(text: str) -> str:
    # E'' strings read the same whatever standard_conforming_strings is.
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def session_prelude(session: RequestSession) -> str:
    """BEGIN and the transaction-local settings, one simple-protocol round trip."""
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
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=self._min_size,
                        max_size=self._max_size,
                        timeout=self._connect_timeout,
                        command_timeout=self._statement_timeout_ms / 1000 + 1,
                        server_settings={"statement_timeout": str(self._statement_timeout_ms)},
                        init=_init_connection,
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
                if session is None or not session.scoped:
                    return await work(conn)
                return await self._in_transaction(conn, work, session)
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

    @staticmethod
    async def _in_transaction(conn: asyncpg.Connection, work: Callable[[asyncpg.Connection], Awaitable[Any]],
                              session: RequestSession) -> Any:
        await conn.execute(session_prelude(session))
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
        """Run a read; return the first column of every row."""
        rows = await self._on_connection(lambda conn: conn.fetch(sql, *args), session=session)
        return [row[0] for row in rows]

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
        row = await self._on_connection(lambda conn: conn.fetchrow(sql, payload), function, session)
        return row[0], row[1], row[2]

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
