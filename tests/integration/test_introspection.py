"""Introspection that codegen tools and GraphiQL send: answered and cached under the default limits,
while hostile introspection and deep data queries stay refused."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from graphql import build_client_schema, get_introspection_query, print_schema

from tests.integration.server import Server

VARIANTS = {
    "graphql-core default": get_introspection_query(),
    "no descriptions": get_introspection_query(descriptions=False),
    # what GraphiQL 4 and graphql-codegen ask for (graphql-js getIntrospectionQuery options)
    "graphiql/codegen": get_introspection_query(descriptions=True, specified_by_url=True, directive_is_repeatable=True,
                                                schema_description=True, input_value_deprecation=True),
    "everything": get_introspection_query(descriptions=True, specified_by_url=True, directive_is_repeatable=True,
                                          schema_description=True, input_value_deprecation=True, one_of=True),
    "type_depth 14": get_introspection_query(type_depth=14),
}


@pytest.fixture(scope="module")
def default_limits(pg_dsn: str) -> Iterator[Server]:
    """No limit setting touched: the defaults of fraiseshm/config.py."""
    with Server(pg_dsn, workers=2, tag="intro") as srv:
        yield srv


@pytest.fixture(scope="module")
def c(default_limits: Server) -> Iterator[httpx.Client]:
    with default_limits.client() as client:
        yield client


@pytest.mark.parametrize("name", list(VARIANTS))
def test_standard_introspection_is_answered_and_cached(c: httpx.Client, name: str) -> None:
    query = VARIANTS[name]
    first = c.post("/graphql", json={"query": query, "operationName": "IntrospectionQuery"})
    assert first.status_code == 200 and "errors" not in first.json(), first.text[:500]
    again = c.post("/graphql", json={"query": query, "operationName": "IntrospectionQuery"})
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) in (("MISS", "HIT"), ("HIT", "HIT"))
    assert again.content == first.content
    print(f"\nintrospection [{name}]: {len(query)} B query, {len(first.content)} B response, "
          f"{first.headers['X-Cache']} then {again.headers['X-Cache']}")
    # usable by codegen: the answer rebuilds the served schema
    sdl = print_schema(build_client_schema(first.json()["data"]))
    assert "type User implements Node" in sdl and "updateUser(input: UpdateUserInput!): UpdateUserCascade!" in sdl


def test_introspection_over_get_is_cacheable(c: httpx.Client) -> None:
    r = c.get("/graphql", params={"query": VARIANTS["graphql-core default"]})
    assert r.status_code == 200 and r.headers["ETag"] and r.headers["Cache-Control"] == "no-cache"
    assert c.get("/graphql", params={"query": VARIANTS["graphql-core default"]},
                 headers={"If-None-Match": r.headers["ETag"]}).status_code == 304


def _cycle(levels: int) -> str:
    return "{ __schema { types { " + "fields { type { " * levels + "name" + " } }" * levels + " } } }"


def _of_type(levels: int) -> str:
    return "{ __schema { types { " + "ofType { " * levels + "name" + " }" * levels + " } } }"


@pytest.mark.parametrize("query, message", [
    (_cycle(3), "introspection nests fields/interfaces/possibleTypes/inputFields 3 deep; the limit is 2"),
    (_cycle(40), "introspection is nested 83 levels deep"),
    ("{ __type(name: \"User\") { interfaces { possibleTypes { fields { name } } } } }", "3 deep"),
    ("{ __schema { types { inputFields { type { inputFields { type { inputFields { name } } } } } } } }", "3 deep"),
    (_of_type(30), "introspection is nested 33 levels deep; the limit is 20"),
    (get_introspection_query(type_depth=15), "introspection is nested 21 levels deep"),
    ("fragment F on __Type { fields { type { fields { type { fields { name } } } } } } { __schema { types { ...F } } }",
     "3 deep"),
    ("{ a: __schema { queryType { name } } b: __schema { queryType { name } } }", "__schema is asked 2 times"),
])
def test_hostile_introspection_is_refused_before_validation(c: httpx.Client, query: str, message: str) -> None:
    r = c.post("/graphql", json={"query": query})
    assert r.status_code == 200, r.text  # application/json: a GraphQL request error
    error = r.json()["errors"][0]
    assert message in error["message"], error
    assert error["extensions"] == {"code": "LIMIT_EXCEEDED", "limit": "introspection"}


def test_deep_data_queries_are_still_refused(c: httpx.Client) -> None:
    deep = "{ users { " + "posts { author { " * 6 + "id" + " } }" * 6 + " } }"
    r = c.post("/graphql", json={"query": deep})
    assert r.json()["errors"][0]["extensions"] == {"code": "LIMIT_EXCEEDED", "limit": "max_query_depth"}
    # introspection beside data does not lift the data's limit, nor hide its own
    r = c.post("/graphql", json={"query": deep[:-1] + " __schema { queryType { name } } }"})
    assert r.json()["errors"][0]["extensions"]["limit"] == "max_query_depth"
    r = c.post("/graphql", json={"query": "{ users(limit: 1) { id } " + _cycle(3)[1:]})
    assert r.json()["errors"][0]["extensions"]["limit"] == "introspection"
