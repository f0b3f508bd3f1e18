"""Transactions whose changes a mutation on this host has already invalidated.

The change listener hears every commit's trigger notification, a mutation's too,
about a millisecond after the mutation invalidated the same items itself. Invalidating
them a second time adds nothing and costs a lot: it refuses the fill of every miss that
started in between (the arena's fill check): after a hot key's mutation, that is the
herd's leader, whose result is thrown away, so the key runs again.

So the service records a mutation's transaction id here once the arena invalidation of
everything its triggers recorded has returned, and the listener skips a notification
whose transaction is recorded. Safe because fraiseshm.changes (read in the mutation's
own transaction) holds every item the same transaction's triggers notified, or the
exact rows where a notification fell back to wide items (fraiseshm/db/sql/kit.sql,
_emit); a flush notification is never skipped.

Layout of /dev/shm/<arena>.tx, native-endian 8-byte words:

    word 0          magic "HANDLDTX"
    word 1 + t % SLOTS   transaction id t, 0 = empty (PostgreSQL hands out ids in
                    sequence, so the last SLOTS mutations' ids never share a slot)

Invariants:
    T1  an id is written only after arena.invalidate of its recorded items returned;
    T2  every access (add, contains) holds flock on the file: one per mutation and one
        per notification, a microsecond or two each; no torn id is ever read;
    T3  an id that is missing (overwritten by a later id of its slot, the file gone,
        another host's mutation) only means the listener invalidates again: the
        behaviour without this file;
    T4  the listener clears the table whenever it (re)connects: a database restored to
        an earlier point hands out ids again, and an id recorded before must not make
        the listener skip another transaction's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
from collections.abc import Iterator

log = logging.getLogger("fraiseshm.arena")

SHM_DIR = "/dev/shm"
MAGIC = 0x48414E444C445458  # "HANDLDTX"
SLOTS = 4096  # at 250 mutations/s, 16 s of them: the listener hears a commit within milliseconds
_SIZE = 8 * (1 + SLOTS)


class HandledTransactions:
    """The recently handled transaction ids, shared by the host's processes."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._map = mmap.mmap(fd, _SIZE)
        self._words = memoryview(self._map).cast("Q")

    @staticmethod
    def path_for(arena_name: str) -> str:
        return os.path.join(SHM_DIR, arena_name.lstrip("/") + ".tx")

    @classmethod
    def create(cls, arena_name: str) -> None:
        """A new, empty table (the master, before forking: ids of this run only)."""
        fd = os.open(cls.path_for(arena_name), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, _SIZE)
            os.pwrite(fd, MAGIC.to_bytes(8, "little"), 0)
        finally:
            os.close(fd)

    @classmethod
    def open(cls, arena_name: str) -> HandledTransactions | None:
        """Attached per process (flock belongs to an open file description). A process no
        master started (tests, tools) creates it. None, logged, when it cannot: T3."""
        path = cls.path_for(arena_name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("%s: %s; the listener will invalidate what mutations already did", path, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size == 0:
                os.ftruncate(fd, _SIZE)
                os.pwrite(fd, MAGIC.to_bytes(8, "little"), 0)
            header = os.pread(fd, 8, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            if os.fstat(fd).st_size != _SIZE or int.from_bytes(header, "little") != MAGIC:
                raise ValueError("not a fraiseshm handled-transactions table")
            return cls(path, fd)
        except (OSError, ValueError) as exc:
            os.close(fd)
            log.warning("%s: %s; the listener will invalidate what mutations already did", path, exc)
            return None

    @staticmethod
    def unlink(arena_name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(HandledTransactions.path_for(arena_name))

    def close(self) -> None:
        self._words.release()
        self._map.close()
        os.close(self._fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[memoryview]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # LOCK: T2
        try:
            yield self._words
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def add(self, transaction_id: str) -> None:
        """Record a transaction whose recorded items were invalidated (T1: call after)."""
        txid = _txid(transaction_id)
        if txid is None:
            return
        with self._locked() as words:
            words[1 + txid % SLOTS] = txid

    def clear(self) -> None:
        """Forget every id (T4)."""
        with self._locked() as words:
            words[1:] = memoryview(bytes(8 * SLOTS)).cast("Q")

    def __contains__(self, transaction_id: object) -> bool:
        txid = _txid(transaction_id)
        if txid is None:
            return False
        with self._locked() as words:
            return bool(words[1 + txid % SLOTS] == txid)


def _txid(value: object) -> int | None:
    """A transaction id as PostgreSQL prints txid_current() (a positive 64-bit integer)."""
    try:
        txid = int(str(value))
    except ValueError:
        return None
    return txid if 0 < txid < 1 << 64 else None
