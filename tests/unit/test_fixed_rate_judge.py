"""perf/fixed_rate.py's judgement of what perf/ratedrive recorded: stale reads are counted exactly
when a read sent after a rename's acknowledgement shows an older name (an earlier run's included)."""

from __future__ import annotations

import json

from perf import fixed_rate

BASE = 10**18
IDS = ["u0", "u1"]


def _user(name: str) -> bytes:
    return json.dumps({"data": {"user": {"id": "u0", "name": name, "email": "e"}}}).encode()


def _posts(name: str) -> bytes:
    return json.dumps({"data": {"posts": [{"id": "p", "title": "t", "author": {"id": "u0", "name": name}}]}}).encode()


RENAMED = json.dumps({"data": {"updateUser": {"success": True, "data": {"id": "u0", "name": f"fr-{BASE}"}}}}).encode()


def _record(index: int, kind: str, sent: float, done: float, body: bytes, status: int = 200, cached: bool = False,
            outcome: int = fixed_rate.ANSWERED) -> tuple[int, str, int, int, bool, float, float, float, bytes]:
    return (index, kind, outcome, status, cached, index * 0.001, sent, done, body)


def test_a_read_sent_after_the_acknowledgement_must_show_the_rename() -> None:
    plan = [("rename", 0), ("user", 0), ("user", 0), ("posts", 0), ("user", 0), ("user", 1)]
    records = [
        _record(0, "rename", 0.1, 1.0, RENAMED),
        _record(1, "user", 0.5, 1.2, _user("Ann"), cached=True),  # sent before the ack: either name is right
        _record(2, "user", 1.5, 1.6, _user("Ann"), cached=True),  # after it, the old name: stale
        _record(3, "posts", 1.5, 1.7, _posts(f"fr-{BASE}")),  # after it, the new name: fresh
        _record(4, "user", 2.0, 2.1, _user(f"fr-{BASE - 5}"), cached=True),  # an earlier run's name: stale
        _record(5, "user", 2.0, 2.1, b"", status=0, outcome=fixed_rate.UNANSWERED),
    ]
    r = fixed_rate.judge(plan, records, IDS, BASE)
    assert (r["stale_reads"], r["reads_checked"]) == (2, 3)
    assert r["stale_by_document"] == {"user": 2}
    assert (r["reads"], r["hit_rate"]) == (4, 0.75)
    assert (r["errors"], r["unanswered"], r["completed"]) == (1, 1, 5)
    assert r["last_names"] == {"u0": f"fr-{BASE}"}
    assert r["unacked_names"] == {}


def test_a_refused_or_unanswered_rename_is_no_acknowledgement() -> None:
    plan = [("rename", 0), ("user", 0)]
    refused = json.dumps({"data": {"updateUser": {"success": False}}}).encode()
    r = fixed_rate.judge(plan, [_record(0, "rename", 0.1, 1.0, refused), _record(1, "user", 1.5, 1.6, _user("Ann"))],
                         IDS, BASE)
    assert (r["stale_reads"], r["errors"]) == (0, 1)
    r = fixed_rate.judge(plan, [_record(0, "rename", 0.1, 1.0, b"", status=0, outcome=fixed_rate.LOST),
                                _record(1, "user", 1.5, 1.6, _user("Ann"))], IDS, BASE)
    assert r["stale_reads"] == 0 and r["unacked_names"] == {"u0": f"fr-{BASE}"}
