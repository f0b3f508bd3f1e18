"""The cascade audit trail in PostgreSQL: schema, batched writer, reader.

PERF: a mutation does not wait for its audit row. ``AuditWriter.submit`` appends
the record to a bounded in-worker buffer (O(1), no I/O); a background task
writes the buffer every ``flush_interval`` seconds in ONE statement (INSERT ...
SELECT FROM unnest of arrays) on the writer's own connection, so the request
pool never waits behind it. What this costs: a worker killed with SIGKILL loses
the records of its last ``flush_interval`` (the failures among them were
already counted in the arena and logged at ERROR, and repaired before the
response). A full buffer drops the newest records and counts them (``dropped``).

The table is fraiseshm.audit, in the kit's schema: `fraiseshm db install`
creates it (fraiseshm/db/sql/audit.sql), so the server's role needs no CREATE
right. When it is missing, the writer runs audit.sql itself on its next
(re)connect (which needs CREATE on the database), so a worker starts while
PostgreSQL is down and the table appears once it is back. Retention: after every ``trim_every`` rows written, rows older
than the newest ``retention_rows`` are deleted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import msgspec

from fraiseshm.cascade.audit import AuditRecord
from fraiseshm.db.kit import AUDIT_SQL
from fraiseshm.db.pool import Database
from fraiseshm.tasks import cancel_and_wait

log = logging.getLogger("fraiseshm.audit")

_encode = msgspec.json.Encoder().encode

AUDIT_TABLE = "fraiseshm.audit"

_INSERT = """
INSERT INTO fraiseshm.audit (at, mutation, transaction_id, cascade, tags, duration_ms, verdict, failure, details)
SELECT to_timestamp(a), m, t, c::jsonb, g::jsonb, d, v, f, x::jsonb
FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::text[], $8::bool[], $9::text[])
     AS u(a, m, t, c, g, d, v, f, x)
"""

_TRIM = """
DELETE FROM fraiseshm.audit
WHERE id <= (SELECT id FROM fraiseshm.audit ORDER BY id DESC OFFSET $1 LIMIT 1)
"""

_RECENT = """
SELECT jsonb_build_object(
    'id', id, 'at', at, 'mutation', mutation, 'transactionId', transaction_id,
    'cascade', cascade, 'tags', tags, 'durationMs', duration_ms, 'verdict', verdict,
    'failure', failure, 'details', details)
FROM fraiseshm.audit
WHERE failure OR NOT $2::bool
ORDER BY id DESC
LIMIT $1
"""

_UNAVAILABLE = (OSError, asyncio.TimeoutError, asyncpg.exceptions.InterfaceError,
                asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.ConnectionDoesNotExistError)


async def ensure_schema(conn: asyncpg.Connection) -> None:
    """Create the audit table if missing; safe when several workers start at once."""
    async with conn.transaction():  # one transaction: a transaction-mode pooler keeps its server connection
        if await conn.fetchval("SELECT to_regclass($1)", AUDIT_TABLE) is not None:
            return  # the kit made it: no DDL, so the server's role needs no CREATE right
        await conn.execute(AUDIT_SQL.read_text())


async def recent(db: Database, limit: int, failures_only: bool) -> list[dict[str, Any]]:
    """The newest audit records (newest first), optionally failures only."""
    try:
        return await db.fetch_column(_RECENT, (limit, failures_only))
    except asyncpg.exceptions.UndefinedTableError:
        return []  # no worker has written the trail yet


class AuditWriter:
    """One per worker: buffers audit records and writes them in batches."""

    def __init__(
        self,
        dsn: str,
        *,
        retention_rows: int,
        queue_max: int,
        flush_interval: float,
        batch_max: int = 1000,
        connect_timeout: float = 5.0,
        transaction_pooler: bool = False,  # PgBouncer in transaction mode: each write in its own transaction
    ) -> None:
        self._dsn = dsn
        self._pooled = transaction_pooler
        self.retention_rows = retention_rows
        self.queue_max = queue_max
        self.flush_interval = flush_interval  # seconds records wait to be batched
        self.batch_max = batch_max
        self._connect_timeout = connect_timeout
        self.trim_every = max(100, retention_rows // 10)
        self._buffer: list[AuditRecord] = []
        self._conn: asyncpg.Connection | None = None
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._since_trim = 0
        self.written = 0
        self.dropped = 0

    # --- request path ------------------------------------------------------

    def submit(self, record: AuditRecord) -> None:
        if len(self._buffer) >= self.queue_max:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "audit buffer full (%d records; PostgreSQL slow or down?): %d records dropped so far; "
                    "raise FRAISESHM_AUDIT_QUEUE_MAX", self.queue_max, self.dropped,
                )
            return
        self._buffer.append(record)
        if self._wake is not None:
            self._wake.set()

    # --- background --------------------------------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fraiseshm-audit")

    async def _run(self) -> None:
        assert self._wake is not None
        backoff = self.flush_interval
        try:
            await self._connection()  # the table exists from the worker's start on
        except _UNAVAILABLE + (asyncpg.PostgresError,) as exc:
            log.error("audit trail: PostgreSQL unavailable at start (%s); will retry on the first record", exc)
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_interval)  # PERF: gather a batch
            try:
                await self.flush()
                backoff = self.flush_interval
            except _UNAVAILABLE + (asyncpg.PostgresError,) as exc:
                log.error("audit trail: cannot write %d records: %s: %s", len(self._buffer), type(exc).__name__, exc)
                await self._drop_connection()
                backoff = min(backoff * 2, 5.0)
                await asyncio.sleep(backoff)  # PostgreSQL is down: retry later, records stay buffered

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout,
                                         server_settings={"application_name": "fraiseshm-audit"},
                                         statement_cache_size=0 if self._pooled else 100)
            try:
                await ensure_schema(conn)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def flush(self) -> int:
        """Write every buffered record now; returns how many were written."""
        assert self._lock is not None and self._wake is not None
        total = 0
        async with self._lock:
            self._wake.clear()
            while self._buffer:
                batch = self._buffer[: self.batch_max]
                conn = await self._connection()
                if self._pooled:
                    async with conn.transaction():
                        await conn.execute(_INSERT, *_columns(batch))
                else:
                    await conn.execute(_INSERT, *_columns(batch))
                del self._buffer[: len(batch)]
                total += len(batch)
                self.written += len(batch)
                self._since_trim += len(batch)
                if self._since_trim >= self.trim_every:
                    self._since_trim = 0
                    if self._pooled:
                        async with conn.transaction():
                            await conn.execute(_TRIM, self.retention_rows)
                    else:
                        await conn.execute(_TRIM, self.retention_rows)
        return total

    async def stop(self, timeout: float = 5.0) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._buffer and self._lock is not None:
            try:
                await asyncio.wait_for(self.flush(), timeout)
            except (TimeoutError, *_UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.error("audit trail: %d records not written at shutdown: %s", len(self._buffer), exc)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def _json(value: Any) -> str | None:
    return None if value is None else _encode(value).decode()


def _columns(batch: list[AuditRecord]) -> tuple[list[Any], ...]:
    return (
        [r.at for r in batch],
        [r.mutation for r in batch],
        [r.transaction_id for r in batch],
        [_json(r.cascade) for r in batch],
        [_json(r.tags) for r in batch],
        [r.duration_ms for r in batch],
        [r.verdict for r in batch],
        [r.failure for r in batch],
        [_json(r.details) for r in batch],
    )
