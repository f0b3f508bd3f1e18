"""The triggers' items (notification payload, fraiseshm.changes) -> tags; a cascade verified against them."""

from __future__ import annotations

from typing import Any

import pytest

from fraiseshm.cascade.audit import FailureWindow
from fraiseshm.cascade.changes import Changes, parse_payload, parse_setting, table_of, verify
from fraiseshm.cascade.spec import parse
from fraiseshm.cascade.tags import plan_invalidation
from fraiseshm.errors import CascadeError

U1 = "11111111-1111-1111-1111-111111111111"
TABLES = {"Customer": "public.customers", "Order": "public.orders", "Product": "public.products"}
WIDE = {
    "Customer": frozenset({"w:public.customers", "t:public.customers", "w:public.orders", "t:public.orders"}),
    "Order": frozenset({"w:public.orders", "t:public.orders", "t:public.order_items"}),
    "Product": frozenset({"w:public.products", "t:public.products"}),
}


def test_payload_splits_direct_and_derived_items() -> None:
    c = parse_payload('{"v":1,"tx":"812","tags":["t:public.orders","r:public.orders:8","+r:public.customers:3"]}')
    assert c.tx == "812"
    assert c.direct == {"t:public.orders", "r:public.orders:8"}
    assert c.derived == {"r:public.customers:3"}
    assert c.tags() == {"t:public.orders", "r:public.orders:8", "r:public.customers:3"}


def test_keys_of_any_type_and_wide_items() -> None:
    c = parse_payload(f'{{"v":1,"tx":5,"tags":["r:public.users:{U1}","r:s.t:a:b","w:public.orders","+w:public.c"]}}')
    assert c.tx == "5" and c.wide_tables() == {"public.orders"}
    assert c.direct_rows() == {f"r:public.users:{U1}", "r:s.t:a:b"}
    assert table_of("r:s.t:a:b") == "s.t" and table_of("t:public.orders") == "public.orders"


@pytest.mark.parametrize("payload", [
    "", "not json", "[]", '{"tx": "1"}', '{"v":1}', '{"v":2,"tags":[]}', '{"v":1,"tags":["User:1"]}',
    '{"v":1,"tags":["r:public.orders"]}', '{"v":1,"tags":["r:public.orders:"]}', '{"v":1,"tags":["t:"]}',
    '{"v":1,"tags":[""]}', '{"v":1,"tags":"t:x"}', b'{"v":1,"tags":[1]}',
])
def test_bad_payloads_raise_cascade_error(payload: Any) -> None:
    with pytest.raises(CascadeError):
        parse_payload(payload)


def test_setting_parses_the_same_items() -> None:
    c = parse_setting(" t:public.orders r:public.orders:8 +r:public.customers:3 r:public.orders:8", "77")
    assert c == Changes("77", frozenset({"t:public.orders", "r:public.orders:8"}), frozenset({"r:public.customers:3"}))
    assert not parse_setting(None) and not parse_setting("")
    with pytest.raises(CascadeError):
        parse_setting("Customer:3")


def _response(updated: list[tuple[str, Any]], tx: str = "77", truncated: list[str] | None = None) -> dict[str, Any]:
    return {"success": True, "errors": [], "data": None, "cascade": {
        "updated": [{"__typename": t, "id": i, "operation": "UPDATED"} for t, i in updated],
        "deleted": [], "invalidations": [],
        "type_invalidations": [{"typename": t} for t in truncated or ()],
        "metadata": {"transaction_id": tx, "truncated": truncated is not None},
    }}


def _verify(response: Any, recorded: str, tx: str | None = "77", touches: tuple[str, ...] = ("Order",)):
    plan = plan_invalidation(parse(response), touches=touches, query_names=("orders",), tables=TABLES, wide=WIDE)
    return verify(plan, parse_setting(recorded, tx), touches=touches, tables=TABLES, wide=WIDE)


def test_a_cascade_naming_every_direct_row_is_ok_and_derived_parents_are_bumped() -> None:
    plan = _verify(_response([("Order", 8)]), "t:public.orders r:public.orders:8 +r:public.customers:3")
    assert plan.verdict == "ok" and not plan.is_failure and not plan.unlisted
    assert plan.tags == {"r:public.orders:8", "t:public.orders", "r:public.customers:3"}


def test_a_direct_row_of_a_served_table_absent_from_the_cascade_is_a_failure_repaired_wide() -> None:
    plan = _verify(_response([]), "t:public.customers r:public.customers:3")
    assert plan.verdict == "unlisted" and plan.is_failure
    assert plan.unlisted == {"r:public.customers:3"}
    assert {"r:public.customers:3"} | WIDE["Customer"] | WIDE["Order"] <= plan.tags
    assert "r:public.customers:3" in plan.detail and "77" in plan.detail


def test_rows_of_tables_no_type_is_served_from_are_not_demanded() -> None:
    plan = _verify(_response([("Order", 8)]), "r:public.orders:8 r:public.order_items:99 +r:public.orders:8")
    assert plan.verdict == "ok"
    assert "r:public.order_items:99" in plan.tags


def test_a_wide_record_needs_an_entity_of_that_table_in_the_cascade() -> None:
    assert _verify(_response([("Order", 8)]), "t:public.orders w:public.orders").verdict == "ok"
    plan = _verify(_response([("Order", 8)]), "r:public.orders:8 t:public.products w:public.products")
    assert plan.verdict == "unlisted" and plan.unlisted == {"w:public.products"}
    assert WIDE["Product"] <= plan.tags


def test_truncation_covers_the_tables_of_the_types_it_names() -> None:
    plan = _verify(_response([("Order", 8)], truncated=["Customer"]), "r:public.orders:8 r:public.customers:3")
    assert plan.verdict == "truncated" and not plan.is_failure
    plan = _verify(_response([("Order", 8)], truncated=["Customer"]), "r:public.orders:8 r:public.products:pen")
    assert plan.verdict == "unlisted"


def test_a_refused_mutation_that_changed_rows_is_a_failure() -> None:
    refused = {"success": False, "errors": [{"message": "no"}], "data": None, "cascade": None}
    assert _verify(refused, "", tx=None).verdict == "not_applied"
    assert _verify(refused, "r:public.orders:8").verdict == "unlisted"


def test_a_missing_cascade_stays_missing_and_also_bumps_the_changes() -> None:
    plan = _verify({"success": True, "data": None}, "r:public.products:pen")
    assert plan.verdict == "missing" and plan.is_failure
    assert {"r:public.products:pen"} | WIDE["Product"] | WIDE["Order"] <= plan.tags


def test_a_foreign_transaction_id_is_a_failure() -> None:
    plan = _verify(_response([("Order", 8)], tx="5"), "r:public.orders:8", tx="6")
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
