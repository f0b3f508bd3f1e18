"""The byte diagram in fraiseshm/arena/layout.py matches what the C extension writes."""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from collections.abc import Iterator

import pytest

from fraiseshm import _native
from fraiseshm.arena import Arena
from fraiseshm.arena.layout import LAYOUT_VERSION

MiB = 1 << 20
_names = itertools.count()


@pytest.fixture
def arena() -> Iterator[Arena]:
    name = f"/fraiseshm-layout-{os.getpid()}-{next(_names)}"
    a = Arena.create(name, size=4 * MiB, max_entry=64 * 1024, shards=1, tag_slots=1024, flight_slots=16,
                     stats_slots=4, hash_seed=0x1234)
    a.register_process()
    yield a
    a.close()
    Arena.unlink(name)


def raw(a: Arena) -> bytes:
    with open("/dev/shm" + a.name, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        return bytes(m)


def u64(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<Q", b, at)[0])


def u32(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", b, at)[0])


def test_header_words(arena: Arena) -> None:
    arena.invalidate(["T"])
    arena.flush()
    b = raw(arena)
    assert b[:8] == b"FISESHM1" and u32(b, 8) == LAYOUT_VERSION == 3 and u32(b, 12) == 4096
    assert (u32(b, 32), u32(b, 36), u32(b, 40), u32(b, 44)) == (1, 1024, 16, 4)
    assert u64(b, 104) == 0x1234  # the hash seed
    assert u64(b, 128) == u64(b, 176) == 2  # global_seq, both copies
    assert u64(b, 136) == u64(b, 184) == 2  # valid_from, both copies


def test_tag_table_keeps_two_copies(arena: Arena) -> None:
    seq = arena.invalidate(["T"])
    b = raw(arena)
    slot = _native.hash(b"T", 0x1234 ^ 0x7461677300000000) & 1023
    assert u64(b, 4096 + 16 * slot) == u64(b, 4096 + 16 * slot + 8) == seq


def test_block_header_words(arena: Arena) -> None:
    arena.put(b"the-key", b"the-value", [], 0, 60)
    b = raw(arena)
    head = b.find(b"the-keythe-value") - _native.BLK_HDR
    assert b[head] == 1  # LIVE
    assert (u32(b, head + 12), u32(b, head + 16)) == (7, 9)  # key_len, value_len
    assert u32(b, head + 20) >= 1  # gen: bumped at allocation
    assert u64(b, head + 24) == _native.hash(b"the-key", 0x1234)  # seeded key hash
    assert u64(b, head + 56) == _native.hash(b"the-value")  # the ETag, unseeded


def test_flight_ctl_word(arena: Arena) -> None:
    _, slot, gen = arena.flight_begin(b"q", 10.0)
    b = raw(arena)
    off_flights = 4096 + 1024 * 16
    ctl = u64(b, off_flights + 256 * slot)
    assert (ctl >> 32, (ctl >> 8) & 0xFFFFFF, ctl & 0xFF) == (gen, os.getpid(), 1)  # RUNNING
    assert u64(b, off_flights + 256 * slot + 16) >> 32 == os.getpid()  # owner word
    assert u64(b, off_flights + 256 * slot + 24) & 0xFFFFFF == gen  # deadline tagged with the generation
