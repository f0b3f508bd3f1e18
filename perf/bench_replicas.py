"""Uncached reads with one streaming replica vs none (issue 18), one run.

`user(id)` with the cache off (every request reads PostgreSQL), through
gunicorn (2 workers), measured with wrk: the primary alone, then the primary
plus one replica (pg_basebackup -R, no apply delay, nothing written during the
run) that serves the misses; interleaved rounds, medians. Everything shares the
machine's cores: a replica on the same host adds work, it cannot add capacity;
the figure shows the cost of the replica path (one more round trip per
statement: the replay position read before the data) and that the reads do
move to the replica.

    .venv/bin/python perf/bench_replicas.py [--duration 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import common
from bench_uncached import random_ids_lua, user_ids

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fraiseshm.db.replicas import LsnBoard  # noqa: E402
from tests.replica_harness import StreamingReplica  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with common.database(seed_users=10_000) as cluster:
        ids = user_ids(cluster, 10_000)
        replica = StreamingReplica(cluster, 0).create()
        try:
            base = {"FRAISESHM_DATABASE_DSN": cluster.dsn, "FRAISESHM_CACHE_ENABLED": "false"}
            lua = random_ids_lua(ids)
            none, one = [], []
            with common.gunicorn(env=base) as p, \
                    common.gunicorn(env={**base, "FRAISESHM_REPLICA_DSNS": replica.dsn}) as r:
                for _ in range(args.rounds):  # interleaved A B A B
                    none.append(common.wrk(p.url + "/graphql", lua=lua, duration=args.duration))
                    one.append(common.wrk(r.url + "/graphql", lua=lua, duration=args.duration))
                board = LsnBoard.attach(r.arena_name)
                served = board.totals()
                board.close()
        finally:
            replica.destroy()
    a, b = common.median_of(none), common.median_of(one)
    print(f"{'uncached user(id)':<24}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    print(f"{'primary only':<24}{a.requests_per_s:>10.0f}{a.p50_ms:>9.2f}{a.p99_ms:>9.2f}{a.non_2xx:>9}")
    print(f"{'primary + 1 replica':<24}{b.requests_per_s:>10.0f}{b.p50_ms:>9.2f}{b.p99_ms:>9.2f}{b.non_2xx:>9}")
    print(f"misses by where they were read: {served}; ratio replica / none: "
          f"{b.requests_per_s / a.requests_per_s:.2f}x req/s, {b.p50_ms / a.p50_ms:.2f}x p50 "
          f"(medians of {args.rounds} interleaved rounds of {args.duration:.0f}s, wrk 32 connections)")


if __name__ == "__main__":
    main()
