"""Lock-free gets against real writers in other processes: torn reads are retried, never served.

- A reader paused inside its optimistic copy (a debug point with a resume
  pipe) while a writer reuses the very block it is reading: the version
  re-check must send it round again; no torn value, no false alarm.
- A writer SIGKILLed with the shard's version odd (inside a put, lock held):
  readers wait, then queue on the mutex; EOWNERDEAD recovery makes the version
  even and they carry on lock-free.
- Readers hammering big (chunked) values while a writer rewrites them: every
  value carries its own digest, and no inconsistency may ever be seen on a
  stable version.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import random
import signal
import struct

from fraiseshm import _native
from fraiseshm.arena import Arena
from tests.multiprocess.conftest import DBG_PUT_WRITE, fork, wait_byte

MiB = 1 << 20
DBG_OPT_READ = 9


def _value(key: bytes, body: bytes) -> bytes:
    return hashlib.blake2b(key + body, digest_size=16).digest() + body


def _verify(key: bytes, value: bytes) -> None:
    assert hashlib.blake2b(key + value[16:], digest_size=16).digest() == value[:16], "torn or foreign value served"


def _reap_on_failure(pids: list[int]) -> None:
    """A failed test must not leave readers spinning forever: SIGKILL and reap the ones still there."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _read_report(fd: int) -> dict[str, int]:
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    return dict(json.loads(data))


def test_a_reader_whose_block_is_reused_mid_copy_retries(arena_name: str) -> None:
    a_val, b_val, c_val = b"A" * 3000, b"B" * 3000, b"C" * 3000  # one class: the freed block is reused
    with Arena.create(arena_name, size=4 * MiB, max_entry=64 * 1024, shards=1) as a:
        a.put(b"k", a_val, [], a.current_seq(), 60)
        paused_r, paused_w = os.pipe()
        resume_r, resume_w = os.pipe()
        out_r, out_w = os.pipe()

        def reader() -> None:
            b = Arena.attach(arena_name)
            b.register_process()
            before = _native.read_stats()
            _native._debug_pause_in(DBG_OPT_READ, paused_w, resume_r)
            got = b.get(b"k")  # pauses after checking A's header, before copying its bytes
            after = _native.read_stats()
            os.write(out_w, json.dumps({"got": (got or b"")[:1].decode(), "len": len(got or b""),
                                        **{k: after[k] - before[k] for k in after}}).encode())

        pid = fork(reader)
        for fd in (paused_w, resume_r, out_w):
            os.close(fd)
        assert wait_byte(paused_r) == b"!"
        seq = a.current_seq()
        a.put(b"k", b_val, [], seq, 60)  # B in a fresh block; A's block goes to the free list
        a.put(b"k", c_val, [], seq, 60)  # C is written into A's old block, under the paused reader
        os.write(resume_w, b"r")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        rep = _read_report(out_r)
        for fd in (paused_r, resume_w, out_r):
            os.close(fd)
        assert (rep["got"], rep["len"]) == ("C", 3000)
        assert rep["retries"] >= 1, "the version re-check did not notice the writer"
        assert rep["anomalies"] == 0, "an inconsistency was judged on a version that had moved"
        st = a.stats()
        assert st["checksum_failures"] == 0 and st["corruption_wipes"] == 0
        assert a.check() == []


def _reader_loop(name: str, keys: list[bytes], shared: mmap.mmap, slot: int, done_w: int, after: int) -> None:
    """Gets until `after` gets have been done since the parent raised the phase word; then reports."""
    b = Arena.attach(name)
    b.register_process()
    n = 0
    start = None
    while True:
        for k in keys:
            got = b.get(k)
            if got is not None:
                _verify(k, got)
        n += len(keys)
        struct.pack_into("<Q", shared, 8 + 8 * slot, n)
        if start is None and struct.unpack_from("<Q", shared, 0)[0]:
            start, base = n, _native.read_stats()
        if start is not None and n - start >= after:
            now = _native.read_stats()
            os.write(done_w, json.dumps({k: now[k] - base[k] for k in now}).encode() + b"\n")
            return


