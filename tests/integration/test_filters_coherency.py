"""Precise list invalidation: a write bumps only the lists whose filters its old or new values match.

A book moved from one author to another leaves both authors' lists fresh
(it leaves one, enters the other) and a third author's list cached (HIT): by
a mutation with the change listener off (the transaction's recorded items
carry the old and new foreign key values), by a mutation with the listener
on, and by plain SQL heard by the listener. A write whose values are unknown
(no recorded items) falls back to every list over the table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import Server, graphql
from tests.integration.test_filters import ADA, BOB, CY, books, books_dsn  # noqa: F401 - fixtures

SCHEMAS = Path(__file__).parent / "schemas"
LIST = "query($a: ID!) { books(where: {authorId: {eq: $a}}, limit: 100) { id title } }"
LEGACY = "query($a: ID!) { books(authorId: $a, limit: 100) { id } }"
CONN = "query($a: ID!) { booksConnection(where: {authorId: {in: [$a]}}, first: 100) { totalCount edges { node { id } } } }"
COUNT = "query($a: ID!) { booksCount(authorId: $a) }"


@pytest.fixture(scope="module")
def listening(books_dsn: str) -> Iterator[httpx.Client]:  # noqa: F811
    env = {"FRAISESHM_SCHEMA_SDL": str(SCHEMAS / "filters.graphql"), "FRAISESHM_LISTEN_CHANGES": "true",
           "FRAISESHM_LOG_LEVEL": "info"}  # flushes and listener (re)connects in the log a failure shows
    with Server(books_dsn, workers=2, env=env, tag="filtersl") as srv, srv.client() as client:
        client.server = srv  # type: ignore[attr-defined]
        yield client


def _book_ids(body: dict) -> set[int]:
    data = body["data"]
    if "books" in data:
        return {int(b["id"]) for b in data["books"]}
    if "booksConnection" in data:
        return {int(e["node"]["id"]) for e in data["booksConnection"]["edges"]}
    return {data["booksCount"]}


def _warm(client: httpx.Client, query: str, author: str) -> set[int]:
    graphql(client, query, {"a": author})
    r = graphql(client, query, {"a": author})
    assert r.headers["X-Cache"] == "HIT", r.text
    return _book_ids(r.json())


def _owner(cluster: EmbeddedCluster, book: int) -> str:
    return cluster.psql(f"SELECT a.id FROM tb_book b JOIN tb_author a ON a.pk_author = b.fk_author WHERE b.id = {book}",
                        database="filters_it").strip()


def _move(client: httpx.Client, book: int, to: str, mutation: str = "updateBook") -> None:
    r = graphql(client, f'mutation($i: UpdateBookInput!) {{ {mutation}(input: $i) {{ success }} }}',
                {"i": {"id": str(book), "authorId": to}})
    assert r.json()["data"][mutation]["success"], r.text


def _check_moved(client: httpx.Client, query: str, book: int, src: str, dst: str, bystander: str,
                 before: dict[str, set[int]], deadline: float = 0.0) -> None:
    """src lost the book, dst gained it, both fresh; bystander's list still a HIT."""
    end = time.monotonic() + deadline
    while True:
        got = {a: graphql(client, query, {"a": a}) for a in (src, dst)}
        fresh = {a: _book_ids(r.json()) for a, r in got.items()}
        if query == COUNT:
            want = {src: {next(iter(before[src])) - 1}, dst: {next(iter(before[dst])) + 1}}
        else:
            want = {src: before[src] - {book}, dst: before[dst] | {book}}
        if fresh == want or time.monotonic() > end:
            break
    assert fresh == want, (query, fresh, want)
    r = graphql(client, query, {"a": bystander})
    server = getattr(client, "server", None)
    assert r.headers["X-Cache"] == "HIT" and _book_ids(r.json()) == before[bystander], (
        query, r.headers, server.log()[-3000:] if server is not None else "")


@pytest.mark.parametrize("query", [LIST, LEGACY, CONN, COUNT])
def test_a_mutation_moves_a_row_between_filtered_lists_listener_off(books: httpx.Client,  # noqa: F811
                                                                    pg_cluster: EmbeddedCluster, query: str) -> None:
    book = 7
    src = _owner(pg_cluster, book)
    dst = ADA if src != ADA else BOB
    bystander = ({ADA, BOB, CY} - {src, dst}).pop()
    before = {a: _warm(books, query, a) for a in (src, dst, bystander)}
    _move(books, book, dst)
    _check_moved(books, query, book, src, dst, bystander, before)


@pytest.mark.parametrize("query", [LIST, CONN])
def test_a_mutation_moves_a_row_between_filtered_lists_listener_on(listening: httpx.Client,
                                                                   pg_cluster: EmbeddedCluster, query: str) -> None:
    book = 8
    src = _owner(pg_cluster, book)
    dst = ADA if src != ADA else CY
    bystander = ({ADA, BOB, CY} - {src, dst}).pop()
    before = {a: _warm(listening, query, a) for a in (src, dst, bystander)}
    _move(listening, book, dst)
    _check_moved(listening, query, book, src, dst, bystander, before)


def test_plain_sql_moves_a_row_between_filtered_lists(listening: httpx.Client, pg_cluster: EmbeddedCluster) -> None:
    book = 11
    src = _owner(pg_cluster, book)
    dst = BOB if src != BOB else CY
    bystander = ({ADA, BOB, CY} - {src, dst}).pop()
    before = {a: _warm(listening, LIST, a) for a in (src, dst, bystander)}
    pg_cluster.psql(f"UPDATE tb_book SET fk_author = (SELECT pk_author FROM tb_author WHERE id = '{dst}') "
                    f"WHERE id = {book}", database="filters_it")
    _check_moved(listening, LIST, book, src, dst, bystander, before, deadline=5.0)


