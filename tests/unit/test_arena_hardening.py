"""Shared memory is not trusted: bad bytes are refused, bounded, detected and wiped, never served.

Each test writes chosen bytes into a real arena segment (the offsets come from
fraiseshm/arena/layout.py) and runs the call that used to crash, hang or serve
a wrong value, in a forked child with a deadline where a regression would
crash or hang the test process.
"""

from __future__ import annotations

import itertools
import mmap
import os
import select
import signal
import struct
from collections.abc import Callable, Iterator

import pytest

from fraiseshm import _native
from fraiseshm.arena import Arena
from fraiseshm.errors import ArenaCorrupt

MiB = 1 << 20
BLK_HDR = _native.BLK_HDR
CHAIN_MAX = _native.CHAIN_MAX
_names = itertools.count()


@pytest.fixture
def name() -> Iterator[str]:
    n = f"/fraiseshm-hard-{os.getpid()}-{next(_names)}"
    yield n
    Arena.unlink(n)


class Segment:
    """The arena's bytes, with the layout's offsets (layout.py byte diagram)."""

    def __init__(self, arena: Arena) -> None:
        info = arena._h.info()
        plan = _native.plan(info["size"], info["shards"], info["tag_slots"], info["flight_slots"], info["stats_slots"])
        assert plan is not None
        self.nb, self.pages = plan["buckets"], plan["pages"]
        self.off_shards, self.stride = plan["off_shards"], plan["shard_stride"]
        self.pages_off = 4096 + ((self.nb * 4 + self.pages * 8 + 4095) // 4096) * 4096
        self._f = open("/dev/shm" + arena.name, "r+b")  # noqa: SIM115 - closed in close()
        self.m = mmap.mmap(self._f.fileno(), 0)

    def close(self) -> None:
        self.m.close()
        self._f.close()

    def shard(self, si: int) -> int:
        return self.off_shards + si * self.stride

    def bucket(self, si: int, bi: int) -> int:
        return self.shard(si) + 4096 + 4 * bi

    def block(self, si: int, ref: int) -> int:
        return self.shard(si) + self.pages_off + (ref - 1) * 16

    def ref(self, si: int, block: int) -> int:
        return (block - self.shard(si) - self.pages_off) // 16 + 1

    def u32(self, at: int, value: int | None = None) -> int:
        if value is not None:
            self.m[at:at + 4] = struct.pack("<I", value)
        return int(struct.unpack("<I", self.m[at:at + 4])[0])

    def block_of_key(self, key: bytes, start: int = 0) -> int:
        """The head block of a dep-less entry: its key follows the 72 B header."""
        at = self.m.find(key, start)
        assert at > 0
        return at - BLK_HDR


def in_child(fn: Callable[[], object], timeout: float = 15.0) -> object:
    """fn() in a forked child; its repr() back, or 'crash'/'hang' if it never answered."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            os.write(w, repr(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    ready, _, _ = select.select([r], [], [], timeout)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    data = os.read(r, 65536) if ready else b""
    _, status = os.waitpid(pid, 0)
    os.close(r)
    if not ready:
        return "hang"
    if not os.WIFEXITED(status) or not data:
        return "crash"
    return eval(data.decode())  # noqa: S307 - a repr() written by our own child


def colliding_keys(n: int, nb: int, seed: int = 0) -> list[bytes]:
    """Keys whose hash under ``seed`` lands in bucket 0 of a one-shard arena: what a
    client could precompute against an unseeded hash."""
    out = []
    for i in itertools.count():
        k = b"collide-%d" % i
        if _native.hash(k, seed) & (nb - 1) == 0:
            out.append(k)
            if len(out) == n:
                return out
    raise AssertionError


# --- geometry --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "offset", "value"),
    [("shards = 0", 32, 0), ("tag_slots not a power of two", 36, 3), ("pages + 1", 48, None),
     ("buckets = 0", 52, 0), ("off_shards moved", 80, None), ("shard_stride", 88, None)],
)
def test_attach_refuses_an_inconsistent_geometry(name: str, field: str, offset: int, value: int | None) -> None:
    Arena.create(name, size=8 * MiB, max_entry=64 * 1024, shards=2).close()
    with open("/dev/shm" + name, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        width = 8 if offset >= 56 else 4
        fmt = "<Q" if width == 8 else "<I"
        old = struct.unpack(fmt, m[offset:offset + width])[0]
        m[offset:offset + width] = struct.pack(fmt, old + 4096 if value is None else value)
    with pytest.raises(ArenaCorrupt, match="geometry is inconsistent"):
        Arena.attach(name)


def test_every_arena_draws_its_own_hash_seed(name: str) -> None:
    seeds = set()
    for i in range(3):
        with Arena.create(f"{name}-{i}", size=4 * MiB, max_entry=64 * 1024, shards=1) as a:
            with open("/dev/shm" + a.name, "rb") as f:
                seeds.add(struct.unpack("<Q", f.read(112)[104:112])[0])
        Arena.unlink(f"{name}-{i}")
    assert len(seeds) == 3 and 0 not in seeds


# --- chains ----------------------------------------------------------------------------


def test_precomputed_colliding_keys_spread_under_the_arena_seed(name: str) -> None:
    with Arena.create(name, size=4 * MiB, max_entry=64 * 1024, shards=1) as a:
        seg = Segment(a)
        keys = colliding_keys(3 * CHAIN_MAX, seg.nb)  # collide under the OLD unseeded hash
        for k in keys:
            assert a.put(k, b"v" + k, [], a.current_seq(), 60)
        assert a.stats()["entries"] == len(keys)  # nothing trimmed: they spread
        used = sum(1 for bi in range(seg.nb) if seg.u32(seg.bucket(0, bi)))
        assert used > len(keys) * 0.9
        seg.close()


def test_a_chain_never_grows_past_chain_max(name: str) -> None:
    with Arena.create(name, size=4 * MiB, max_entry=64 * 1024, shards=1, hash_seed=0) as a:
        seg = Segment(a)
        keys = colliding_keys(3 * CHAIN_MAX, seg.nb)
        for k in keys:
            assert a.put(k, b"v" + k, [], a.current_seq(), 60)
        assert a.stats()["entries"] == CHAIN_MAX  # the oldest of the chain were evicted
        assert all(a.get(k) == b"v" + k for k in keys[-CHAIN_MAX:])
        assert a.check() == []
        seg.close()


def test_a_self_looping_link_is_not_walked_forever(name: str) -> None:
    with Arena.create(name, size=4 * MiB, max_entry=64 * 1024, shards=1, hash_seed=0) as a:
        seg = Segment(a)
        k1, k2 = colliding_keys(2, seg.nb)
        a.put(k1, b"one", [], 0, 60)
        a.put(k2, b"two", [], 0, 60)  # chain: k2 -> k1
        head = seg.u32(seg.bucket(0, 0))
        seg.u32(seg.block(0, head) + 4, head)  # k2.next = k2
        assert in_child(lambda: a.get(k1)) is None  # walks, finds the loop, wipes
        assert a.get(k2) is None and a.stats()["corruption_wipes"] >= 1
        assert a.check() == []
        seg.close()


def test_a_freed_block_pointed_to_again_is_not_served(name: str) -> None:
    with Arena.create(name, size=4 * MiB, max_entry=64 * 1024, shards=1) as a:
        seg = Segment(a)
        assert a.put(b"k", b"old" * 10, [], 0, 60)
        old = seg.block_of_key(b"kold")  # the key, then the value
        assert a.put(b"k", b"new" * 1000, [], 0, 60)  # another class: the old block is freed
        bi = next(bi for bi in range(seg.nb) if seg.u32(seg.bucket(0, bi)))
        seg.u32(seg.bucket(0, bi), seg.ref(0, old))  # the bucket points at the freed block
        assert in_child(lambda: a.get(b"k")) is None
        assert a.get(b"k") is None  # never b"old..."
        assert a.stats()["corruption_wipes"] == 1
        seg.close()


def test_a_wrong_aux_word_is_never_followed(name: str) -> None:
    """The issue's ASan finding: one bad aux made get copy 65 KB past a block."""
    with Arena.create(name, size=4 * MiB, max_entry=64 * 1024, shards=1) as a:
        seg = Segment(a)
        assert a.put(b"k", b"value" * 20, [], 0, 60)
        blk = seg.block_of_key(b"kvalue")
        seg.u32(blk + 8, 0x200)  # aux: a chunk chain that is not there
        assert in_child(lambda: a.get(b"k")) is None
        assert a.get(b"k") is None and a.stats()["corruption_wipes"] == 1
        assert a.check() == []
        seg.close()


# --- locks -----------------------------------------------------------------------------


def test_a_lock_word_naming_a_dead_thread_does_not_hang(name: str) -> None:
    with Arena.create(name, size=4 * MiB, max_entry=64 * 1024, shards=1) as a:
        a.register_process()
        seg = Segment(a)
        assert a.put(b"k", b"v", [], 0, 60)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - a pid that will be dead
            os._exit(0)
        os.waitpid(pid, 0)
        seg.u32(seg.shard(0), pid)  # the mutex's lock word: "held by" a dead thread
        assert in_child(lambda: a.get(b"k")) is None
        assert a.get(b"k") is None and a.put(b"k", b"v2", [], a.current_seq(), 60)
        assert a.get(b"k") == b"v2"
        assert a.stats()["corruption_wipes"] == 1  # wiped by the child (its log line is its own)
        seg.close()


def test_a_mutex_type_word_overwritten_is_recreated(name: str) -> None:
    with Arena.create(name, size=4 * MiB, max_entry=64 * 1024, shards=1) as a:
        seg = Segment(a)
        assert a.put(b"k", b"v", [], 0, 60)
        seg.m[seg.shard(0) + 16] ^= 0x10  # __kind: no longer robust
        assert in_child(lambda: a.get(b"k")) is None
        assert a.put(b"k", b"v2", [], a.current_seq(), 60) and a.get(b"k") == b"v2"
        assert a.stats()["corruption_wipes"] == 1
        seg.close()


# --- sequences and tags ------------------------------------------------------------------


def test_one_bad_byte_cannot_lower_a_tag(name: str) -> None:
    """Tags live twice; a reader takes the larger: an invalidated entry stays invalid."""
    with Arena.create(name, size=4 * MiB, max_entry=64 * 1024, shards=1, tag_slots=1024) as a:
        seq = a.current_seq()
        assert a.put(b"k", b"v", ["T"], seq, 60)
        a.invalidate(["T"])  # the entry stays in place until read
        with open("/dev/shm" + name, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            hits = [i for i in range(4096, 4096 + 1024 * 16, 8) if struct.unpack("<Q", m[i:i + 8])[0] == seq + 1]
            assert len(hits) == 2  # both copies of T
            m[hits[0]:hits[0] + 8] = struct.pack("<Q", 0)
        assert a.get(b"k") is None


def test_a_tag_ahead_of_the_sequence_is_repaired_not_trusted(name: str) -> None:
    with Arena.create(name, size=4 * MiB, max_entry=64 * 1024, shards=1, tag_slots=1024) as a:
        a.invalidate(["T"])
        seq = a.current_seq()
        with open("/dev/shm" + name, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            at = next(i for i in range(4096, 4096 + 1024 * 16, 8) if struct.unpack("<Q", m[i:i + 8])[0] == seq)
            m[at + 7] = 0x10  # 2^60: every put depending on T would be refused for ever
        assert a.put(b"k", b"v", ["T"], a.current_seq(), 60) is False  # refused once, and repaired
        assert a.put(b"k", b"v", ["T"], a.current_seq(), 60) is True
        assert a.get(b"k") == b"v" and a.check() == []
