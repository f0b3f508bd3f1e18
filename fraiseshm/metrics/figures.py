"""The figures every reader shows (/metrics, /health, the CLI), from one Arena.stats() read.

Arena.stats() already sums the single-writer stats slots without locks. This
module adds what a reader needs on top, and nothing that writes:

- liveness: a slot whose owner died but was not reaped yet (the CLI that ran
  ``invalidate`` and exited, a worker between SIGKILL and gunicorn's
  ``child_exit``) is not a live process. Its share moves to ``archived``, so
  ``sum(processes) + archived == totals`` always holds and totals stay
  monotonic whoever reaps it and when.
- CPU seconds per process (from /proc via psutil), the figure that tells
  whether more workers would help (README, "Monitoring").
- derived ratios: hit rate = hits / (hits + misses + bypasses), i.e. the
  share of queries answered from the arena.
- start times (wall clock) of each process and of their common parent (the
  gunicorn master): a worker much younger than its master was restarted.
- the host's change listener: the pid holding the listener election's flock
  on the arena's file (fraiseshm/db/listener.py), read from /proc/locks
  without touching the lock, and what it heard (metrics/listener_board.py).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import psutil

from fraiseshm import _native
from fraiseshm.arena import Arena
from fraiseshm.metrics import listener_board

SHM_DIR = "/dev/shm"


def alive(pid: int, start_ticks: int) -> bool:
    """The slot's owner still runs (same pid AND same start time: pid reuse cannot fool it)."""
    if not start_ticks:
        return psutil.pid_exists(pid)
    try:
        state = psutil.Process(pid).status()
    except psutil.Error:
        return False
    return _native.proc_start(pid) == start_ticks and state != psutil.STATUS_ZOMBIE


def cpu_seconds(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def hit_rate(counters: dict[str, int]) -> float | None:
    """Share of queries answered from the arena; None before any query."""
    queries = counters["hits"] + counters["misses"] + counters["bypasses"]
    return counters["hits"] / queries if queries else None


def started_at(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def master_of(pids: list[int]) -> int | None:
    """The parent most live processes share (gunicorn's master); None without processes."""
    parents: Counter[int] = Counter()
    for pid in pids:
        try:
            parents[psutil.Process(pid).ppid()] += 1
        except psutil.Error:
            continue
    return parents.most_common(1)[0][0] if parents else None


def listener_pid(arena_name: str, locks_path: str = "/proc/locks") -> int | None:
    """The pid holding an flock on the arena's file (the listener election), or None.

    /proc/locks lines: ``1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF``; waiters
    are listed as ``1: -> FLOCK ...`` and do not count."""
    try:
        st = os.stat(os.path.join(SHM_DIR, arena_name.lstrip("/")))
        with open(locks_path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[3] != "WRITE":
            continue
        try:
            major, minor, inode = parts[5].split(":")  # device numbers in hex
            if (int(inode), int(major, 16), int(minor, 16)) == (st.st_ino, os.major(st.st_dev), os.minor(st.st_dev)):
                return int(parts[4])
        except ValueError:
            continue
    return None


def read(arena: Arena) -> dict[str, Any]:
    """Arena.stats() with dead-but-unreaped slots folded into archived, CPU per process."""
    stats = arena.stats()
    live = []
    archived = dict(stats["archived"])
    for proc in stats["processes"]:
        if alive(proc["pid"], proc["start_ticks"]):
            proc["cpu_seconds"] = cpu_seconds(proc["pid"])
            proc["started_at"] = started_at(proc["pid"])
            proc["hit_rate"] = hit_rate(proc["counters"])
            live.append(proc)
        else:
            for name, value in proc["counters"].items():
                archived[name] += value
    stats["processes"] = sorted(live, key=lambda p: p["pid"])
    stats["archived"] = archived
    stats["hit_rate"] = hit_rate(stats["totals"])
    stats["workers"] = len(live)
    master = master_of([p["pid"] for p in live])
    stats["master_started_at"] = started_at(master) if master is not None else None
    stats["listener_pid"] = listener_pid(arena.name)
    stats["listener"] = listener_board.read(arena.name)
    return stats
