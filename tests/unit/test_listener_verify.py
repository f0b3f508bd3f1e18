"""The listener's checks on a change notification, one payload at a time: a
real arena, the kit's signing (fraiseshm.db.kit.sign, as the SQL computes it),
an injected clock. No PostgreSQL: _on_notification is what asyncpg calls.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from fraiseshm.arena import Arena
from fraiseshm.db import kit
from fraiseshm.db.listener import Listener

KEY = os.urandom(32).hex()
NOW = 1_800_000_000.0


@pytest.fixture
def arena() -> Iterator[Arena]:
    name = f"/fraiseshm-lv-{os.getpid()}"
    a = Arena.create(name, size=8 << 20, max_entry=64 << 10, shards=2)
    yield a
    a.close()
    Arena.unlink(name)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def listener(arena: Arena, clock: Clock) -> Listener:
    return Listener("postgresql://unused", arena, secret=KEY, max_age=600.0, clock=clock)


def signed(tags: list[str], ts: float = NOW, key: str = KEY, **extra: object) -> str:
    body = json.dumps({"v": 1, "tx": "7", "ts": ts, "tags": tags, **extra})
    return f"{kit.sign(key, body.encode())} {body}"


def probe(arena: Arena, *deps: str) -> bytes:
    key = os.urandom(8)
    assert arena.put(key, b"v", list(deps), arena.current_seq(), 3600.0)
    return key


def hear(listener: Listener, payload: str) -> None:
    listener._on_notification(None, 4242, "fraiseshm_changes", payload)


def test_a_signed_payload_invalidates_its_tags_direct_and_derived(arena: Arena, listener: Listener) -> None:
    row, parent, other = probe(arena, "r:public.orders:8"), probe(arena, "r:public.customers:3"), probe(arena, "t:x")
    hear(listener, signed(["t:public.orders", "r:public.orders:8", "+r:public.customers:3"]))
    assert arena.get(row) is None and arena.get(parent) is None and arena.get(other) == b"v"
    assert sum(listener.rejected.values()) == 0


@pytest.mark.parametrize(("payload", "reason"), [
    ("x", "bad signature"),
    ('{"v": 1, "tx": "1", "ts": 1800000000.0, "tags": ["r:public.orders:8"]}', "bad signature"),
    ("0" * 64 + ' {"v": 1, "tx": "1", "ts": 1800000000.0, "tags": ["r:public.orders:8"]}', "bad signature"),
    (signed(["r:public.orders:8"], key=os.urandom(32).hex()), "bad signature"),
    (signed(["r:public.orders:8"]) + " ", "bad signature"),
    (signed(["r:public.orders:8"], ts=NOW - 601), "stale"),
    (signed(["r:public.orders:8"], ts=NOW + 601), "stale"),
    ("", "bad signature"),
])
def test_what_is_refused_changes_nothing(arena: Arena, listener: Listener, payload: str, reason: str) -> None:
    entry = probe(arena, "r:public.orders:8", "t:public.orders")
    seq = arena.current_seq()
    hear(listener, payload)
    assert arena.get(entry) == b"v" and arena.current_seq() == seq
    assert listener.rejected == {reason: 1}


def test_a_replay_is_refused_within_max_age_and_stale_after(arena: Arena, listener: Listener, clock: Clock) -> None:
    payload = signed(["r:public.orders:8"])
    hear(listener, payload)
    entry = probe(arena, "r:public.orders:8")
    hear(listener, payload)
    clock.now = NOW + 300
    hear(listener, payload)
    clock.now = NOW + 601
    hear(listener, payload)
    assert arena.get(entry) == b"v"
    assert listener.rejected == {"replayed": 2, "stale": 1}


def test_a_flood_of_forgeries_costs_nothing_but_counts(arena: Arena, listener: Listener) -> None:
    entry = probe(arena, "t:public.orders")
    seq = arena.current_seq()
    for i in range(10_000):
        hear(listener, f"{i:064x} " + json.dumps({"v": 1, "tx": str(i), "ts": NOW, "tags": ["t:public.orders"]}))
    assert arena.get(entry) == b"v" and arena.current_seq() == seq
    assert listener.rejected == {"bad signature": 10_000}


def test_signed_flush_request_and_signed_garbage_flush(arena: Arena, listener: Listener) -> None:
    entry = probe(arena, "t:unrelated")
    hear(listener, signed([], flush="view public.v_order"))
    assert arena.get(entry) is None
    entry = probe(arena, "t:unrelated")
    body = '{"v": 2, "what": "a newer kit"}'
    hear(listener, f"{kit.sign(KEY, body.encode())} {body}")
    assert arena.get(entry) is None  # authentic but unreadable: something changed, not what
