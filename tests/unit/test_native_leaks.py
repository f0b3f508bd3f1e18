"""Leak test over every C entry point, bad arguments included (psutil's test_memleaks idea).

Each call runs N times under tracemalloc after a warm-up; the traced memory
that is still alive afterwards must stay under a small bound. A leaked bytes
object or tuple per call would show up as N times its size.
"""

from __future__ import annotations

import gc
import itertools
import os
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from fraiseshm import _native
from fraiseshm.arena import Arena, Counter

N = 100_000
MiB = 1 << 20
_names = itertools.count()


@pytest.fixture(scope="module")
def arena() -> Iterator[Arena]:
    name = f"/fraiseshm-leak-{os.getpid()}-{next(_names)}"
    a = Arena.create(name, size=16 * MiB, max_entry=128 * 1024, shards=2, flight_slots=64)
    a.register_process()
    a.put(b"hit", b"v" * 1000, ["T:1"], 0, 1e6)
    a.put(b"big", b"b" * 100_000, ["T:1"], 0, 1e6)
    yield a
    a.close()
    Arena.unlink(name)


def _call(fn: Callable[[], object]) -> None:
    try:
        fn()
    except (TypeError, ValueError):
        pass


def assert_no_leak(fn: Callable[[], object], n: int = N) -> None:
    for _ in range(200):
        _call(fn)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            _call(fn)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 32 * 1024, f"{grown} B still allocated after {n} calls"


def cases(a: Arena) -> dict[str, Callable[[], object]]:
    h = a._h
    seq = a.current_seq()
    deps = ["T:1", "T:2", "T:*"]
    many = [f"T:{i}" for i in range(100)]
    return {
        "get_hit": lambda: h.get(b"hit"),
        "get_big": lambda: h.get(b"big"),
        "get_miss": lambda: h.get(b"miss"),
        "get_bad": lambda: h.get("str"),
        "get_with_checksum": lambda: h.get_with_checksum(b"hit"),
        "get_stale": lambda: h.get_stale(b"hit", 10**18),
        "put": lambda: h.put(b"p", b"x" * 500, deps, seq, 60.0),
        "put_many_deps": lambda: h.put(b"pm", b"x", many, seq, 60.0),
        "put_chunked": lambda: h.put(b"pc", b"x" * 70_000, deps, seq, 60.0),
        "put_bad": lambda: h.put(b"p", b"x", [1], seq, 60.0),
        "put_too_large": lambda: h.put(b"p", b"x" * 200_000, deps, seq, 60.0),
        "invalidate": lambda: h.invalidate(["U:1"]),
        "invalidate_many": lambda: h.invalidate(many),
        "invalidate_bad": lambda: h.invalidate([b"x"]),
        "flush": h.flush,
        "current_seq": h.current_seq,
        "incr": lambda: h.incr(Counter.REQUESTS),
        "incr_bad": lambda: h.incr(99),
        "observe": lambda: h.observe(0.001),
        "observe_bad": lambda: h.observe("x"),
        "flight": lambda: h.flight_end(*h.flight_begin(b"f", 5.0)[1:], False, "err"),
        "flight_poll": lambda: h.flight_poll(0, b"f", 0),
        "flight_takeover": lambda: h.flight_takeover(0, b"f", 0, 5.0),
        "flight_join_leave": lambda: (h.flight_join(0, 0), h.flight_leave(0, 0)),
        "flight_bad": lambda: h.flight_poll(10**9, b"f", 0),
        "register": h.register,
        "info": h.info,
        "hash": lambda: _native.hash(b"abc" * 10),
        "proc_start": lambda: _native.proc_start(os.getpid()),
        "reap_absent": lambda: h.reap(2**22 + 7),
    }


SLOW = {"stats_slots": 2000, "shard_info": 300, "check": 100, "stats": 300}




def test_no_leaks_in_hot_and_error_paths(arena: Arena) -> None:
    for name, fn in cases(arena).items():
        n = 20_000 if name in ("proc_start", "reap_absent", "register", "flight", "flight_takeover") else N
        try:
            assert_no_leak(fn, n)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


def test_no_leaks_in_introspection(arena: Arena) -> None:
    h = arena._h
    for name, n in SLOW.items():
        fn = arena.stats if name == "stats" else getattr(h, name)
        try:
            assert_no_leak(fn, n)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


def test_no_leak_in_create_attach_close() -> None:
    name = f"/fraiseshm-leak-{os.getpid()}-{next(_names)}"
    Arena.create(name, size=4 * MiB, max_entry=4096, shards=1, tag_slots=1024).close()

    def cycle() -> None:
        Arena.attach(name).close()

    try:
        assert_no_leak(cycle, 2000)
    finally:
        Arena.unlink(name)
