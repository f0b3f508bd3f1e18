"""Coherency harness: concurrent writers and readers against a real server, every read checked.

What "stale" means here (shared/DESIGN.md, requirement 1): a read that starts
after a write was acknowledged must not return data older than that write.

- A mutation is acknowledged when its HTTP response has been received.
- A plain-SQL write is acknowledged when its COMMIT has returned, plus the
  notification latency the design allows (``grace``, seconds): the listener
  hears it asynchronously. A stale read inside the grace is counted apart
  (``within_grace``, with the largest lag seen), never as a pass in silence.

Ground truth, exact and offline. Every key (one row of one table) is written
by exactly ONE writer task, one write at a time: the writers partition the
data between them (an example module decides how, e.g. a user with all its
posts and the comments on them). So each key's writes commit in the order
its writer issued them, and the writer knows every image the row takes,
including rows a write changes as a side effect (ON DELETE CASCADE, a
mutation deleting children). Each write appends to the key's history a
``Version(image, sent, ack, due)``:

    sent  monotonic clock just before the write was sent (it cannot have
          committed earlier),
    ack   when the response / COMMIT returned (it had committed by then),
    due   ack for a mutation, ack + grace for plain SQL.

A read is timed the same way on the same clock: ``start`` just before the
request is sent, ``end`` when the response is complete. For one key, the
versions the read may legitimately show are exactly

    lo = the newest version whose due < start   (everything before it was
         superseded by a write acknowledged before the read started)
    hi = the newest version whose sent <= end   (later ones cannot have
         committed before the response was produced)

and ``candidates(key) = images[lo..hi]``. The example module decomposes each
response into facts about keys, and a fact passes when some candidate image
of its key(s) explains it:

- ``Obj``     one entity: absent (null), or its fields equal to one image;
- ``Members`` a complete list of the children whose ``field == value`` (a
              user's posts, a post's comments, a filtered root list, a
              category's products through the link table): each served child
              must be a member in one candidate image with the served fields,
              every child not served must be absent or not a member in one
              candidate, and the order must be the view's (an immutable field,
              then the key);
- ``Window``  a page (limit/offset) of a whole table in (createdAt, id) order:
              the same per key, plus the counts before the page;
- ``Total``   a computed value (a sum or a count over rows of other tables):
              some combination of candidate images yields the served value.

Keys are checked independently (the check accepts a combination of fresh
versions of two keys that never coexisted): it tests staleness, not the
atomicity of one statement. That is the only leniency besides the SQL
grace; the clock readings are taken so that every error of timing (a
request queued in the client, a slow event loop) widens [lo..hi] and never
narrows it, so a read reported stale really returned data older than a
write acknowledged before it was sent. Written text is unique per write (a
writer-and-counter label), so an old text cannot pass for a new one; where
a value can repeat (a quantity, a price drawn from 99,900), a served value
equal to a fresh one is fresh in content, and the check accepts it. A fact that fails on [lo..hi] is classified by
widening the window: it matches an OLDER version (stale, with the write
that superseded it and how long before the read it was acknowledged) or
none at all (wrong). Both fail the run.

Because every write and read is recorded with its times and checked after
the run, nothing waits or sleeps for synchronisation: writers are paced by
the number of reads done (one write ticket per ``reads_per_write`` reads).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

INF = float("inf")
Image = dict[str, Any] | None  # None: the row does not exist
now = time.monotonic  # CLOCK_MONOTONIC: one clock for writers and readers


# --- histories -----------------------------------------------------------------


@dataclass(slots=True)
class Version:
    image: Image
    sent: float
    ack: float
    due: float
    path: str  # "seed", "mutation" or "sql"


class History:
    """Every key's versions in commit order, and which keys ever had field == value."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.versions: dict[tuple[str, str], list[Version]] = {}
        self.index: dict[tuple[str, str, Any], set[str]] = defaultdict(set)  # (kind, field, value) -> keys
        self.keys: dict[str, set[str]] = defaultdict(set)  # kind -> keys
        self.recent: dict[str, list[str]] = defaultdict(list)  # kind -> keys created by writers, oldest first
        self.indexed: dict[str, tuple[str, ...]] = {}  # kind -> fields to index
        self.writes = {"mutation": 0, "sql": 0}

    def _note(self, kind: str, key: str, image: Image) -> None:
        self.keys[kind].add(key)
        if image is not None:
            for f in self.indexed.get(kind, ()):
                self.index[(kind, f, image.get(f))].add(key)

    def seed(self, kind: str, key: str, image: Image) -> None:
        self.versions[(kind, key)] = [Version(image, -INF, -INF, -INF, "seed")]
        self._note(kind, key, image)

    def record(self, changes: Iterable[tuple[str, str, Image]], sent: float, ack: float, path: str) -> None:
        """One acknowledged write: (kind, key, new image) of every row it changed."""
        due = ack + (self.grace if path == "sql" else 0.0)
        for kind, key, image in changes:
            if (kind, key) not in self.versions:
                self.recent[kind].append(key)
            versions = self.versions.setdefault((kind, key), [Version(None, -INF, -INF, -INF, "seed")])
            versions.append(Version(image, sent, ack, due, path))
            self._note(kind, key, image)
        self.writes[path] += 1

    def window(self, kind: str, key: str, start: float, end: float, *, strict: bool = False) -> list[Version]:
        versions = self.versions.get((kind, key))
        if versions is None:
            return [Version(None, -INF, -INF, -INF, "seed")]
        lo = 0
        hi = 0
        for i, v in enumerate(versions):
            if (v.ack if strict else v.due) < start:
                lo = i
            if v.sent <= end:
                hi = i
        return versions[lo : hi + 1]

    def older(self, kind: str, key: str, start: float) -> list[Version]:
        """Versions superseded before ``start`` (for classifying a failure), newest first."""
        versions = self.versions.get((kind, key)) or []
        lo = 0
        for i, v in enumerate(versions):
            if v.due < start:
                lo = i
        return list(reversed(versions[:lo]))

    def version_after(self, kind: str, key: str, version: Version) -> Version | None:
        versions = self.versions[(kind, key)]
        i = versions.index(version)
        return versions[i + 1] if i + 1 < len(versions) else None


