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
from typing import Any

import asyncpg
import msgspec

from fraiseshm.errors import DatabaseUnavailable, MutationFailed

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
)


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

    async def _on_connection(self, work: Callable[[asyncpg.Connection], Awaitable[Any]], function: str | None = None) -> Any:
        """Run work on a pooled connection. A lost server becomes DatabaseUnavailable
        (and the pool is rebuilt on next use); with function, an error raised inside
        PostgreSQL becomes MutationFailed naming it."""
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn:
                return await work(conn)
        except _UNAVAILABLE as exc:
            self._mark_down(exc)
            await self._reset_pool()
            raise DatabaseUnavailable(f"PostgreSQL connection lost: {self._last_error}") from exc
        except asyncpg.PostgresError as exc:
            if function is None:
                raise
            detail = getattr(exc, "detail", None)
            raise MutationFailed(
                f"{function} failed: {exc.__class__.__name__}: {exc}" + (f" ({detail})" if detail else "")
            ) from exc

    async def fetch_column(self, sql: str, args: Sequence[Any]) -> list[Any]:
        """Run a read; return the first column of every row."""
        rows = await self._on_connection(lambda conn: conn.fetch(sql, *args))
        return [row[0] for row in rows]

    async def call_function(self, function: str, payload: dict[str, Any]) -> Any:
        """SELECT fn($1::jsonb) in its own transaction; committed when this returns."""
        return await self._on_connection(lambda conn: conn.fetchval(f"SELECT {function}($1::jsonb)", payload), function)

    async def call_mutation(self, function: str, payload: dict[str, Any]) -> tuple[Any, str | None, str | None]:
        """Like call_function, and in the same transaction (one statement, one round trip)
        read what the change triggers recorded for it: (response, fraiseshm.changes, txid).

        The MATERIALIZED CTE runs the function before the outer SELECT reads the
        transaction-local setting its triggers appended to (examples/blog/schema.sql).
        """
        sql = self._mutation_sql.get(function)
        if sql is None:
            sql = self._mutation_sql[function] = (
                f"WITH m AS MATERIALIZED (SELECT {function}($1::jsonb) AS r) "
                "SELECT r, current_setting('fraiseshm.changes', true), txid_current_if_assigned()::text FROM m"
            )
        row = await self._on_connection(lambda conn: conn.fetchrow(sql, payload), function)
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
