"""FraiseQL's mutation functions work unchanged, with the server's query invalidations.

tests/integration/schemas/fraiseql.sql writes its functions the FraiseQL way:
RETURNS mutation_response (the 13-column composite of FraiseQL 2.2+), the
cascade in camelCase with __typename (queryName, affectedCount, deletedAt),
a v1 function returning jsonb with `_cascade`, an 8-column composite with a
status string. Each live payload is checked against graphql-cascade 1.8.0
(tests/integration/cascade_spec_rules.py), the cache is fresh after each
mutation (change listener off: only the mutation's own invalidation acts),
and a misspelt queryName on a PREFIX invalidation is refused (a cascade
failure with the wide fallback), never read as the prefix "" that matches
every root field.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from fraiseshm.db.kit import INSTALL_FILES
from tests.integration.cascade_spec_rules import assert_conforms, mutation
from tests.integration.server import Server, graphql

SCHEMAS = Path(__file__).parent / "schemas"
ROOTS = {"authors", "author", "articles", "article", "cascadeInfo",
         # the generated siblings of each list field (graphql/surface.py)
         "authorsConnection", "authorsCount", "articlesConnection", "articlesCount"}
ADA, BOB = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"
FIRST, SECOND = "00000000-0000-0000-0000-0000000000a1", "00000000-0000-0000-0000-0000000000a2"
AUTHOR = "query($id: ID!) { author(id: $id) { id name } }"
ARTICLE = "query($id: ID!) { article(id: $id) { id title author { name } } }"


@pytest.fixture(scope="module")
def fraiseql(pg_cluster: EmbeddedCluster) -> Iterator[Server]:
    dsn = pg_cluster.fresh_database("fraiseql_it")
    for path in (*INSTALL_FILES, SCHEMAS / "fraiseql.sql"):
        subprocess.run([str(pg_cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn,
                        "-f", str(path)], check=True, capture_output=True)
    env = {"FRAISESHM_SCHEMA_SDL": str(SCHEMAS / "fraiseql.graphql"), "FRAISESHM_LISTEN_CHANGES": "false",
           "FRAISESHM_LOG_LEVEL": "info"}
    with Server(dsn, workers=1, env=env, tag="fraiseql") as server:
        yield server


@pytest.fixture(scope="module")
def client(fraiseql: Server) -> Iterator[httpx.Client]:
    with fraiseql.client() as c:
        yield c


def _mutate(client: httpx.Client, field: str, input_type: str, input: dict[str, Any]) -> dict[str, Any]:
    r = graphql(client, mutation(field, input_type), {"input": input})
    assert r.status_code == 200 and "errors" not in r.json(), r.text
    payload = r.json()["data"][field]
    assert_conforms(payload, root_fields=ROOTS)
    return payload


def _cached(client: httpx.Client, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """Read twice: the second read is a HIT, so a later fresh read proves an invalidation."""
    data = graphql(client, query, variables).json()["data"]
    assert graphql(client, query, variables).headers["X-Cache"] == "HIT"
    return data


def _hints(payload: dict[str, Any]) -> set[tuple[str | None, str, str | None]]:
    return {(i["queryName"], i["scope"], (i["arguments"] or {}).get("id"))
            for i in payload["cascade"]["invalidations"]}


def test_mutation_response_composite_with_a_camelcase_cascade(client: httpx.Client) -> None:
    _cached(client, AUTHOR, {"id": ADA})
    _cached(client, ARTICLE, {"id": FIRST})
    payload = _mutate(client, "updateAuthor", "UpdateAuthorInput", {"id": ADA, "name": "Ada L."})
    assert payload["success"] is True and payload["data"] == {"id": ADA}
    updated = {(u["typename"], u["id"]): u for u in payload["cascade"]["updated"]}
    assert set(updated) == {("Author", ADA), ("Article", FIRST), ("Article", SECOND)}
    assert updated[("Author", ADA)]["updatedFields"] == ["name"]  # FraiseQL's updated_fields, on its entity
    assert updated[("Article", FIRST)]["updatedFields"] is None
    assert payload["cascade"]["metadata"]["affectedCount"] == 3
    # The function's own queryName (camelCase) and the server's: author(id: ADA), lists, articles nest authors.
    assert {("authors", "PREFIX", None), ("author", "EXACT", ADA), ("articles", "EXACT", None),
            ("article", "EXACT", None)} <= _hints(payload)
    assert graphql(client, AUTHOR, {"id": ADA}).json()["data"]["author"]["name"] == "Ada L."
    assert graphql(client, ARTICLE, {"id": FIRST}).json()["data"]["article"]["author"]["name"] == "Ada L."

    missing = _mutate(client, "updateAuthor", "UpdateAuthorInput", {"id": "00000000-0000-0000-0000-0000000000ff",
                                                                    "name": "x"})
    assert [(e["code"], e["field"], e["path"]) for e in missing["errors"]] == [("NOT_FOUND", "id", ["input", "id"])]
    assert missing["cascade"]["updated"] == [] and missing["data"] is None


def test_errors_noop_and_created_entities(client: httpx.Client) -> None:
    invalid = _mutate(client, "createArticle", "CreateArticleInput", {"authorId": BOB, "title": " "})
    assert invalid["errors"] == [{"message": "Title is required", "code": "VALIDATION_ERROR", "domainCode": None,
                                  "field": "title", "path": ["input", "title"],
                                  "extensions": {"field": "title", "reason": "blank"}}]
    domain = _mutate(client, "createArticle", "CreateArticleInput",
                     {"authorId": "00000000-0000-0000-0000-0000000000ff", "title": "t"})
    # An error_class outside the spec's categories: INTERNAL_ERROR, refined by domainCode.
    assert [(e["code"], e["domainCode"]) for e in domain["errors"]] == [("INTERNAL_ERROR", "INSUFFICIENT_KARMA")]
    noop = _mutate(client, "touchAuthor", "TouchAuthorInput", {"id": BOB})
    assert noop["success"] is True and noop["cascade"]["updated"] == [] and noop["cascade"]["typeInvalidations"] == []

    _cached(client, "query($a: ID) { articles(authorId: $a) { id } }", {"a": BOB})
    created = _mutate(client, "createArticle", "CreateArticleInput", {"authorId": BOB, "title": "bob's"})
    [entry] = created["cascade"]["updated"]
    assert (entry["typename"], entry["operation"], entry["updatedFields"]) == ("Article", "CREATED", None)
    assert entry["entity"] == {"__typename": "Article", "id": entry["id"]}  # as selected: entity { __typename id }
    # The insert bumps its author's row too (the kit's foreign-key rule): every cached article(id) nesting
    # that author is invalidated on the server, so the hint names article without arguments.
    assert {("article", "EXACT", None), ("articles", "PREFIX", None), ("author", "EXACT", BOB)} <= _hints(created)
    listed = graphql(client, "query($a: ID) { articles(authorId: $a) { id } }", {"a": BOB}).json()["data"]
    assert {"id": entry["id"]} in listed["articles"]


def test_v1_underscore_cascade_and_the_8_column_composite(client: httpx.Client) -> None:
    _cached(client, ARTICLE, {"id": SECOND})
    retitled = _mutate(client, "retitleArticle", "RetitleArticleInput", {"id": SECOND, "title": "2nd"})
    assert [(u["typename"], u["id"], u["updatedFields"]) for u in retitled["cascade"]["updated"]] == [
        ("Article", SECOND, ["title"])]
    assert graphql(client, ARTICLE, {"id": SECOND}).json()["data"]["article"]["title"] == "2nd"
    refused = _mutate(client, "retitleArticle", "RetitleArticleInput", {"id": BOB, "title": "x"})
    assert [e["code"] for e in refused["errors"]] == ["NOT_FOUND"]

    _cached(client, ARTICLE, {"id": SECOND})
    deleted = _mutate(client, "deleteArticle", "DeleteArticleInput", {"id": SECOND})
    assert [(d["typename"], d["id"]) for d in deleted["cascade"]["deleted"]] == [("Article", SECOND)]
    assert ("article", "EXACT", SECOND) in _hints(deleted)
    assert [i["strategy"] for i in deleted["cascade"]["invalidations"] if (i["arguments"] or {}).get("id") == SECOND] \
        == ["REMOVE"]
    assert graphql(client, ARTICLE, {"id": SECOND}).json()["data"]["article"] is None


def test_a_misspelt_query_name_is_a_cascade_failure_not_an_empty_prefix(client: httpx.Client,
                                                                           fraiseql: Server) -> None:
    _cached(client, "{ authors { id name } }", {})
    payload = _mutate(client, "misspeltAuthor", "UpdateAuthorInput", {"id": BOB, "name": "Bobby"})
    assert "queryNme" in fraiseql.log() and "cascade failure in misspeltAuthor (malformed)" in fraiseql.log()
    # The client is told to drop the types the server widened to; the cache is fresh all the same.
    assert {t["typename"] for t in payload["cascade"]["typeInvalidations"]} == {"Author", "Article"}
    assert payload["cascade"]["metadata"]["truncated"] is False
    names = {a["name"] for a in graphql(client, "{ authors { id name } }").json()["data"]["authors"]}
    assert "Bobby" in names
