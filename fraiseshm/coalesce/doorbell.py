"""Doorbells: a fixed pool of POSIX named semaphores that wake coalescing followers.

Semaphores are doorbells, not truth. A named semaphore stays taken forever
when its holder is SIGKILLed, so nothing here is ever *held*: a leader posts,
a follower waits with a deadline and then re-reads the flight table in the
arena, which is the only truth. A lost post costs a follower one poll slice;
an extra post costs it one spurious wake-up. Both are harmless.

The master creates the pool (O_CREAT) and unlinks it on exit; workers open it
after fork. Flight slot ``i`` rings bell ``i % size``.
"""

from __future__ import annotations

import logging

import posix_ipc

log = logging.getLogger("fraiseshm.coalesce")

DEFAULT_BELLS = 64
MAX_RING = 256  # posts per ring at most: more would only be spurious wake-ups


def _bell_name(arena_name: str, index: int) -> str:
    return f"{arena_name}-bell-{index}"


class Doorbells:
    def __init__(self, semaphores: list[posix_ipc.Semaphore], arena_name: str) -> None:
        self._bells = semaphores
        self.arena_name = arena_name

    @classmethod
    def create(cls, arena_name: str, size: int = DEFAULT_BELLS) -> Doorbells:
        """Master: a fresh pool (stale ones of a previous run are replaced)."""
        cls.unlink(arena_name, size)
        bells = [posix_ipc.Semaphore(_bell_name(arena_name, i), posix_ipc.O_CREX, mode=0o600, initial_value=0) for i in range(size)]
        return cls(bells, arena_name)

    @classmethod
    def open(cls, arena_name: str, size: int = DEFAULT_BELLS) -> Doorbells:
        return cls([posix_ipc.Semaphore(_bell_name(arena_name, i)) for i in range(size)], arena_name)

    @staticmethod
    def unlink(arena_name: str, size: int = DEFAULT_BELLS) -> None:
        for i in range(size):
            try:
                posix_ipc.unlink_semaphore(_bell_name(arena_name, i))
            except posix_ipc.ExistentialError:
                pass

    def __len__(self) -> int:
        return len(self._bells)

    def ring(self, slot: int, waiters: int) -> None:
        """Wake every follower of a flight with one ring: the bell is raised to one
        post per process that may wait. Topping up (instead of adding) keeps the
        count bounded when nobody was waiting, so spurious wake-ups stay few."""
        bell = self._bells[slot % len(self._bells)]
        for _ in range(min(max(waiters, 1), MAX_RING) - bell.value):
            bell.release()

    def ring_all(self, waiters: int) -> None:
        """After a worker died: wake whoever followed its flights, whatever their slot."""
        for slot in range(len(self._bells)):
            self.ring(slot, waiters)

    def wait(self, slot: int, timeout: float) -> bool:
        """Blocks the calling thread (never the event loop) up to timeout seconds."""
        try:
            self._bells[slot % len(self._bells)].acquire(max(timeout, 0.0))
        except posix_ipc.BusyError:
            return False
        return True

    def close(self) -> None:
        for bell in self._bells:
            bell.close()
        self._bells = []
