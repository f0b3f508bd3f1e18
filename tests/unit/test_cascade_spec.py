"""fraiseshm/cascade/spec.py: every dialect in, graphql-cascade 1.8.0 out, nothing silently dropped."""

from __future__ import annotations

from typing import Any

import pytest

from fraiseshm.cascade.spec import Hint, Limits, parse, to_cascade, to_payload

SNAKE = {"success": True, "errors": [], "data": {"id": "u1"}, "cascade": {
    "updated": [{"__typename": "User", "id": "u1", "operation": "UPDATED", "entity": {"id": "u1", "created_at": "x"}}],
    "deleted": [{"__typename": "Post", "id": 8, "deleted_at": "2026-01-01T00:00:00Z"}],
    "invalidations": [{"query_name": "users", "strategy": "INVALIDATE", "scope": "PREFIX"}],
    "type_invalidations": [],
    "metadata": {"timestamp": "2026-01-01T00:00:00Z", "transaction_id": "7", "depth": 1, "affected_count": 2,
                 "truncated": False}}}
CAMEL = {"success": True, "errors": None, "data": {"id": "u1"}, "cascade": {
    "updated": [{"typename": "User", "id": "u1", "operation": "UPDATED", "entity": {"id": "u1", "created_at": "x"}}],
    "deleted": [{"typename": "Post", "id": "8", "deletedAt": "2026-01-01T00:00:00Z"}],
    "invalidations": [{"queryName": "users", "strategy": "INVALIDATE", "scope": "PREFIX"}],
    "typeInvalidations": [],
    "metadata": {"timestamp": "2026-01-01T00:00:00Z", "transactionId": "7", "depth": 1, "affectedCount": 2,
                 "truncated": False}}}


def _cascade(raw: dict[str, Any], **kw: Any) -> dict[str, Any]:
    parsed = parse(raw)
    assert parsed.problem is None, parsed.problem
    return to_cascade(parsed, **kw)


def test_snake_case_and_camel_case_read_the_same() -> None:
    assert _cascade(SNAKE) == _cascade(CAMEL)
    out = _cascade(CAMEL, walk={"User": ()})
    assert out["updated"] == [{"typename": "User", "id": "u1", "operation": "UPDATED", "updatedFields": None,
                               "entity": {"__typename": "User", "id": "u1", "createdAt": "x"}}]
    assert out["deleted"] == [{"typename": "Post", "id": "8", "deletedAt": "2026-01-01T00:00:00Z"}]
    assert out["invalidations"] == [{"queryName": "users", "strategy": "INVALIDATE", "scope": "PREFIX"}]
    assert out["metadata"] == {"timestamp": "2026-01-01T00:00:00Z", "transactionId": "7", "depth": 1,
                               "affectedCount": 2, "truncated": False}
    assert out["typeInvalidations"] == []


@pytest.mark.parametrize("bad, needle", [
    ({"queryNme": "users", "strategy": "INVALIDATE", "scope": "PREFIX"}, "queryNme"),
    ({"strategy": "INVALIDATE", "scope": "PREFIX"}, "needs queryName"),
    ({"queryName": "", "strategy": "INVALIDATE", "scope": "EXACT"}, "non-empty"),
    ({"scope": "PATTERN"}, "needs queryPattern"),
    ({"queryName": "users", "scope": "SOME"}, "not one of"),
    ({"queryName": "users", "query_name": "posts", "scope": "EXACT"}, "twice"),
])
def test_an_invalidation_that_would_change_meaning_is_refused(bad: dict[str, Any], needle: str) -> None:
    parsed = parse({**CAMEL, "cascade": {**CAMEL["cascade"], "invalidations": [bad]}})
    assert parsed.problem is not None and needle in parsed.problem


def test_unknown_keys_in_entries_and_metadata_are_refused() -> None:
    for where, bad in [("updated", [{"typename": "User", "id": "u", "operaton": "CREATED"}]),
                       ("deleted", [{"typename": "User", "id": "u", "deleted": True}]),
                       ("metadata", {"timestamp": "t", "originalCount": 3})]:
        parsed = parse({**CAMEL, "cascade": {**CAMEL["cascade"], where: bad}})
        assert parsed.problem is not None, where
    truncated_unnamed = parse({**CAMEL, "cascade": {**CAMEL["cascade"], "metadata": {"truncated": True}}})
    assert truncated_unnamed.problem and "typeInvalidations" in truncated_unnamed.problem
    assert parse("nope").problem and parse({"success": "yes"}).problem


