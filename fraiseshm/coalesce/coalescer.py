"""Request coalescing: one database execution per key per host.

Two levels:

1. Inside a worker, concurrent requests for one key share one asyncio
   future: at most one of them talks to the flight table, so at most one
   thread per process ever blocks on a doorbell.
2. Across workers, the arena's flight table decides who leads
   (``flight_begin`` -> LEAD / FOLLOW / NONE). The leader first reads the arena
   again (a flight that ended after this request's miss left its answer there),
   then executes, stores the
   result in the arena, publishes DONE_OK or DONE_ERROR and rings the doorbell.
   Followers wait on the doorbell in a thread, with a deadline, in short
   slices, and re-read the flight table each time: a lost ring costs one slice.
   A follower that finds the leader dead (its pid gone or reused: the owner
   word carries a registration nonce) or its lease expired takes over with a
   CAS that bumps the flight's generation: every flight is (slot, generation),
   so the old leader's late flight_end fails instead of ending the new one.

Freshness (DESIGN.md requirement 1): a cross-process follower never takes the
leader's bytes directly: it reads the arena, which checks the entry's
fill sequence against the tag table. A local follower takes the leader's
reply only if it arrived before the leader snapshotted the sequence
(``start_seq <= fill_seq``); otherwise it reads the arena and, on a miss,
runs the query itself.

Errors are shared once and never cached: followers of a failed leader get
its error, the next request starts a new flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from fraiseshm.arena import Arena, Counter, FlightRole, FlightState
from fraiseshm.coalesce.doorbell import Doorbells
from fraiseshm.errors import CoalesceTimeout, LeaderFailed

log = logging.getLogger("fraiseshm.coalesce")

R = TypeVar("R")

POLL_SLICE = 0.05  # seconds a follower sleeps on the doorbell between flight-table reads


@dataclass(slots=True)
class Filled(Generic[R]):
    """What a leader's execution produced."""

    reply: R
    fill_seq: int  # the invalidation sequence read before the database was queried
    ok: bool  # False: an error reply (never cached), shared with followers once
    error: str = ""  # short message for cross-process followers when not ok


