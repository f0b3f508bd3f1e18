"""Cost limits (fraiseshm/graphql/limits.py): linear, exact, named in their errors."""

from __future__ import annotations

import time

import pytest
from graphql import get_introspection_query, parse

from fraiseshm.errors import LimitExceeded
from fraiseshm.graphql.execute import Executor, GraphQLRequestError, _select_operation
from fraiseshm.graphql.limits import Limits, check_document, fanout, private_types
from fraiseshm.graphql.schema import build_served_schema, load_schema

BLOG = load_schema("examples/blog/schema.graphql")


def _cost(query: str, limits: Limits = Limits(), variables: dict | None = None):  # noqa: ANN202
    document = parse(query)
    operation = _select_operation(document, None)
    cost = check_document(BLOG.schema, document, operation, limits, private_types(BLOG.schema))
    if variables is not None:
        fanout(BLOG.schema, document, operation, variables, limits)
    return cost


def _chain(k: int) -> str:
    frags = "\n".join(f"fragment F{i} on User {{ ...F{i + 1} ...F{i + 1} }}" for i in range(k))
    return '{ user(id: "x") { ...F0 } }\n' + frags + f"\nfragment F{k} on User {{ id }}"


def test_fragment_expansion_is_memoised_and_exact() -> None:
    started = time.perf_counter()
    with pytest.raises(LimitExceeded, match=r"selects 35184372088833 fields") as info:
        _cost(_chain(45))  # 2^45 leaves: a walk without memo would never end
    assert time.perf_counter() - started < 0.5
    assert info.value.setting == "max_fields"
    assert _cost(_chain(5)).fields == 1 + 32


def test_root_fields_fan_out_depth_and_introspection() -> None:
    with pytest.raises(LimitExceeded, match="25 root fields"):
        _cost("{ " + " ".join(f'a{i}: user(id: "x") {{ id }}' for i in range(25)) + " }")
    cost = _cost("{ users(limit: 20) { id posts { id comments { id } } } }")
    assert cost.rows == 20 * (1 + 10 * (1 + 10)) and not cost.variable_pages
    with pytest.raises(LimitExceeded, match="max_list_fanout|MAX_LIST_FANOUT"):
        _cost("{ a: posts(limit: 1000) { comments { id } } b: posts(limit: 1000) { comments { id } } }")
    cost = _cost("query($n: Int = 5) { users(limit: $n) { id } }")
    assert cost.variable_pages and cost.rows == 5
    with pytest.raises(LimitExceeded):
        _cost("query($n: Int) { users(limit: $n) { posts { comments { id } } } }", variables={"n": 1000})
    with pytest.raises(LimitExceeded, match="nested 14"):
        _cost("{ users { " + "posts { author { " * 6 + "id" + " } }" * 6 + " } }")
    assert _cost(get_introspection_query(descriptions=True)).fields < 300
    with pytest.raises(LimitExceeded, match="__schema is asked 2 times"):
        _cost("{ a: __schema { queryType { name } } b: __schema { queryType { name } } }")
    with pytest.raises(LimitExceeded, match="switched off"):
        _cost("{ __schema { queryType { name } } }", Limits(introspection=False))
    _cost("{ __typename }", Limits(introspection=False))


def test_private_types_with_or_without_view() -> None:
    served = build_served_schema('''
        type Secret @cache(private: true) { code: String }
        type User implements Node @view(name: "v_user", orderBy: "id") { id: ID! name: String secret: Secret }
        type Query { users(limit: Int = 20, offset: Int = 0): [User!]! user(id: ID!): User }
    ''')
    assert "Secret" in private_types(served.schema)
    document = parse("{ users { id secret { code } } }")
    op = _select_operation(document, None)
    assert check_document(served.schema, document, op, Limits(), private_types(served.schema)).private
    document = parse("{ users { id name } }")
    assert not check_document(served.schema, document, _select_operation(document, None), Limits(),
                              private_types(served.schema)).private
    assert _cost("{ drafts { id } }").private and not _cost("{ users { id } }").private


def test_document_cache_is_bounded_in_bytes() -> None:
    executor = Executor(BLOG, None, max_depth=12, max_documents=1000, max_document_cache_bytes=1 << 20)  # type: ignore[arg-type]
    for i in range(200):
        executor.prepare("{ users { id } }" + " " * 1000 + f"# {i}", None)
    assert executor._cached_bytes <= 1 << 20  # noqa: SLF001
    assert len(executor._prepared) < 200  # noqa: SLF001


def test_limits_run_before_validation_and_parsing_is_bounded() -> None:
    executor = Executor(BLOG, None, max_depth=12, max_documents=10)  # type: ignore[arg-type]
    with pytest.raises(GraphQLRequestError) as info:
        executor.prepare("{ " + " ".join(f"a{i}: __typename" for i in range(3000)) + " }", None)
    assert info.value.errors[0].extensions == {"code": "LIMIT_EXCEEDED", "limit": "max_document_bytes"}
    with pytest.raises(GraphQLRequestError, match="nested too deeply|nests too deeply"):
        executor.prepare("{ " + "users { " * 1500 + "id" + " }" * 1500 + " }", None)