# --- facts -------------------------------------------------------------------


def _matches(image: Image, served: dict[str, Any] | None) -> bool:
    if served is None or image is None:
        return served is None and image is None
    return all(image.get(k) == v for k, v in served.items())


@dataclass(slots=True)
class Obj:
    """One entity as served: None (null / absent) or some of its fields."""

    kind: str
    key: str
    served: dict[str, Any] | None


@dataclass(slots=True)
class Members:
    """A complete list: every row of ``kind`` with image[field] == value, in (image[order], key) order."""

    kind: str
    field: str
    value: Any
    served: list[tuple[str, dict[str, Any]]]  # (key, served fields) in served order
    order: str | None = "createdAt"  # an immutable field; None: the order is checked by the example
    descending: bool = False


@dataclass(slots=True)
class Window:
    """rows of ``kind`` (all of them) in (createdAt, id) order, OFFSET offset LIMIT limit."""

    kind: str
    offset: int
    limit: int
    served: list[tuple[str, dict[str, Any]]]


@dataclass(slots=True)
class Total:
    """A computed value: compute(images of keys) == served for some candidate combination."""

    name: str
    keys: Sequence[tuple[str, str]]  # (kind, key) the value is computed from
    compute: Callable[[dict[tuple[str, str], Image]], Any]
    served: Any


Fact = Obj | Members | Window | Total


@dataclass(slots=True)
class Failure:
    read: str  # shape name
    fact: str
    verdict: str  # "stale" or "wrong"
    detail: str
    superseded_by: str = ""  # path of the write whose version the read missed
    lag: float = 0.0  # seconds between that write's ack and the read's start


