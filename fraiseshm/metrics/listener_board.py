"""The change listener's figures, shared by the host: one 64-byte file in /dev/shm.

Only the worker that won the listener election writes it (fraiseshm/db/listener.py
calls ``record`` for every verified notification); any process reads it (/metrics,
/health, the CLI), like the arena's stats slots, without locks:

    +0  u64 seq            seqlock: odd while the writer is between its two bumps
    +8  u64 pid            the writer
    +16 u64 heard          verified change notifications, all leaders of this arena so far
    +24 f64 lag_sum        seconds, sum over `heard` of (heard at - the trigger's timestamp)
    +32 f64 last_lag       seconds, the latest one
    +40 f64 last_heard     wall-clock seconds of the latest one
    +48 u64 reserved
    +56 u64 magic          MAGIC (layout version 1)

The lag is this host's clock minus the database's clock at the trigger: it
includes the commit, PostgreSQL's delivery and this listener's queue (the
design's target is < 100 ms on one host). A new leader keeps counting from the
file (the counters stay monotonic for Prometheus); a writer killed between its
two bumps leaves an odd seq, which the next writer evens out. The file is
``/dev/shm/<arena name>.listener`` and is removed with the arena (master stop).
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any

SHM_DIR = "/dev/shm"
SIZE = 64
MAGIC = 0x31424C5246  # "FRLB1"
_FIELDS = struct.Struct("<QQQdddQQ")


def path_of(arena_name: str) -> str:
    return os.path.join(SHM_DIR, arena_name.lstrip("/") + ".listener")


class ListenerBoard:
    """The writer side (the elected listener's process)."""

    def __init__(self, arena_name: str) -> None:
        fd = os.open(path_of(arena_name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < SIZE:
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        seq, _pid, heard, lag_sum, last_lag, last_heard, _r, magic = _FIELDS.unpack_from(self._map)
        if magic != MAGIC:  # new (zeros) or foreign: start from zero
            seq, heard, lag_sum, last_lag, last_heard = 0, 0, 0.0, 0.0, 0.0
        self._seq = seq + (seq & 1)  # a writer killed mid-update left it odd
        self._heard, self._lag_sum = heard, lag_sum
        self._write(last_lag, last_heard)

    def _write(self, last_lag: float, last_heard: float) -> None:
        m = self._map
        self._seq += 1  # odd: readers retry
        struct.pack_into("<Q", m, 0, self._seq)
        _FIELDS.pack_into(m, 0, self._seq, os.getpid(), self._heard, self._lag_sum, last_lag, last_heard, 0, MAGIC)
        self._seq += 1
        struct.pack_into("<Q", m, 0, self._seq)

    def record(self, lag_seconds: float, heard_at: float) -> None:
        """One verified notification, heard at wall time heard_at, lag_seconds after its trigger."""
        lag = max(0.0, lag_seconds)  # clocks a few microseconds apart: never a negative lag
        self._heard += 1
        self._lag_sum += lag
        self._write(lag, heard_at)

    def close(self) -> None:
        self._map.close()


def read(arena_name: str, tries: int = 100) -> dict[str, Any] | None:
    """The board's figures, or None when no listener of this arena ever wrote one."""
    try:
        fd = os.open(path_of(arena_name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size < SIZE:
            return None
        with mmap.mmap(fd, SIZE, prot=mmap.PROT_READ) as m:
            for _ in range(tries):
                values = _FIELDS.unpack_from(m)
                (seq_after,) = struct.unpack_from("<Q", m, 0)
                if values[0] & 1 == 0 and values[0] == seq_after:
                    break
            else:
                return None  # a writer died mid-update; the next one evens it out
    finally:
        os.close(fd)
    _seq, pid, heard, lag_sum, last_lag, last_heard, _r, magic = values
    if magic != MAGIC:
        return None
    return {"pid": pid, "heard": heard, "lag_sum_seconds": lag_sum, "last_lag_seconds": last_lag,
            "last_heard": last_heard or None}


def unlink(arena_name: str) -> None:
    try:
        os.unlink(path_of(arena_name))
    except FileNotFoundError:
        pass


def recorder(arena_name: str) -> Any:
    """The listener's on_heard hook: the board is created by the first notification this
    process hears, i.e. only in the elected listener (a board per worker would race)."""
    board: ListenerBoard | None = None

    def on_heard(lag_seconds: float, heard_at: float) -> None:
        nonlocal board
        if board is None:
            board = ListenerBoard(arena_name)
        board.record(lag_seconds, heard_at)

    return on_heard
