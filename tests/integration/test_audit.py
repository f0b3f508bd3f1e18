"""Cascade audit: a mutation function that omits an entity from its cascade is caught.

updateUserBroken (schemas/broken_cascade.*) runs fn_update_user and empties
its cascade's updated list. The server reads what the change triggers
recorded in the same transaction, so every such call must be: recorded in
fraiseshm.audit as a failure with the missing entity, counted in the arena
(Counter.CASCADE_FAILURES), repaired before the response (the next read is
fresh, with the listener off so it cannot be what repaired it), and alerted
on. 10,000 correct mutations of several kinds, sent concurrently among 1,000
broken ones, must raise no failure at all.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from fraiseshm.arena import Arena
from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import ROOT, USER_QUERY, Server, graphql

HERE = Path(__file__).parent
# The figures; a repeat loop may lower them through the environment.
BROKEN = int(os.environ.get("FRAISESHM_TEST_AUDIT_BROKEN", 1_000))
CORRECT = int(os.environ.get("FRAISESHM_TEST_AUDIT_CORRECT", 10_000))
CONCURRENCY = 32
TOKEN = "audit-test-token"

UPDATE_USER = "mutation($input: UpdateUserInput!) { updateUser(input: $input) { success } }"
UPDATE_BROKEN = "mutation($input: UpdateUserInput!) { updateUserBroken(input: $input) { success } }"
UPDATE_POST = "mutation($input: UpdatePostInput!) { updatePost(input: $input) { success } }"
CREATE_COMMENT = "mutation($input: CreateCommentInput!) { createComment(input: $input) { success } }"
CREATE_POST = "mutation($input: CreatePostInput!) { createPost(input: $input) { success } }"


@pytest.fixture(scope="module")
def server(pg_cluster: EmbeddedCluster, pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    pg_cluster.psql((HERE / "schemas/broken_cascade.sql").read_text())
    sdl = tmp_path_factory.mktemp("sdl") / "blog_broken.graphql"
    sdl.write_text((ROOT / "examples/blog/schema.graphql").read_text() + "\n"
                   + (HERE / "schemas/broken_cascade.graphql").read_text())
    env = {
        "FRAISESHM_SCHEMA_SDL": str(sdl),
        "FRAISESHM_ADMIN_TOKEN": TOKEN,
        "FRAISESHM_LISTEN_CHANGES": "false",  # the repair must come from the verifier alone
        "FRAISESHM_POOL_MAX_SIZE": "16",
    }
    with Server(pg_dsn, workers=2, env=env, tag="audit") as srv:
        yield srv


async def _max_id(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('fraiseshm.audit')") is None:
            return 0
        return await conn.fetchval("SELECT coalesce(max(id), 0) FROM fraiseshm.audit")
    finally:
        await conn.close()


async def _await_rows(dsn: str, after: int, expected: int, deadline: float = 60.0) -> list[asyncpg.Record]:
    """Until `expected` audit rows newer than `after` exist (the writers batch them)."""
    conn = await asyncpg.connect(dsn)
    try:
        end = time.monotonic() + deadline
        while True:
            try:
                n = await conn.fetchval("SELECT count(*) FROM fraiseshm.audit WHERE id > $1", after)
            except asyncpg.UndefinedTableError:
                n = 0
            if n >= expected or time.monotonic() > end:
                break
        return await conn.fetch(
            "SELECT mutation, verdict, failure, details::text AS details, transaction_id FROM fraiseshm.audit WHERE id > $1",
            after)
    finally:
        await conn.close()


def _await_log(server: Server, needle: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if needle in server.log_path.read_text(errors="replace"):
            return
    raise AssertionError(f"{needle!r} never logged:\n{server.log()}")


def _counters(server: Server) -> dict[str, int]:
    arena = Arena.attach(server.arena_name)
    try:
        return arena.stats()["totals"]
    finally:
        arena.close()


def test_broken_cascade_is_detected_repaired_and_alerted(server: Server, reset_db: EmbeddedCluster, pg_dsn: str) -> None:
    user_id = reset_db.psql("SELECT id FROM tb_user ORDER BY pk_user LIMIT 1").strip()
    before = asyncio.run(_max_id(pg_dsn))
    with server.client() as http:
        for _ in range(3):  # cached on both workers, whichever answers
            graphql(http, USER_QUERY, {"id": user_id})
        assert graphql(http, USER_QUERY, {"id": user_id}).headers["X-Cache"] == "HIT"
        r = graphql(http, UPDATE_BROKEN, {"input": {"id": user_id, "name": "renamed by a broken function"}})
        assert r.json() == {"data": {"updateUserBroken": {"success": True}}}
        # Repaired before the response: the very next read is fresh (no listener runs).
        for _ in range(4):
            assert graphql(http, USER_QUERY, {"id": user_id}).json()["data"]["user"]["name"] == "renamed by a broken function"
    _await_log(server, "ALERT cascade failure rate")
    rows = asyncio.run(_await_rows(pg_dsn, before, 1))
    assert [(r["mutation"], r["verdict"], r["failure"]) for r in rows] == [("updateUserBroken", "unlisted", True)]
    assert f"r:public.tb_user:{user_id}" in rows[0]["details"]

    with server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        body = admin.get("/admin/audit", params={"failures": "true", "limit": 5}).json()["data"]
    assert body["records"][0]["mutation"] == "updateUserBroken"
    assert body["records"][0]["details"]["unlisted"] == [f"r:public.tb_user:{user_id}"]


async def _storm(url: str, users: list[str], posts: list[str]) -> tuple[int, int, list[str]]:
    """BROKEN broken + CORRECT correct mutations, shuffled, CONCURRENCY at a time."""
    rnd = random.Random(7)
    jobs: list[tuple[str, dict]] = []
    for i in range(BROKEN):
        jobs.append((UPDATE_BROKEN, {"input": {"id": rnd.choice(users), "name": f"broken {i}"}}))
    for i in range(CORRECT):
        kind = i % 10
        if kind < 6:
            jobs.append((UPDATE_USER, {"input": {"id": rnd.choice(users), "name": f"correct {i}"}}))
        elif kind < 8:
            jobs.append((UPDATE_POST, {"input": {"id": rnd.choice(posts), "title": f"title {i}"}}))
        elif kind < 9:
            jobs.append((CREATE_COMMENT, {"input": {"postId": rnd.choice(posts), "authorId": rnd.choice(users),
                                                    "body": f"comment {i}"}}))
        else:
            jobs.append((CREATE_POST, {"input": {"authorId": rnd.choice(users), "title": f"post {i}", "body": "b"}}))
    rnd.shuffle(jobs)
    todo = iter(jobs)
    ok = failed = 0
    errors: list[str] = []

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal ok, failed
        for query, variables in todo:
            # Connection: close: a keep-alive connection the server closes just as
            # the next request goes out fails that request (seen under load).
            r = await client.post("/graphql", json={"query": query, "variables": variables},
                                  headers={"Connection": "close"})
            data = r.json().get("data") or {}
            if r.status_code == 200 and all(v and v["success"] for v in data.values()) and data:
                ok += 1
            else:
                failed += 1
                errors.append(f"{r.status_code} {r.text[:300]}")

    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return ok, failed, errors[:5]


def test_every_injected_failure_recorded_and_no_false_alarm(server: Server, reset_db: EmbeddedCluster, pg_dsn: str) -> None:
    users = reset_db.psql("SELECT id FROM tb_user ORDER BY pk_user").split()
    posts = reset_db.psql("SELECT id FROM tb_post ORDER BY pk_post LIMIT 300").split()
    before = asyncio.run(_max_id(pg_dsn))
    counters_before = _counters(server)
    started = time.perf_counter()
    ok, failed, errors = asyncio.run(_storm(server.url, users, posts))
    elapsed = time.perf_counter() - started
    assert (ok, failed) == (BROKEN + CORRECT, 0), (errors, server.log())
    rows = asyncio.run(_await_rows(pg_dsn, before, BROKEN + CORRECT))
    by_kind = {key: len(list(group)) for key, group in itertools.groupby(
        sorted((r["mutation"] == "updateUserBroken", r["failure"]) for r in rows))}
    detected = by_kind.get((True, True), 0)
    false_alarms = by_kind.get((False, True), 0)
    print(f"\n{BROKEN + CORRECT} mutations in {elapsed:.1f} s ({(BROKEN + CORRECT) / elapsed:.0f}/s): "
          f"{detected}/{BROKEN} injected failures recorded, {false_alarms} false alarms on {CORRECT} correct")
    assert len(rows) == BROKEN + CORRECT, (len(rows), server.log())
    assert detected == BROKEN
    assert by_kind.get((True, False), 0) == 0
    assert false_alarms == 0
    assert all(r["transaction_id"] for r in rows)
    counters = _counters(server)
    assert counters["cascade_failures"] - counters_before["cascade_failures"] == BROKEN
    assert counters["mutations"] - counters_before["mutations"] == BROKEN + CORRECT
