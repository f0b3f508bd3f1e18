"""The arena behaves like a plain dict model, minus evictions; no stale read after an invalidation.

The model keeps, per key, the value, deps, fill sequence and expiry. An arena
answer must be either the model's (valid) value or None (evicted); it must
never be a value the model says is invalidated, flushed, expired or
overwritten.
"""

from __future__ import annotations

import itertools
import os

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fraiseshm.arena import Arena
from fraiseshm.errors import EntryTooLarge

S = 1_000_000_000
MAX_ENTRY = 100_000
_names = itertools.count()

keys = st.sampled_from([b"k%d" % i for i in range(12)])
tags = st.sampled_from(["User:1", "User:2", "User:*", "Post:1", "query:users"])
values = st.one_of(st.binary(max_size=300), st.binary(min_size=60_000, max_size=MAX_ENTRY + 10))


class ArenaModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 100 * S
        self.name = f"/fraiseshm-prop-{os.getpid()}-{next(_names)}"
        # small on purpose: evictions happen, and the model must tolerate them
        self.arena = Arena.create(self.name, size=4 << 20, max_entry=MAX_ENTRY, shards=2, clock=lambda: self.now)
        self.model: dict[bytes, tuple[bytes, frozenset[str], int, int]] = {}
        self.last: dict[str, int] = {}  # tag -> last invalidated at
        self.valid_from = 0
        self.seq = 0

    def teardown(self) -> None:
        self.arena.close()
        Arena.unlink(self.name)

    def stored_form(self, key: bytes, value: bytes) -> bytes:
        """What put() stores for value (a subclass may make it self-verifying)."""
        return value

    def _valid(self, key: bytes, *, stale_ok: bool = False) -> bytes | None:
        if key not in self.model:
            return None
        value, deps, fill, expiry = self.model[key]
        if fill < self.valid_from or any(self.last.get(t, 0) > fill for t in deps):
            return None
        if not stale_ok and self.now >= expiry:
            return None
        return value

    @rule(key=keys, value=values, deps=st.frozensets(tags, max_size=3), ttl=st.integers(1, 100), lag=st.integers(0, 2))
    def put(self, key: bytes, value: bytes, deps: frozenset[str], ttl: int, lag: int) -> None:
        fill = max(0, self.seq - lag)  # a fill that may have raced invalidations
        value = self.stored_form(key, value)
        try:
            stored = self.arena.put(key, value, sorted(deps), fill, ttl)
        except EntryTooLarge:
            assert len(value) > MAX_ENTRY
            return
        assert len(value) <= MAX_ENTRY
        fresh = fill >= self.valid_from and all(self.last.get(t, 0) <= fill for t in deps)
        assert stored == fresh
        if stored:
            self.model[key] = (value, deps, fill, self.now + ttl * S)

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        got = self.arena.get(key)
        assert got is None or got == self._valid(key), "served a stale or foreign value"

    @rule(key=keys)
    def get_stale(self, key: bytes) -> None:
        got = self.arena.get_stale(key)
        assert got is None or got == self._valid(key, stale_ok=True)

    @rule(ts=st.lists(tags, max_size=3))
    def invalidate(self, ts: list[str]) -> None:
        self.seq = self.arena.invalidate(ts)
        for t in ts:
            self.last[t] = self.seq
        for k in list(self.model):  # no stale read right after the invalidation
            if self.model[k][1] & set(ts):
                assert self.arena.get(k) is None

    @precondition(lambda self: self.seq % 4 == 3)
    @rule()
    def flush(self) -> None:
        self.seq = self.valid_from = self.arena.flush()

    @rule(seconds=st.integers(0, 60))
    def tick(self, seconds: int) -> None:
        self.now += seconds * S

    @invariant()
    def sequence_matches(self) -> None:
        assert self.arena.current_seq() == self.seq


ArenaModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestArenaModel = ArenaModel.TestCase


def test_check_is_clean_after_a_random_workload() -> None:
    m = ArenaModel()
    try:
        for i in range(3000):
            m.put(b"k%d" % (i % 50), os.urandom((i * 7919) % 90_000), frozenset({"User:1"}), 10, 0)
            if i % 97 == 0:
                m.invalidate(["User:1"])
        assert m.arena.check() == []
    finally:
        m.teardown()
