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
"""

from __future__ import annotations

from typing import Any

import psutil

from fraiseshm import _native
from fraiseshm.arena import Arena


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


def read(arena: Arena) -> dict[str, Any]:
    """Arena.stats() with dead-but-unreaped slots folded into archived, CPU per process."""
    stats = arena.stats()
    live = []
    archived = dict(stats["archived"])
    for proc in stats["processes"]:
        if alive(proc["pid"], proc["start_ticks"]):
            proc["cpu_seconds"] = cpu_seconds(proc["pid"])
            proc["hit_rate"] = hit_rate(proc["counters"])
            live.append(proc)
        else:
            for name, value in proc["counters"].items():
                archived[name] += value
    stats["processes"] = sorted(live, key=lambda p: p["pid"])
    stats["archived"] = archived
    stats["hit_rate"] = hit_rate(stats["totals"])
    stats["workers"] = len(live)
    return stats
