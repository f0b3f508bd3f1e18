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
A payload it cannot read flushes the arena (it says something changed, not
what). When the connection is lost (PostgreSQL restarted, network), it
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
from typing import Any

import asyncpg

from fraiseshm.arena import Arena
from fraiseshm.cascade.changes import parse_payload
from fraiseshm.errors import CascadeError

log = logging.getLogger("fraiseshm.listener")

CHANNEL = "fraiseshm_changes"
SHM_DIR = "/dev/shm"


class Listener:
    def __init__(
        self,
        dsn: str,
        arena: Arena,
        *,
        retry_interval: float = 0.5,
        keepalive: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._dsn = dsn
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
        while True:
            try:
                await self._listen_until_lost()
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("change listener: PostgreSQL connection lost (%s: %s); reconnecting every %.1fs",
                          type(exc).__name__, exc, self.retry_interval)
            await self._close_connection()
            await asyncio.sleep(self.retry_interval)

    # --- listening -----------------------------------------------------------

    async def _listen_until_lost(self) -> None:
        lost = asyncio.Event()
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            server_settings={"application_name": f"fraiseshm-listener {self.arena.name} {os.getpid()}"},
        )
        self._conn = conn
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(CHANNEL, self._on_notification)
        self.connects += 1
        # INVARIANT: after LISTEN, before anything else: whatever was sent while
        # nobody listened is unknown, so nothing cached before now may survive.
        self.arena.flush()
        self._listening.set()
        log.info("change listener: LISTEN %s (connection %d); arena flushed", CHANNEL, self.connects)
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), self.keepalive)
            except TimeoutError:
                await conn.fetchval("SELECT 1", timeout=self.keepalive)
        raise ConnectionError("the listener connection was closed")

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        try:
            changes = parse_payload(payload)
        except CascadeError as exc:
            log.error("%s; flushing the arena", exc)
            self.arena.flush()
            return
        tags = changes.tags()
        if tags:
            self.arena.invalidate(tags)

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._close_connection()
        if self._lock_fd >= 0:
            # Closing releases the lock (if held) for the next worker. A thread
            # still blocked in flock keeps its own reference and ends with the process.
            os.close(self._lock_fd)
            self._lock_fd = -1
        self.is_leader = False
