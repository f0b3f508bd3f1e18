"""Mixed 80/20 read/write at a fixed offered rate, with a stale-read checker.

Proves: with 20 % updateUser mutations on Zipf-drawn users, p99 stays under
50 ms and no read that started after a mutation's response shows older data
(zero stale reads). Writes to one user are serialised by the checker, so the
last acknowledged version is the database's; a read snapshots it when it
starts and must see it or a newer one, whichever worker answers.
"""

from __future__ import annotations

from typing import Any

from locust import FastHttpUser, constant_throughput, events, task

import scenario
from scenario import IDS, TALLY

P99_MAX_MS = 50.0
_zipf = scenario.Zipf(len(IDS) or 1, seed=23)


class MixedUser(FastHttpUser):
    wait_time = constant_throughput(25)  # per user: 16 users -> 400 req/s offered

    @task(80)
    def read(self) -> None:
        scenario.read_user(self.client, IDS[_zipf.sample()])

    @task(20)
    def write(self) -> None:
        scenario.rename(self.client, IDS[_zipf.sample()])


@events.quitting.add_listener
def _check(environment: Any, **_kw: Any) -> None:
    missed = []
    p99 = environment.stats.total.get_response_time_percentile(0.99)
    if p99 > P99_MAX_MS:
        missed.append(f"p99 {p99:.0f} ms > {P99_MAX_MS:.0f} ms")
    if TALLY.stale:
        missed.append(f"{TALLY.stale} stale reads, e.g. {TALLY.stale_examples[:2]}")
    scenario.finish(environment, {"db_executions": scenario.db_executions()}, missed)
