"""The arena model with a concurrent reader: lock-free gets never see a torn or foreign value.

ArenaModel (test_arena_model.py) drives the writer side: puts of small and
chunked values, invalidations, flushes, clock ticks, each checked against the
model. Meanwhile a forked reader process hammers get() and get_stale() on
every key. Each stored value carries a digest of (key, value), so the reader
can tell, without knowing the model, that whatever it read is exactly one
value that was written for that key. At teardown the reader's lock-free path
must not have met a single inconsistency on a stable version (the seqlock
re-check sent every torn read round again), and no checksum may have failed.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from fraiseshm import _native
from fraiseshm.arena import Arena
from tests.property.test_arena_model import MAX_ENTRY, ArenaModel, keys

KEYS = [b"k%d" % i for i in range(12)]


def _stored(key: bytes, value: bytes) -> bytes:
    return hashlib.blake2b(key + value, digest_size=16).digest() + value


def _reader(name: str, stop: mmap.mmap, out: int) -> dict[str, int]:
    a = Arena.attach(name, clock=lambda: 1)  # its own "now": nothing expires for it
    a.register_process()
    before = _native.read_stats()
    gets = hits = bad = 0
    while not struct.unpack_from("<Q", stop, 0)[0]:
        hot = KEYS[struct.unpack_from("<Q", stop, 8)[0]]  # the key the writer is busy with
        for key in KEYS:
            for k in (key, hot, hot):
                for got in (a.get(k), a.get_stale(k)):
                    gets += 1
                    if got is None:
                        continue
                    hits += 1
                    if hashlib.blake2b(k + got[16:], digest_size=16).digest() != got[:16]:
                        bad += 1
    now = _native.read_stats()
    return {"gets": gets, "hits": hits, "bad": bad, **{k: now[k] - before[k] for k in now}}


class ConcurrentReaders(ArenaModel):
    def __init__(self) -> None:
        super().__init__()
        self.stop = mmap.mmap(-1, 16)  # stop flag, index of the key being rewritten
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the reader process
            os.close(r)
            code = 1
            try:
                os.write(w, json.dumps(_reader(self.name, self.stop, w)).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        self.reader, self.report_fd = pid, r

    def stored_form(self, key: bytes, value: bytes) -> bytes:
        return _stored(key, value)

    @rule(key=keys, size=st.integers(20_000, MAX_ENTRY - 16), n=st.integers(5, 30))
    def rewrite_burst(self, key: bytes, size: int, n: int) -> None:
        """n back-to-back puts of one key (chunked values): the reader's copies overlap them."""
        struct.pack_into("<Q", self.stop, 8, KEYS.index(key))
        for i in range(n):
            self.put(key, bytes([i % 256]) * size, frozenset({"User:1"}), 100, 0)

    def teardown(self) -> None:
        try:
            struct.pack_into("<Q", self.stop, 0, 1)
            _, status = os.waitpid(self.reader, 0)
            data = b""
            while chunk := os.read(self.report_fd, 4096):
                data += chunk
            os.close(self.report_fd)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the reader process failed"
            rep = json.loads(data)
            assert rep["bad"] == 0, f"the reader was served torn or foreign values: {rep}"
            assert rep["anomalies"] == 0, f"an inconsistency was seen on a stable version: {rep}"
            st = self.arena.stats()
            assert st["checksum_failures"] == 0 and st["corruption_wipes"] == 0 and st["lock_wipes"] == 0
            ConcurrentReaders.totals = {k: ConcurrentReaders.totals.get(k, 0) + v for k, v in rep.items()}
        finally:
            super().teardown()

    totals: dict[str, int] = {}


ConcurrentReaders.TestCase.settings = settings(max_examples=30, stateful_step_count=40, deadline=None)
TestConcurrentReaders = ConcurrentReaders.TestCase


def test_the_reader_really_ran_concurrently() -> None:
    """After the state machine (pytest runs a file top down): the reader overlapped the writer,
    so the re-check really had torn reads to catch."""
    if not ConcurrentReaders.totals:  # run alone: run the machine here
        run_state_machine_as_test(ConcurrentReaders, settings=settings(max_examples=10, deadline=None))
    t = ConcurrentReaders.totals
    print(f"\nconcurrent reader totals: {t}")
    assert t.get("hits", 0) > 0 and t.get("answered", 0) > 0
    assert t.get("retries", 0) > 0, "no torn read was ever retried: the reader never overlapped a write"
