"""Read-heavy Zipf: 10k users, reads drawn from a Zipf(1.1) popularity, 5 % mutations.

Proves: the cache answers at least 85 % of reads once warm (hit rate counted
from X-Cache after PERF_WARMUP seconds), with few database executions per
request (perf/run.py counts them in pg_stat_statements), every answer right
and never older than an acknowledged mutation. Reads are 70 % user(id) and
25 % posts(authorId); the 5 % updateUser renames a Zipf-drawn user.
"""

from __future__ import annotations

from typing import Any

from locust import FastHttpUser, constant, events, task

import scenario
from scenario import IDS, TALLY

HIT_RATE_MIN = 0.85
_zipf = scenario.Zipf(len(IDS) or 1, seed=11)


class ZipfReader(FastHttpUser):
    wait_time = constant(0)

    @task(70)
    def user(self) -> None:
        scenario.read_user(self.client, IDS[_zipf.sample()])

    @task(25)
    def posts(self) -> None:
        scenario.read_posts(self.client, IDS[_zipf.sample()])

    @task(5)
    def mutate(self) -> None:
        scenario.rename(self.client, IDS[_zipf.sample()])


@events.quitting.add_listener
def _check(environment: Any, **_kw: Any) -> None:
    missed = []
    if TALLY.hit_rate < HIT_RATE_MIN:
        missed.append(f"hit rate {TALLY.hit_rate:.1%} < {HIT_RATE_MIN:.0%}")
    if TALLY.stale:
        missed.append(f"{TALLY.stale} stale reads")
    execs = scenario.db_executions()
    requests = environment.stats.total.num_requests
    scenario.finish(environment, {"db_executions": execs,
                                  "db_per_request": execs / requests if execs is not None and requests else None}, missed)
