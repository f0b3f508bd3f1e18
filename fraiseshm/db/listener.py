"""One LISTEN fraiseshm_changes per host: writes from anywhere invalidate the arena.

Election: every worker starts a ``Listener``; a thread blocks in
``flock(LOCK_EX)`` on the arena's own file in /dev/shm (nothing else flocks
it; two hosts, i.e. two arenas, are two files). The kernel gives the lock to
exactly one process and releases it when that process dies, SIGKILL included;
the next waiter's thread returns at once and its worker starts listening. No
lock file to clean up, no lease to expire.

The holder LISTENs on its own asyncpg connection (application_name
``fraiseshm-listener <arena> <pid>``, visible in pg_stat_activity) and turns
every payload into tags (fraiseshm/cascade/changes.py) -> ``arena.invalidate``.

Any role may NOTIFY fraiseshm_changes, so a payload counts only when it
comes from the kit's own triggers (fraiseshm/db/sql/kit.sql):
``<hex HMAC-SHA256 of the JSON> <JSON>`` under the kit's notification key
(``notify_secret``, else read from fraiseshm.notify_key on every connect).
A payload whose MAC does not verify, whose timestamp is more than
``max_age`` seconds away from this host's clock, or that was already heard
(a replay: same MAC within max_age) is ignored, counted in ``rejected`` and
logged at most once per ``LOG_EVERY`` seconds with the sending backend's pid,
never a flush: a flood of them costs one HMAC each and leaves the cache as
it was. A signed payload it cannot read (a newer kit) flushes the arena: it
says something changed, not what. When the connection is lost (PostgreSQL restarted, network), it
reconnects every ``retry_interval`` seconds. INVARIANT: every time LISTEN is
(re)established the arena is flushed *after* LISTEN succeeded, because
notifications sent while nobody listened are lost; so a takeover or a
reconnect costs one cold cache, never a stale read. A keepalive query every
``keepalive`` seconds detects a half-open connection.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec

from fraiseshm.arena import Arena
from fraiseshm.arena.handled import HandledTransactions
from fraiseshm.db import kit
from fraiseshm.db.lsn import primary_position
from fraiseshm.errors import CascadeError
from fraiseshm.tasks import cancel_and_wait

try:  # the payload parser of fraiseshm.cascade.changes (issue 12, graphql side), once merged
    from fraiseshm.cascade.changes import parse_payload
except ImportError:
    parse_payload = None

log = logging.getLogger("fraiseshm.listener")

CHANNEL = "fraiseshm_changes"
SHM_DIR = "/dev/shm"
LOG_EVERY = 10.0  # seconds between two warnings about rejected notifications
SEEN_MAX = 65_536  # MACs remembered against replays (oldest forgotten first)


KEY_RETRY = 5.0  # seconds between attempts to read an unreadable notification key
KEY_RETRY_LOG = 60.0  # seconds between two errors about it


class _KeyUnavailable(Exception):
    """fraiseshm.notify_key cannot be read on this connection (no kit, or no grant)."""


class _Signed(msgspec.Struct, forbid_unknown_fields=False):
    """What the listener itself reads of a verified payload: its timestamp (replays) and tags."""

    ts: float
    tags: list[str]
    flush: str | None = None  # the kit's event trigger: these definitions changed
    tx: str | None = None  # txid_current() of the writing transaction


_decode_signed = msgspec.json.Decoder(_Signed).decode


class Listener:
    def __init__(
        self,
        dsn: str,
        arena: Arena,
        *,
        retry_interval: float = 0.5,
        keepalive: float = 5.0,
        connect_timeout: float = 5.0,
        secret: str = "",
        max_age: float = 600.0,
        clock: Callable[[], float] = time.time,  # wall clock: payloads carry the database's epoch time
        on_heard: Callable[[float, float], None] | None = None,  # (lag seconds, heard at): the metrics' board
        board: Any = None,  # replicas.LsnBoard: each invalidation also records a WAL position
        handled: HandledTransactions | None = None,  # transactions a mutation on this host invalidated
    ) -> None:
        self.board = board
        self.handled = handled
        self.already_invalidated = 0  # notifications skipped: their mutation invalidated them first
        self._pending: list[set[str] | None] = []  # heard, waiting for their WAL position (None: a flush)
        self._draining: asyncio.Task[None] | None = None
        self._conn_lock = asyncio.Lock()  # one statement at a time on the listener's connection
        self._dsn = dsn
        self._secret = secret  # hex; "" = read fraiseshm.notify_key on connect
        self._key: bytes | None = bytes.fromhex(secret) if secret else None
        self.max_age = max_age  # seconds a signed payload's timestamp may be off
        self._clock = clock
        self._on_heard = on_heard
        self._seen: OrderedDict[str, float] = OrderedDict()  # MAC -> its payload's timestamp
        self.rejected: Counter[str] = Counter()  # reason -> notifications ignored
        self._rejected_unlogged = 0
        self._last_reject_log = float("-inf")
        self.arena = arena
        self.retry_interval = retry_interval  # seconds between reconnect attempts
        self.keepalive = keepalive  # seconds between liveness queries
        self._connect_timeout = connect_timeout
        self._lock_path = os.path.join(SHM_DIR, arena.name.lstrip("/"))
        self._lock_fd = -1
        self._elected: asyncio.Event | None = None
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self.is_leader = False
        self.notifications = 0
        self.connects = 0

    # --- election ------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._elected = asyncio.Event()
        self._listening = asyncio.Event()
        self._lock_fd = os.open(self._lock_path, os.O_RDONLY | os.O_CLOEXEC)
        self._task = loop.create_task(self._run(), name="fraiseshm-listener")
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            self._elected.set()
            return

        def wait_for_lock(fd: int, elected: asyncio.Event) -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # LOCK: held until this process exits
            except OSError as exc:  # the fd was closed by stop()
                log.debug("listener election ended: %s", exc)
                return
            try:
                loop.call_soon_threadsafe(elected.set)
            except RuntimeError:  # the loop is closed: this worker is exiting
                pass

        # Daemon: a worker that exits while still waiting must not hang on it.
        threading.Thread(target=wait_for_lock, args=(self._lock_fd, self._elected),
                         name="fraiseshm-listener-election", daemon=True).start()

    @property
    def elected(self) -> bool:
        return self._elected is not None and self._elected.is_set()

    async def wait_listening(self, timeout: float) -> bool:
        """Until the first LISTEN (and its flush) is done; False after timeout (PostgreSQL down)."""
        try:
            await asyncio.wait_for(self._listening.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        assert self._elected is not None
        await self._elected.wait()
        self.is_leader = True
        log.info("worker %d is the host's change listener (arena %s)", os.getpid(), self.arena.name)
        key_failures = 0
        while True:
            pause = self.retry_interval
            try:
                await self._listen_until_lost()
            except _KeyUnavailable as exc:
                # A grant is missing: nothing a quick retry fixes. Say it once a minute, not twice a second.
                if key_failures % max(1, int(KEY_RETRY_LOG / KEY_RETRY)) == 0:
                    log.error("change listener cannot read the notification key (%s): run `fraiseshm db install "
                              "--server-role <this role>` or set FRAISESHM_NOTIFY_SECRET; retrying every %.0fs, "
                              "plain-SQL writes do not reach the cache meanwhile", exc, KEY_RETRY)
                key_failures += 1
                pause = KEY_RETRY
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("change listener: PostgreSQL connection lost (%s: %s); reconnecting every %.1fs",
                          type(exc).__name__, exc, self.retry_interval)
            await self._close_connection()
            await asyncio.sleep(pause)

    # --- listening -----------------------------------------------------------

    async def _listen_until_lost(self) -> None:
        lost = asyncio.Event()
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            server_settings={"application_name": f"fraiseshm-listener {self.arena.name} {os.getpid()}"},
        )
        self._conn = conn
        if not self._secret:
            try:
                self._key = bytes.fromhex(await kit.notify_key(conn))
            except asyncpg.PostgresError as exc:
                raise _KeyUnavailable(f"{type(exc).__name__}: {exc}") from None
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(CHANNEL, self._on_notification)
        self.connects += 1
        # INVARIANT: after LISTEN, before anything else: whatever was sent while
        # nobody listened is unknown, so nothing cached before now may survive.
        if self.board is not None:
            # ... nor read from a replica that has not replayed up to now; this also
            # covers notifications heard whose position could not be read.
            async with self._conn_lock:
                self.board.raise_all(await primary_position(conn.fetchrow))
            self._pending.clear()
        self.arena.flush()
        if self.handled is not None:
            self.handled.clear()  # arena/handled.py T4: ids may repeat after a restore
        self._listening.set()
        log.info("change listener: LISTEN %s (connection %d); arena flushed", CHANNEL, self.connects)
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), self.keepalive)
            except TimeoutError:
                async with self._conn_lock:
                    await conn.fetchval("SELECT 1", timeout=self.keepalive)
        raise ConnectionError("the listener connection was closed")

    def _on_notification(self, _conn: Any, pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        body = kit.verify(self._key, payload) if self._key is not None else None
        if body is None:
            self._reject("bad signature", pid)
            return
        mac = payload[: kit.MAC_HEX]
        try:
            signed = _decode_signed(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("signed change notification this fraiseshm cannot read (%s); flushing the arena", exc)
            self._invalidate(None)
            return
        now = self._clock()
        if abs(now - signed.ts) > self.max_age:
            self._reject("stale", pid)
            return
        if mac in self._seen:
            self._reject("replayed", pid)
            return
        self._remember(mac, signed.ts, now)
        if self._on_heard is not None:
            self._on_heard(now - signed.ts, now)
        if signed.flush is not None:
            # Logged first so whoever sees the flush can already read why.
            log.warning("the database changed %s: flushing the arena; every worker re-binds the schema within "
                        "schema_recheck_interval", signed.flush[:500])
            # INVARIANT: no entry built by an old view definition may be served.
            self._invalidate(None)
            return
        if parse_payload is not None:
            try:
                tags = parse_payload(body).tags()
            except CascadeError as exc:
                log.error("%s; flushing the arena", exc)
                self._invalidate(None)
                return
        else:
            tags = {t.removeprefix("+") for t in signed.tags}  # derived items are bumped alike
        if self.handled is not None and signed.tx is not None and signed.tx in self.handled:
            # Invalidating again would refuse the fills of every miss since the mutation's
            # invalidation: fresh reads (they began after the commit), re-run for nothing.
            self.already_invalidated += 1
            return
        if tags:
            self._invalidate(set(tags))

    def _invalidate(self, tags: set[str] | None) -> None:
        """Invalidate tags (None: flush). With replicas, also record the WAL position read
        on the primary after the notification arrived, hence at or after its commit, and
        then invalidate again: heard notifications are batched behind one such read."""
        if self.board is None:
            if tags is None:
                self.arena.flush()
            else:
                self.arena.invalidate(tags)
            return
        # The arena at once too, so cached entries go as fast as without replicas; again
        # after the board (below), for entries a replica filled in between: a result read
        # in that window may be returned, like any read within the notification latency,
        # but is not kept.
        if tags is None:
            self.arena.flush()
        else:
            self.arena.invalidate(tags)
        self._pending.append(tags)
        if self._draining is None or self._draining.done():
            self._draining = asyncio.get_running_loop().create_task(self._drain(), name="fraiseshm-listener-lsn")

    async def _drain(self) -> None:
        while self._pending and self._conn is not None:
            conn = self._conn
            try:
                async with self._conn_lock:
                    lsn = await primary_position(conn.fetchrow)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Kept pending: the reconnect raises every position to its own read, then flushes.
                log.error("change listener: reading the WAL position failed (%s); the reconnect covers it", exc)
                return
            batch, self._pending = self._pending, []
            tags: set[str] = set()
            flush = False
            for item in batch:
                if item is None:
                    flush = True
                else:
                    tags |= item
            if flush:
                self.board.raise_all(lsn)
                self.arena.flush()
            if tags:
                self.board.raise_tags(tags, lsn)
                self.arena.invalidate(tags)

    def _remember(self, mac: str, ts: float, now: float) -> None:
        seen = self._seen
        seen[mac] = ts
        # Forget what max_age refuses anyway (roughly in arrival order), and bound the memory.
        while seen and (len(seen) > SEEN_MAX or abs(now - next(iter(seen.values()))) > self.max_age):
            seen.popitem(last=False)

    def _reject(self, reason: str, pid: int) -> None:
        self.rejected[reason] += 1
        self._rejected_unlogged += 1
        now = time.monotonic()
        if now - self._last_reject_log >= LOG_EVERY:
            log.warning(
                "ignored %d change notifications on %s since the last report (totals: %s); the last one (%s) "
                "came from backend pid %d (see pg_stat_activity)",
                self._rejected_unlogged, CHANNEL, dict(self.rejected), reason, pid,
            )
            self._rejected_unlogged = 0
            self._last_reject_log = now

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._draining is not None:
            self._draining.cancel()
            self._draining = None
        await self._close_connection()
        if self._lock_fd >= 0:
            # Closing releases the lock (if held) for the next worker. A thread
            # still blocked in flock keeps its own reference and ends with the process.
            os.close(self._lock_fd)
            self._lock_fd = -1
        self.is_leader = False
