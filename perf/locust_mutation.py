"""Mutation latency: updateUser at a fixed offered rate on uniformly drawn users.

Proves: what the cache adds to a write (turning the cascade into tags and
invalidating them before the response) is small: p50/p99 of updateUser per
store, beside the no-cache server whose mutations invalidate nothing. Every
mutation must report success with the new name; p99 must stay under 50 ms.
"""

from __future__ import annotations

import random
from typing import Any

from locust import FastHttpUser, constant_throughput, events, task

import scenario
from scenario import IDS

P99_MAX_MS = 50.0
_rng = random.Random(5)


class Writer(FastHttpUser):
    wait_time = constant_throughput(25)  # per user: 8 users -> 200 mutations/s offered

    @task
    def write(self) -> None:
        scenario.rename(self.client, IDS[_rng.randrange(len(IDS))])


@events.quitting.add_listener
def _check(environment: Any, **_kw: Any) -> None:
    missed = []
    p99 = environment.stats.total.get_response_time_percentile(0.99)
    if p99 > P99_MAX_MS:
        missed.append(f"updateUser p99 {p99:.0f} ms > {P99_MAX_MS:.0f} ms")
    scenario.finish(environment, {}, missed)
