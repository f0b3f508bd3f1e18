"""The flight and stats-slot races of issue 14, replayed deterministically.

Each interleaving is forced with a resumable pause point (a pipe byte out when
the process reaches the point, a pipe byte in to go on) or with an injected
clock, never with a sleep. The guarantee under test: one flight has one
leader, so one execution; a live process is never taken for dead.
"""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from fraiseshm import _native
from fraiseshm.arena import Arena, FlightRole, FlightState
from tests.multiprocess.conftest import fork, wait_byte

MiB = 1 << 20
S = 1_000_000_000
DBG_REAP, DBG_SLOT_CLAIM = 7, 8


class Clock:
    def __init__(self) -> None:
        self.now = 100 * S

    def __call__(self) -> int:
        return self.now


@contextmanager
def out_of_fds() -> Iterator[None]:
    """Every further open() in this process fails with EMFILE until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        while True:
            try:
                fds.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        yield
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def live_child(name: str, action: Callable[[Arena], object], now: int | None = None) -> tuple[int, int, int]:
    """Fork a child that attaches (with a frozen clock at ``now`` if given), runs action,
    reports its repr, then stays alive until released. Returns (pid, report fd, release fd)."""
    r, w = os.pipe()
    hold_r, hold_w = os.pipe()

    def child() -> None:
        os.close(r)
        os.close(hold_w)
        a = Arena.attach(name, clock=None if now is None else (lambda: now))
        a.register_process()
        os.write(w, (repr(action(a)) + "\n").encode())
        os.read(hold_r, 1)  # stay alive (and leading) until the test lets go

    pid = fork(child)
    os.close(w)
    os.close(hold_r)
    return pid, r, hold_w


def report(fd: int) -> object:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        assert chunk, "child died before reporting"
        data += chunk
    return eval(data.decode())  # noqa: S307 - a repr() written by our own child


def release(pid: int, hold_w: int, rfd: int) -> None:
    os.write(hold_w, b"x")  # a byte, not EOF: later children inherited this write end too
    os.close(hold_w)
    _, status = os.waitpid(pid, 0)
    os.close(rfd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.fixture
def arena(arena_name: str) -> Iterator[Arena]:
    clock = Clock()
    a = Arena.create(arena_name, size=4 * MiB, max_entry=64 * 1024, shards=1, flight_slots=1, stats_slots=8,
                     clock=clock)
    a.register_process()
    a.clock = clock  # type: ignore[attr-defined]
    yield a
    a.close()


def test_late_end_of_an_old_flight_cannot_end_a_newer_one(arena: Arena, arena_name: str) -> None:
    """A leads, overruns its lease, B takes over and finishes; A leads again in the same
    slot; A's late flight_end of its FIRST flight must not end (or un-own) the second."""
    clock = arena.clock  # type: ignore[attr-defined]
    role, slot, g1 = arena.flight_begin(b"q", 1.0)
    assert role is FlightRole.LEAD
    clock.now += 5 * S  # A overran its lease
    pid, r, hold = live_child(arena_name, lambda b: b.flight_takeover(slot, b"q", g1, 10.0), clock.now)
    try:
        g2 = report(r)
        assert g2 == g1 + 1  # B leads a new generation of the slot
    finally:
        release(pid, hold, r)  # B ends (exits) without flight_end: its flight is abandoned
    role, slot3, g3 = arena.flight_begin(b"q", 10.0)
    assert (role, slot3) == (FlightRole.LEAD, slot) and g3 == g2 + 1  # A leads again, same slot
    assert arena.flight_end(slot, g1, True) is False  # the late end of flight 1
    assert arena.flight_poll(slot, b"q", g3)[0] is FlightState.RUNNING  # flight 3 untouched
    # a newcomer follows flight 3: it must not find it abandoned and lead a second execution
    pid, r, hold = live_child(arena_name, lambda b: tuple(map(int, b.flight_begin(b"q", 10.0))), clock.now)
    try:
        assert report(r) == (FlightRole.FOLLOW, slot, g3)
    finally:
        release(pid, hold, r)
    assert arena.check() == []
    assert arena.flight_end(slot, g3, True) is True


def test_a_follower_out_of_fds_never_takes_a_live_leader_for_dead(arena: Arena, arena_name: str) -> None:
    pid, r, hold = live_child(arena_name, lambda b: tuple(map(int, b.flight_begin(b"q", 3600.0))))
    try:
        role, slot, gen = report(r)
        assert role == FlightRole.LEAD
        with out_of_fds():  # /proc cannot be read: EMFILE is "unknown", i.e. alive
            assert arena.flight_poll(slot, b"q", gen)[0] is FlightState.RUNNING
            assert arena.flight_begin(b"q", 10.0) == (FlightRole.FOLLOW, slot, gen)
            assert arena.flight_takeover(slot, b"q", gen, 10.0) is None
        assert arena.flight_poll(slot, b"q", gen)[0] is FlightState.RUNNING
    finally:
        release(pid, hold, r)
    # now really dead: the same calls see it
    assert arena.flight_poll(slot, b"q", gen)[0] is FlightState.ABANDONED


