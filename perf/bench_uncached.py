"""Baseline of the uncached path (issue 3): `user(id)` through fraiseshm with the
cache off, beside a constant-bytes endpoint (perf/const_app.py) served by the
same gunicorn configuration, measured in one run with wrk. Every request goes
to PostgreSQL; this is the figure the cache must beat.

    .venv/bin/python perf/bench_uncached.py [--duration 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import random

import common

USER_QUERY = "query($id: ID!) { user(id: $id) { id name email } }"


def user_ids(cluster: common.EmbeddedCluster, n: int) -> list[str]:
    return cluster.psql(f"SELECT id FROM tb_user ORDER BY pk_user LIMIT {n}").split()


def random_ids_lua(ids: list[str]) -> str:
    """wrk script: POST user(id) with an id drawn uniformly from ids."""
    table = ",".join(f'"{i}"' for i in ids)
    return (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"local ids = {{{table}}}\n"
        "math.randomseed(7)\n"
        "request = function()\n"
        "  local id = ids[math.random(#ids)]\n"
        f"  return wrk.format(nil, nil, nil, '{{\"query\":\"{USER_QUERY.replace('$', '$')}\",\"variables\":{{\"id\":\"' .. id .. '\"}}}}')\n"
        "end\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=str, default="")
    args = parser.parse_args()

    with common.database(seed_users=10_000) as cluster:
        ids = user_ids(cluster, 10_000)
        random.seed(1)
        body = json.dumps({"query": USER_QUERY, "variables": {"id": ids[0]}}).encode()
        const, uncached = [], []
        with common.gunicorn(env={"FRAISESHM_DATABASE_DSN": cluster.dsn, "FRAISESHM_CACHE_ENABLED": "false"}) as fs, \
                common.gunicorn("const_app:app") as cs:
            for _ in range(args.rounds):  # interleaved A B A B
                const.append(common.wrk(cs.url + "/graphql", body, duration=args.duration))
                uncached.append(common.wrk(fs.url + "/graphql", lua=random_ids_lua(ids), duration=args.duration))
        c, u = common.median_of(const), common.median_of(uncached)
        print(f"{'endpoint':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        print(f"{'constant bytes (baseline)':<28}{c.requests_per_s:>10.0f}{c.p50_ms:>9.2f}{c.p99_ms:>9.2f}{c.non_2xx:>8}")
        print(f"{'user(id) uncached':<28}{u.requests_per_s:>10.0f}{u.p50_ms:>9.2f}{u.p99_ms:>9.2f}{u.non_2xx:>8}")
        print(f"ratio uncached / constant: {u.requests_per_s / c.requests_per_s:.3f} "
              f"(medians of {args.rounds} interleaved rounds of {args.duration:.0f}s)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"constant": c.__dict__, "uncached": u.__dict__}, f, indent=2)


if __name__ == "__main__":
    main()
