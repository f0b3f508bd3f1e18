"""Push latency in a real browser: tab A's mutation response -> tab B's cache updated by the push.

    .venv/bin/python -m tests.browser.push_latency [--mutations 200] [--workers 2]

Starts a private PostgreSQL (blog schema, seeded) and gunicorn, opens two
Chromium tabs on Apollo Client (tests/browser/apollo/), runs N updatePost
mutations one after the other from tab A, and for each takes, on the
browser's one clock (performance.timeOrigin + performance.now()):

    response -> push   tab A's client.mutate resolved .. tab B applied the pushed cascade
    send -> push       tab A started the mutation    .. tab B applied it

A negative response -> push means B had it before A's response was parsed:
the NOTIFY leaves before the HTTP response is written. Prints p50 / p90 /
p99 / max in ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from fraiseshm.db.embedded import EmbeddedCluster
from tests.browser.harness import Driver, cascade_selection, npm_ci, require_tools
from tests.integration.server import Server

ROOT = Path(__file__).resolve().parents[2]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutations", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    require_tools()
    npm_ci()
    directory = Path(tempfile.mkdtemp(prefix="fraiseshm-push-latency-"))
    cluster = EmbeddedCluster(directory, fast=True)
    try:
        cluster.ensure([ROOT / "examples/blog/schema.sql", ROOT / "examples/blog/private.sql"], seed_users=50)
        with Server(cluster.dsn, workers=args.workers, tag="lat") as srv, srv.client() as http:
            users = http.post("/graphql", json={"query": "{ users(limit: 20) { id } }"}).json()["data"]["users"]
            post = http.post("/graphql", json={"query": "query($a: ID!) { posts(authorId: $a, limit: 1) { id } }",
                                               "variables": {"a": users[3]["id"]}}).json()["data"]["posts"][0]["id"]
            page = {"victim": users[1]["id"], "renamed": users[2]["id"], "other": users[15]["id"], "postId": post,
                    "cascadeSelection": cascade_selection(http)}
            config = {"server": srv.url, "mode": "latency", "push": True, "page": page, "n": args.mutations,
                      "outDir": str(directory), "timeoutMs": 10_000}
            with Driver(config) as driver:
                driver.expect("loaded")
                results = driver.expect("latency")["results"]
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
    after_response = [r["pushed"] - r["response"] for r in results]
    after_send = [r["pushed"] - r["sent"] for r in results]
    print(f"{len(results)} updatePost mutations, {args.workers} gunicorn workers, Chromium + Apollo Client")
    for name, values in (("response -> push", after_response), ("send -> push", after_send)):
        print(f"  {name:17s} p50 {statistics.median(values):6.2f} ms  p90 {pct(values, 90):6.2f} ms  "
              f"p99 {pct(values, 99):6.2f} ms  max {max(values):6.2f} ms")


if __name__ == "__main__":
    main()
