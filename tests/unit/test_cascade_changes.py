"""Change notifications and the triggers' record -> tags; a cascade verified against them."""

from __future__ import annotations

from typing import Any

import pytest

from fraiseshm.cascade.audit import FailureWindow
from fraiseshm.cascade.changes import Changes, parse_notification, parse_recorded, tags_for, verify
from fraiseshm.cascade.tags import plan_invalidation
from fraiseshm.errors import CascadeError

U1 = "11111111-1111-1111-1111-111111111111"
P1 = "22222222-2222-2222-2222-222222222222"
TYPES = ("User", "Post", "Comment")


def test_entity_payload_bumps_the_entity_and_its_lists() -> None:
    c = parse_notification(f'{{"tx": "812", "changes": [["User", "{U1}"], ["Post", "{P1}"]]}}')
    assert c.tx == "812"
    assert c.entities == {f"User:{U1}", f"Post:{P1}"}
    assert c.tags() == {f"User:{U1}", "User:*", f"Post:{P1}", "Post:*"}


def test_types_fallback_bumps_every_result_of_the_type() -> None:
    c = parse_notification('{"tx": "9", "types": ["Comment", "Post"]}')
    assert c.types == {"Comment", "Post"} and not c.entities
    assert c.tags() == {"type:Comment", "Comment:*", "type:Post", "Post:*"}


def test_integer_tx_and_unknown_keys_are_accepted() -> None:
    c = parse_notification('{"tx": 5, "types": ["User"], "extra": 1}')
    assert c.tx == "5"


@pytest.mark.parametrize("payload", [
    "", "not json", "[]", '{"tx": "1"}', '{"changes": [["User"]]}', '{"changes": [["", "x"]]}',
    '{"types": ["Us er"]}', '{"types": "User"}', b'{"changes": [[1, 2]]}',
])
def test_bad_payloads_raise_cascade_error(payload: Any) -> None:
    with pytest.raises(CascadeError):
        parse_notification(payload)


def test_recorded_setting_parses_ids_and_type_tokens() -> None:
    c = parse_recorded(f" User:{U1} Post:* User:{U1}", "77")
    assert c == Changes("77", frozenset({f"User:{U1}"}), frozenset({"Post"}))
    assert not parse_recorded(None) and not parse_recorded("")
    with pytest.raises(CascadeError):
        parse_recorded("User")
    with pytest.raises(CascadeError):
        parse_recorded("User:")


def test_tags_for_unions() -> None:
    assert tags_for([parse_recorded(f"User:{U1}"), parse_recorded("Post:*")]) == {
        f"User:{U1}", "User:*", "type:Post", "Post:*"}


def _response(updated: list[tuple[str, str]], tx: str = "77", truncated: list[str] | None = None) -> dict[str, Any]:
    return {"success": True, "errors": [], "data": None, "cascade": {
        "updated": [{"__typename": t, "id": i, "operation": "UPDATED"} for t, i in updated],
        "deleted": [], "invalidations": [],
        "metadata": {"transaction_id": tx, "truncated": truncated is not None, "truncated_types": truncated},
    }}


def _verify(response: Any, recorded: str, tx: str | None = "77", touches: tuple[str, ...] = ("User",)):
    plan = plan_invalidation(response, touches=touches, query_names=("users",), known_types=TYPES)
    return verify(plan, parse_recorded(recorded, tx), touches=touches)


def test_a_cascade_naming_every_change_is_ok() -> None:
    plan = _verify(_response([("User", U1)]), f"User:{U1}")
    assert plan.verdict == "ok" and not plan.is_failure and not plan.unlisted
    assert plan.tags == {f"User:{U1}", "User:*"}


def test_an_entity_absent_from_the_cascade_is_a_failure_repaired_wide() -> None:
    plan = _verify(_response([]), f"User:{U1}")
    assert plan.verdict == "unlisted" and plan.is_failure
    assert plan.unlisted == {f"User:{U1}"}
    assert {f"User:{U1}", "User:*", "type:User"} <= plan.tags
    assert U1 in plan.detail and "77" in plan.detail


def test_a_type_level_record_needs_the_type_in_the_cascade() -> None:
    assert _verify(_response([("Post", P1)]), "Post:*", touches=("Post",)).verdict == "ok"
    plan = _verify(_response([("User", U1)]), f"User:{U1} Comment:*")
    assert plan.verdict == "unlisted" and plan.unlisted == {"Comment:*"}
    assert {"type:Comment", "Comment:*", "type:User"} <= plan.tags


def test_truncation_covers_the_types_it_names() -> None:
    plan = _verify(_response([("User", U1)], truncated=["Post"]), f"User:{U1} Post:{P1}")
    assert plan.verdict == "truncated" and not plan.is_failure
    plan = _verify(_response([("User", U1)], truncated=["Post"]), f"User:{U1} Comment:{P1}")
    assert plan.verdict == "unlisted"


def test_a_refused_mutation_that_changed_rows_is_a_failure() -> None:
    refused = {"success": False, "errors": [{"message": "no"}], "data": None, "cascade": None}
    assert _verify(refused, "", tx=None).verdict == "not_applied"
    assert _verify(refused, f"User:{U1}").verdict == "unlisted"


def test_a_missing_cascade_stays_missing_and_also_bumps_the_changes() -> None:
    plan = _verify({"success": True, "data": None}, f"Post:{P1}")
    assert plan.verdict == "missing" and plan.is_failure
    assert {f"Post:{P1}", "type:Post", "Post:*", "type:User", "User:*"} <= plan.tags


def test_a_foreign_transaction_id_is_a_failure() -> None:
    plan = _verify(_response([("User", U1)], tx="5"), f"User:{U1}", tx="6")
    assert plan.is_failure and "transaction_id 5" in plan.detail


def test_failure_window_alerts_above_threshold_and_clears() -> None:
    now = [1000.0]
    w = FailureWindow(window=10, threshold=0.01, clock=lambda: now[0])
    for _ in range(199):
        assert not w.observe(False).alerting
    s = w.observe(True)  # 1 / 200 = 0.5 %: under 1 %
    assert not s.alerting and s.failures == 1 and s.mutations == 200
    w.observe(True)  # 2 / 201: still under 1 %
    s = w.observe(True)  # 3 / 202 ~ 1.5 % > 1 %
    assert s.alerting and s.changed
    assert not w.observe(False).changed
    now[0] += 11  # the window slid past every observation
    s = w.state()
    assert s.mutations == 0 and not s.alerting and s.changed
