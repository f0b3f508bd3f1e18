"""PgBouncer (Debian's 1.18) in transaction pooling mode in front of the primary.

asyncpg prepares (Parse/Describe/Sync) and executes (Bind/Execute/Sync) in two
round trips, which a transaction-mode pooler may send to two server connections;
with db_transaction_pooler every statement runs inside BEGIN ... COMMIT, without
named prepared statements. The listener needs a session: it LISTENs on listener_dsn
(here the primary itself). Identity claims are set_config(..., true): they must end
with their transaction, never reach the next client of the same server connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from fraiseshm.db.pool import Database, RequestSession
from tests.coherency.stack import EXAMPLES, VARIANTS, run_variant
from tests.integration.server import Server
from tests.integration.test_replica import READS, primary, replica, replica_env, share, totals  # noqa: F401 - fixtures
from tests.replica_harness import PgBouncer, StreamingReplica

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bouncer(primary: EmbeddedCluster) -> Iterator[PgBouncer]:  # noqa: F811 - the fixture
    b = PgBouncer(primary, pool_mode="transaction", pool_size=2).start()
    try:
        yield b
    finally:
        b.destroy()


def test_claims_do_not_leak_across_pooled_transactions(bouncer: PgBouncer) -> None:
    """Two server connections, many clients: a request's claims, role and timeout are
    seen by its own statements and by no statement of any other request."""

    async def main() -> None:
        dbs = [Database(bouncer.dsn, max_size=4, transaction_pooler=True) for _ in range(3)]
        read = "SELECT coalesce(current_setting('request.jwt.claims', true), '') || '|' || $1::text"
        try:
            async def one(i: int) -> None:
                db = dbs[i % len(dbs)]
                if i % 2:
                    claims = f'{{"sub": "user-{i}"}}'
                    got = await db.fetch_column(read, (str(i),), session=RequestSession(claims=claims))
                    assert got == [f"{claims}|{i}"], got
                else:
                    got = await db.fetch_column(read, (str(i),))
                    assert got == [f"|{i}"], got  # nobody's claims

            await asyncio.gather(*(one(i) for i in range(400)))
        finally:
            for db in dbs:
                await db.close()

    asyncio.run(main())


def test_prepared_statements_need_the_transaction_mode(bouncer: PgBouncer) -> None:
    """Without db_transaction_pooler, asyncpg's named statements meet other server
    connections: the failure this mode exists for (pool of 2 servers, 3 clients)."""

    async def main() -> int:
        dbs = [Database(bouncer.dsn, max_size=4) for _ in range(3)]
        failures = 0
        try:
            async def one(i: int) -> None:
                nonlocal failures
                try:
                    await dbs[i % 3].fetch_column(f"SELECT $1::int + {i % 7}", (i,))
                except Exception:  # noqa: BLE001 - counting the pooler's refusals
                    failures += 1

            await asyncio.gather(*(one(i) for i in range(300)))
        finally:
            for db in dbs:
                await db.close()
        return failures

    assert asyncio.run(main()) > 0


def test_coherent_through_pgbouncer(primary: EmbeddedCluster, replica: StreamingReplica,  # noqa: F811
                                    bouncer: PgBouncer) -> None:
    """Queries, mutations and the audit through PgBouncer (transaction mode), the
    listener on the primary directly, a replica 500 ms behind: 0 stale reads."""
    seen: dict[str, int] = {}
    listeners: list[str] = []

    def after(server: Server) -> None:
        seen.update(totals(server))
        listeners.append(primary.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'fraiseshm-listener%'").strip())

    # the server through the pooler; the test's own plain-SQL writers straight to the primary
    env = replica_env(replica, FRAISESHM_DATABASE_DSN=bouncer.dsn, FRAISESHM_DB_TRANSACTION_POOLER="true",
                      FRAISESHM_LISTENER_DSN=primary.dsn)
    report = run_variant(EXAMPLES["blog"], primary.dsn, VARIANTS["listener"], reads=max(1000, READS // 2),
                         grace=0.5, env=env, after=after)
    print(report.line(), seen, f"replica share of misses {share(seen):.1%}", f"listeners {listeners}")
    assert listeners == ["1"]  # the listener holds its own session on the primary
    assert report.writes["mutation"] > 0 and report.writes["sql"] > 0
    assert (report.stale, report.wrong, report.errors) == (0, 0, 0), "\n".join([report.line(), *report.examples])
    assert seen["replica"] > 0, seen
