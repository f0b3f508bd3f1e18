"""A mutation's own notification is not invalidated twice (fraiseshm/arena/handled.py).

The herd after a hot key's mutation ran the key twice now and then (make perf: 1.16
to 1.30 database executions per herd of 50): the listener heard the mutation's own
trigger notification a millisecond after the mutation had invalidated the same items,
invalidated them again, and so refused the fill of the herd's leader, which had read
after the commit.

1. The listener, in this test's own event loop, so the order is the test's: the
   notification cannot be handled before the test awaits. A write commits (psql, a
   blocking call), the test invalidates what its triggers recorded, records the
   transaction, fills a fresh entry, and only then lets the listener run. The fresh
   entry must survive; the same write with its transaction not recorded must not
   leave it. Completion is observed through a sentinel write, never slept for.
2. A real server records the transaction of every mutation it answered.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest

from fraiseshm.arena import Arena
from fraiseshm.arena.handled import SLOTS, HandledTransactions
from fraiseshm.cascade.changes import parse_setting
from fraiseshm.db.embedded import EmbeddedCluster
from fraiseshm.db.listener import Listener
from tests.integration.server import Server, graphql

DEADLINE = 10.0


def _write(cluster: EmbeddedCluster, user_id: str, name: str) -> tuple[str, str]:
    """Commit a rename as a mutation function would; (its recorded items, its transaction id)."""
    out = cluster.psql(
        "BEGIN; "
        f"UPDATE tb_user SET name = '{name}' WHERE id = '{user_id}'; "
        "SELECT current_setting('fraiseshm.changes', true) || '|' || txid_current_if_assigned()::text; "
        "COMMIT;"
    )
    line = next(x for x in out.splitlines() if "|" in x)
    changes, _, tx = line.rpartition("|")
    return changes, tx


def _probe(arena: Arena, *deps: str) -> bytes:
    key = f"probe-{uuid.uuid4().hex}".encode()
    assert arena.put(key, b"probe", list(deps), arena.current_seq(), 3600.0)
    return key


async def _until_gone(arena: Arena, key: bytes, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while arena.get(key) is not None:
        assert time.monotonic() < end, f"{what}: the listener did not invalidate within {DEADLINE}s"
        await asyncio.sleep(0.005)  # lets the listener run; polls an observable condition


@pytest.fixture
def shared() -> Iterator[tuple[str, Arena, HandledTransactions]]:
    """An arena and its handled-transactions table, as a master creates them."""
    name = f"/fraiseshm-handled-{uuid.uuid4().hex[:8]}"
    arena = Arena.create(name, size=4 << 20, max_entry=64 * 1024, shards=1)
    handled = HandledTransactions.open(name)
    assert handled is not None
    try:
        yield name, arena, handled
    finally:
        handled.close()
        arena.close()
        Arena.unlink(name)
        HandledTransactions.unlink(name)


def _with_listener(dsn: str, arena: Arena, handled: HandledTransactions,
                   body: Callable[[Listener], Awaitable[None]], **options: float) -> None:
    """Run body with a listening Listener in this test's own event loop, then stop it."""
    async def main() -> None:
        listener = Listener(dsn, arena, handled=handled, **options)
        listener.start()
        try:
            assert await listener.wait_listening(DEADLINE)
            await body(listener)
        finally:
            await listener.stop()

    asyncio.run(main())


def test_the_listener_skips_what_a_mutation_already_invalidated(
        pg_cluster: EmbeddedCluster, shared: tuple[str, Arena, HandledTransactions]) -> None:
    _, arena, handled = shared
    users = pg_cluster.psql("SELECT id FROM tb_user ORDER BY pk_user LIMIT 3").split()

    async def body(listener: Listener) -> None:
        for recorded in (True, False):
            changes, tx = _write(pg_cluster, users[0], f"handled {recorded} {uuid.uuid4().hex[:6]}")
            assert tx, "the write got no transaction id"
            # What the service does after a mutation's commit (GraphQLService._apply_cascade):
            arena.invalidate(parse_setting(changes, tx).tags())
            if recorded:
                handled.add(tx)
            fresh = _probe(arena, f"r:public.tb_user:{users[0]}")  # a miss that read after the commit
            sentinel = _probe(arena, f"r:public.tb_user:{users[1]}")
            _write(pg_cluster, users[1], f"sentinel {uuid.uuid4().hex[:6]}")
            await _until_gone(arena, sentinel, "the sentinel write")  # notifications arrive in commit order
            if recorded:
                assert arena.get(fresh) == b"probe", "the listener invalidated a mutation's items a second time"
                assert listener.already_invalidated == 1
            else:
                assert arena.get(fresh) is None, "a transaction no mutation recorded was not invalidated"
        assert listener.already_invalidated == 1

    _with_listener(pg_cluster.dsn, arena, handled, body)


def test_a_reconnecting_listener_forgets_every_recorded_transaction(
        pg_cluster: EmbeddedCluster, shared: tuple[str, Arena, HandledTransactions]) -> None:
    """T4: a database restored to an earlier point hands transaction ids out again."""
    name, arena, handled = shared

    async def body(listener: Listener) -> None:
        handled.add("4242")
        pg_cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE application_name = 'fraiseshm-listener {name} {os.getpid()}'")
        end = time.monotonic() + DEADLINE
        while "4242" in handled:
            assert time.monotonic() < end, f"an id recorded before the reconnect survived it ({listener.connects} connects)"
            await asyncio.sleep(0.01)  # lets the listener run; polls an observable condition
        assert listener.connects == 2

    _with_listener(pg_cluster.dsn, arena, handled, body, retry_interval=0.05)


def test_the_table_keeps_the_last_slots_ids() -> None:
    name = f"/fraiseshm-ring-{uuid.uuid4().hex[:8]}"
    table = HandledTransactions.open(name)
    assert table is not None
    try:
        table.add("5")
        assert "5" in table and 5 in table and "6" not in table
        table.add("not a txid")  # ignored, never an error
        assert "not a txid" not in table and "0" not in table
        assert str(5 + SLOTS) not in table, "another id of the same slot was taken for 5"
        for i in range(SLOTS):
            table.add(str(1000 + i))
        assert all(str(1000 + i) in table for i in range(SLOTS)), "sequential ids evicted each other"
        assert "5" not in table  # its slot went to a later id: the listener invalidates it again (T3)
    finally:
        table.close()
        HandledTransactions.unlink(name)


def test_a_server_records_the_transaction_of_each_mutation(pg_dsn: str) -> None:
    with Server(pg_dsn, workers=1, tag="handled") as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        user_id = graphql(http, "{ users(limit: 1) { id } }").json()["data"]["users"][0]["id"]
        r = graphql(http, "mutation($i: UpdateUserInput!) { updateUser(input: $i) { success cascade "
                          "{ metadata { transactionId } } } }", {"i": {"id": user_id, "name": "recorded"}})
        payload = r.json()["data"]["updateUser"]
        assert payload["success"], r.text
        tx = payload["cascade"]["metadata"]["transactionId"]
        ring = HandledTransactions.open(srv.arena_name)
        assert ring is not None
        try:
            assert tx in ring, f"transaction {tx} of an answered mutation is not recorded"
        finally:
            ring.close()
