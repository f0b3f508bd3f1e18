"""Gets take no lock and write nothing shared on a hit; the seqlock version follows the lock.

The offsets come from the byte diagram in fraiseshm/arena/layout.py (shard
version at +40, hit map after the pages). Concurrency is in
tests/multiprocess/test_arena_optimistic.py and tests/property.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from collections.abc import Iterator

import pytest

from fraiseshm import _native
from fraiseshm.arena import Arena

MiB = 1 << 20
PAGE = _native.PAGE
_names = itertools.count()


@pytest.fixture
def arena() -> Iterator[Arena]:
    name = f"/fraiseshm-opt-{os.getpid()}-{next(_names)}"
    a = Arena.create(name, size=4 * MiB, max_entry=256 * 1024, shards=1)
    a.register_process()
    yield a
    a.close()
    Arena.unlink(name)


class Shard:
    """Shard 0's bytes: its version word, its pages and its hit map."""

    def __init__(self, a: Arena) -> None:
        info = a._h.info()
        plan = _native.plan(info["size"], info["shards"], info["tag_slots"], info["flight_slots"], info["stats_slots"])
        assert plan is not None
        self.pages, nb = plan["pages"], plan["buckets"]
        self.base = plan["off_shards"]
        self.pages_off = 4096 + ((nb * 4 + self.pages * 8 + 4095) // 4096) * 4096
        self.hits = self.base + self.pages_off + self.pages * PAGE
        self.stride = plan["shard_stride"]
        with open("/dev/shm" + a.name, "rb") as f:
            self.m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)

    def version(self) -> int:
        return int(struct.unpack_from("<Q", self.m, self.base + 40)[0])

    def bytes(self) -> bytes:
        return self.m[self.base:self.base + self.stride]

    def hit_bit(self, value: bytes) -> bool:
        block = self.m.find(value) - _native.BLK_HDR - len(b"key")  # no deps: key, then value
        unit = (block - self.base - self.pages_off) // 64
        return bool(self.m[self.hits + unit // 8] >> (unit % 8) & 1)


def test_version_is_even_between_calls_and_grows_with_each_locked_section(arena: Arena) -> None:
    s = Shard(arena)
    v0 = s.version()
    assert v0 % 2 == 0 and arena.shard_versions() == [v0]
    arena.put(b"key", b"v" * 100, [], arena.current_seq(), 60)
    assert s.version() == v0 + 2  # odd while the put held the lock, even again after
    before = _native.read_stats()
    assert arena.get(b"key") == b"v" * 100
    assert arena.get(b"nothing") is None
    after = _native.read_stats()
    assert s.version() == v0 + 2  # a get is no writer
    assert after["answered"] - before["answered"] == 2 and after["fallbacks"] == before["fallbacks"]
    assert arena.check() == []  # I14 and the rest


def test_a_hit_on_a_marked_entry_writes_nothing_in_the_shard(arena: Arena) -> None:
    """The CLOCK bits are set once (test first), so a hot entry's hits leave the shard's bytes alone."""
    value = b"hot value " * 300
    arena.put(b"key", value, [], arena.current_seq(), 60)
    s = Shard(arena)
    assert not s.hit_bit(value)
    assert arena.get(b"key") == value  # the first hit marks the entry
    assert s.hit_bit(value)
    before = s.bytes()
    for _ in range(100):
        assert arena.get(b"key") == value
    assert s.bytes() == before


def test_the_clock_hand_uses_the_hit_map(arena: Arena) -> None:
    """A hot key read between fills survives eviction; the cold ones go first."""
    seq = arena.current_seq()
    value = os.urandom(3000)
    arena.put(b"hot", value, [], seq, 600)
    for i in range(3000):  # about 3x what the shard holds
        arena.put(b"cold-%d" % i, os.urandom(3000), [], seq, 600)
        assert arena.get(b"hot") == value, f"the hot key was evicted after {i} cold puts"
    assert arena.stats()["totals"]["evictions"] > 1000
    assert arena.check() == []


def test_the_locked_path_is_kept_for_comparison(arena: Arena) -> None:
    arena.put(b"key", b"v", [], arena.current_seq(), 60)
    assert _native.optimistic_reads(False) is True
    try:
        before = _native.read_stats()
        v = Shard(arena).version()
        assert arena.get(b"key") == b"v"
        assert _native.read_stats() == before
        assert Shard(arena).version() == v + 2  # the locked get took the lock
    finally:
        assert _native.optimistic_reads(True) is False


def test_an_invalidated_entry_is_freed_through_the_lock(arena: Arena) -> None:
    arena.put(b"key", b"v", ["T"], arena.current_seq(), 60)
    arena.invalidate(["T"])
    before = _native.read_stats()
    assert arena.get(b"key") is None
    assert _native.read_stats()["fallbacks"] == before["fallbacks"] + 1
    assert arena.stats()["entries"] == 0  # invalidation is forever: the entry is gone
    assert arena.get(b"key") is None
    assert _native.read_stats()["fallbacks"] == before["fallbacks"] + 1  # now a plain lock-free miss


def test_an_odd_version_left_with_a_free_lock_is_reported_and_repaired(arena: Arena) -> None:
    arena.put(b"key", b"v", [], arena.current_seq(), 60)
    s = Shard(arena)
    with open("/dev/shm" + arena.name, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        struct.pack_into("<Q", m, s.base + 40, s.version() | 1)  # a bad byte: odd, nobody holds the lock
    before = _native.read_stats()
    assert arena.get(b"key") == b"v"  # readers give up waiting and take the lock
    st = _native.read_stats()
    assert st["fallbacks"] == before["fallbacks"] + 1 and st["odd_waits"] > before["odd_waits"]
    assert s.version() % 2 == 0  # the locker made it even again
    assert arena.get(b"key") == b"v" and _native.read_stats()["answered"] == st["answered"] + 1
    with open("/dev/shm" + arena.name, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        struct.pack_into("<Q", m, s.base + 40, s.version() | 1)
    problems = arena.check()
    assert len(problems) == 1 and problems[0].startswith("I14 shard 0")
    assert arena.check() == [] and arena.get(b"key") == b"v"  # no wipe was needed
