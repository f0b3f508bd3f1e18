"""The start-up check: five broken set-ups, each one clear message naming the SDL line.

Run as `fraiseshm schema check` (exit 1) and, for a broken schema, as the
gunicorn master's start (exit 1, the message once, no traceback).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fraiseshm import cli
from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import Server
from tests.integration.test_keys_deps import SCHEMAS, make_database

GOOD = (SCHEMAS / "keys.graphql").read_text()


@pytest.fixture(scope="module")
def check_dsn(pg_cluster: EmbeddedCluster) -> str:
    return make_database(pg_cluster, "keys_check", SCHEMAS / "keys.sql")


def _check(tmp_path: Path, dsn: str, sdl: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "schema.graphql"
    path.write_text(sdl)
    code = cli.main(["schema", "check", "--dsn", dsn, "--sdl", str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _line(sdl: str, needle: str) -> int:
    return next(i for i, line in enumerate(sdl.splitlines(), 1) if needle in line)


def test_the_good_schema_passes_and_reports_precise_and_coarse_tables(
        tmp_path: Path, check_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _check(tmp_path, check_dsn, GOOD, capsys)
    assert code == 0, err
    out = " ".join(out.split())
    assert "Customer over public.v_customer (root public.customers.id integer)" in out
    assert "public.orders (foreign key customer_id -> public.customers.id: a change bumps r:public.customers:<id>)" in out


def test_every_table_of_the_blog_and_the_shop_is_followed_precisely(
        tmp_path: Path, pg_dsn: str, pg_cluster: EmbeddedCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """Coarse tables cost hit rate: the examples' views join only on keys and foreign keys."""
    root = SCHEMAS.parents[2]
    shop = make_database(pg_cluster, "shop_check", root / "examples/shop/schema.sql")
    for dsn, sdl, types in ((pg_dsn, root / "examples/blog/schema.graphql", 3),
                            (shop, root / "examples/shop/schema.graphql", 5)):
        code = cli.main(["schema", "check", "--dsn", dsn, "--sdl", str(sdl)])
        out = capsys.readouterr().out
        assert code == 0, out
        assert out.count("coarse: -") == types, out


BROKEN = {
    "missing view": (
        lambda s: s.replace('@view(name: "v_product")', '@view(name: "v_products")'),
        'type Product implements Node @view(name: "v_products")',
        'type Product @view(name: "v_products"): no view or table v_products in the database'),
    "missing column": (
        lambda s: s.replace("customersByName(limit: Int = 20, offset: Int = 0, name: String)",
                            "customersByName(limit: Int = 20, offset: Int = 0, nickName: String)"),
        "customersByName(",
        "Query.customersByName, argument nickName: filter column nick_name is not a column of public.v_customer"),
    "missing function": (
        lambda s: s.replace('"fn_set_price"', '"fn_set_prices"'),
        "setPrice(input",
        'Mutation.setPrice @function(name: "fn_set_prices"): no function fn_set_prices in the database'),
    "wrong id type": (
        lambda s: s.replace("customer(id: Int!): Customer", "customer(id: Boolean!): Customer"),
        "customer(id:",
        "Query.customer(id: Boolean) but public.v_customer.id is integer: declare id as ID or Int"),
    "id type no key can be": (
        lambda s: s + '\ntype Price @view(name: "v_price") { id: ID! }\nextend type Query { price(id: ID!): Price }\n',
        'type Price @view(name: "v_price")',
        "public.v_price.id is numeric(10,2); a key must be one of smallint, integer, bigint, text"),
    "table without triggers": (
        lambda s: s + '\ntype Note @view(name: "v_note") { id: ID! body: String }\nextend type Query { note(id: Int!): Note }\n',
        'type Note @view(name: "v_note")',
        "table public.notes carries no fraiseshm change triggers (INSERT, UPDATE and DELETE), so its writes "
        "cannot invalidate the cache; read by type Note (line"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_setup_is_one_message_naming_the_sdl_line(
        case: str, tmp_path: Path, check_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    edit, line_of, message = BROKEN[case]
    sdl = edit(GOOD)
    code, out, err = _check(tmp_path, check_dsn, sdl, capsys)
    assert code == 1, (out, err)
    assert "problem):" in err and message in err, err
    assert f"schema.graphql:{_line(sdl, line_of)}:" in err, err
    assert err.count("schema check of") == 1 and "Traceback" not in err
    print(f"{case}: {err}")


def test_the_server_does_not_start_on_a_broken_schema(tmp_path: Path, check_dsn: str) -> None:
    path = tmp_path / "broken.graphql"
    path.write_text(GOOD.replace('"fn_set_price"', '"fn_set_prices"'))
    server = Server(check_dsn, workers=2, env={"FRAISESHM_SCHEMA_SDL": str(path)}, tag="broken")
    with pytest.raises(RuntimeError, match="gunicorn exited with 1") as failed:
        server.start(timeout=20)
    server.stop()
    log = str(failed.value)
    assert "no function fn_set_prices in the database" in log
    assert "Traceback" not in log and "Booting worker" not in log
    assert log.count("no function fn_set_prices") == 1


def test_an_sdl_syntax_error_is_one_message_with_its_line(tmp_path: Path, check_dsn: str) -> None:
    path = tmp_path / "syntax.graphql"
    path.write_text(GOOD.replace("  orderCount: Int!\n}", "  orderCount: Int!\n", 1))
    server = Server(check_dsn, workers=2, env={"FRAISESHM_SCHEMA_SDL": str(path)}, tag="syntax")
    with pytest.raises(RuntimeError, match="gunicorn exited with 1") as failed:
        server.start(timeout=20)
    server.stop()
    log = str(failed.value)
    assert f"{path}:" in log and "Syntax Error" in log
    assert "Traceback" not in log and log.count("Syntax Error") == 1
