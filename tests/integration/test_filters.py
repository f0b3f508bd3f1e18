"""where: typed filters per @view type, compiled to parameterised SQL, on real gunicorn + PostgreSQL.

tests/integration/schemas/filters.sql: 30 books by 3 authors, columns of
every filter type (uuid through a join, int, numeric, boolean, text, a
nullable text, timestamptz).
"""

from __future__ import annotations

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
