from __future__ import annotations

from typing import Any

from fraiseshm.cascade.spec import parse
from fraiseshm.cascade.tags import plan_invalidation

QUERIES = ("users", "user", "posts", "post", "comments", "comment")
TABLES = {"User": "public.tb_user", "Post": "public.tb_post", "Comment": "public.tb_comment"}
WIDE = {
    "User": frozenset({"w:public.tb_user", "t:public.tb_user", "w:public.tb_post", "t:public.tb_post"}),
    "Post": frozenset({"w:public.tb_post", "t:public.tb_post", "w:public.tb_comment", "t:public.tb_comment"}),
    "Comment": frozenset({"w:public.tb_comment", "t:public.tb_comment"}),
}


def _response(**cascade: Any) -> dict[str, Any]:
    body = {"updated": [], "deleted": [], "invalidations": [], "metadata": {"transaction_id": "77", "truncated": False}}
    body.update(cascade)
    return {"success": True, "errors": [], "data": None, "cascade": body}


def _plan(response: Any, touches: tuple[str, ...] = ("User",)):
    return plan_invalidation(parse(response), touches=touches, query_names=QUERIES, tables=TABLES, wide=WIDE)


def test_entities_bump_their_row_and_table_tags_never_type_names() -> None:
    plan = _plan(_response(
        updated=[{"__typename": "User", "id": "u1", "operation": "CREATED", "entity": {"id": "u1"}}],
        deleted=[{"__typename": "Post", "id": 8, "deleted_at": "2026-01-01T00:00:00Z"}],
    ))
    assert plan.verdict == "ok" and not plan.is_failure
    assert plan.tags == {"r:public.tb_user:u1", "t:public.tb_user", "r:public.tb_post:8", "t:public.tb_post"}
    assert plan.entities == {"r:public.tb_user:u1", "r:public.tb_post:8"}
    assert plan.transaction_id == "77"


def test_query_invalidation_scopes_map_to_root_fields() -> None:
    plan = _plan(_response(invalidations=[
        {"query_name": "users", "strategy": "INVALIDATE", "scope": "EXACT"},
        {"query_name": "post", "strategy": "REFETCH", "scope": "PREFIX"},
        {"query_name": "comm*", "strategy": "REMOVE", "scope": "PATTERN"},
    ]))
    assert plan.tags == {"query:users", "query:post", "query:posts", "query:comment", "query:comments"}
    assert not plan.flush
    assert _plan(_response(invalidations=[{"strategy": "INVALIDATE", "scope": "ALL"}])).flush


def test_missing_and_malformed_cascades_fall_back_to_the_read_sets() -> None:
    fallback = WIDE["User"] | WIDE["Post"]
    missing = _plan({"success": True, "data": {}}, touches=("User", "Post"))
    assert missing.verdict == "missing" and missing.is_failure and missing.tags == fallback
    malformed = _plan({"success": True, "cascade": {"updated": "oops"}}, touches=("User", "Post"))
    assert malformed.verdict == "malformed" and malformed.tags == fallback and "updated" in malformed.detail
    not_object = _plan("nope", touches=("User", "Post"))
    assert not_object.is_failure and not_object.tags == fallback
    unknown_type = _plan(_response(updated=[{"__typename": "Ghost", "id": "g", "operation": "UPDATED"}]), touches=("User", "Post"))
    assert unknown_type.verdict == "malformed" and fallback <= unknown_type.tags


def test_a_refused_mutation_without_cascade_is_not_a_failure() -> None:
    plan = _plan({"success": False, "errors": [{"code": "NOT_FOUND", "message": "x"}]})
    assert plan.verdict == "not_applied" and not plan.tags and not plan.is_failure


def test_truncated_cascade_widens_to_the_cut_types() -> None:
    plan = _plan(_response(
        deleted=[{"__typename": "Comment", "id": "c1", "deleted_at": "x"}],
        type_invalidations=[{"typename": "Comment", "affected_count": 900}],
        metadata={"transaction_id": 5, "truncated": True},
    ))
    assert plan.verdict == "truncated" and not plan.is_failure
    assert {"r:public.tb_comment:c1"} | WIDE["Comment"] <= plan.tags
    assert plan.transaction_id == "5"
