"""One worker's subscribers and the fan-out of each cascade to them.

Each subscriber has a bounded queue: ``publish`` never waits and never grows
memory past ``queue_max`` cascades per subscriber; a subscriber whose queue is
full (its socket does not drain) is closed with 1013 and dropped, so one slow
browser costs at most its queue. ``drain`` closes every subscriber with 1001
(going away): the lifespan shutdown and SIGTERM (gunicorn.conf.py) call it,
so a clean shutdown sends close frames instead of waiting out graceful_timeout.

The open-connection count of every worker of the host is kept in one small
file per worker under /dev/shm (``<arena>.push.<pid>``), summed by /metrics
on whichever worker it lands: a dead worker's file is ignored and removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from fraiseshm.errors import PushRefused
from fraiseshm.push.shape import for_subscriber, is_empty

log = logging.getLogger("fraiseshm.push")

CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013  # a slow subscriber: its queue overflowed
CLOSE_TOO_MANY = 4429

_hubs: weakref.WeakSet[Hub] = weakref.WeakSet()


@dataclass(eq=False)
class Subscriber:
    scope: bytes  # the verified identity's scope (b"" = anonymous)
    types: frozenset[str] | None  # entityTypes filter (None = all)
    queue: asyncio.Queue[dict[str, Any] | None]
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int = 1000
    close_reason: str = ""

    def close(self, code: int, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_code, self.close_reason = code, reason
        self.closed.set()


def _wanted(cascade: Mapping[str, Any], types: frozenset[str]) -> dict[str, Any]:
    return {
        **cascade,
        "updated": [e for e in cascade["updated"] if e["typename"] in types],
        "deleted": [e for e in cascade["deleted"] if e["typename"] in types],
        "typeInvalidations": [t for t in cascade["typeInvalidations"] if t["typename"] in types],
    }


class Hub:
    def __init__(self, *, queue_max: int, max_connections: int, private_types: Collection[str],
                 private_fields: Collection[str], gauge_prefix: str | None = None) -> None:
        self.queue_max = queue_max
        self.max_connections = max_connections
        self.private_types = frozenset(private_types)
        self.private_fields = frozenset(private_fields)
        self._subscribers: set[Subscriber] = set()
        self.published = 0
        self.delivered = 0
        self.dropped_slow = 0
        self._gauge = f"{gauge_prefix}.push.{os.getpid()}" if gauge_prefix else None
        self.draining = False
        _hubs.add(self)

    @property
    def connections(self) -> int:
        return len(self._subscribers)

    def subscribe(self, scope: bytes, types: Collection[str] | None) -> Subscriber:
        if self.draining:
            raise PushRefused(CLOSE_GOING_AWAY, "this worker is shutting down; reconnect")
        if len(self._subscribers) >= self.max_connections:
            raise PushRefused(CLOSE_TOO_MANY, f"this worker serves {self.max_connections} subscriptions "
                                              "(FRAISESHM_PUSH_MAX_CONNECTIONS); retry later")
        sub = Subscriber(scope, frozenset(types) if types else None, asyncio.Queue(self.queue_max))
        self._subscribers.add(sub)
        self._write_gauge()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self._subscribers:
            self._subscribers.discard(sub)
            self._write_gauge()

    def publish(self, cascade: Mapping[str, Any], origin: bytes = b"") -> None:
        """Queue cascade for every subscriber, reduced to what each may see; never blocks."""
        self.published += 1
        for sub in list(self._subscribers):
            view = for_subscriber(cascade, origin=origin, scope=sub.scope, private_types=self.private_types,
                                  private_fields=self.private_fields)
            if sub.types is not None:
                view = _wanted(view, sub.types)
            if is_empty(view):
                continue
            try:
                sub.queue.put_nowait(view)
            except asyncio.QueueFull:
                self.dropped_slow += 1
                log.warning("push: a subscriber fell %d cascades behind; closing it (it resyncs on reconnect)",
                            self.queue_max)
                sub.close(CLOSE_TRY_AGAIN, "too slow: cascades overflowed; reconnect and refetch")
                self.unsubscribe(sub)
            else:
                self.delivered += 1

    def drain(self) -> None:
        """Close every subscriber (1001) and refuse new ones: the worker is going away."""
        self.draining = True
        for sub in list(self._subscribers):
            sub.close(CLOSE_GOING_AWAY, "server shutting down")
        self._subscribers.clear()
        self._write_gauge()

    def close(self) -> None:
        self.drain()
        if self._gauge is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._gauge)

    def _write_gauge(self) -> None:
        if self._gauge is None:
            return
        tmp = f"{self._gauge}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(str(len(self._subscribers)))
            os.replace(tmp, self._gauge)
        except OSError as exc:
            log.debug("push: connection gauge not written: %s", exc)


def drain_all() -> None:
    """Every hub of this process (SIGTERM: gunicorn.conf.py)."""
    for hub in list(_hubs):
        hub.drain()


def host_connections(gauge_prefix: str, alive: Callable[[int], bool]) -> int:
    """Open push connections of every live worker of the host (their gauge files)."""
    total = 0
    for path in glob.glob(glob.escape(gauge_prefix) + ".push.*"):
        pid = path.rsplit(".", 1)[-1]
        if not pid.isdigit():
            continue
        if not alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(path)
            continue
        try:
            with open(path) as f:
                total += int(f.read() or 0)
        except (OSError, ValueError):
            continue
    return total
