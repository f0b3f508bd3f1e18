"""Thundering herd (issue 6): 200 concurrent requests on a freshly invalidated hot
key, with request coalescing on vs off, in one run. Database executions are
counted by PostgreSQL (pg_stat_statements), not by fraiseshm.

    .venv/bin/python perf/bench_herd.py [--herd 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import common

# A hot key whose query is not trivial: a user page with posts (one SQL statement).
QUERY = "query($id: ID!) { user(id: $id) { id name email posts { id title body } } }"
RENAME = "mutation($id: ID!, $n: String) { updateUser(input: {id: $id, name: $n}) { success } }"


def executions(cluster: common.EmbeddedCluster) -> int:
    out = cluster.psql("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '%FROM v_user WHERE id%'")
    return int(out.strip() or 0)


async def herd(port: int, uid: str, size: int, round_no: int) -> tuple[list[float], set[bytes]]:
    conns = await asyncio.gather(*(common.RawConnection.open(port) for _ in range(size)))
    try:
        rename = json.dumps({"query": RENAME, "variables": {"id": uid, "n": f"herd {round_no}"}}).encode()
        conns[0].send(rename)
        status, body = await conns[0].receive()
        assert status == 200 and json.loads(body)["data"]["updateUser"]["success"], body
        query = json.dumps({"query": QUERY, "variables": {"id": uid}}).encode()

        async def one(conn: common.RawConnection, t0: float) -> tuple[float, bytes]:
            status, body = await conn.receive()
            assert status == 200 and json.loads(body)["data"]["user"]["name"] == f"herd {round_no}", body
            return (time.perf_counter() - t0) * 1000, body

        t0 = time.perf_counter()
        for conn in conns:
            conn.send(query)
        results = await asyncio.gather(*(one(c, t0) for c in conns))
    finally:
        for conn in conns:
            conn.close()
    return [ms for ms, _ in results], {body for _, body in results}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--herd", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with common.database(seed_users=10_000) as cluster:
        uid = cluster.psql("SELECT id FROM tb_user ORDER BY pk_user LIMIT 1").strip()
        env = {"FRAISESHM_DATABASE_DSN": cluster.dsn}
        figures: dict[str, dict[str, list[float]]] = {"on": {"exec": [], "lat": []}, "off": {"exec": [], "lat": []}}
        with common.gunicorn(env=env) as on, common.gunicorn(env={**env, "FRAISESHM_COALESCE": "false"}) as off:
            for round_no in range(args.rounds):  # interleaved: on, off, on, off ...
                for name, stack in (("on", on), ("off", off)):
                    before = executions(cluster)
                    latencies, bodies = asyncio.run(herd(int(stack.url.rsplit(':', 1)[1]), uid, args.herd, round_no * 2 + (name == "off")))
                    figures[name]["exec"].append(executions(cluster) - before)
                    figures[name]["lat"] += latencies
                    assert len(bodies) == 1, "every member of a herd must get the same bytes"

    print(f"herd of {args.herd} concurrent requests on a just-invalidated key, {args.rounds} rounds, 2 workers")
    print(f"{'coalescing':<12}{'DB exec/herd (median)':>24}{'min':>6}{'max':>6}{'p50 ms':>9}{'p99 ms':>9}")
    for name in ("on", "off"):
        ex, lat = figures[name]["exec"], figures[name]["lat"]
        print(f"{name:<12}{statistics.median(ex):>24.0f}{min(ex):>6.0f}{max(ex):>6.0f}{pct(lat, 50):>9.1f}{pct(lat, 99):>9.1f}")
    on_ex, off_ex = statistics.median(figures["on"]["exec"]), statistics.median(figures["off"]["exec"])
    print(f"DB executions off / on: {off_ex / max(on_ex, 1):.1f}x;  p99 on / off: "
          f"{pct(figures['on']['lat'], 99) / pct(figures['off']['lat'], 99):.2f}")


if __name__ == "__main__":
    main()
