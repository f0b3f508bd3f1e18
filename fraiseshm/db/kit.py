"""The SQL kit in the user's database: install, uninstall, track tables, sign.

The kit (fraiseshm/db/sql/kit.sql + audit.sql) lives in schema ``fraiseshm``:
change triggers that NOTIFY ``fraiseshm_changes`` with an HMAC-SHA256-signed
payload and record the same tags in the transaction-local setting
``fraiseshm.changes``, cascade helpers for mutation functions, the audit
table. Everything here runs on an asyncpg connection given by the caller (the
CLI, tests); the embedded cluster loads the same files with psql.

Signing: the key is 32 random bytes, stored as 64 hex digits in
``fraiseshm.notify_key``, readable by the kit owner and the server roles that
``fraiseshm.grant_server`` names. The listener verifies with :func:`verify`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

KIT_VERSION = 1
SQL_DIR = Path(__file__).resolve().with_name("sql")
KIT_SQL = SQL_DIR / "kit.sql"
AUDIT_SQL = SQL_DIR / "audit.sql"
UNINSTALL_SQL = SQL_DIR / "kit_uninstall.sql"
# What `fraiseshm db install` runs, in this order (the embedded cluster too).
INSTALL_FILES = (KIT_SQL, AUDIT_SQL)

MAC_HEX = 64  # hex digits of an HMAC-SHA256


@dataclass(frozen=True, slots=True)
class TrackedTable:
    table: str  # schema.table, as tags name it
    key_column: str | None  # None: no single-column key, table-level tags only
    key_type: str | None
    complete: bool  # all four triggers present and enabled


@dataclass(frozen=True, slots=True)
class KitStatus:
    version: int | None  # None: not installed
    tracked: list[TrackedTable] = field(default_factory=list)


def sign(key_hex: str, body: bytes) -> str:
    """HMAC-SHA256 of body under the kit's key, as fraiseshm._sign computes it in SQL."""
    return hmac.new(bytes.fromhex(key_hex), body, hashlib.sha256).hexdigest()


def verify(key: bytes, payload: str) -> str | None:
    """The JSON of a '<mac> <json>' payload if its MAC is right under key (raw bytes), else None."""
    mac, sep, body = payload.partition(" ")
    if not sep or len(mac) != MAC_HEX:
        return None
    expected = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    return body if hmac.compare_digest(mac, expected) else None


@contextmanager
def _messages(conn: asyncpg.Connection, sink: Callable[[str], None] | None) -> Iterator[None]:
    """Hand the server's NOTICEs and WARNINGs on conn to sink while inside."""
    if sink is None:
        yield
        return

    def on_log(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
        sink(f"{message.severity}: {message.message}")

    conn.add_log_listener(on_log)
    try:
        yield
    finally:
        conn.remove_log_listener(on_log)


async def install(
    conn: asyncpg.Connection, *, server_role: str | None = None, on_message: Callable[[str], None] | None = None
) -> int:
    """Install (or re-install) the kit in one transaction; returns its version.

    server_role: a role to grant what the server needs from the kit (schema,
    notification key, audit table). on_message receives the install's
    NOTICEs and WARNINGs (no event trigger without a superuser, say).
    """
    with _messages(conn, on_message):
        return await _install(conn, server_role)


async def _install(conn: asyncpg.Connection, server_role: str | None) -> int:
    async with conn.transaction():
        for path in INSTALL_FILES:
            await conn.execute(path.read_text())
        if server_role:
            await conn.execute("SELECT fraiseshm.grant_server($1::regrole)", server_role)
        return await conn.fetchval("SELECT fraiseshm.kit_version()")


async def grant(conn: asyncpg.Connection, role: str, views: list[str], functions: list[str]) -> None:
    """Everything the server's login role needs, nothing more, in one transaction: the kit's
    part (fraiseshm.grant_server), SELECT on the views, EXECUTE on the fn(jsonb) functions."""
    async with conn.transaction():
        await conn.execute("SELECT fraiseshm.grant_server($1::regrole)", role)
        ident = await conn.fetchval("SELECT quote_ident($1::regrole::text)", role)
        for view in sorted(set(views)):
            rel = await conn.fetchval("SELECT $1::regclass::text", view)  # names it, or raises
            await conn.execute(f"GRANT SELECT ON {rel} TO {ident}")
        for fn in sorted(set(functions)):
            proc = await conn.fetchval("SELECT ($1 || '(jsonb)')::regprocedure::text", fn)
            await conn.execute(f"GRANT EXECUTE ON FUNCTION {proc} TO {ident}")


async def uninstall(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await conn.execute(UNINSTALL_SQL.read_text())


async def track(conn: asyncpg.Connection, table: str, key: str | None = None) -> tuple[str, list[str]]:
    """Attach the change triggers to table; returns fraiseshm.track's summary and its NOTICEs."""
    notices: list[str] = []
    with _messages(conn, notices.append):
        summary = await conn.fetchval("SELECT fraiseshm.track($1::regclass, $2)", table, key)
    return summary, notices


async def untrack(conn: asyncpg.Connection, table: str) -> bool:
    return await conn.fetchval("SELECT fraiseshm.untrack($1::regclass)", table)


async def status(conn: asyncpg.Connection) -> KitStatus:
    if await conn.fetchval("SELECT to_regprocedure('fraiseshm.kit_version()')") is None:
        return KitStatus(None)
    version = await conn.fetchval("SELECT fraiseshm.kit_version()")
    rows = await conn.fetch(
        "SELECT table_name, key_column::text, key_type::text, complete FROM fraiseshm.tracked_tables()"
    )
    return KitStatus(version, [TrackedTable(r[0], r[1], r[2], r[3]) for r in rows])


async def notify_key(conn: asyncpg.Connection) -> str:
    """The notification key (hex). Needs the grant of fraiseshm.grant_server (or the kit's owner)."""
    key = await conn.fetchval("SELECT key FROM fraiseshm.notify_key")
    if key is None:
        raise asyncpg.exceptions.UndefinedObjectError("fraiseshm.notify_key is empty: run fraiseshm db install")
    return key
