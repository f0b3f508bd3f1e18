"""Cold scan: a hot set read continuously while a scanner walks every user once.

Proves: a one-pass scan over cold keys (user(id) and posts(authorId) of each
of the 10k users, coldest first) does not evict the hot set: reads of the 100
hottest users keep hitting (>= 95 % after the warm-up) while the scan runs.
The scanner's own reads are checked for correctness but count in no hit rate.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from locust import FastHttpUser, constant, events, task

import scenario
from scenario import IDS, TALLY

HOT = 100
HOT_HIT_RATE_MIN = 0.95
SCAN_TALLY = scenario.Tally()  # the scan's figures, kept apart
_rng = random.Random(3)
_cold = itertools.cycle(list(reversed(IDS[HOT:])) or [""])


class HotReader(FastHttpUser):
    weight = 3
    wait_time = constant(0)

    @task
    def hot(self) -> None:
        scenario.read_user(self.client, IDS[_rng.randrange(min(HOT, len(IDS)))], name="hot user(id)")


class Scanner(FastHttpUser):
    weight = 2
    wait_time = constant(0)

    @task
    def scan(self) -> None:
        uid = next(_cold)
        scenario.read_user(self.client, uid, name="scan user(id)", tally=SCAN_TALLY)
        scenario.read_posts(self.client, uid, name="scan posts(authorId)", tally=SCAN_TALLY)


@events.quitting.add_listener
def _check(environment: Any, **_kw: Any) -> None:
    missed = []
    if TALLY.hit_rate < HOT_HIT_RATE_MIN:
        missed.append(f"hot-set hit rate {TALLY.hit_rate:.1%} < {HOT_HIT_RATE_MIN:.0%} during the scan")
    scenario.finish(environment, {"scanned_keys": SCAN_TALLY.reads, "scan_hit_rate": SCAN_TALLY.hit_rate,
                                  "db_executions": scenario.db_executions()}, missed)