class Checker:
    """Checks facts of one read against the history. ``max_combinations`` bounds Total checks."""

    def __init__(self, history: History, max_combinations: int = 4096) -> None:
        self.h = history
        self.max_combinations = max_combinations
        self.unchecked = 0

    def _images(self, kind: str, key: str, start: float, end: float, strict: bool) -> list[Image]:
        return [v.image for v in self.h.window(kind, key, start, end, strict=strict)]

    def _ok_key(self, kind: str, key: str, start: float, end: float, strict: bool,
                pred: Callable[[Image], bool]) -> bool:
        return any(pred(im) for im in self._images(kind, key, start, end, strict))

    def _classify(self, kind: str, key: str, start: float, pred: Callable[[Image], bool]) -> tuple[str, str, float]:
        for v in self.h.older(kind, key, start):
            if pred(v.image):
                nxt = self.h.version_after(kind, key, v)
                assert nxt is not None
                return "stale", nxt.path, start - nxt.ack
        return "wrong", "", 0.0

    def check(self, shape: str, facts: Iterable[Fact], start: float, end: float) -> tuple[list[Failure], float | None]:
        """Failures of one read, and the largest SQL lag a pass relied on (None: no grace needed)."""
        failures: list[Failure] = []
        graced: float | None = None
        for fact in facts:
            for kind, key, pred, what in self._predicates(fact):
                if self._ok_key(kind, key, start, end, True, pred):
                    continue
                if self._ok_key(kind, key, start, end, False, pred):
                    # explained only by a version a plain-SQL write superseded within the grace
                    _, _, lag = self._classify_strict(kind, key, start, pred)
                    graced = lag if graced is None else max(graced, lag)
                    continue
                verdict, path, lag = self._classify(kind, key, start, pred)
                failures.append(Failure(shape, what, verdict, f"{kind}:{key}", path, lag))
            if isinstance(fact, Window):
                failures += self._window_counts(shape, fact, start, end)
            if isinstance(fact, Total):
                failure = self._total(shape, fact, start, end)
                if failure is not None:
                    failures.append(failure)
        return failures, graced

    def _classify_strict(self, kind: str, key: str, start: float, pred: Callable[[Image], bool]) -> tuple[str, str, float]:
        versions = self.h.versions.get((kind, key)) or []
        best = None
        for i, v in enumerate(versions):
            if v.ack < start and i + 1 < len(versions) and pred(v.image):
                best = versions[i + 1]
        return "graced", "sql", (start - best.ack) if best is not None else 0.0

    # Per-key predicates: (kind, key, predicate over one image, description)
    def _predicates(self, fact: Fact) -> Iterable[tuple[str, str, Callable[[Image], bool], str]]:
        if isinstance(fact, Obj):
            served = fact.served
            yield fact.kind, fact.key, (lambda im, s=served: _matches(im, s)), f"{fact.kind} {fact.key} = {served}"
        elif isinstance(fact, (Members, Window)):
            served_keys = set()
            order = []
            if isinstance(fact, Members):
                member = lambda im, f=fact.field, v=fact.value: im is not None and im.get(f) == v  # noqa: E731
                universe = self.h.index.get((fact.kind, fact.field, fact.value), set())
            else:
                member = lambda im: im is not None  # noqa: E731
                universe = set()  # counted in _window_counts
            for key, fields in fact.served:
                served_keys.add(key)
                yield (fact.kind, key, (lambda im, s=fields, m=member: m(im) and _matches(im, s)),
                       f"{fact.kind} {key} served in list {self._list_name(fact)} with {fields}")
                order.append(key)
            for key in universe - served_keys:
                yield (fact.kind, key, (lambda im, m=member: not m(im)),
                       f"{fact.kind} {key} missing from list {self._list_name(fact)}")
            by = fact.order if isinstance(fact, Members) else "createdAt"
            down = isinstance(fact, Members) and fact.descending
            if by is not None and order != sorted(order, key=lambda k, kind=fact.kind: self._order_key(kind, k, by),
                                                  reverse=down):
                yield fact.kind, order[0], (lambda im: False), f"list {self._list_name(fact)} out of order: {order}"

    @staticmethod
    def _list_name(fact: Members | Window) -> str:
        if isinstance(fact, Members):
            return f"{fact.kind}[{fact.field}={fact.value}]"
        return f"{fact.kind}[offset {fact.offset} limit {fact.limit}]"

    def _order_key(self, kind: str, key: str, by: str = "createdAt") -> tuple[Any, Any]:
        tie = int(key) if key.isdigit() else key  # integer keys sort as numbers, uuids as PostgreSQL orders them
        for v in self.h.versions.get((kind, key)) or ():
            if v.image is not None:
                return (v.image[by], tie)
        return ("", tie)

    def _window_counts(self, shape: str, fact: Window, start: float, end: float) -> list[Failure]:
        """Keys between the served ones must be absent-able; counts before the page must fit the offset.

        A page that fails is checked again with every version older than the
        read too: if that explains it, the page was stale, otherwise wrong.
        """
        problems = self._window_problems(fact, start, end, wide=False)
        if not problems:
            return []
        verdict = "wrong" if self._window_problems(fact, start, end, wide=True) else "stale"
        return [Failure(shape, problems[0], verdict, fact.kind)]

    def _window_problems(self, fact: Window, start: float, end: float, *, wide: bool) -> list[str]:
        def images(k: str) -> list[Image]:
            if wide:
                return [v.image for v in (self.h.versions.get((fact.kind, k)) or []) if v.sent <= end] or [None]
            return self._images(fact.kind, k, start, end, False)

        name = self._list_name(fact)
        served = [k for k, _ in fact.served]
        universe = sorted(self.h.keys[fact.kind], key=lambda k: self._order_key(fact.kind, k))
        position = {k: i for i, k in enumerate(universe)}
        if any(k not in position for k in served):
            return [f"window {name} served unknown keys {served}"]
        first = position[served[0]] if served else len(universe)
        last = position[served[-1]] if served else len(universe) - 1
        sure_before = possible_before = 0
        for k in universe[:first]:
            present = [im is not None for im in images(k)]
            sure_before += all(present)
            possible_before += any(present)
        problems = []
        if served and not sure_before <= fact.offset <= possible_before:
            problems.append(f"window {name}: {sure_before}..{possible_before} rows before the first served one")
        if not served and sure_before > fact.offset:
            problems.append(f"window {name} empty but {sure_before} rows exist")
        served_set = set(served)
        for k in universe[first : last + 1]:
            if k not in served_set and all(im is not None for im in images(k)):
                problems.append(f"window {name} skipped {fact.kind} {k}")
        if len(served) < fact.limit:
            for k in universe[last + 1 :]:
                if all(im is not None for im in images(k)):
                    problems.append(f"window {name} short: {fact.kind} {k} missing")
                    break
        return problems

    def _total(self, shape: str, fact: Total, start: float, end: float) -> Failure | None:
        choices = []
        for kind, key in fact.keys:
            images = self._images(kind, key, start, end, False)
            unique: list[Image] = []
            for im in images:
                if im not in unique:
                    unique.append(im)
            choices.append(unique)
        size = 1
        for c in choices:
            size *= len(c)
        if size > self.max_combinations:
            self.unchecked += 1
            return None
        for combo in itertools.product(*choices):
            if fact.compute(dict(zip(fact.keys, combo))) == fact.served:
                return None
        # stale or wrong: does the value of the state acknowledged before... older states explain it?
        older = []
        for (kind, key), c in zip(fact.keys, choices):
            older.append(c + [v.image for v in self.h.older(kind, key, start) if v.image not in c])
        size = 1
        for c in older:
            size *= len(c)
        verdict = "wrong"
        if size <= self.max_combinations * 16:
            for combo in itertools.product(*older):
                if fact.compute(dict(zip(fact.keys, combo))) == fact.served:
                    verdict = "stale"
                    break
        return Failure(shape, f"{fact.name} = {fact.served!r}", verdict, fact.name)