def test_a_full_stats_table_never_hands_a_live_slot_to_another(arena_name: str) -> None:
    with Arena.create(arena_name, size=4 * MiB, max_entry=64 * 1024, shards=1, stats_slots=2) as a:
        kids = [live_child(arena_name, lambda b: b._h.info()["my_slot"]) for _ in range(2)]
        try:
            assert sorted(report(r) for _, r, _ in kids) == [0, 1]
            with out_of_fds():
                assert a.register_process() == -1  # both owners live (unknown counts as live)
            assert a.register_process() == -1
        finally:
            for pid, r, hold in kids:
                release(pid, hold, r)
        assert a.register_process() in (0, 1)  # the dead owners' slots are reused


def test_a_slot_being_claimed_is_not_judged_by_its_previous_owner(arena_name: str) -> None:
    """claim_slot window: X takes a dead process's slot by CAS and stops before it wrote its
    start time; another process must not compare X with the previous owner's start time."""
    with Arena.create(arena_name, size=4 * MiB, max_entry=64 * 1024, shards=1, stats_slots=1) as a:
        pid, r, hold = live_child(arena_name, lambda b: b._h.info()["my_slot"])
        release_after = report(r)
        assert release_after == 0
        release(pid, hold, r)  # the slot's owner is dead now, its start time stays behind
        out_r, out_w = os.pipe()
        go_r, go_w = os.pipe()

        def claimer() -> None:
            b = Arena.attach(arena_name)
            _native._debug_pause_in(DBG_SLOT_CLAIM, out_w, go_r)
            assert b.register_process() == 0

        x = fork(claimer)
        try:
            assert wait_byte(out_r) == b"!"  # X owns the slot, start time not yet written
            assert a.register_process() == -1  # X is alive: its slot is not up for grabs
        finally:
            os.write(go_w, b"g")
            _, status = os.waitpid(x, 0)
            for fd in (out_r, out_w, go_r, go_w):
                os.close(fd)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_reap_cannot_release_a_flight_a_live_process_just_took_over(arena: Arena, arena_name: str) -> None:
    """The master's reap of a dead leader judged the flight abandoned; before its CAS a live
    follower takes the flight over. The reap must fail, the new leader keep its flight."""
    pid, r, hold = live_child(arena_name, lambda b: tuple(map(int, b.flight_begin(b"q", 3600.0))))
    role, slot, gen = report(r)
    assert role == FlightRole.LEAD
    os.kill(pid, signal.SIGKILL)  # the leader dies while leading
    os.waitpid(pid, 0)  # reaped: its pid is gone
    os.close(r)
    os.close(hold)
    out_r, out_w = os.pipe()
    go_r, go_w = os.pipe()

    def reaper() -> None:
        m = Arena.attach(arena_name)
        _native._debug_pause_in(DBG_REAP, out_w, go_r)
        m.release_flights_of(pid)

    rp = fork(reaper)
    try:
        assert wait_byte(out_r) == b"!"  # the reaper judged it dead and is about to CAS
        new = arena.flight_takeover(slot, b"q", gen, 10.0)
        assert new == gen + 1
    finally:
        os.write(go_w, b"g")
        _, status = os.waitpid(rp, 0)
        for fd in (out_r, out_w, go_r, go_w):
            os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert arena.flight_poll(slot, b"q", new)[0] is FlightState.RUNNING  # not released
    assert arena.flight_end(slot, new, True) is True


def test_a_lease_of_a_billion_seconds_does_not_expire_at_once(arena: Arena) -> None:
    clock = arena.clock  # type: ignore[attr-defined]
    for lease in (1e9, 1e12, 1e300):
        role, slot, gen = arena.flight_begin(b"long", lease)
        assert role is FlightRole.LEAD
        clock.now += 3600 * S
        assert arena.flight_poll(slot, b"long", gen)[0] is FlightState.RUNNING
        assert arena.flight_takeover(slot, b"long", gen, 10.0) is None
        assert arena.flight_end(slot, gen, True)


def test_a_herd_has_one_leader_and_one_execution(arena_name: str) -> None:
    """Eight processes begin the same key at once (released by one pipe): one leads, the
    others follow it, and after its end nobody else led."""
    with Arena.create(arena_name, size=4 * MiB, max_entry=64 * 1024, shards=1, flight_slots=64) as a:
        a.register_process()
        go_r, go_w = os.pipe()
        end_r, end_w = os.pipe()
        ready_r, ready_w = os.pipe()
        res_r, res_w = os.pipe()

        def member() -> None:
            b = Arena.attach(arena_name)
            b.register_process()
            os.write(ready_w, b"r")
            os.read(go_r, 1)
            role, slot, gen = b.flight_begin(b"herd", 10.0)
            os.write(res_w, b"%d %d %d\n" % (role, slot, gen))
            if role == FlightRole.LEAD:
                os.read(end_r, 1)  # lead until every member has answered
                assert b.flight_end(slot, gen, True)

        pids = [fork(member) for _ in range(8)]
        for _ in pids:
            wait_byte(ready_r)
        os.write(go_w, b"g" * 8)
        lines = b""
        while lines.count(b"\n") < 8:
            lines += os.read(res_r, 4096)
        os.write(end_w, b"e")
        results = [tuple(map(int, line.split())) for line in lines.split(b"\n") if line]
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        for fd in (go_r, go_w, end_r, end_w, ready_r, ready_w, res_r, res_w):
            os.close(fd)
        leaders = [x for x in results if x[0] == FlightRole.LEAD]
        assert len(leaders) == 1, results
        assert all(x[1:] == leaders[0][1:] for x in results if x[0] == FlightRole.FOLLOW)
        assert a.stats()["totals"]["coalesce_led"] == 1
