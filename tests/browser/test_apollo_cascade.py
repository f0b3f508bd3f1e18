"""Two browser tabs on Apollo Client stay coherent with fraiseshm: one from its mutation's
response, the other from the cascadeUpdates push; a plain SQL UPDATE reaches both.

Real parts only: the embedded PostgreSQL, gunicorn with 2 workers, Debian's Chromium
(headless, playwright-core), Apollo Client 4 from npm loaded as ES modules through an
import map, clients/apollo-cascade.mjs. The page is served by the driver on the
server's origin (tests/browser/apollo_driver.mjs).

Requests are counted per tab from the browser's own network events: after the
mutations a tab may only refetch the queries whose root fields a cascade it applied
evicted; the query on an unrelated user is never refetched, and the plain SQL UPDATE
costs no request at all (the pushed entity is written into the cache).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.browser.harness import Driver, cascade_selection, npm_ci, require_tools
from tests.integration.server import Server

FIELD_OF = {"UsersList": "users", "PostDetail": "post", "VictimPosts": "posts", "OtherUser": "user"}
QUERIES = sorted(FIELD_OF)


@pytest.fixture(scope="module")
def browser_ready() -> None:
    require_tools()
    npm_ci()


def _pick(http: Any) -> dict[str, str]:
    users = http.post("/graphql", json={"query": "{ users(limit: 20) { id } }"}).json()["data"]["users"]
    author = users[3]["id"]
    post = http.post("/graphql", json={"query": "query($a: ID!) { posts(authorId: $a, limit: 1) { id } }",
                                       "variables": {"a": author}}).json()["data"]["posts"][0]["id"]
    return {"victim": users[1]["id"], "renamed": users[2]["id"], "other": users[15]["id"], "postId": post}


def _refetched_ok(tab: str, ops: list[str], applied: list[dict[str, Any]]) -> None:
    evicted = {name for a in applied for name in a["invalidated"]}
    for op, n in Counter(ops).items():
        assert op in FIELD_OF, f"tab {tab} sent an unexpected operation {op}"
        assert FIELD_OF[op] in evicted, (
            f"tab {tab} refetched {op} although no cascade it applied evicted {FIELD_OF[op]} (evicted: {sorted(evicted)})")
        # Each transaction's invalidations are applied once per cache (response and push alike): a
        # query refetches at most once per cascade that named it (the server's hints name lists
        # whose content a change may alter; a normalised single object is updated in place).
        naming = sum(1 for a in applied if FIELD_OF[op] in a["invalidated"])
        assert n <= naming, f"tab {tab} refetched {op} {n} times for {naming} cascade(s) naming it"


def run_scenario(pg_cluster: Any, tmp_path: Path, *, push: bool, timeout_ms: int = 10_000) -> dict[str, Any]:
    with Server(pg_cluster.dsn, workers=2, tag="br") as srv, srv.client() as http:
        page = {**_pick(http), "cascadeSelection": cascade_selection(http)}
        config = {"server": srv.url, "mode": "scenario", "push": push, "page": page, "outDir": str(tmp_path),
                  "newTitle": "edited in tab A", "newName": "renamed by plain SQL",
                  "timeoutMs": timeout_ms}
        with Driver(config) as driver:
            loaded = driver.expect("loaded")
            mutated = driver.expect("mutated")
            driver.expect("need-sql")
            pg_cluster.psql(f"UPDATE tb_user SET name = 'renamed by plain SQL' WHERE id = '{page['renamed']}'")
            driver.reply()
            sql = driver.expect("sql-applied")
        return {"page": page, "loaded": loaded, "mutated": mutated, "sql": sql}


def test_two_tabs_follow_a_mutation_and_plain_sql(pg_cluster: Any, reset_db: Any, browser_ready: None,
                                                  tmp_path: Path) -> None:
    r = run_scenario(pg_cluster, tmp_path, push=True)
    print(f"\nbrowser test output (screenshots): {tmp_path}")
    loaded, mutated, sql = r["loaded"], r["mutated"], r["sql"]

    # Each tab loaded each query once.
    for tab in "AB":
        assert sorted(loaded["requests"][tab]) == QUERIES, loaded["requests"][tab]

    # Both tabs show the new state: the user gone, their posts gone, the post's new title.
    assert mutated["waits"] == {"A": "ok", "B": "ok"}, (mutated["waits"], mutated["state"], mutated["applied"])
    a_ops, b_ops = mutated["requests"]["A"], mutated["requests"]["B"]
    print(f"requests after the mutations: tab A {a_ops}, tab B {b_ops}")
    (tmp_path / "applied.json").write_text(json.dumps(mutated["applied"], indent=1))
    assert Counter(a_ops)["DeleteUser"] == 1 and Counter(a_ops)["UpdatePost"] == 1, a_ops
    _refetched_ok("A", [op for op in a_ops if op not in ("DeleteUser", "UpdatePost")], mutated["applied"]["A"])
    _refetched_ok("B", b_ops, mutated["applied"]["B"])
    for tab in "AB":
        assert "OtherUser" not in mutated["requests"][tab], f"tab {tab} refetched an unrelated query"
    # A applied the cascade from its response, B from the push (B sent no mutation).
    assert any(a["source"] == "response" for a in mutated["applied"]["A"])
    assert not [a for a in mutated["applied"]["B"] if a["source"] == "response"]
    assert any(a["source"] == "push" and f"User:{r['page']['victim']}" in a["deleted"] for a in mutated["applied"]["B"])

    # The plain SQL UPDATE reached both tabs, through the push, without a request.
    assert sql["waits"] == {"A": "ok", "B": "ok"}, (sql["waits"], sql["state"])
    print(f"requests after the plain SQL UPDATE: tab A {sql['requests']['A']}, tab B {sql['requests']['B']}")
    assert sql["requests"] == {"A": [], "B": []}
    for shot in sql["screenshots"].values():
        assert Path(shot).stat().st_size > 1000


def test_without_the_push_the_other_tab_stays_stale(pg_cluster: Any, reset_db: Any, browser_ready: None,
                                                    tmp_path: Path) -> None:
    """The control: the same scenario with the page not subscribed. Tab A still follows its own
    response, tab B keeps showing the deleted user: the push is what keeps B coherent."""
    r = run_scenario(pg_cluster, tmp_path, push=False, timeout_ms=3_000)  # bounded wait for what must not come
    assert r["mutated"]["waits"]["A"] == "ok"
    assert r["mutated"]["waits"]["B"].startswith("timed out")
    assert any(u["id"] == r["page"]["victim"] for u in r["mutated"]["state"]["B"]["users"]["users"])
    assert r["sql"]["waits"]["B"].startswith("timed out")
