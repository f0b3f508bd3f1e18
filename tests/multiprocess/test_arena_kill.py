"""SIGKILL a process inside each critical section; the arena must stay usable and clean."""

from __future__ import annotations

import os
import signal
import time

from fraiseshm.arena import Arena, FlightRole
from tests.multiprocess.conftest import (
    DBG_EVICT,
    DBG_FLIGHT_CLAIM,
    DBG_LOCK_HELD,
    DBG_PUT_WRITE,
    DBG_TAG_BUMP,
    fork,
    kill_inside,
    wait_byte,
)

MiB = 1 << 20


def _small(name: str, **kw: int) -> Arena:
    kw.setdefault("shards", 1)
    return Arena.create(name, size=kw.pop("size", 8 * MiB), max_entry=kw.pop("max_entry", 64 * 1024), **kw)


def test_kill_holding_shard_lock_wipes_that_shard(arena_name: str) -> None:
    with _small(arena_name) as a:
        a.put(b"k", b"v" * 100, ["T:1"], a.current_seq(), 60)
        kill_inside(arena_name, DBG_LOCK_HELD, lambda b: b.get(b"k"))
        assert a.get(b"k") is None  # wiped: an empty shard is a correct cache
        st = a.stats()
        assert st["lock_wipes"] == 1 and st["totals"]["lock_wipes"] == 1
        assert a.check() == []
        assert a.put(b"k", b"w", ["T:1"], a.current_seq(), 60)
        assert a.get(b"k") == b"w"


def test_kill_mid_put_never_serves_a_torn_value(arena_name: str) -> None:
    old, new = b"o" * 200_000, b"n" * 200_000  # chunked: several blocks
    with _small(arena_name, max_entry=256 * 1024, size=16 * MiB) as a:
        a.put(b"k", old, [], a.current_seq(), 60)
        seq = a.current_seq()
        kill_inside(arena_name, DBG_PUT_WRITE, lambda b: b.put(b"k", new, [], seq, 60))
        assert a.get(b"k") in (None, old, new)
        assert a.check() == []
        assert a.stats()["lock_wipes"] == 1


def test_kill_mid_eviction(arena_name: str) -> None:
    value = os.urandom(3000)
    with _small(arena_name, size=4 * MiB) as a:
        seq = a.current_seq()
        i = 0
        while a.stats()["fill_ratio"] < 0.95:
            a.put(b"fill-%d" % i, value, ["T"], seq, 60)
            i += 1

        def fill_more(b: Arena) -> None:
            for j in range(10**6):
                b.put(b"more-%d" % j, value, ["T"], seq, 60)

        kill_inside(arena_name, DBG_EVICT, fill_more)
        assert a.check() == []
        assert a.stats()["lock_wipes"] == 1
        for j in range(2000):  # the wiped shard refills and evicts normally
            a.put(b"again-%d" % j, value, ["T"], seq, 60)
        assert a.check() == []
        assert a.get(b"again-1999") == value


def test_kill_mid_tag_bump_keeps_sequence_invariants(arena_name: str) -> None:
    tags = [f"User:{i}" for i in range(10)]
    with _small(arena_name) as a:
        seq0 = a.current_seq()
        for t in tags:
            a.put(t.encode(), b"x", [t], seq0, 60)
        kill_inside(arena_name, DBG_TAG_BUMP, lambda b: b.invalidate(tags))
        assert a.current_seq() == seq0 + 1
        assert a.check() == []  # I2: no tag is ahead of the sequence
        missing = [t for t in tags if a.get(t.encode()) is None]
        assert 0 < len(missing) < len(tags)  # bumped half, the rest as if never called
        a.invalidate(tags)  # the listener's retry completes it
        assert all(a.get(t.encode()) is None for t in tags)
        assert a.stats()["lock_wipes"] == 0


def test_kill_while_claiming_a_flight_lets_the_next_caller_lead(arena_name: str) -> None:
    with _small(arena_name) as a:
        a.register_process()
        kill_inside(arena_name, DBG_FLIGHT_CLAIM, lambda b: b.flight_begin(b"key", 10.0))
        role, slot, gen = a.flight_begin(b"key", 10.0)
        assert role is FlightRole.LEAD
        assert a.flight_end(slot, gen, True)
        assert a.check() == []


def _asleep_on_a_futex(pid: int) -> bool:
    """The process sleeps in the kernel's futex wait (a single-threaded child: the mutex)."""
    with open(f"/proc/{pid}/stat") as f:
        state = f.read().rpartition(")")[2].split()[0]
    with open(f"/proc/{pid}/wchan") as f:
        return state == "S" and "futex" in f.read()


def test_waiting_locker_gets_the_lock_when_the_holder_dies(arena_name: str) -> None:
    """A third process blocked on the mutex is woken with EOWNERDEAD and wipes."""
    with _small(arena_name) as a:
        a.put(b"k", b"v", [], a.current_seq(), 60)
        r, w = os.pipe()
        r2, w2 = os.pipe()

        def holder() -> None:
            from fraiseshm import _native

            b = Arena.attach(arena_name)
            _native._debug_pause_in(DBG_LOCK_HELD, w)
            b.get(b"k")

        def waiter() -> None:
            b = Arena.attach(arena_name)
            os.write(w2, b"s")
            b.get(b"k")  # blocks until the holder dies
            os.write(w2, b"d")

        hp = fork(holder)
        assert wait_byte(r) == b"!"
        wp = fork(waiter)
        assert wait_byte(r2) == b"s"
        # Only a waiter already asleep on the mutex tests the wake-up with EOWNERDEAD;
        # one that arrives after the death would just find the lock abandoned.
        deadline = time.monotonic() + 30
        while not _asleep_on_a_futex(wp):
            assert time.monotonic() < deadline, "the waiter never blocked on the shard mutex"
        os.kill(hp, signal.SIGKILL)
        os.waitpid(hp, 0)
        assert wait_byte(r2) == b"d"
        _, status = os.waitpid(wp, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        for fd in (r, w, r2, w2):
            os.close(fd)
        assert a.stats()["lock_wipes"] == 1
        assert a.check() == []
