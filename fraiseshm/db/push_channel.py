"""Every worker's own LISTEN for the push: cascades and plain-SQL changes from any host.

The host's change listener (fraiseshm/db/listener.py) is one worker per host;
a push subscriber may be connected to any worker, so each worker with the push
on holds one more connection (application_name ``fraiseshm-push <pid>``) that
LISTENs on two channels:

- ``fraiseshm_cascades``: each committed mutation's cascade, sent by the worker
  that ran it (``send``), whichever host: ``<hmac> {"v":1,"ts":..,"origin":
  "<hex scope>","cascade":{...}}``;
- ``fraiseshm_changes``: the kit's signed change notifications (plain SQL,
  and mutations' own rows).

Both are signed with the kit's notification key (HMAC-SHA256, as the change
triggers sign), because any role may NOTIFY: an unsigned, stale or replayed
payload is ignored and counted, never pushed. ``on_message(channel, json)``
gets the verified JSON; ``on_gap()`` runs after every reconnect, since what
was sent meanwhile is lost (the push then tells subscribers to refetch).
Sends go over the same connection, one at a time, from a bounded queue: a
send that cannot be queued or fails is counted and logged, and the mutation's
own response is unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec

from fraiseshm.db import kit
from fraiseshm.tasks import cancel_and_wait

log = logging.getLogger("fraiseshm.push.channel")

CASCADE_CHANNEL = "fraiseshm_cascades"
CHANGES_CHANNEL = "fraiseshm_changes"
MAX_PAYLOAD = 7900  # bytes: NOTIFY refuses more than 8000
SEND_QUEUE = 1024  # cascades waiting to be sent per worker
SEEN_MAX = 65_536


class _Stamp(msgspec.Struct, forbid_unknown_fields=False):
    ts: float


_decode_stamp = msgspec.json.Decoder(_Stamp).decode


class PushChannel:
    def __init__(
        self,
        dsn: str,
        on_message: Callable[[str, str], None],
        on_gap: Callable[[], None],
        *,
        secret: str = "",
        max_age: float = 600.0,
        retry_interval: float = 0.5,
        keepalive: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._on_message = on_message
        self._on_gap = on_gap
        self._key_hex = secret
        self.max_age = max_age
        self.retry_interval = retry_interval
        self.keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._seen: OrderedDict[str, float] = OrderedDict()
        self.rejected: Counter[str] = Counter()
        self.sent = 0
        self.send_failures = 0
        self.connects = 0
        self._conn: asyncpg.Connection | None = None
        self._listening = asyncio.Event()
        self._outbox: asyncio.Queue[str] = asyncio.Queue(SEND_QUEUE)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name="fraiseshm-push-listen"),
                       loop.create_task(self._send_loop(), name="fraiseshm-push-send")]

    async def wait_listening(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._listening.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- sending --------------------------------------------------------------

    def send(self, body: bytes) -> bool:
        """Queue one JSON body (<= MAX_PAYLOAD - 65 bytes) for NOTIFY fraiseshm_cascades."""
        try:
            self._outbox.put_nowait(body.decode())
        except asyncio.QueueFull:
            self.send_failures += 1
            log.error("push: %d cascades waiting to be sent; this one is dropped (subscribers miss it)", SEND_QUEUE)
            return False
        return True

    async def _send_loop(self) -> None:
        while True:
            body = await self._outbox.get()
            await self._listening.wait()
            conn, key = self._conn, self._key_hex
            try:
                if conn is None or not key:
                    raise ConnectionError("push channel not connected")
                await conn.execute("SELECT pg_notify($1, $2)", CASCADE_CHANNEL, f"{kit.sign(key, body.encode())} {body}")
                self.sent += 1
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.send_failures += 1
                log.error("push: sending a cascade failed (%s: %s); subscribers miss it", type(exc).__name__, exc)

    # --- listening ------------------------------------------------------------

    async def _run(self) -> None:
        first = True
        while True:
            try:
                await self._listen_until_lost(first)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("push channel: PostgreSQL connection lost (%s: %s); reconnecting every %.1fs",
                          type(exc).__name__, exc, self.retry_interval)
            first = False
            self._listening.clear()
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.terminate()
            await asyncio.sleep(self.retry_interval)  # a reconnect period, not a synchronisation

    async def _listen_until_lost(self, first: bool) -> None:
        lost = asyncio.Event()
        conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout,
                                     server_settings={"application_name": f"fraiseshm-push {os.getpid()}"})
        self._conn = conn
        if not self._key_hex:
            self._key_hex = await kit.notify_key(conn)
        self._key = bytes.fromhex(self._key_hex)
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(CASCADE_CHANNEL, self._on_notification)
        await conn.add_listener(CHANGES_CHANNEL, self._on_notification)
        self.connects += 1
        self._listening.set()
        if not first:
            self._on_gap()  # INVARIANT: after LISTEN is back, before anything newer is pushed
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), self.keepalive)
            except TimeoutError:
                await conn.fetchval("SELECT 1", timeout=self.keepalive)
        raise ConnectionError("the push connection was closed")

    def _on_notification(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        body = kit.verify(self._key, payload)
        if body is None:
            self.rejected["bad signature"] += 1
            return
        try:
            ts = _decode_stamp(body).ts
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.rejected["unreadable"] += 1
            return
        now = time.time()
        mac = payload[: kit.MAC_HEX]
        if abs(now - ts) > self.max_age:
            self.rejected["stale"] += 1
            return
        if mac in self._seen:
            self.rejected["replayed"] += 1
            return
        self._seen[mac] = ts
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        try:
            self._on_message(channel, body)
        except Exception:  # noqa: BLE001 - one bad message must not end the listener
            log.exception("push: handling a %s notification failed", channel)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()  # all at once, then each awaited
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
