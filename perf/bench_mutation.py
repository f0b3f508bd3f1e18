"""Mutation latency with cascade verification + audit trail + invalidation on vs off.

Proves: checking every cascade against what the change triggers recorded (one
extra CTE in the mutation's own statement), writing the audit trail (batched,
off the request path) and invalidating the arena add under 10 % to a
mutation's latency.

Three stacks on one private PostgreSQL, started together and measured
interleaved (rounds of ROUND mutations each, in turn) so that the noise of
this small machine falls on all of them alike:
    on       audit_enabled, cache on (verify + audit + invalidate + listener)
    no-audit cache on, audit off (invalidate only)
    off      audit off, cache off (the function call alone)
Each round sends updateUser / updatePost mutations at CONCURRENCY in flight.
Prints p50 / p99 per stack and the ratios; exits 1 if on/off p50 > 1.10.

    .venv/bin/python perf/bench_mutation.py [--rounds 20] [--round 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from contextlib import ExitStack

import httpx

from common import database, gunicorn, psql

CONCURRENCY = 8
UPDATE_USER = "mutation($i: UpdateUserInput!) { updateUser(input: $i) { success } }"
UPDATE_POST = "mutation($i: UpdatePostInput!) { updatePost(input: $i) { success } }"

STACKS = {
    "on": {"FRAISESHM_AUDIT_ENABLED": "true", "FRAISESHM_CACHE_ENABLED": "true"},
    "no-audit": {"FRAISESHM_AUDIT_ENABLED": "false", "FRAISESHM_CACHE_ENABLED": "true"},
    "off": {"FRAISESHM_AUDIT_ENABLED": "false", "FRAISESHM_CACHE_ENABLED": "false"},
}


async def _round(url: str, n: int, users: list[str], posts: list[str], rnd: random.Random, out: list[float]) -> None:
    jobs = []
    for i in range(n):
        if i % 2:
            jobs.append((UPDATE_USER, {"i": {"id": rnd.choice(users), "name": f"bench {rnd.random()}"}}))
        else:
            jobs.append((UPDATE_POST, {"i": {"id": rnd.choice(posts), "title": f"bench {rnd.random()}"}}))
    todo = iter(jobs)
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        async def worker() -> None:
            for query, variables in todo:
                started = time.perf_counter()
                r = await client.post("/graphql", json={"query": query, "variables": variables})
                out.append((time.perf_counter() - started) * 1000)
                if r.status_code != 200 or "errors" in r.json():
                    raise SystemExit(f"mutation failed on {url}: {r.text[:300]}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--round", type=int, default=200, help="mutations per round per stack")
    args = parser.parse_args()
    with database(seed_users=2000) as db, ExitStack() as stack:
        users = psql(db.dsn, "SELECT id FROM tb_user").split()
        posts = psql(db.dsn, "SELECT id FROM tb_post LIMIT 5000").split()
        urls = {name: stack.enter_context(gunicorn(env={"FRAISESHM_DATABASE_DSN": db.dsn, **env})).url
                for name, env in STACKS.items()}
        rnd = random.Random(1)
        samples: dict[str, list[float]] = {name: [] for name in STACKS}
        for name, url in urls.items():  # warm-up: pools, prepared statements, audit table
            asyncio.run(_round(url, 50, users, posts, rnd, []))
        for r in range(args.rounds):
            order = list(urls) if r % 2 == 0 else list(reversed(urls))
            for name in order:
                asyncio.run(_round(urls[name], args.round, users, posts, rnd, samples[name]))
        audited = psql(db.dsn, "SELECT count(*) FILTER (WHERE NOT failure) || ' ok, ' || count(*) FILTER (WHERE failure) "
                               "|| ' failures' FROM fraiseshm.audit")
    figures = {}
    for name, ms in samples.items():
        ms.sort()
        figures[name] = (statistics.median(ms), ms[int(len(ms) * 0.99) - 1])
        print(f"{name:9s} n={len(ms):6d}  p50 {figures[name][0]:7.2f} ms  p99 {figures[name][1]:7.2f} ms")
    on, no_audit, off = figures["on"], figures["no-audit"], figures["off"]
    print(f"on / off       p50 x{on[0] / off[0]:.3f}  p99 x{on[1] / off[1]:.3f}")
    print(f"on / no-audit  p50 x{on[0] / no_audit[0]:.3f}  p99 x{on[1] / no_audit[1]:.3f}  (the audit's own cost)")
    print(f"audit trail: {audited}")
    return 0 if on[0] / off[0] <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
