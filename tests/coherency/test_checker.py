"""The coherency checker on hand-written histories: what it accepts and what it calls stale.

Pure code (no server): the times are chosen so each case sits on one side of
a boundary of the rule in harness.py (lo = newest version due before the
read started, hi = newest version sent before it ended).
"""

from __future__ import annotations

from tests.coherency.harness import Checker, History, Members, Obj, Total, Window


def _history(grace: float = 0.1) -> History:
    h = History(grace)
    h.indexed = {"post": ("author",)}
    h.seed("user", "u1", {"id": "u1", "name": "ann"})
    h.record([("user", "u1", {"id": "u1", "name": "bea"})], sent=10.0, ack=11.0, path="mutation")
    return h


def test_a_version_acknowledged_before_the_read_must_be_seen() -> None:
    checker = Checker(_history())
    failures, _ = checker.check("user", [Obj("user", "u1", {"name": "ann"})], start=11.5, end=12.0)
    assert [(f.verdict, f.superseded_by) for f in failures] == [("stale", "mutation")]
    assert abs(failures[0].lag - 0.5) < 1e-9


def test_a_write_in_flight_during_the_read_may_be_seen_or_not() -> None:
    checker = Checker(_history())
    for name in ("ann", "bea"):  # the write was sent before the read ended and acknowledged after it started
        assert checker.check("user", [Obj("user", "u1", {"name": name})], start=10.5, end=10.8)[0] == []


def test_a_value_never_written_is_wrong_and_a_future_one_too() -> None:
    checker = Checker(_history())
    assert checker.check("user", [Obj("user", "u1", {"name": "zoe"})], 12.0, 12.1)[0][0].verdict == "wrong"
    # "bea" was sent at 10.0: a read that ended before cannot have seen it
    assert checker.check("user", [Obj("user", "u1", {"name": "bea"})], 9.0, 9.5)[0][0].verdict == "wrong"


def test_plain_sql_gets_the_grace_and_is_reported() -> None:
    h = _history(grace=0.1)
    h.record([("user", "u1", {"id": "u1", "name": "cy"})], sent=20.0, ack=20.5, path="sql")
    checker = Checker(h)
    failures, graced = checker.check("user", [Obj("user", "u1", {"name": "bea"})], 20.55, 20.6)
    assert failures == [] and graced is not None and abs(graced - 0.05) < 1e-9
    failures, _ = checker.check("user", [Obj("user", "u1", {"name": "bea"})], 20.7, 20.8)
    assert [(f.verdict, f.superseded_by) for f in failures] == [("stale", "sql")]


def test_lists_must_hold_every_member_and_nothing_else() -> None:
    h = _history()
    h.seed("post", "p1", {"id": "p1", "author": "u1", "createdAt": "1"})
    h.record([("post", "p2", {"id": "p2", "author": "u1", "createdAt": "2"})], sent=30.0, ack=30.2, path="mutation")
    h.record([("post", "p1", {"id": "p1", "author": "u2", "createdAt": "1"})], sent=31.0, ack=31.2, path="sql")
    checker = Checker(h)

    def served(*keys: str) -> Members:
        return Members("post", "author", "u1", [(k, {"id": k}) for k in keys])

    assert checker.check("u", [served("p1", "p2")], 30.5, 30.6)[0] == []
    assert checker.check("u", [served("p1")], 30.5, 30.6)[0][0].verdict == "stale"  # p2 missing
    assert checker.check("u", [served("p2")], 31.5, 31.6)[0] == []  # p1 moved to u2
    assert checker.check("u", [served("p1", "p2")], 31.5, 31.6)[0][0].verdict == "stale"
    assert checker.check("u", [served("p2", "p1")], 30.5, 30.6)[0][0].verdict == "wrong"  # order


def test_pages_count_the_rows_before_them() -> None:
    h = History(0.1)
    for i in range(5):
        h.seed("user", f"u{i}", {"id": f"u{i}", "createdAt": str(i)})
    h.record([("user", "u0", None)], sent=40.0, ack=40.1, path="mutation")
    checker = Checker(h)

    def page(*keys: str) -> Window:
        return Window("user", 1, 2, [(k, {}) for k in keys])

    assert checker.check("p", [page("u1", "u2")], 39.0, 39.5)[0] == []
    assert checker.check("p", [page("u2", "u3")], 41.0, 41.5)[0] == []
    assert checker.check("p", [page("u1", "u2")], 41.0, 41.5)[0][0].verdict == "stale"
    assert checker.check("p", [page("u1", "u3")], 41.0, 41.5)[0][0].verdict == "wrong"


def test_computed_values_need_a_combination_of_fresh_rows() -> None:
    h = History(0.1)
    h.seed("product", "pen", {"price": 250})
    h.seed("item", "i1", {"order": 1, "product": "pen", "qty": 2})
    h.record([("product", "pen", {"price": 300})], sent=50.0, ack=50.1, path="mutation")
    checker = Checker(h)
    keys = [("item", "i1"), ("product", "pen")]

    def total(served: int) -> Total:
        def compute(images: dict) -> int:
            item, product = images[("item", "i1")], images[("product", "pen")]
            return item["qty"] * product["price"] if item and product else 0

        return Total("order 1 total", keys, compute, served)

    assert checker.check("o", [total(500)], 49.0, 49.5)[0] == []
    assert checker.check("o", [total(600)], 51.0, 51.5)[0] == []
    assert checker.check("o", [total(500)], 51.0, 51.5)[0][0].verdict == "stale"
    assert checker.check("o", [total(700)], 51.0, 51.5)[0][0].verdict == "wrong"
