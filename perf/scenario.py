"""What the locustfiles share: the inputs perf/run.py passes in PERF_* variables,
the GraphQL documents, a Zipf sampler, response checks, the stale-read checker
and the summary each run writes for the runner.

Inputs (all optional, so the files import anywhere):
    PERF_IDS_FILE  JSON list of user ids, in seed order (the Zipf rank order)
    PERF_OP        operation-name suffix: a new one per run gives every store a cold cache
                   (run.py warms the Zipf scenario's documents with wrk first)
    PERF_WARMUP    seconds at the start whose cache figures are not counted
    PERF_OUT       where the summary JSON goes
    PERF_TARGET    the name of the stack under test (fraiseshm, no-cache, ...)
    PERF_DSN       the PostgreSQL DSN, to count database executions (pg_stat_statements)
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from locust import events
from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parent))

import queries  # noqa: E402

_ids_file = os.environ.get("PERF_IDS_FILE")
IDS: list[str] = json.loads(Path(_ids_file).read_text()) if _ids_file else []
OP = os.environ.get("PERF_OP", "perf")
WARMUP = float(os.environ.get("PERF_WARMUP", "0"))
OUT = os.environ.get("PERF_OUT", "")
TARGET = os.environ.get("PERF_TARGET", "?")
DSN = os.environ.get("PERF_DSN", "")
ZIPF_S = 1.1  # the usual skew of web object popularity

USER_Q, POSTS_Q, RENAME = queries.user_q(OP), queries.posts_q(OP), queries.rename_q(OP)


class Zipf:
    """Ranks 0..n-1 with P(k) proportional to 1 / (k+1)^s (inverse CDF by bisection)."""

    def __init__(self, n: int, s: float = ZIPF_S, seed: int = 1) -> None:
        weights = itertools.accumulate(1.0 / (k + 1) ** s for k in range(n))
        self.cdf = list(weights)
        self.rng = random.Random(seed)

    def sample(self) -> int:
        return bisect.bisect_left(self.cdf, self.rng.random() * self.cdf[-1])


class Tally:
    """Client-side figures; only responses that started after the warm-up count."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.reads = self.hits = self.misses = self.bypasses = 0
        self.writes = self.stale = self.wrong = 0
        self.stale_examples: list[str] = []

    def counting(self) -> bool:
        return time.monotonic() - self.started >= WARMUP

    def cache(self, resp: Any) -> None:
        if not self.counting():
            return
        self.reads += 1
        state = resp.headers.get("X-Cache") or resp.headers.get("x-cache") or ""
        if state == "HIT":
            self.hits += 1
        elif state == "MISS":
            self.misses += 1
        else:
            self.bypasses += 1

    @property
    def hit_rate(self) -> float:
        return self.hits / self.reads if self.reads else 0.0


TALLY = Tally()


@events.test_start.add_listener
def _started(**_kw: Any) -> None:
    TALLY.started = time.monotonic()


def version_of(name: str) -> int:
    """Names written by the checkers are 'v<n>'; seeded names ('user 12') are version 0."""
    return int(name[1:]) if name.startswith("v") and name[1:].isdigit() else 0


