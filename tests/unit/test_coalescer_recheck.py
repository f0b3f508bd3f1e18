"""A request that missed the arena just before another worker's leader stored the answer and ended
its flight leads the next flight: it must serve that answer, not execute again (make perf counted
1.16 database executions per herd of 50; /tmp herd diagnostics showed 2 leaders and 2 puts in the
herds that ran twice). Real arena and doorbells; the two coalescers stand for two workers."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable, Iterator

import pytest

from fraiseshm.arena import Arena
from fraiseshm.coalesce.coalescer import Coalescer, Filled
from fraiseshm.coalesce.doorbell import Doorbells

_names = itertools.count()
KEY = b"user(id: 1)"
DEPS = ["r:public.tb_user:1"]


@pytest.fixture
def shared() -> Iterator[tuple[Arena, Doorbells]]:
    name = f"/fraiseshm-recheck-{os.getpid()}-{next(_names)}"
    arena = Arena.create(name, size=4 << 20, max_entry=64 * 1024, shards=1)
    bells = Doorbells.create(name)
    try:
        yield arena, bells
    finally:
        bells.close()
        Doorbells.unlink(name)
        arena.close()
        Arena.unlink(name)


def _coalescer(arena: Arena, bells: Doorbells) -> Coalescer[bytes]:
    return Coalescer(arena, bells, lease=5.0, wait=5.0, execute_on_timeout=False, workers=2)


def _executor(arena: Arena, executions: list[str], answer: Callable[[str], bytes]
              ) -> Callable[[str], Callable[[], Awaitable[Filled[bytes]]]]:
    """execute(who): a leader's execution that counts itself, stores its answer and returns it."""
    def execute(who: str) -> Callable[[], Awaitable[Filled[bytes]]]:
        async def run() -> Filled[bytes]:
            executions.append(who)
            fill_seq = arena.current_seq()
            assert arena.put(KEY, answer(who), DEPS, fill_seq, 60.0)
            return Filled(answer(who), fill_seq=fill_seq, ok=True)
        return run
    return execute


def test_a_late_leader_serves_the_answer_the_previous_flight_stored(shared: tuple[Arena, Doorbells]) -> None:
    arena, bells = shared
    worker_a, worker_b = _coalescer(arena, bells), _coalescer(arena, bells)
    executions: list[str] = []
    execute = _executor(arena, executions, lambda who: b"answer")

    async def main() -> None:
        # B's request misses the arena (as GraphQLService.handle does before coalescing) ...
        assert arena.get(KEY) is None
        start_b = arena.current_seq()
        # ... then A leads a flight to its end: the answer is stored, the flight is over ...
        assert await worker_a.fetch(KEY, arena.current_seq(), execute("a"), lambda: arena.get(KEY),
                                    lambda m: m.encode()) == b"answer"
        # ... and only now does B reach the flight table: it leads the next flight.
        misses = arena.stats()["totals"]["misses"]
        assert await worker_b.fetch(KEY, start_b, execute("b"), lambda: arena.get(KEY), lambda m: m.encode(),
                                    recheck=lambda: arena.peek(KEY)) == b"answer"
        assert arena.stats()["totals"]["misses"] == misses, "the second look counted a miss"

    asyncio.run(main())
    assert executions == ["a"], "the second leader executed although the answer was stored"


def test_a_leader_still_executes_when_the_stored_answer_was_invalidated(shared: tuple[Arena, Doorbells]) -> None:
    arena, bells = shared
    worker_a, worker_b = _coalescer(arena, bells), _coalescer(arena, bells)
    executions: list[str] = []
    execute = _executor(arena, executions, lambda who: who.encode())

    async def main() -> None:
        await worker_a.fetch(KEY, arena.current_seq(), execute("a"), lambda: arena.get(KEY), lambda m: m.encode())
        arena.invalidate(DEPS)  # a mutation after A's fill
        assert await worker_b.fetch(KEY, arena.current_seq(), execute("b"), lambda: arena.get(KEY),
                                    lambda m: m.encode(), recheck=lambda: arena.peek(KEY)) == b"b"

    asyncio.run(main())
    assert executions == ["a", "b"]


def test_a_revalidation_always_executes(shared: tuple[Arena, Doorbells]) -> None:
    """No second look (recheck=None): a client's Cache-Control: no-cache must reach the database."""
    arena, bells = shared
    worker_a, worker_b = _coalescer(arena, bells), _coalescer(arena, bells)
    executions: list[str] = []
    execute = _executor(arena, executions, lambda who: who.encode())

    async def main() -> None:
        await worker_a.fetch(KEY, arena.current_seq(), execute("a"), lambda: arena.get(KEY), lambda m: m.encode())
        assert await worker_b.fetch(KEY, arena.current_seq(), execute("b"), lambda: arena.get(KEY),
                                    lambda m: m.encode(), recheck=None) == b"b"

    asyncio.run(main())
    assert executions == ["a", "b"]
