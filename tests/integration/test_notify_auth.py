"""Change notifications are authenticated (issue 13): any role may NOTIFY
fraiseshm_changes, only the kit's triggers can sign.

A real server (2 gunicorn workers) caches a user; a role with no privileges
then sends 1,000 notifications (unparseable text, well-formed unsigned
payloads, wrong MACs, a MAC under another key, a real MAC on another body,
an hour-old signed payload) and 50 exact replays of a real signed payload. Nothing is flushed or invalidated: the cached
read is still a HIT and probe entries placed in the server's arena, depending
on the tags the forgeries name, are still there. A real trigger-sent change
still invalidates.

Completion is observed, never slept for: after the flood the test commits an
INSERT into a tracked sentinel table; notifications arrive in commit order,
so once a probe depending on the sentinel's tag is gone, the listener has
handled every forged notification before it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from fraiseshm.arena import Arena
from fraiseshm.db import kit
from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import USER_QUERY, Server, graphql

FLOOD = 1000
REPLAYS = 50
DEADLINE = 10.0  # seconds for the listener to hear the sentinel


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[Server]:
    with Server(pg_dsn, workers=2, tag="notify") as srv:
        yield srv


@pytest.fixture(scope="module")
def forger(pg_cluster: EmbeddedCluster) -> Iterator[str]:
    """A login role with no privileges at all: it can connect and NOTIFY, as any role can."""
    role = f"forger_{os.getpid()}"
    pg_cluster.psql(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN")
    pg_cluster.psql(f"DROP TABLE IF EXISTS notify_sentinel; CREATE TABLE notify_sentinel (id int PRIMARY KEY);"
                    "SELECT fraiseshm.track('notify_sentinel')")
    try:
        yield pg_cluster.dsn.replace("://fraiseshm@", f"://{role}@")
    finally:
        pg_cluster.psql("DROP TABLE IF EXISTS notify_sentinel")
        pg_cluster.psql(f"DROP ROLE IF EXISTS {role}")


def _probe(arena: Arena, *deps: str) -> bytes:
    key = f"probe-{uuid.uuid4().hex}".encode()
    assert arena.put(key, b"probe", list(deps), arena.current_seq(), 3600.0)
    assert arena.get(key) == b"probe"
    return key


def _await_gone(arena: Arena, key: bytes, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while arena.get(key) is not None:
        assert time.monotonic() < end, f"{what}: the listener did not invalidate within {DEADLINE}s"
        time.sleep(0.005)  # polling an observable condition, not synchronising on time


def _forgeries(user_tag: str, real: str, key_hex: str) -> list[str]:
    """FLOOD distinct payloads (NOTIFY drops duplicates within a transaction)."""
    wrong_key = os.urandom(32).hex()
    out: list[str] = []
    for i in range(FLOOD):
        body = json.dumps({"v": 1, "tx": str(10**9 + i), "ts": time.time(), "tags": ["t:public.tb_user", user_tag]})
        old = json.dumps({"v": 1, "tx": str(i), "ts": time.time() - 3600 - i, "tags": [user_tag]})
        out.append([
            f"x{i}",  # unparseable
            body,  # well-formed, unsigned
            f"{os.urandom(32).hex()} {body}",  # a MAC, but not this body's
            f"{kit.sign(wrong_key, body.encode())} {body}",  # signed under another key
            f"{kit.sign(key_hex, old.encode())} {old}",  # truly signed, an hour old
            real + " " * (1 + i % 7),  # a real MAC, a body that is not quite its own
        ][i % 6])
    return out


def test_forged_notify_flood_cannot_flush_and_real_changes_still_invalidate(
    server: Server, forger: str, reset_db: EmbeddedCluster, pg_dsn: str
) -> None:
    user_id, other_id = reset_db.psql("SELECT id FROM tb_user ORDER BY pk_user LIMIT 2").split()
    user_tag = f"r:public.tb_user:{user_id}"
    arena = Arena.attach(server.arena_name)

    async def main() -> None:
        admin = await asyncpg.connect(pg_dsn)
        sender = await asyncpg.connect(forger)
        heard: asyncio.Queue[str] = asyncio.Queue()
        try:
            key_hex = await kit.notify_key(admin)
            # A real signed payload, captured as any LISTENer can.
            await admin.add_listener("fraiseshm_changes", lambda *a: heard.put_nowait(a[3]))
            await admin.execute("UPDATE tb_user SET name = name WHERE id = $1", other_id)
            real = await asyncio.wait_for(heard.get(), DEADLINE)
            assert kit.verify(bytes.fromhex(key_hex), real) is not None

            with server.client() as http:
                for _ in range(3):
                    r = graphql(http, USER_QUERY, {"id": user_id})
                assert r.status_code == 200 and r.headers["X-Cache"] == "HIT", r.text
                probes = [_probe(arena, user_tag), _probe(arena, "t:public.tb_user"), _probe(arena, "w:public.tb_user")]
                sentinel = _probe(arena, "t:public.notify_sentinel")
                flushes = arena.stats()["totals"]["flushes"]

                forged = _forgeries(user_tag, real, key_hex)
                for start in range(0, FLOOD, 250):
                    await sender.execute("SELECT pg_notify('fraiseshm_changes', p) FROM unnest($1::text[]) p",
                                         forged[start:start + 250])
                for _ in range(REPLAYS):  # exact replays, one transaction each (NOTIFY dedups within one)
                    await sender.execute("SELECT pg_notify('fraiseshm_changes', $1)", real)
                await admin.execute("INSERT INTO notify_sentinel VALUES (1) ON CONFLICT DO NOTHING")
                _await_gone(arena, sentinel, "the sentinel insert")

                assert arena.stats()["totals"]["flushes"] == flushes, "a forged notification flushed the arena"
                assert all(arena.get(p) == b"probe" for p in probes), "a forged notification invalidated a tag"
                r = graphql(http, USER_QUERY, {"id": user_id})
                assert r.headers["X-Cache"] == "HIT", "the cached read did not survive the forged flood"

                # A real change, sent by the trigger, still invalidates.
                await admin.execute("UPDATE tb_user SET name = 'signed change' WHERE id = $1", user_id)
                _await_gone(arena, probes[0], "a real UPDATE")
            assert "ignored" in server.log() and "came from backend pid" in server.log()
            assert key_hex not in server.log()
        finally:
            await sender.close()
            await admin.close()

    try:
        asyncio.run(main())
    finally:
        arena.close()


def test_create_or_replace_view_flushes_through_the_kits_event_trigger(
    server: Server, pg_cluster: EmbeddedCluster
) -> None:
    arena = Arena.attach(server.arena_name)
    try:
        probe = _probe(arena, "r:public.tb_comment:00000000-0000-4000-8000-000000000000")
        definition = pg_cluster.psql("SELECT pg_get_viewdef('v_comment'::regclass)").strip()
        pg_cluster.psql(f"CREATE OR REPLACE VIEW v_comment AS {definition}")
        _await_gone(arena, probe, "CREATE OR REPLACE VIEW v_comment")
        assert "flushing the arena; every worker re-binds" in server.log()
    finally:
        arena.close()
