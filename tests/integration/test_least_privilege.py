"""The server runs as a least-privileged role (deploy/postgresql/README.md).

The role gets exactly what `fraiseshm db grant ROLE --sdl schema.graphql`
grants: the kit's part (USAGE on schema fraiseshm, the notification key, the
audit table), SELECT on the SDL's views and EXECUTE on its mutation functions
(SECURITY DEFINER: no table privileges). Nothing on
the tables, no CREATE anywhere. A real server on that role answers queries
from the cache, runs a mutation, writes its audit row into fraiseshm.audit,
and its listener verifies the triggers' signed notifications.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from fraiseshm.arena import Arena
from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import ROOT, USER_QUERY, Server, graphql

VIEWS = ("v_user", "v_post", "v_comment")
FUNCTIONS = ("fn_create_user", "fn_update_user", "fn_delete_user", "fn_create_post", "fn_update_post",
             "fn_delete_post", "fn_create_comment", "fn_delete_comment")
CREATE_USER = "mutation($i: CreateUserInput!) { createUser(input: $i) { success data { id name } } }"


@pytest.fixture(scope="module")
def role(pg_cluster: EmbeddedCluster, pg_dsn: str) -> Iterator[str]:
    from tests.integration.test_cli import cli

    name = f"fraiseshm_app_{os.getpid()}"
    pg_cluster.psql(f"DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN")
    r = cli("db", "--dsn", pg_dsn, "grant", name, "--sdl", str(ROOT / "examples/blog/schema.graphql"))
    assert r.returncode == 0, r.stderr
    assert "v_comment, v_draft, v_post, v_user" in r.stdout and "fn_update_user" in r.stdout
    try:
        yield name
    finally:
        pg_cluster.psql(f"DROP OWNED BY {name}; DROP ROLE {name}")


def test_the_role_has_what_it_needs_and_nothing_more(pg_dsn: str, role: str) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            for view in VIEWS:
                assert await conn.fetchval("SELECT has_table_privilege($1, $2, 'SELECT')", role, view)
            for fn in FUNCTIONS:
                assert await conn.fetchval("SELECT has_function_privilege($1, $2, 'EXECUTE')", role, fn + "(jsonb)")
            for table in ("tb_user", "tb_post", "tb_comment", "fraiseshm.notify_key"):
                for priv in ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "TRIGGER"):
                    assert not await conn.fetchval("SELECT has_table_privilege($1, $2, $3)", role, table, priv)
            for table in ("tb_user", "tb_post", "tb_comment"):
                assert not await conn.fetchval("SELECT has_table_privilege($1, $2, 'SELECT')", role, table)
            for schema in ("public", "fraiseshm"):
                assert not await conn.fetchval("SELECT has_schema_privilege($1, $2, 'CREATE')", role, schema)
            assert not await conn.fetchval("SELECT has_database_privilege($1, current_database(), 'CREATE')", role)
            for fn in ("fraiseshm._sign(text)", "fraiseshm.touch(regclass[])", "fraiseshm.track(regclass,name,name[])",
                       "fraiseshm.rotate_key()", "fraiseshm.on_change()"):
                assert not await conn.fetchval("SELECT has_function_privilege($1, $2, 'EXECUTE')", role, fn)
        finally:
            await conn.close()

    asyncio.run(main())


def test_server_runs_as_the_least_privileged_role(pg_dsn: str, role: str, reset_db: EmbeddedCluster) -> None:
    dsn = pg_dsn.replace("://fraiseshm@", f"://{role}@")
    user_id = reset_db.psql("SELECT id FROM tb_user ORDER BY pk_user LIMIT 1").strip()
    with Server(dsn, workers=2, tag="leastpriv") as server, server.client() as http:
        states = [graphql(http, USER_QUERY, {"id": user_id}) for _ in range(3)]
        assert all(r.status_code == 200 for r in states), states[-1].text
        assert states[-1].headers["X-Cache"] == "HIT"

        email = f"{uuid.uuid4().hex[:12]}@least.example"
        r = graphql(http, CREATE_USER, {"i": {"name": "Least", "email": email}})
        assert r.status_code == 200 and r.json()["data"]["createUser"]["success"] is True, r.text

        async def audited() -> None:
            conn = await asyncpg.connect(pg_dsn)
            try:
                end = time.monotonic() + 10
                while not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM fraiseshm.audit WHERE mutation = 'createUser' AND cascade::text LIKE $1)",
                    f"%{email}%",
                ):
                    assert time.monotonic() < end, f"no audit row written by {role}:\n{server.log()}"
                    await asyncio.sleep(0.02)  # polling the table the writer fills every 50 ms
            finally:
                await conn.close()

        asyncio.run(audited())

        # The listener read the notification key through the grant: a signed change is heard.
        arena = Arena.attach(server.arena_name)
        try:
            probe = b"probe-" + uuid.uuid4().bytes
            assert arena.put(probe, b"x", [f"r:public.tb_user:{user_id}"], arena.current_seq(), 3600.0)
            reset_db.psql(f"UPDATE tb_user SET name = 'changed by psql' WHERE id = '{user_id}'")
            end = time.monotonic() + 10
            while arena.get(probe) is not None:
                assert time.monotonic() < end, f"the listener of {role} did not hear the change:\n{server.log()}"
                time.sleep(0.005)
        finally:
            arena.close()
        assert "permission denied" not in server.log(), server.log()