def test_unknown_values_fall_back_to_every_list_over_the_table(books: httpx.Client,  # noqa: F811
                                                               pg_cluster: EmbeddedCluster) -> None:
    book = 13
    src = _owner(pg_cluster, book)
    dst = CY if src != CY else ADA
    bystander = ({ADA, BOB, CY} - {src, dst}).pop()
    # Its own query text: entries of the other tests' queries may predate plain SQL this server did not hear.
    query = LIST.replace("limit: 100", "limit: 99")
    before = {a: _warm(books, query, a) for a in (src, dst, bystander)}
    _move(books, book, dst, "moveBookQuietly")  # no change item recorded: only the cascade names Book 13
    for author, want in ((src, before[src] - {book}), (dst, before[dst] | {book}), (bystander, before[bystander])):
        r = graphql(books, query, {"a": author})
        assert r.headers["X-Cache"] == "MISS" and _book_ids(r.json()) == want, (author, r.headers)


def test_a_range_filter_follows_every_change_of_the_table(books: httpx.Client) -> None:  # noqa: F811
    q = "{ books(where: {pages: {lt: 130}}) { id title } }"
    graphql(books, q)
    assert graphql(books, q).headers["X-Cache"] == "HIT"
    r = graphql(books, 'mutation { updateBook(input: {id: "29", title: "renamed 29"}) { success } }')
    assert r.json()["data"]["updateBook"]["success"]
    assert graphql(books, q).headers["X-Cache"] == "MISS"  # t:public.tb_book: not matched cheaply


GENRE = 'query($g: String!) { books(where: {genre: {eq: $g}, pages: {gt: 0}}, limit: 100) { id genre } }'


@pytest.mark.parametrize("client", ["books", "listening"])
def test_a_plain_column_filter_is_invalidated_by_value(client: str, request: pytest.FixtureRequest,
                                                       pg_cluster: EmbeddedCluster) -> None:
    """genre is tracked with fraiseshm.track(..., filters => ['genre', ...]): +v: items for both images."""
    http: httpx.Client = request.getfixturevalue(client)
    book = 21 if client == "books" else 23  # both novels
    def genres(g: str) -> httpx.Response:
        return graphql(http, GENRE, {"g": g})
    for g in ("novel", "poetry", "essay"):
        genres(g)
    before = {g: {int(b["id"]) for b in genres(g).json()["data"]["books"]} for g in ("novel", "poetry", "essay")}
    assert book in before["novel"] and before["essay"] == set()
    r = graphql(http, 'mutation($i: UpdateBookInput!) { updateBook(input: $i) { success } }',
                {"i": {"id": str(book), "genre": "poetry"}})
    assert r.json()["data"]["updateBook"]["success"], r.text
    novel, poetry, essay = genres("novel"), genres("poetry"), genres("essay")
    assert {int(b["id"]) for b in novel.json()["data"]["books"]} == before["novel"] - {book}
    assert {int(b["id"]) for b in poetry.json()["data"]["books"]} == before["poetry"] | {book}
    assert essay.headers["X-Cache"] == "HIT", "a list of a value neither image had was invalidated"


def test_children_deleted_with_their_parent_leave_no_stale_count(listening: httpx.Client,
                                                                 pg_cluster: EmbeddedCluster) -> None:
    """ON DELETE CASCADE: when the books' trigger runs, their author row is gone, so the author's key
    (their f: value) cannot be read; the list also depends on r:public.tb_author:<key>, which the
    author's own deletion bumps."""
    dee = "00000000-0000-0000-0000-00000000000d"
    pg_cluster.psql(f"INSERT INTO tb_author (id, name) VALUES ('{dee}', 'dee'); "
                    "INSERT INTO tb_book (id, fk_author, title, pages, price, created_at) "
                    f"SELECT 40 + i, (SELECT pk_author FROM tb_author WHERE id = '{dee}'), 'dee ' || i, 1, 1, now() "
                    "FROM generate_series(1, 2) i", database="filters_it")
    try:
        end = time.monotonic() + 5
        while True:  # until cached with both books (the listener may still invalidate a first fill)
            r = graphql(listening, COUNT, {"a": dee})
            if r.headers["X-Cache"] == "HIT" and r.json()["data"]["booksCount"] == 2:
                break
            assert time.monotonic() < end, "the inserts never reached the count"
        pg_cluster.psql(f"DELETE FROM tb_author WHERE id = '{dee}'", database="filters_it")
        end = time.monotonic() + 5
        while graphql(listening, COUNT, {"a": dee}).json()["data"]["booksCount"] != 0:
            assert time.monotonic() < end, "the count of a deleted author's books stayed stale"
    finally:
        pg_cluster.psql(f"DELETE FROM tb_author WHERE id = '{dee}'", database="filters_it")


def test_renaming_an_author_spares_the_other_authors_lists(listening: httpx.Client,
                                                           pg_cluster: EmbeddedCluster) -> None:
    """author_id is read from the author's row: the lists asking for a value depend on that row's tag
    (a change of its key would change the value), not on every change of tb_author."""
    query = LIST.replace("limit: 100", "limit: 98")
    for a in (ADA, BOB):
        _warm(listening, query, a)
    pg_cluster.psql(f"UPDATE tb_author SET name = name || '.' WHERE id = '{ADA}'", database="filters_it")
    end = time.monotonic() + 5
    while graphql(listening, query, {"a": ADA}).headers["X-Cache"] == "HIT":  # until the listener heard it
        assert time.monotonic() < end, "the author's own lists never followed its row"
    assert graphql(listening, query, {"a": BOB}).headers["X-Cache"] == "HIT"
