"""where: typed filters per @view type, compiled to parameterised SQL, on real gunicorn + PostgreSQL.

tests/integration/schemas/filters.sql: 30 books by 3 authors, columns of
every filter type (uuid through a join, int, numeric, boolean, text, a
nullable text, timestamptz).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import Server, graphql
from tests.integration.test_keys_deps import make_database

SCHEMAS = Path(__file__).parent / "schemas"
ADA, BOB, CY = (f"00000000-0000-0000-0000-00000000000{c}" for c in "abc")
ALL = list(range(1, 31))


def author_of(i: int) -> str:
    return (ADA, BOB, CY)[i % 3]


def genre_of(i: int) -> str | None:
    return None if i % 5 == 0 else ("poetry" if i % 2 == 0 else "novel")


@pytest.fixture(scope="module")
def books_dsn(pg_cluster: EmbeddedCluster) -> str:
    return make_database(pg_cluster, "filters_it", SCHEMAS / "filters.sql")


@pytest.fixture(scope="module")
def books(books_dsn: str) -> Iterator[httpx.Client]:
    env = {"FRAISESHM_SCHEMA_SDL": str(SCHEMAS / "filters.graphql"), "FRAISESHM_LISTEN_CHANGES": "false",
           "FRAISESHM_LOG_LEVEL": "info"}
    with Server(books_dsn, workers=2, env=env, tag="filters") as srv, srv.client() as client:
        client.server = srv  # type: ignore[attr-defined]
        yield client


def ids(client: httpx.Client, where: str, extra: str = "", limit: int = 100) -> list[int]:
    r = graphql(client, f"{{ books(limit: {limit}, where: {where}{extra}) {{ id }} }}")
    body = r.json()
    assert r.status_code == 200 and "errors" not in body, r.text
    return [int(b["id"]) for b in body["data"]["books"]]


@pytest.mark.parametrize(("where", "expected"), [
    ("{id: {eq: 7}}", [7]),
    ("{id: {in: [3, 1, 2]}}", [1, 2, 3]),
    ("{id: {nin: [1, 2]}, pages: {lte: 140}}", [3, 4]),
    (f'{{authorId: {{eq: "{ADA}"}}}}', [i for i in ALL if i % 3 == 0]),
    (f'{{authorId: {{in: ["{ADA}", "{BOB}"]}}}}', [i for i in ALL if i % 3 != 2]),
    (f'{{authorId: {{neq: "{ADA}"}}}}', [i for i in ALL if i % 3 != 0]),
    ("{pages: {gt: 380}}", [29, 30]),
    ("{pages: {gte: 380, lt: 400}}", [28, 29]),
    ("{price: {lte: 3}}", [1, 2]),
    ("{published: {eq: false}}", [i for i in ALL if i % 4 == 0]),
    ("{genre: {isNull: true}}", [5, 10, 15, 20, 25, 30]),
    ('{genre: {eq: "poetry"}, pages: {lt: 170}}', [2, 4, 6]),
    ('{title: {like: "book 1%"}}', list(range(10, 20))),
    ('{title: {ilike: "BOOK 0%"}}', list(range(1, 10))),
    ('{createdAt: {lt: "2024-01-04T00:00:00Z"}}', [1, 2]),
    ('{_or: [{id: {eq: 1}}, {id: {eq: 30}}]}', [1, 30]),
    ('{_and: [{pages: {gt: 200}}, {pages: {lt: 230}}]}', [11, 12]),
    ('{_not: {pages: {gt: 120}}}', [1, 2]),
    ('{_or: []}', []),
    ("{id: {in: []}}", []),
])
def test_operators(books: httpx.Client, where: str, expected: list[int]) -> None:
    assert ids(books, where) == expected


def test_existing_equality_arguments_keep_working_and_combine_with_where(books: httpx.Client) -> None:
    r = graphql(books, f'{{ books(authorId: "{BOB}", limit: 100) {{ id author {{ name }} }} }}')
    assert [int(b["id"]) for b in r.json()["data"]["books"]] == [i for i in ALL if i % 3 == 1]
    assert ids(books, "{pages: {lt: 150}}", f', authorId: "{BOB}"') == [1, 4]


def test_variables_and_a_cached_answer(books: httpx.Client) -> None:
    q = "query($w: BookWhereInput) { books(where: $w) { id } }"
    first = graphql(books, q, {"w": {"id": {"in": ["4", "5"]}}})
    second = graphql(books, q, {"w": {"id": {"in": ["4", "5"]}}})
    other = graphql(books, q, {"w": {"id": {"in": ["4", "6"]}}})
    assert first.json()["data"]["books"] == [{"id": "4"}, {"id": "5"}] == second.json()["data"]["books"]
    assert (first.headers["X-Cache"], second.headers["X-Cache"], other.headers["X-Cache"]) == ("MISS", "HIT", "MISS")
    assert other.json()["data"]["books"] == [{"id": "4"}, {"id": "6"}]


def test_count_at_the_root(books: httpx.Client) -> None:
    r = graphql(books, f'{{ all: booksCount n: booksCount(where: {{genre: {{isNull: true}}}}) '
                       f'bob: booksCount(authorId: "{BOB}") }}')
    assert r.json()["data"] == {"all": 30, "n": 6, "bob": 10}


# --- bounds ---------------------------------------------------------------------------------


def _error(client: httpx.Client, query: str, variables: dict | None = None) -> dict:
    r = graphql(client, query, variables)
    assert r.status_code in (200, 400), r.text
    body = r.json()
    assert body.get("errors") and not (body.get("data") or {}).get("books"), r.text
    return body["errors"][0]


def test_nesting_in_lists_and_conditions_are_bounded(books: httpx.Client) -> None:
    deep: dict = {"id": {"eq": "1"}}
    for _ in range(6):
        deep = {"_not": deep}
    q = "query($w: BookWhereInput) { books(where: $w) { id } }"
    e = _error(books, q, {"w": deep})
    assert "deeper than 5" in e["message"] and e["extensions"]["code"] == "LIMIT_EXCEEDED"
    e = _error(books, q, {"w": {"id": {"in": [str(i) for i in range(101)]}}})
    assert "101 values, more than 100" in e["message"] and e["extensions"]["code"] == "LIMIT_EXCEEDED"
    e = _error(books, q, {"w": {"_or": [{"pages": {"gt": i}} for i in range(51)]}})
    assert "more than 50 conditions" in e["message"]
    assert ids(books, '{_not: {_not: {_not: {_not: {id: {eq: 1}}}}}}') == [1]  # depth 5 is allowed


@pytest.mark.parametrize(("query", "variables", "message"), [
    ("{ books(where: {createdAt: {like: \"2024%\"}}) { id } }", None, "like applies to text columns"),
    ("{ books(where: {pages: {like: \"1%\"}}) { id } }", None, "unknown field 'like'"),
    ("{ books(where: {id: {eq: \"1.5\"}}) { id } }", None, "'1.5' is not a valid integer"),
    ("{ books(where: {id: {eq: null}}) { id } }", None, "null is not a value (use isNull)"),
    ("{ books(where: {createdAt: {gt: \"yesterday\"}}) { id } }", None, "'yesterday' is not a valid timestamp with time zone"),
])
def test_bad_values_are_clear_graphql_errors(books: httpx.Client, query: str, variables: dict | None,
                                             message: str) -> None:
    assert message in _error(books, query, variables)["message"]


# --- SQL injection through every new argument ------------------------------------------------

INJECTIONS = ["x'; DROP TABLE tb_book; --", "1) OR (1=1", "' OR '1'='1", "\\'; SELECT pg_sleep(5); --",
              "$1", "%' OR 1=1 --", "\"pages\"", "a\x00b"]


def _intact(cluster: EmbeddedCluster) -> None:
    assert cluster.psql("SELECT count(*) FROM tb_book", database="filters_it").strip() == "30"


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_through_values_matches_nothing(books: httpx.Client, pg_cluster: EmbeddedCluster,
                                                  payload: str) -> None:
    q = "query($w: BookWhereInput) { books(where: $w, limit: 100) { id } }"
    for where in ({"title": {"eq": payload}}, {"title": {"in": [payload, "book 01"]}}, {"genre": {"neq": payload}},
                  {"title": {"like": payload}}, {"title": {"ilike": payload}}, {"title": {"gt": payload}}):
        r = graphql(books, q, {"w": where})
        body = r.json()
        assert r.status_code == 200, r.text
        if "errors" in body:  # a NUL byte: PostgreSQL refuses it as text, a GraphQL error
            assert "\x00" in payload and "Traceback" not in r.text
            continue
        got = {int(b["id"]) for b in body["data"]["books"]}
        assert got <= set(ALL) and (got == set() or "neq" in where.get("genre", {}) or "in" in where["title"]
                                    or "gt" in where["title"] or payload.startswith("%")), (where, got)
    for where in ({"id": {"eq": payload}}, {"authorId": {"in": [payload]}}):  # typed columns refuse it
        assert "is not a valid" in _error(books, q, {"w": where})["message"]
    _intact(pg_cluster)


@pytest.mark.parametrize("where", [
    {"title; DROP TABLE tb_book": {"eq": "x"}},  # a field name
    {"title": {"eq); DROP TABLE tb_book; --": "x"}},  # an operator
    {"title": {"eq": "x", "regex": ".*"}},  # an operator the type does not have
    {"_or": {"title": {"eq": "x"}}},  # coerced to a one-element list by GraphQL: fine, but not SQL
])
def test_injection_through_names_is_refused_by_the_input_type(books: httpx.Client, pg_cluster: EmbeddedCluster,
                                                              where: dict) -> None:
    r = graphql(books, "query($w: BookWhereInput) { books(where: $w) { id } }", {"w": where})
    if "_or" in where:
        assert r.json()["data"]["books"] == []
    else:
        assert r.status_code in (200, 400) and "unknown field" in r.json()["errors"][0]["message"], r.text
    _intact(pg_cluster)


@pytest.mark.parametrize("order", [
    '[{field: "pages; DROP TABLE tb_book"}]', "[{field: pages, direction: SIDEWAYS}]", "[{field: data}]",
])
def test_injection_through_order_by_is_refused(books: httpx.Client, pg_cluster: EmbeddedCluster, order: str) -> None:
    r = graphql(books, f"{{ books(orderBy: {order}) {{ id }} }}")
    assert r.status_code in (200, 400) and r.json()["errors"], r.text
    r = graphql(books, "query($o: [BookOrderBy!]) { books(orderBy: $o) { id } }",
                {"o": [{"field": "pages; DROP TABLE tb_book", "direction": "ASC"}]})
    assert r.status_code in (200, 400) and "does not exist in 'BookOrderField'" in r.text, r.text
    _intact(pg_cluster)


def _forge(cursor: str, values: list) -> str:
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return base64.urlsafe_b64encode(json.dumps([raw[0], values]).encode()).decode().rstrip("=")


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_through_cursors(books: httpx.Client, pg_cluster: EmbeddedCluster, payload: str) -> None:
    by_title = "orderBy: [{field: title}]"
    cursor = graphql(books, f"{{ booksConnection(first: 1, {by_title}) {{ pageInfo {{ endCursor }} }} }}").json()
    cursor = cursor["data"]["booksConnection"]["pageInfo"]["endCursor"]
    q = "query($c: String) { booksConnection(first: 50, after: $c, %s) { edges { node { id } } } }" % by_title
    # A text value is only ever a parameter: it orders, it never runs.
    r = graphql(books, q, {"c": _forge(cursor, [payload, "1"])})
    if "\x00" not in payload:
        assert r.status_code == 200 and "errors" not in r.json(), r.text
    # The key is an integer: checked before PostgreSQL sees it.
    assert "is not a valid integer" in _error(books, q, {"c": _forge(cursor, ["book 01", payload])})["message"]
    for bad in (payload, _forge(cursor, [payload]), base64.urlsafe_b64encode(payload.encode()).decode()):
        assert "not a cursor" in _error(books, q, {"c": bad})["message"]
    _intact(pg_cluster)