class Coalescer(Generic[R]):
    def __init__(
        self,
        arena: Arena,
        bells: Doorbells,
        *,
        lease: float,
        wait: float,
        execute_on_timeout: bool,
        workers: int,
    ) -> None:
        self.arena = arena
        self.bells = bells
        self.lease = lease  # seconds a leader owns a flight before one more request may lead
        self.wait = wait  # seconds a follower waits before it gives up
        self.execute_on_timeout = execute_on_timeout
        self.max_waiting_processes = max(1, workers - 1)
        self._local: dict[bytes, asyncio.Future[Filled[R]]] = {}  # key -> this worker's leader
        self._threads = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fraiseshm-doorbell")

    async def fetch(
        self,
        key: bytes,
        start_seq: int,
        execute: Callable[[], Awaitable[Filled[R]]],
        read: Callable[[], R | None],
        failed: Callable[[str], R],
        recheck: Callable[[], R | None] | None = None,
    ) -> R:
        """The reply for key: from the arena, a local leader, a remote leader, or by executing.

        execute: run the query, store it, return Filled (called by the leader only)
        read:    the arena's current valid entry as a reply, or None
        failed:  the reply a follower gets when its leader failed with a message
        recheck: as read, without counting a hit or miss: a new leader's second look (its
                 request's miss is already counted); None: the leader always executes
                 (a client's revalidation must not be answered from the arena)
        """
        future = self._local.get(key)
        if future is not None:
            self.arena.incr(Counter.COALESCE_FOLLOWED)  # counted on joining, as flight_begin counts FOLLOW
            filled = await asyncio.shield(future)
            if not filled.ok or start_seq <= filled.fill_seq:
                return filled.reply
            # A mutation may have been acknowledged after the leader's snapshot.
            reply = read()
            if reply is not None:
                return reply
            return await self.fetch(key, self.arena.current_seq(), execute, read, failed, recheck)

        future = asyncio.get_running_loop().create_future()
        self._local[key] = future
        try:
            filled = await self._across_processes(key, execute, read, failed, recheck)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            future.set_result(filled)
            return filled.reply
        finally:
            if self._local.get(key) is future:
                del self._local[key]

    async def _across_processes(
        self,
        key: bytes,
        execute: Callable[[], Awaitable[Filled[R]]],
        read: Callable[[], R | None],
        failed: Callable[[str], R],
        recheck: Callable[[], R | None] | None,
    ) -> Filled[R]:
        arena = self.arena
        deadline = time.monotonic() + self.wait
        while True:
            role, slot, generation = arena.flight_begin(key, self.lease)
            if role == FlightRole.NONE:  # flight table full: no coalescing for this one
                return await execute()
            if role == FlightRole.LEAD:
                # A leader that finished between this request's arena miss and its flight_begin
                # stored the answer already: serve that (a valid entry, as any hit) instead of
                # executing again. Without this re-check a herd ran 2 executions in 1 of 4.
                reply = recheck() if recheck is not None else None
                if reply is not None:
                    arena.flight_end(slot, generation, True, "")
                    self._ring(slot)
                    return Filled(reply, fill_seq=arena.current_seq(), ok=True)
                return await self._lead(slot, generation, execute)
            outcome = await self._follow(key, slot, generation, deadline, execute, read)
            if outcome == "again":
                continue
            if isinstance(outcome, Filled):
                return outcome
            # the leader failed: its followers get its error once
            message = str(outcome)
            return Filled(failed(message), fill_seq=0, ok=False, error=message)

    async def _lead(self, slot: int, generation: int, execute: Callable[[], Awaitable[Filled[R]]]) -> Filled[R]:
        try:
            filled = await execute()
        except BaseException as exc:
            self.arena.flight_end(slot, generation, False, f"{type(exc).__name__}: {exc}"[:200])
            self._ring(slot)
            raise
        self.arena.flight_end(slot, generation, filled.ok, filled.error[:200])
        self._ring(slot)
        return filled

    def _ring(self, slot: int) -> None:
        self.bells.ring(slot, self.max_waiting_processes)

    async def _follow(
        self,
        key: bytes,
        slot: int,
        generation: int,
        deadline: float,
        execute: Callable[[], Awaitable[Filled[R]]],
        read: Callable[[], R | None],
    ) -> Filled[R] | LeaderFailed | str:
        arena = self.arena
        loop = asyncio.get_running_loop()
        arena.flight_join(slot, generation)
        try:
            while True:
                state, message = arena.flight_poll(slot, key, generation)
                if state == FlightState.DONE_OK:
                    reply = read()
                    if reply is not None:
                        return Filled(reply, fill_seq=arena.current_seq(), ok=True)
                    return "again"  # not cacheable, or invalidated since: lead or follow anew
                if state == FlightState.DONE_ERROR:
                    return LeaderFailed(message or "the coalesced leader failed")
                if state == FlightState.GONE:
                    return "again"
                if state == FlightState.ABANDONED:
                    taken = arena.flight_takeover(slot, key, generation, self.lease)
                    if taken is not None:
                        log.warning("took over an abandoned flight (slot %d): its leader died or overran its lease", slot)
                        # the takeover is a new generation: the old leader's late end cannot touch it
                        return await self._lead(slot, taken, execute)
                    return "again"  # another process took it over (a new generation): follow that one
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    arena.incr(Counter.COALESCE_TIMEOUTS)
                    if self.execute_on_timeout:
                        log.warning("coalescing wait of %.1fs exceeded: executing uncoalesced", self.wait)
                        return await execute()
                    raise CoalesceTimeout(
                        f"waited {self.wait:.1f}s for another worker's result (FRAISESHM_COALESCE_WAIT); retry"
                    )
                # PERF: the blocking wait runs in a thread, never on the event loop.
                await loop.run_in_executor(self._threads, self.bells.wait, slot, min(remaining, POLL_SLICE))
        finally:
            arena.flight_leave(slot, generation)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