# --- running -----------------------------------------------------------------


@dataclass(slots=True)
class Read:
    shape: str
    params: dict[str, Any]
    start: float
    end: float
    body: Any
    cache: str


@dataclass
class Report:
    example: str
    variant: str
    reads: int = 0
    hits: int = 0
    writes: dict[str, int] = field(default_factory=dict)
    stale: int = 0
    wrong: int = 0
    errors: int = 0
    within_grace: int = 0
    max_grace_lag: float = 0.0
    unchecked_totals: int = 0
    seconds: float = 0.0
    by_shape: dict[str, list[int]] = field(default_factory=dict)  # shape -> [reads, stale+wrong]
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        shapes = ", ".join(f"{s} {n}/{bad}" for s, (n, bad) in sorted(self.by_shape.items()))
        return (
            f"{self.example} [{self.variant}]: {self.reads} reads checked in {self.seconds:.1f}s "
            f"(hit rate {self.hits / max(self.reads, 1):.0%}), writes {self.writes}: "
            f"{self.stale} stale, {self.wrong} wrong, {self.errors} errors; "
            f"{self.within_grace} reads within the SQL grace (max lag {self.max_grace_lag * 1000:.0f} ms); "
            f"unchecked totals {self.unchecked_totals}; reads/failed by shape: {shapes}"
        )


