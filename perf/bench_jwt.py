"""The cost of verified identity on cached hits (issue 13), from one interleaved run.

One stack (2 gunicorn workers, FRAISESHM_JWT_SECRET set) serves the same cached
``user(id)`` hit three ways, and a second stack without the per-worker token
cache shows what the cache saves:

- ``jwt off``: no Authorization header (anonymous, nothing verified);
- ``jwt off, same-size header``: an unverified header as long as the token,
  so the cost of parsing a longer request is told apart from verification;
- ``jwt on``: a valid HS256 bearer token on every request: the worker looks the
  token up in its bounded LRU of verified tokens (signature checked once, exp
  honoured);
- ``jwt on, private``: the same token on a private query (``drafts``), a hit
  keyed by the identity's scope;
- ``jwt on, no token cache``: FRAISESHM_JWT_CACHE_SIZE=0, pyjwt verifies the
  signature and claims on every request.

Rounds are interleaved (the order rotates) so drifting machine load hits every
variant alike. Target: ``jwt on`` at most 10 % below ``jwt off``.

    .venv/bin/python perf/bench_jwt.py [--duration 5] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import httpx
import jwt

import common
from bench_uncached import USER_QUERY, user_ids

DRAFTS = "{ drafts(limit: 5) { id title } }"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=str, default="")
    args = parser.parse_args()

    with common.database(seed_users=2_000) as cluster:
        (uid,) = user_ids(cluster, 1)
        token = jwt.encode({"sub": uid, "exp": int(time.time()) + 3600}, common.JWT_SECRET, algorithm="HS256")
        auth = {"Authorization": f"Bearer {token}"}
        user_body = json.dumps({"query": USER_QUERY, "variables": {"id": uid}}).encode()
        drafts_body = json.dumps({"query": DRAFTS}).encode()
        env = {"FRAISESHM_DATABASE_DSN": cluster.dsn, "FRAISESHM_DB_ROLE": "blog_web"}
        with common.gunicorn(env=env) as stack, \
                common.gunicorn(env={**env, "FRAISESHM_JWT_CACHE_SIZE": "0"}) as uncached:
            variants = {
                "jwt off": (stack, user_body, {}),
                # the bytes of the header without the verification: what HTTP parsing alone costs
                "jwt off, same-size header": (stack, user_body, {"X-Padding": "x" * len(auth["Authorization"])}),
                "jwt on": (stack, user_body, auth),
                "jwt on, private": (stack, drafts_body, auth),
                "jwt on, no token cache": (uncached, user_body, auth),
            }
            for name, (s, body, headers) in variants.items():
                for _ in range(3):  # a miss, then hits (both workers)
                    r = httpx.post(s.url + "/graphql", content=body,
                                   headers={"Content-Type": "application/json", **headers})
                assert r.status_code == 200 and r.headers["X-Cache"] == "HIT", (name, r.status_code, r.headers)
                if name == "jwt on, private":
                    assert r.json()["data"]["drafts"], "the user's own drafts (row-level security)"
            results: dict[str, list[common.WrkResult]] = {name: [] for name in variants}
            names = list(variants)
            for i in range(args.rounds):
                for name in names[i % len(names):] + names[: i % len(names)]:
                    s, body, headers = variants[name]
                    results[name].append(common.wrk(s.url + "/graphql", body, duration=args.duration, headers=headers))
        medians = {name: common.median_of(runs) for name, runs in results.items()}
        print(f"{'cached hit':<26}{'req/s':>10}{'spread':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        for name, r in medians.items():
            print(f"{name:<26}{r.requests_per_s:>10.0f}{common.spread([x.requests_per_s for x in results[name]]):>8}"
                  f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.non_2xx:>8}")
        off = medians["jwt off"].requests_per_s
        ratios = [a.requests_per_s / b.requests_per_s for a, b in zip(results["jwt on"], results["jwt off"], strict=True)]
        cost = 1 - statistics.median(ratios)
        print(f"jwt on vs off: {100 * (1 - medians['jwt on'].requests_per_s / off):+.1f} % by medians, "
              f"{100 * cost:+.1f} % by the median of per-round ratios (target: at most 10 % lower)")
        padded = [a.requests_per_s / b.requests_per_s
                  for a, b in zip(results["jwt on"], results["jwt off, same-size header"], strict=True)]
        print(f"jwt on vs an equally long unverified header: {100 * (1 - statistics.median(padded)):+.1f} % "
              f"(the verification itself; the rest is parsing a longer request)")
        print(f"without the token cache: {100 * (1 - medians['jwt on, no token cache'].requests_per_s / off):+.1f} %; "
              f"private (scoped) hits: {100 * (1 - medians['jwt on, private'].requests_per_s / off):+.1f} %")
        print(f"medians of {args.rounds} interleaved rounds of {args.duration:.0f}s, 32 connections, "
              f"2 workers per stack, {os.cpu_count()} cores")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({name: r.__dict__ for name, r in medians.items()} | {"paired_cost": cost, "ratios": ratios},
                          f, indent=2)


if __name__ == "__main__":
    main()