class Versions:
    """The stale-read checker's memory: the last acknowledged version of each user.

    Writes to one id are serialised (an id being written is skipped), so the
    version acknowledged last is the one in the database. A read that started
    after a mutation's response arrived must show that version or a newer one.
    Versions grow across runs (base = wall clock in µs), since runs share the database.
    """

    def __init__(self) -> None:
        self.acked: dict[str, int] = {}
        self.busy: set[str] = set()
        self.counter = itertools.count(time.time_ns() // 1000)

    def begin(self, uid: str) -> int | None:
        if uid in self.busy:
            return None
        self.busy.add(uid)
        return next(self.counter)

    def end(self, uid: str, version: int, ok: bool) -> None:
        self.busy.discard(uid)
        if ok:
            self.acked[uid] = max(self.acked.get(uid, 0), version)

    def required(self, uid: str) -> int:
        return self.acked.get(uid, 0)


VERSIONS = Versions()


def body(query: str, **variables: Any) -> dict[str, Any]:
    return {"query": query, "variables": variables}


def read_user(client: Any, uid: str, name: str = "user(id)", tally: Tally = TALLY) -> None:
    """user(id): 200, the right id, a name no older than the last acknowledged write before the request."""
    required = VERSIONS.required(uid)  # snapshot when the read starts
    with client.post("/graphql", json=body(USER_Q, id=uid), name=name, catch_response=True) as resp:
        if resp.status_code != 200:
            resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
            return
        user = (resp.json().get("data") or {}).get("user")
        if not user or user.get("id") != uid or not isinstance(user.get("name"), str):
            tally.wrong += 1
            resp.failure(f"wrong answer for {uid}: {resp.text[:200]}")
            return
        tally.cache(resp)
        if version_of(user["name"]) < required:
            tally.stale += 1
            if len(tally.stale_examples) < 5:
                tally.stale_examples.append(f"{uid}: read {user['name']}, acknowledged v{required}")
            resp.failure("stale read")


def read_posts(client: Any, uid: str, name: str = "posts(authorId)", tally: Tally = TALLY) -> None:
    with client.post("/graphql", json=body(POSTS_Q, id=uid), name=name, catch_response=True) as resp:
        if resp.status_code != 200:
            resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
            return
        posts = (resp.json().get("data") or {}).get("posts")
        if not isinstance(posts, list) or any((p.get("author") or {}).get("id") != uid for p in posts):
            tally.wrong += 1
            resp.failure(f"wrong posts for {uid}: {resp.text[:200]}")
            return
        tally.cache(resp)


def rename(client: Any, uid: str, name: str = "updateUser") -> bool:
    """updateUser with the next version as the name; checks the mutation answered with it."""
    version = VERSIONS.begin(uid)
    if version is None:
        return False
    ok = False
    try:
        new = f"v{version}"
        with client.post("/graphql", json=body(RENAME, id=uid, n=new), name=name, catch_response=True) as resp:
            payload = resp.json() if resp.status_code == 200 else {}
            result = (payload.get("data") or {}).get("updateUser") or {}
            ok = result.get("success") is True and (result.get("data") or {}).get("name") == new
            if not ok:
                resp.failure(f"mutation failed: {resp.status_code} {resp.text[:200]}")
            elif TALLY.counting():
                TALLY.writes += 1
    finally:
        VERSIONS.end(uid, version, ok)
    return ok


def db_executions() -> int | None:
    if not DSN:
        return None
    import common

    return common.db_executions(DSN)


def finish(environment: Environment, figures: dict[str, Any], missed: list[str]) -> None:
    """Write the summary for perf/run.py and set the exit code: 1 when a threshold was missed."""
    total = environment.stats.total
    if total.num_failures:
        missed.append(f"{total.num_failures} failed responses of {total.num_requests}")
    summary = {
        "target": TARGET,
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rps": total.total_rps,
        "p50_ms": total.get_response_time_percentile(0.50),
        "p90_ms": total.get_response_time_percentile(0.90),
        "p99_ms": total.get_response_time_percentile(0.99),
        "by_name": {
            name: {
                "requests": e.num_requests,
                "rps": e.total_rps,
                "p50_ms": e.get_response_time_percentile(0.50),
                "p99_ms": e.get_response_time_percentile(0.99),
            }
            for (name, _method), e in environment.stats.entries.items()
        },
        "reads_counted": TALLY.reads,
        "hit_rate": TALLY.hit_rate,
        "writes": TALLY.writes,
        "stale_reads": TALLY.stale,
        "stale_examples": TALLY.stale_examples,
        "wrong_answers": TALLY.wrong,
        **figures,
        "missed": missed,
    }
    if OUT:
        Path(OUT).write_text(json.dumps(summary, indent=2))
    for line in missed:
        print(f"[{TARGET}] threshold missed: {line}", file=sys.stderr)
    environment.process_exit_code = 1 if missed else 0
