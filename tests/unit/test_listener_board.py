"""The listener's shared figures (fraiseshm/metrics/listener_board.py): one writer, any
reader, counters monotonic across a change of leader, a torn write never read."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest

from fraiseshm.metrics import listener_board
from fraiseshm.metrics.listener_board import ListenerBoard, path_of, read, recorder


@pytest.fixture
def name() -> Iterator[str]:
    arena = f"/fraiseshm-board-{os.getpid()}"
    yield arena
    listener_board.unlink(arena)


def test_no_board_until_a_listener_hears_something(name: str) -> None:
    on_heard = recorder(name)
    assert read(name) is None and not os.path.exists(path_of(name))
    on_heard(0.02, 1000.0)
    assert read(name) == {"pid": os.getpid(), "heard": 1, "lag_sum_seconds": 0.02, "last_lag_seconds": 0.02,
                          "last_heard": 1000.0}


def test_counts_survive_a_new_leader_and_a_torn_write(name: str) -> None:
    first = ListenerBoard(name)
    for lag in (0.01, 0.03):
        first.record(lag, 1.0)
    first.close()
    # the leader died between its two bumps of seq: readers refuse the odd value ...
    fd = os.open(path_of(name), os.O_RDWR)
    try:
        (seq,) = struct.unpack("<Q", os.pread(fd, 8, 0))
        os.pwrite(fd, struct.pack("<Q", seq + 1), 0)
    finally:
        os.close(fd)
    assert read(name, tries=3) is None
    # ... and the next leader evens it out and keeps counting
    second = ListenerBoard(name)
    second.record(-0.5, 2.0)  # clocks apart: a lag is never negative
    got = read(name)
    assert got is not None and got["heard"] == 3 and got["lag_sum_seconds"] == pytest.approx(0.04)
    assert got["last_lag_seconds"] == 0.0 and got["last_heard"] == 2.0
    second.close()


def test_a_foreign_file_is_not_read(name: str) -> None:
    with open(path_of(name), "wb") as f:
        f.write(b"\x00" * 64)
    assert read(name) is None
    board = ListenerBoard(name)  # a zero file: starts from zero
    board.record(0.1, 3.0)
    assert read(name)["heard"] == 1
    board.close()
