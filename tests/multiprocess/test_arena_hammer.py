"""Several processes hammer one arena while victims are SIGKILLed at random moments.

Every value carries its own digest, so a reader detects any torn value the
arena might return. The parent samples the summed counters between kills:
they must never decrease. Afterwards check() is clean.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal

from fraiseshm.arena import Arena
from tests.multiprocess.conftest import fork, wait_byte

MiB = 1 << 20
KILLS = 20
KEYS = 1500


def _value(rng: random.Random, key: bytes) -> bytes:
    body = key + rng.randbytes(rng.choice((50, 900, 5000, 70_000)))
    return hashlib.blake2b(body, digest_size=16).digest() + body


def _verify(key: bytes, value: bytes) -> None:
    body = value[16:]
    assert hashlib.blake2b(body, digest_size=16).digest() == value[:16], "torn value served"
    assert body.startswith(key), "value of another key served"


def _worker(name: str, seed: int, ready_fd: int, ops: int) -> None:
    a = Arena.attach(name)
    a.register_process()
    rng = random.Random(seed)
    os.write(ready_fd, b"r")
    for i in range(ops):
        key = b"key-%d" % rng.randrange(KEYS)
        op = rng.random()
        if op < 0.55:
            got = a.get(key)
            if got is not None:
                _verify(key, got)
        elif op < 0.9:
            a.put(key, _value(rng, key), [f"T:{rng.randrange(50)}", "T:*"], a.current_seq(), 60)
        elif op < 0.98:
            a.invalidate([f"T:{rng.randrange(50)}" for _ in range(3)])
        else:
            role, slot, gen = a.flight_begin(key, 5.0)
            if role == 1:
                a.flight_end(slot, gen, True)
        if i % 1000 == 0:
            a.incr(0)


def _monotonic(prev: dict[str, int], cur: dict[str, int]) -> None:
    for k, v in cur.items():
        assert v >= prev[k], f"counter {k} went from {prev[k]} down to {v}"


def test_hammer_with_random_kills(arena_name: str) -> None:
    a = Arena.create(arena_name, size=8 * MiB, max_entry=128 * 1024, shards=2, stats_slots=16, flight_slots=64)
    try:
        r, w = os.pipe()
        # Steady workers run to completion; each victim is killed at a random point.
        steady = [fork(lambda s=s: _worker(arena_name, s, w, 20000)) for s in range(2)]
        for _ in steady:
            wait_byte(r)
        prev = a.stats()["totals"]
        rng = random.Random(os.getpid())
        survived = 0
        for k in range(KILLS):
            pid = fork(lambda k=k: _worker(arena_name, 100 + k, w, 10**9))
            wait_byte(r)
            # a random number of the victim's own operations, measured by a
            # blocking read of nothing: spin the parent on get() calls instead of sleeping
            for _ in range(rng.randrange(200, 3000)):
                a.get(b"key-%d" % rng.randrange(KEYS))
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            # a victim that met a torn value exits 1 before the kill: that is a failure
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"victim {k} exited on its own"
            a.reap(pid)
            cur = a.stats()["totals"]
            _monotonic(prev, cur)
            prev = cur
            got = a.get(b"key-1")
            if got is not None:
                _verify(b"key-1", got)
            # the arena still takes a write after this kill (the steady workers may evict it at once)
            probe = b"probe-%d" % k
            if a.put(probe, _value(rng, probe), ["T:probe"], a.current_seq(), 60):
                got = a.get(probe)
                if got is not None:
                    _verify(probe, got)
                survived += 1
        for pid in steady:
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "a steady worker failed"
        os.close(r)
        os.close(w)
        assert a.check() == []
        st = a.stats()
        _monotonic(prev, st["totals"])
        assert survived == KILLS, f"the arena failed a put/get round trip after {KILLS - survived} of {KILLS} kills"
        assert st["totals"]["puts"] > 0 and st["totals"]["hits"] > 0
        print(f"\nhammer: survived {survived} kills, {st['lock_wipes']} lock wipes, "
              f"{st['totals']['evictions']} evictions, {st['entries']} entries")
    finally:
        a.close()
