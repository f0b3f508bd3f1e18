"""Read replicas that never serve a stale read (docs/ARCHITECTURE.md, "Read replicas").

    LsnBoard     a small shared segment next to the arena: per tag, the highest WAL
                 position at or after the commit of any change that invalidated it
                 (plus one arena-wide position for flushes), and per-worker counters.
    ReadRoute    what one miss did: which replica served its statements and the
                 lowest replay position those statements saw.
    ReplicaSet   a worker's replicas: round-robin over those in rotation, a check
                 loop that takes a replica out (down, lagging, promoted) and back.

The rule, applied by the service after a miss ran: a result read on a replica
whose replay position R is below the board's position for any tag the result
depends on is never stored and never returned; the miss waits for replay (at
most ``replica_wait``) or runs again on the primary.

Board writes (mutations and notifications, rare) take flock on the board's
file; reads are lock-free aligned 8-byte loads (single-copy atomic on x86-64
and aarch64), and a slot only ever grows, so a reader sees old-or-new, both
correct: "new" is a later invalidation, "old" predates the miss (the writer
raised it before it invalidated the arena, see GraphQLService._apply_cascade).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import mmap
import os
import secrets
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fraiseshm import _native
from fraiseshm.db.lsn import format_lsn, parse_lsn
from fraiseshm.db.pool import Database, ReadRoute, RequestSession
from fraiseshm.errors import DatabaseError, DatabaseUnavailable, FraiseshmError, ReplicaPromoted
from fraiseshm.pids import alive
from fraiseshm.tasks import cancel_and_wait

log = logging.getLogger("fraiseshm.replicas")

SHM_DIR = "/dev/shm"
MAGIC = 0x4C534E_424F415244  # "LSNBOARD"
WORKER_ROWS = 256
# counters per worker row (after the pid word)
C_REPLICA, C_BEHIND, C_PRIMARY, C_FALLBACK, C_WAITED = range(5)
N_COUNTERS = 8
_HEADER_WORDS = 4  # magic, seed, global (flush) position, slots
_ROW_WORDS = 1 + N_COUNTERS
COUNTER_NAMES = ("replica", "behind", "primary", "fallback", "waited")

class LsnBoard:
    """The shared positions. The master creates it, every worker attaches by name."""

    def __init__(self, path: str, fd: int, slots: int) -> None:
        self.path = path
        self._fd = fd
        size = 8 * (_HEADER_WORDS + slots + WORKER_ROWS * _ROW_WORDS)
        self._map = mmap.mmap(fd, size)
        self._words = memoryview(self._map).cast("Q")  # native order: each load is one 8-byte copy
        self.slots = slots
        self._seed = self._words[1]
        self._rows = _HEADER_WORDS + slots
        self._row = -1

    @staticmethod
    def path_for(arena_name: str) -> str:
        return os.path.join(SHM_DIR, arena_name.lstrip("/") + ".lsn")

    @classmethod
    def create(cls, arena_name: str, slots: int, *, exclusive: bool = False) -> LsnBoard:
        """A new board, zeroed (the master, before forking). exclusive: fail if it exists."""
        path = cls.path_for(arena_name)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
        fd = os.open(path, flags, 0o600)
        os.ftruncate(fd, 8 * (_HEADER_WORDS + slots + WORKER_ROWS * _ROW_WORDS))
        board = cls.__new__(cls)
        board.__init__(path, fd, 1)  # header only, to write it
        board._words[0], board._words[1], board._words[3] = MAGIC, secrets.randbits(63), slots
        board.close()
        return cls.attach(arena_name)

    @classmethod
    def attach(cls, arena_name: str) -> LsnBoard:
        """Opened per process: flock belongs to an open file description, so an fd
        inherited across fork would not exclude the other workers."""
        path = cls.path_for(arena_name)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        header = os.pread(fd, 8 * _HEADER_WORDS, 0)
        magic, _seed, _global, slots = (int.from_bytes(header[i:i + 8], "little") for i in range(0, 32, 8))
        if magic != MAGIC or not 1024 <= slots <= 1 << 22:
            os.close(fd)
            raise FraiseshmError(f"{path} is not a fraiseshm LSN board (magic {magic:#x}, {slots} slots)")
        return cls(path, fd, slots)

    @classmethod
    def open(cls, arena_name: str, slots: int) -> LsnBoard:
        """The master's board, or (a process no master started: tests, tools) a new one."""
        try:
            return cls.attach(arena_name)
        except FileNotFoundError:
            pass
        try:
            return cls.create(arena_name, slots, exclusive=True)
        except FileExistsError:
            return cls.attach(arena_name)

    @staticmethod
    def unlink(arena_name: str) -> None:
        try:
            os.unlink(LsnBoard.path_for(arena_name))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self._words.release()
        self._map.close()
        os.close(self._fd)

    def _slot(self, tag: str) -> int:
        return _HEADER_WORDS + _native.hash(tag.encode(), self._seed) % self.slots

    # --- positions ---------------------------------------------------------------

    def raise_tags(self, tags: Iterable[str], lsn: int) -> None:
        """Every tag's position becomes max(its position, lsn). Call BEFORE arena.invalidate."""
        words = self._words
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # LOCK: read-max-write of the slots; microseconds
        try:
            for tag in tags:
                i = self._slot(tag)
                if words[i] < lsn:
                    words[i] = lsn
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def raise_all(self, lsn: int) -> None:
        """A flush: every entry, whatever its tags, needs replay past lsn."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if self._words[2] < lsn:
                self._words[2] = lsn
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def needed(self, tags: Iterable[str]) -> int:
        """The replay position a result depending on these tags must have reached."""
        words = self._words
        need = words[2]
        for tag in tags:
            v = words[self._slot(tag)]
            if v > need:
                need = v
        return need

    @property
    def flushed_at(self) -> int:
        return self._words[2]

    # --- per-worker counters -----------------------------------------------------

    def register(self) -> None:
        """Claim a counter row for this process (a dead process's row is taken over:
        its counts stay in the totals, it no longer writes)."""
        pid = os.getpid()
        words = self._words
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            free = -1
            for r in range(WORKER_ROWS):
                base = self._rows + r * _ROW_WORDS
                owner = words[base]
                if owner == pid:
                    self._row = base
                    return
                if free < 0 and (owner == 0 or not alive(owner)):
                    free = base
            if free >= 0:
                words[free] = pid
                self._row = free
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        if self._row < 0:
            log.warning("LSN board %s: no free counter row for pid %d", self.path, pid)

    def count(self, counter: int, n: int = 1) -> None:
        if self._row >= 0:  # written only by this process
            self._words[self._row + 1 + counter] += n

    def totals(self) -> dict[str, int]:
        words = self._words
        sums = [0] * len(COUNTER_NAMES)
        for r in range(WORKER_ROWS):
            base = self._rows + r * _ROW_WORDS
            for c in range(len(COUNTER_NAMES)):
                sums[c] += words[base + 1 + c]
        return dict(zip(COUNTER_NAMES, sums))


# The replica's position is read in its own statement BEFORE the data statement, on
# the same server: a statement's snapshot is taken before its expressions run, so a
# position read in the data statement itself could name a commit replayed after the
# snapshot (docs/ARCHITECTURE.md). Read first, it is a lower bound of the snapshot.
REPLAY_SQL = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"


UP, DOWN, LAGGING, PROMOTED = "up", "down", "lagging", "promoted"


@dataclass(slots=True)
class Replica:
    dsn: str
    db: Database
    name: str
    state: str = DOWN  # until the first check
    lag: float | None = None  # seconds, measured against the primary's WAL history
    replayed: int | None = None
    last_error: str = ""
    since: float = field(default_factory=time.monotonic)  # when the state last changed

    def set_state(self, state: str, why: str = "") -> None:
        if state != self.state:
            (log.info if state == UP else log.warning)(
                "replica %s: %s -> %s%s", self.name, self.state, state, f" ({why})" if why else "")
            self.state = state
            self.since = time.monotonic()
        if why:
            self.last_error = why

    async def fetch_at_replay(self, sql: str, args: Sequence[Any], session: RequestSession | None) -> tuple[int, list[Any]]:
        """(replay position read just before the data statement, the data's first column)."""
        replay: list[Any] = []

        async def before(conn: Any) -> None:
            replay.extend(await conn.fetchrow(REPLAY_SQL))

        rows = await self.db.on_connection_after(before, lambda conn: conn.fetch(sql, *args), session)
        in_recovery, lsn = replay
        if not in_recovery:
            raise ReplicaPromoted(f"replica {self.name} is not in recovery (promoted?)")
        return parse_lsn(lsn) or 0, [row[0] for row in rows]


def _name_of(dsn: str) -> str:
    # host:port/db without credentials, for logs and /health
    rest = dsn.split("://", 1)[-1]
    return rest.rsplit("@", 1)[-1].split("?", 1)[0]


class ReplicaSet:
    """A worker's replicas and the primary's recent WAL positions (to measure lag in seconds)."""

    def __init__(self, replicas: Sequence[Replica], primary: Database, board: LsnBoard | None, *,
                 max_lag: float, check_interval: float, wait: float) -> None:
        self.replicas = list(replicas)
        self.primary = primary
        self.board = board
        self.max_lag = max_lag
        self.check_interval = check_interval
        self.wait = wait
        self._next = 0
        self._history: deque[tuple[float, int]] = deque(maxlen=max(16, int(4 * max_lag / check_interval) + 16))
        self._task: asyncio.Task[None] | None = None
        self.checks = 0

    @classmethod
    def from_settings(cls, settings: Any, primary: Database, board: LsnBoard | None) -> ReplicaSet:
        replicas = [
            Replica(dsn, primary.sibling(dsn), _name_of(dsn)) for dsn in settings.replica_dsns
        ]
        return cls(replicas, primary, board, max_lag=settings.replica_max_lag,
                   check_interval=settings.replica_check_interval, wait=settings.replica_wait)

    def pick(self) -> Replica | None:
        n = len(self.replicas)
        for i in range(n):
            r = self.replicas[(self._next + i) % n]
            if r.state == UP:
                self._next = (self._next + i + 1) % n
                return r
        return None

    def count(self, counter: int) -> None:
        if self.board is not None:
            self.board.count(counter)

    # --- the read path (called by pool.Database.fetch_column) ---------------------

    async def fetch_column(self, sql: str, args: Sequence[Any], session: RequestSession | None,
                           route: ReadRoute) -> list[Any] | None:
        """The statement on a replica, or None: run it on the primary."""
        replica = route.replica if route.replica is not None and route.replica.state == UP else self.pick()
        if replica is None:
            return None
        try:
            lsn, values = await replica.fetch_at_replay(sql, args, session)
        except ReplicaPromoted as exc:
            replica.set_state(PROMOTED, str(exc))
        except DatabaseUnavailable as exc:
            replica.set_state(DOWN, str(exc))
        except DatabaseError as exc:  # e.g. canceled by a recovery conflict: the primary answers
            log.warning("replica %s could not answer (%s); reading the primary", replica.name, exc)
        else:
            route.replica = replica
            route.replayed = lsn if route.replayed is None else min(route.replayed, lsn)
            return values
        self.count(C_FALLBACK)
        return None

    async def wait_for(self, replica: Replica, position: int, bound: float) -> bool:
        """Poll the replica's replay position until it reaches position; False after bound."""
        deadline = time.monotonic() + bound
        delay = 0.002
        while time.monotonic() < deadline:
            try:
                lsn = parse_lsn(await replica.db.fetchval_plain("SELECT pg_last_wal_replay_lsn()::text"))
            except (DatabaseUnavailable, DatabaseError):
                return False
            if lsn is not None and lsn >= position:
                return True
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))  # a poll period
            delay = min(delay * 2, 0.05)
        return False

    # --- rotation ------------------------------------------------------------------

    def start(self) -> None:
        if self.replicas and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._check_loop(), name="fraiseshm-replicas")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for r in self.replicas:
            await r.db.close()

    async def _check_loop(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # noqa: BLE001 - the checker must outlive any surprise
                log.exception("replica check failed")
            await asyncio.sleep(self.check_interval)  # a period, not a synchronisation

    async def check_once(self) -> None:
        """One round: the primary's position, then each replica's state and lag."""
        now = time.monotonic()
        try:
            primary_lsn = parse_lsn(await self.primary.fetchval_plain("SELECT pg_current_wal_lsn()::text"))
        except (DatabaseUnavailable, DatabaseError):
            primary_lsn = None
        if primary_lsn is not None:
            self._history.append((now, primary_lsn))
        self.checks += 1
        for r in self.replicas:
            try:
                row = await r.db.fetchrow_plain(REPLAY_SQL)
            except DatabaseUnavailable as exc:
                r.set_state(DOWN, str(exc))
                r.lag = None
                continue
            except DatabaseError as exc:
                r.set_state(DOWN, str(exc))
                continue
            if not row[0]:
                r.set_state(PROMOTED, "pg_is_in_recovery() is false")
                r.lag = None
                continue
            r.replayed = parse_lsn(row[1])
            r.lag = self.lag_of(r.replayed, now)
            if r.lag is not None and r.lag > self.max_lag:
                r.set_state(LAGGING, f"replay {r.lag:.1f}s behind the primary (replica_max_lag {self.max_lag:g}s)")
            elif primary_lsn is None:
                continue  # cannot measure: keep the state it has
            else:
                r.set_state(UP)

    def lag_of(self, replayed: int | None, now: float) -> float | None:
        """Seconds since the primary first held WAL the replica has not replayed (0: caught up)."""
        if replayed is None or not self._history:
            return None
        for t, lsn in self._history:  # oldest first
            if lsn > replayed:
                return now - t
        return 0.0

    # --- /health -------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        totals = self.board.totals() if self.board is not None else {}
        reads = totals.get("replica", 0) + totals.get("primary", 0)
        return {
            "replicas": [
                {"name": r.name, "state": r.state, "lag_seconds": None if r.lag is None else round(r.lag, 3),
                 "replayed": format_lsn(r.replayed), "for_seconds": round(time.monotonic() - r.since, 1),
                 "last_error": r.last_error}
                for r in self.replicas
            ],
            "misses": totals,
            "replica_share": round(totals.get("replica", 0) / reads, 4) if reads else None,
        }

    def advice(self, described: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(reasons the service is degraded, advice) from the measured figures."""
        reasons: list[str] = []
        advice: list[str] = []
        states = [r["state"] for r in described["replicas"]]
        out = [r for r in described["replicas"] if r["state"] != UP]
        if states and all(s != UP for s in states):
            reasons.append("no read replica in rotation: every miss reads the primary")
        for r in out:
            advice.append(f"replica {r['name']} is {r['state']}"
                          + (f" ({r['last_error'][:200]})" if r["last_error"] else "") + ": it is out of rotation")
        misses = described["misses"]
        served, behind = misses.get("replica", 0), misses.get("behind", 0)
        if served + behind >= 20 and behind > served:
            advice.append(f"{behind} misses found their replica behind the invalidations they needed "
                          f"(vs {served} served): replay lag costs primary reads; reduce the lag, set "
                          "replica_wait, or make fewer misses (longer TTLs, fewer invalidated tags)")
        elif states and served and len(out) == 0 and described["replica_share"] is not None \
                and described["replica_share"] > 0.9:
            advice.append(f"replicas serve {described['replica_share']:.0%} of misses: past a replica's "
                          "read capacity add another replica to replica_dsns")
        return reasons, advice