def test_fraiseql_composite_13_columns() -> None:
    row = {"succeeded": True, "state_changed": True, "error_class": None, "status_detail": None, "http_status": None,
           "message": None, "entity_id": "u1", "entity_type": "User", "entity": {"id": "u1"},
           "updated_fields": ["name"], "cascade": {
               "updated": [{"__typename": "User", "id": "u1", "operation": "UPDATED", "entity": {"id": "u1"}}],
               "deleted": [], "invalidations": [], "metadata": {"timestamp": "2026-01-01T00:00:00+00:00",
                                                                 "affectedCount": 1}},
           "error_detail": None, "metadata": None}
    parsed = parse(row)
    assert parsed.dialect == "fraiseql" and parsed.success and parsed.data == {"id": "u1"}
    assert to_cascade(parsed)["updated"][0]["updatedFields"] == ["name"]
    failed = parse({**row, "succeeded": False, "state_changed": False, "error_class": "conflict", "message": "taken",
                    "error_detail": {"field": "email"}, "cascade": None, "entity": None})
    assert failed.errors == [{"message": "taken", "code": "CONFLICT", "domainCode": None, "field": "email",
                              "path": ["input", "email"], "extensions": {"field": "email"}}]
    assert to_cascade(failed)["updated"] == [] and to_payload(failed, to_cascade(failed))["success"] is False
    noop = parse({**row, "state_changed": False, "cascade": None})
    assert noop.success and not noop.changed and noop.cascade is None


def test_fraiseql_v1_status_and_underscore_cascade() -> None:
    v1 = parse({"success": True, "data": {"id": "p"}, "_cascade": CAMEL["cascade"], "_meta": {"x": 1}})
    assert v1.dialect == "fraiseql-v1" and v1.cascade is not None and len(v1.cascade.updated) == 1
    old = parse({"status": "failed:validation", "message": "bad", "entity_id": None, "entity_type": None,
                 "entity": None, "updated_fields": None, "cascade": None, "metadata": None})
    assert not old.success and [e["code"] for e in old.errors] == ["VALIDATION_ERROR"]
    assert parse({"status": "noop:unchanged", "message": "", "entity_id": None, "entity_type": "User",
                  "entity": None, "updated_fields": None, "cascade": None, "metadata": None}).changed is False


def _many(posts: int, comments: int, users: int = 0) -> dict[str, Any]:
    deleted = ([{"typename": "Post", "id": f"p{i}"} for i in range(posts)]
               + [{"typename": "Comment", "id": f"c{i}"} for i in range(comments)]
               + [{"typename": "User", "id": f"u{i}"} for i in range(users)])
    return {"success": True, "data": None, "cascade": {"updated": [], "deleted": deleted, "invalidations": []}}


def test_truncation_removes_whole_types_most_entries_first() -> None:
    out = _cascade(_many(posts=3, comments=5, users=1), limits=Limits(max_updated=10, max_deleted=4))
    assert [d["typename"] for d in out["deleted"]] == ["Post", "Post", "Post", "User"]
    assert out["typeInvalidations"] == [{"typename": "Comment", "affectedCount": 5}]
    assert out["metadata"]["truncated"] is True and out["metadata"]["affectedCount"] == 9
    tie = _cascade(_many(posts=3, comments=3), limits=Limits(max_deleted=4))
    assert {t["typename"] for t in tie["typeInvalidations"]} == {"Comment"}  # ties broken by name
    fits = _cascade(_many(posts=3, comments=3), limits=Limits(max_deleted=6))
    assert fits["metadata"]["truncated"] is False and fits["typeInvalidations"] == []


def test_byte_limit_and_hint_limit() -> None:
    out = _cascade(_many(posts=40, comments=2), limits=Limits(max_bytes=1024))
    assert [t["typename"] for t in out["typeInvalidations"]] == ["Post"] and out["metadata"]["truncated"]
    hints = [Hint("EXACT", "INVALIDATE", "user", arguments={"id": str(i)}) for i in range(5)]
    few = _cascade(_many(0, 0), hints=hints, limits=Limits(max_invalidations=3))
    assert few["invalidations"] == [{"queryName": "user", "strategy": "INVALIDATE", "scope": "EXACT"}]
    one = _cascade(_many(0, 0), hints=[*hints, Hint("EXACT", "INVALIDATE", "post", arguments={"id": "1"})],
                   limits=Limits(max_invalidations=1))
    assert one["invalidations"] == [{"strategy": "INVALIDATE", "scope": "ALL"}]


def test_a_failed_cascade_covers_the_types_the_server_widened_to() -> None:
    parsed = parse({"success": True, "data": None, "cascade": {"updated": "oops"}})
    assert parsed.problem
    out = to_cascade(parsed, cover=("User", "Post"))
    assert out["typeInvalidations"] == [{"typename": "Post", "affectedCount": None},
                                        {"typename": "User", "affectedCount": None}]
    assert out["metadata"]["truncated"] is False


def test_error_codes_outside_the_enum_become_internal_error_with_a_domain_code() -> None:
    parsed = parse({"success": False, "data": None, "errors": [
        {"message": "too low", "code": "INSUFFICIENT_FUNDS", "field": "amount"},
        {"message": "m", "code": "billing.bad code"},
        {"message": "m", "code": "CONFLICT", "domainCode": "PROMOTIONS.COUPON_ALREADY_REDEEMED"}]})
    assert [(e["code"], e["domainCode"], e["path"]) for e in parsed.errors] == [
        ("INTERNAL_ERROR", "INSUFFICIENT_FUNDS", ["input", "amount"]),
        ("INTERNAL_ERROR", None, None),  # never a domainCode outside the spec's pattern
        ("CONFLICT", "PROMOTIONS.COUPON_ALREADY_REDEEMED", None)]
