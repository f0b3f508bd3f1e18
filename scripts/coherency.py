"""Full-size coherency run (issue 12): 0 stale reads in >= 20,000 checked reads per example.

    .venv/bin/python scripts/coherency.py --example blog --reads 20000
    .venv/bin/python scripts/coherency.py --example shop --variant mutations --reads 20000
    .venv/bin/python scripts/coherency.py --example blog --variant listener --replica 500 [--pgbouncer]

--replica MS adds a streaming replica of the cluster (pg_basebackup -R) applying WAL
MS milliseconds late, read by the server's misses; --pgbouncer puts PgBouncer in
transaction mode between the server and the primary (the listener stays direct).

Each run starts a private PostgreSQL cluster with the example's schema and a
real gunicorn with --workers workers, runs concurrent writers (mutations and
plain SQL) and readers, and checks every read against the writes acknowledged
before it started (tests/coherency/harness.py explains the check). Exit
status 1 if any read was stale or wrong, unless --expect-stale (used to show
that a broken set-up is caught: then 1 if NO stale read was found).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fraiseshm.db.embedded import EmbeddedCluster  # noqa: E402
from fraiseshm.db.replicas import LsnBoard  # noqa: E402
from tests.coherency.stack import EXAMPLES, VARIANTS, cluster_for, run_variant  # noqa: E402
from tests.integration.server import Server  # noqa: E402
from tests.replica_harness import PgBouncer, StreamingReplica  # noqa: E402


def _topology(args: argparse.Namespace, cluster: EmbeddedCluster, stack: ExitStack) -> tuple[dict[str, str], dict[str, int]]:
    """Server settings for --replica / --pgbouncer; processes stopped by the stack."""
    env: dict[str, str] = {}
    if args.replica is not None:
        replica = StreamingReplica(cluster, args.replica).create()
        stack.callback(replica.destroy)
        env.update({"FRAISESHM_REPLICA_DSNS": replica.dsn, "FRAISESHM_REPLICA_CHECK_INTERVAL": "0.2"})
    if args.pgbouncer:
        bouncer = PgBouncer(cluster, pool_mode="transaction").start()
        stack.callback(bouncer.destroy)
        env.update({"FRAISESHM_DATABASE_DSN": bouncer.dsn, "FRAISESHM_DB_TRANSACTION_POOLER": "true",
                    "FRAISESHM_LISTENER_DSN": cluster.dsn})
    return env, {}


def _misses(server: Server) -> dict[str, int]:
    try:
        board = LsnBoard.attach(server.arena_name)
    except FileNotFoundError:
        return {}
    try:
        return board.totals()
    finally:
        board.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", choices=sorted(EXAMPLES), action="append", help="default: every example")
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append",
                        help="default: listener and mutations")
    parser.add_argument("--reads", type=int, default=20000, help="checked reads per example and variant")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--readers", type=int, default=6, help="concurrent reading clients")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writers (each owns part of the data)")
    parser.add_argument("--reads-per-write", type=int, default=20)
    parser.add_argument("--grace", type=float, default=0.1,
                        help="seconds a plain-SQL COMMIT may take to reach the cache (notification latency)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--replica", type=int, default=None, metavar="MS",
                        help="add a streaming replica with recovery_min_apply_delay MS, read by misses")
    parser.add_argument("--pgbouncer", action="store_true", help="the server reaches the primary through PgBouncer "
                        "(transaction mode); the listener connects directly")
    parser.add_argument("--expect-stale", action="store_true", help="succeed only if stale reads were found")
    args = parser.parse_args()
    failed = False
    for name in args.example or sorted(EXAMPLES):
        example = EXAMPLES[name]
        with cluster_for(example) as cluster, ExitStack() as stack:
            env, seen = _topology(args, cluster, stack)
            for variant in args.variant or ["listener", "mutations"]:
                t0 = time.monotonic()
                report = run_variant(example, cluster.dsn, VARIANTS[variant], reads=args.reads, workers=args.workers,
                                     readers=args.readers, writers=args.writers, reads_per_write=args.reads_per_write,
                                     grace=args.grace, seed=args.seed, env=env,
                                     after=(lambda server: seen.update(_misses(server))) if env else None)
                print(report.line(), f"(wall {time.monotonic() - t0:.1f}s)", flush=True)
                if seen:
                    read = seen["replica"] + seen["primary"]
                    print(f"    misses: {seen}; the replica served {seen['replica']} of {read} "
                          f"({seen['replica'] / max(1, read):.1%})", flush=True)
                for line in report.examples:
                    print("   ", line)
                bad = report.stale + report.wrong + report.errors
                failed |= (bad == 0) if args.expect_stale else (bad > 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
