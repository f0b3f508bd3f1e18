"""Real processes against one arena: fork, pipes for synchronisation, SIGKILL.

Synchronisation is always a pipe byte or a waitpid, never a sleep: a victim
armed with ``_native._debug_pause_in(point, fd)`` writes one byte when it is
inside the chosen critical section and then blocks there forever.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
from collections.abc import Callable, Iterator

import pytest

from fraiseshm import _native
from fraiseshm.arena import Arena

DBG_LOCK_HELD, DBG_PUT_WRITE, DBG_EVICT, DBG_TAG_BUMP, DBG_FLIGHT_CLAIM = 1, 2, 3, 4, 5
_names = itertools.count()


@pytest.fixture
def arena_name() -> Iterator[str]:
    name = f"/fraiseshm-mp-{os.getpid()}-{next(_names)}"
    yield name
    Arena.unlink(name)


@pytest.fixture(autouse=True)
def _deadlock_guard() -> Iterator[None]:
    """A deadlock fails the test (SIGALRM -> exception) instead of hanging CI."""

    def boom(signum: int, frame: object) -> None:
        raise TimeoutError("multiprocess test exceeded 120 s: deadlock?")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def fork(child: Callable[[], None]) -> int:
    """Run child() in a forked process that exits 0 on return, 1 on exception."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            child()
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def wait_byte(fd: int, timeout: float = 60.0) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, "victim never reached its pause point"
    return os.read(fd, 1)


def kill_inside(name: str, point: int, action: Callable[[Arena], object]) -> None:
    """Fork a victim that runs action() with a pause armed at point; SIGKILL it there."""
    r, w = os.pipe()

    def victim() -> None:
        os.close(r)
        arena = Arena.attach(name)
        arena.register_process()
        _native._debug_pause_in(point, w)
        action(arena)
        raise AssertionError("pause point not reached")

    pid = fork(victim)
    os.close(w)
    try:
        assert wait_byte(r) == b"!"
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(r)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
