"""orderBy and Relay connections: total orderings, opaque keyset cursors stable across inserts.

Same database and server as tests/integration/test_filters.py (30 books).
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import graphql
from tests.integration.test_filters import ADA, books, books_dsn  # noqa: F401 - fixtures

PAGE = "{ edges { cursor node { id pages genre } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } }"


def conn(client: httpx.Client, args: str, selection: str = PAGE) -> dict:
    r = graphql(client, f"{{ booksConnection({args}) {selection} }}")
    body = r.json()
    assert r.status_code == 200 and "errors" not in body, r.text
    return body["data"]["booksConnection"]


def node_ids(page: dict) -> list[int]:
    return [int(e["node"]["id"]) for e in page["edges"]]


def walk(client: httpx.Client, args: str, size: int, backward: bool = False) -> list[int]:
    """Every row, page by page, following the cursors."""
    seen: list[int] = []
    cursor = None
    for _ in range(100):
        if backward:
            page = conn(client, f"{args} last: {size}" + (f', before: "{cursor}"' if cursor else ""))
            seen = node_ids(page) + seen
            if not page["pageInfo"]["hasPreviousPage"]:
                return seen
            cursor = page["pageInfo"]["startCursor"]
        else:
            page = conn(client, f"{args} first: {size}" + (f', after: "{cursor}"' if cursor else ""))
            seen += node_ids(page)
            if not page["pageInfo"]["hasNextPage"]:
                return seen
            cursor = page["pageInfo"]["endCursor"]
    raise AssertionError("pagination did not end")


def test_order_by_is_made_total_by_the_key(books: httpx.Client) -> None:  # noqa: F811
    # genre has ties and NULLs: the key breaks ties, NULL sorts last ascending (PostgreSQL's default)
    r = graphql(books, "{ books(limit: 30, orderBy: [{field: genre}]) { id genre } }").json()["data"]["books"]
    expected = sorted(r, key=lambda b: (b["genre"] is None, b["genre"] or "", int(b["id"])))
    assert r == expected
    r = graphql(books, "{ books(limit: 5, orderBy: [{field: pages, direction: DESC}]) { id } }").json()
    assert [b["id"] for b in r["data"]["books"]] == ["30", "29", "28", "27", "26"]


@pytest.mark.parametrize("order", ["", "orderBy: [{field: genre, direction: DESC}, {field: pages}],",
                                   "orderBy: [{field: genre}],", "orderBy: [{field: price, direction: DESC}],"])
@pytest.mark.parametrize("backward", [False, True])
def test_pages_cover_every_row_once_in_order(books: httpx.Client, order: str, backward: bool) -> None:  # noqa: F811
    whole = node_ids(conn(books, f"{order} first: 100"))
    assert sorted(whole) == list(range(1, 31))
    assert walk(books, order, 7, backward) == whole


def test_page_info_and_total_count(books: httpx.Client) -> None:  # noqa: F811
    first = conn(books, "first: 2, where: {pages: {lt: 200}}", "{ totalCount edges { node { id } } pageInfo { hasNextPage hasPreviousPage } }")
    assert first["totalCount"] == 9 and node_ids(first) == [1, 2]
    assert first["pageInfo"] == {"hasNextPage": True, "hasPreviousPage": False}
    everything = conn(books, "first: 9, where: {pages: {lt: 200}}", PAGE)
    assert everything["pageInfo"]["hasNextPage"] is False
    counted = graphql(books, f'{{ booksConnection(authorId: "{ADA}", first: 1) {{ totalCount }} }}').json()
    assert counted["data"]["booksConnection"]["totalCount"] == 10


def test_cursors_are_stable_across_inserts(books: httpx.Client, pg_cluster: EmbeddedCluster,  # noqa: F811
                                           books_dsn: str) -> None:  # noqa: F811
    page = conn(books, "first: 5, orderBy: [{field: pages}]")
    assert node_ids(page) == [1, 2, 3, 4, 5]
    cursor = page["pageInfo"]["endCursor"]
    # Rows inserted before the cursor's row (smaller pages) shift offsets, never a keyset page.
    pg_cluster.psql("INSERT INTO tb_book (id, fk_author, title, pages, price, created_at) "
                    "SELECT 100 + i, 1, 'early ' || i, i, 1, now() FROM generate_series(1, 3) i", database="filters_it")
    try:
        nxt = graphql(books, f'{{ booksConnection(first: 3, after: "{cursor}", orderBy: [{{field: pages}}]) '
                             "{ edges { node { id } } } }").json()
        assert [int(e["node"]["id"]) for e in nxt["data"]["booksConnection"]["edges"]] == [6, 7, 8]
    finally:
        pg_cluster.psql("DELETE FROM tb_book WHERE id > 100", database="filters_it")


def test_a_cursor_of_another_ordering_is_refused(books: httpx.Client) -> None:  # noqa: F811
    cursor = conn(books, "first: 1, orderBy: [{field: pages}]")["pageInfo"]["endCursor"]
    r = graphql(books, f'{{ booksConnection(first: 1, after: "{cursor}") {{ totalCount }} }}')
    assert r.status_code == 200 and "not a cursor of this ordering" in r.json()["errors"][0]["message"]