def test_readers_carry_on_after_a_writer_dies_with_the_version_odd(arena_name: str) -> None:
    keys = [b"key-%d" % i for i in range(32)]
    with Arena.create(arena_name, size=8 * MiB, max_entry=64 * 1024, shards=1) as a:
        seq = a.current_seq()
        for k in keys:
            a.put(k, _value(k, os.urandom(2000)), ["T"], seq, 60)
        shared = mmap.mmap(-1, 4096)  # phase word + one progress counter per reader, shared by fork
        done_r, done_w = os.pipe()
        readers = [fork(lambda i=i: _reader_loop(arena_name, keys, shared, i, done_w, 20_000)) for i in range(2)]
        paused_r, paused_w = os.pipe()

        def victim() -> None:
            b = Arena.attach(arena_name)
            b.register_process()
            _native._debug_pause_in(DBG_PUT_WRITE, paused_w)
            b.put(keys[0], _value(keys[0], b"new"), ["T"], b.current_seq(), 60)

        vpid = fork(victim)
        try:
            _check_readers_carry_on(a, vpid, readers, shared, paused_r, done_r, done_w)
        except BaseException:
            _reap_on_failure([*readers, vpid])
            raise
        os.close(paused_r)
        os.close(paused_w)


def _check_readers_carry_on(a: Arena, vpid: int, readers: list[int], shared: mmap.mmap, paused_r: int,
                            done_r: int, done_w: int) -> None:
    """The victim holds the lock mid-put: kill it; the readers must finish lock-free."""
    assert wait_byte(paused_r) == b"!"
    assert a.shard_versions()[0] % 2 == 1, "a lock holder must keep the version odd"
    os.kill(vpid, signal.SIGKILL)
    _, status = os.waitpid(vpid, 0)
    assert os.WIFSIGNALED(status)
    struct.pack_into("<Q", shared, 0, 1)  # readers: count from here
    reports = []
    with os.fdopen(done_r) as lines:
        os.close(done_w)
        for _ in readers:
            reports.append(json.loads(lines.readline()))
    for pid in readers:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "a reader failed (torn value?)"
    st = a.stats()
    assert st["lock_wipes"] == 1  # one recovery, by whichever process locked first
    assert a.shard_versions()[0] % 2 == 0
    for rep in reports:  # after the recovery the readers are lock-free again
        assert rep["answered"] >= 19_000 and rep["anomalies"] == 0, rep
    assert st["checksum_failures"] == 0 and st["corruption_wipes"] == 0
    assert a.check() == []


def test_readers_never_see_an_inconsistency_on_a_stable_version(arena_name: str) -> None:
    """Big values (chunked, ~10 us copies) rewritten in a loop: many torn reads, all retried."""
    keys = [b"big-%d" % i for i in range(4)]
    with Arena.create(arena_name, size=16 * MiB, max_entry=256 * 1024, shards=1) as a:
        rng = random.Random(7)
        for k in keys:
            a.put(k, _value(k, rng.randbytes(150_000)), [], a.current_seq(), 60)
        out_r, out_w = os.pipe()
        ready_r, ready_w = os.pipe()
        stop = mmap.mmap(-1, 8)

        def reader() -> None:
            b = Arena.attach(arena_name)
            b.register_process()
            before, hits = _native.read_stats(), 0
            os.write(ready_w, b"r")
            while not struct.unpack_from("<Q", stop, 0)[0]:
                for k in keys:
                    got = b.get(k)
                    if got is not None:
                        _verify(k, got)
                        hits += 1
            now = _native.read_stats()
            os.write(out_w, json.dumps({"hits": hits, **{k: now[k] - before[k] for k in now}}).encode())

        pids = [fork(reader) for _ in range(2)]
        try:
            for _ in pids:
                wait_byte(ready_r)
            for i in range(600):
                k = keys[i % len(keys)]
                a.put(k, _value(k, rng.randbytes(rng.choice((90_000, 150_000, 200_000)))), [], a.current_seq(), 60)
        except BaseException:
            _reap_on_failure(pids)
            raise
        struct.pack_into("<Q", stop, 0, 1)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "a reader was served a torn value"
        os.close(out_w)
        reports = [json.loads(line) for line in _read_all(out_r).splitlines() if line]
        for fd in (out_r, ready_r, ready_w):
            os.close(fd)
        total = {k: sum(r[k] for r in reports) for k in reports[0]}
        print(f"\nreaders vs writer: {total}")
        assert total["hits"] > 0
        assert total["anomalies"] == 0, total
        st = a.stats()
        assert st["checksum_failures"] == 0 and st["corruption_wipes"] == 0
        assert a.check() == []


def _read_all(fd: int) -> str:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data.replace(b"}{", b"}\n{").decode()
