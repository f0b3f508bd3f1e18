"""Thundering herd: a hot key is invalidated, then the whole herd reads it at once.

Proves: after a mutation invalidates a hot user, a herd of concurrent reads
(PERF_HERD users, released together by one gevent Event) costs one database
execution per host with fraiseshm's cross-worker coalescing, and every reader
sees the new name. Executions are counted by PostgreSQL (pg_stat_statements);
a conductor user renames the key, releases the herd and waits for it.
"""

from __future__ import annotations

import os
from typing import Any

import gevent
from gevent.event import Event
from locust import FastHttpUser, constant, events, task

import scenario
from scenario import IDS

HERD = int(os.environ.get("PERF_HERD", "50"))
EXECUTIONS_PER_HERD_MAX = 1.0


class _Herd:
    def __init__(self) -> None:
        self.go = Event()
        self.done = Event()
        self.round = 0
        self.waiting = 0
        self.answered = 0
        self.rounds_done = 0
        self.executions: list[int] = []  # per completed herd, when PERF_DSN is set


STATE = _Herd()


class Reader(FastHttpUser):
    weight = 1
    wait_time = constant(0)
    last = 0

    @task
    def read(self) -> None:
        STATE.waiting += 1
        STATE.go.wait()
        STATE.waiting -= 1
        if STATE.round == self.last:
            return
        self.last = STATE.round
        scenario.read_user(self.client, IDS[0], name="herd user(id)")
        STATE.answered += 1
        if STATE.answered == HERD:
            STATE.done.set()


class Conductor(FastHttpUser):
    fixed_count = 1
    wait_time = constant(0.2)

    @task
    def herd(self) -> None:
        if STATE.waiting < HERD:  # the herd is still being spawned or finishing the last round
            gevent.sleep(0.05)
            return
        before = scenario.db_executions()
        if not scenario.rename(self.client, IDS[0], name="invalidate (updateUser)"):
            return
        STATE.answered = 0
        STATE.done.clear()
        STATE.round += 1
        go, STATE.go = STATE.go, Event()
        go.set()  # every waiting reader wakes in this tick
        if STATE.done.wait(timeout=30):
            STATE.rounds_done += 1
            after = scenario.db_executions()
            if before is not None and after is not None:
                STATE.executions.append(after - before)


@events.quitting.add_listener
def _check(environment: Any, **_kw: Any) -> None:
    missed = []
    execs = scenario.db_executions()
    # --stop-timeout lets a released herd finish, so every started round is whole
    per_herd = execs / STATE.round if execs is not None and STATE.round else None
    if STATE.rounds_done == 0:
        missed.append("no herd completed")
    elif per_herd is not None and per_herd > EXECUTIONS_PER_HERD_MAX:
        missed.append(f"{per_herd:.1f} database executions per herd of {HERD} > {EXECUTIONS_PER_HERD_MAX:.0f}")
    scenario.finish(environment, {"herd": HERD, "herds": STATE.round, "herds_completed": STATE.rounds_done, "db_executions": execs,
                                  "db_per_herd": per_herd,
                                  "db_each_herd": STATE.executions}, missed)