class Workload:
    """What an example provides to the runner (tests/coherency/blog.py, shop.py)."""

    name = "?"

    async def load(self, history: History, dsn: str) -> None:
        """Seed ``history`` with every row's current image (version 0), before any writer starts."""
        raise NotImplementedError

    def writers(self, n: int, mutations: bool, sql: bool) -> list[Callable[..., Awaitable[None]]]:
        """n writers owning disjoint keys; each call ``await w(client, conn, rng, history)`` makes one write."""
        raise NotImplementedError

    def next_read(self, rng: Any) -> tuple[str, str, dict[str, Any]]:
        """(shape name, GraphQL query, variables) of the next read."""
        raise NotImplementedError

    def facts(self, read: Read) -> list[Fact]:
        """A read's response decomposed into facts about keys."""
        raise NotImplementedError


async def graphql(client: httpx.AsyncClient, query: str, variables: dict[str, Any]) -> tuple[Any, str]:
    r = await client.post("/graphql", json={"query": query, "variables": variables})
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:500]}")
    body = r.json()
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"], r.headers.get("X-Cache", "")


async def run(
    workload: Workload,
    history: History,
    url: str,
    dsn: str,
    *,
    reads: int,
    readers: int = 6,
    writers: int = 4,
    reads_per_write: int = 10,
    mutations: bool = True,
    sql: bool = True,
    variant: str = "",
    seed: int = 12,
) -> Report:
    """Run readers and writers until ``reads`` reads are done, then check them all."""
    import random

    import asyncpg

    report = Report(workload.name, variant)
    recorded: list[Read] = []
    tickets = asyncio.Semaphore(0)
    done = asyncio.Event()
    started = now()
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=readers + writers + 2, max_keepalive_connections=readers + writers + 2)

    async def reader(client: httpx.AsyncClient) -> None:
        while len(recorded) < reads:
            shape, query, params = workload.next_read(rng)
            t0 = now()
            try:
                data, cache = await graphql(client, query, params)
            except (RuntimeError, httpx.HTTPError) as exc:
                report.errors += 1
                if len(report.examples) < 12:
                    report.examples.append(f"{shape} {params}: {exc}")
                if report.errors > 20:
                    raise
                continue
            t1 = now()
            recorded.append(Read(shape, params, t0, t1, data, cache))
            if len(recorded) % reads_per_write == 0:
                tickets.release()
        done.set()

    async def writer(client: httpx.AsyncClient, conn: asyncpg.Connection | None, task: Callable[..., Awaitable[None]]) -> None:
        w_rng = random.Random(rng.random())
        while not done.is_set():
            acquire = asyncio.ensure_future(tickets.acquire())
            finished = asyncio.ensure_future(done.wait())
            await asyncio.wait({acquire, finished}, return_when=asyncio.FIRST_COMPLETED)
            if not acquire.done():
                acquire.cancel()
                finished.cancel()
                return
            finished.cancel()
            await task(client, conn, w_rng, history)

    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
        # INVARIANT: without plain-SQL writers a writer has no connection at all, so a
        # write it would record as a mutation cannot secretly be SQL.
        conns = [await asyncpg.connect(dsn) if sql else None for _ in range(writers)]
        try:
            tasks = [asyncio.create_task(reader(client)) for _ in range(readers)]
            tasks += [
                asyncio.create_task(writer(client, conn, task))
                for conn, task in zip(conns, workload.writers(writers, mutations, sql))
            ]
            await asyncio.gather(*tasks)
        finally:
            for conn in conns:
                if conn is not None:
                    await conn.close()
    report.seconds = now() - started

    checker = Checker(history)
    for read in recorded:
        report.reads += 1
        report.hits += read.cache == "HIT"
        failures, graced = checker.check(read.shape, workload.facts(read), read.start, read.end)
        counts = report.by_shape.setdefault(read.shape, [0, 0])
        counts[0] += 1
        if graced is not None:
            report.within_grace += 1
            report.max_grace_lag = max(report.max_grace_lag, graced)
        if failures:
            counts[1] += 1
            if any(f.verdict == "stale" for f in failures):
                report.stale += 1
            else:
                report.wrong += 1
            if len(report.examples) < 12:
                f = failures[0]
                report.examples.append(
                    f"{read.shape} {read.params} [{read.cache}] {f.verdict}: {f.fact}"
                    + (f" (superseded by a {f.superseded_by} write acknowledged {f.lag * 1000:.0f} ms before the read)"
                       if f.superseded_by else "")
                )
    report.unchecked_totals = checker.unchecked
    report.writes = dict(history.writes)
    return report
