"""The Arena API with an injected clock: no sleeps, every call, bad arguments included."""

from __future__ import annotations

import errno
import itertools
import mmap
import os
from collections.abc import Iterator

import pytest

from fraiseshm import _native
from fraiseshm.arena import Arena, Counter, FlightRole, FlightState
from fraiseshm.arena.layout import CLASS_SIZES, LAYOUT_VERSION
from fraiseshm.errors import (
    ArenaLayoutMismatch,
    ArenaNotFound,
    ArenaTooSmall,
    ArenaUnlinked,
    ConfigError,
    EntryTooLarge,
)

MiB = 1 << 20
S = 1_000_000_000  # ns per second
_names = itertools.count()


class Clock:
    """One frozen "now" per operation, moved by the test (cachetools' timer= idea)."""

    def __init__(self) -> None:
        self.now = 10 * S

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def name() -> Iterator[str]:
    n = f"/fraiseshm-unit-{os.getpid()}-{next(_names)}"
    yield n
    Arena.unlink(n)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def arena(name: str, clock: Clock) -> Iterator[Arena]:
    a = Arena.create(name, size=16 * MiB, max_entry=256 * 1024, shards=4, clock=clock)
    a.register_process()
    yield a
    a.close()


def put(a: Arena, key: bytes, value: bytes, deps: list[str] | None = None, ttl: float = 60.0) -> bool:
    return a.put(key, value, deps or [], a.current_seq(), ttl)


# --- segment -------------------------------------------------------------------


def test_create_attach_share_one_segment(name: str) -> None:
    with Arena.create(name, size=8 * MiB, max_entry=64 * 1024, shards=2) as a, Arena.attach(name) as b:
        assert b.max_entry == 64 * 1024 and b.name == name
        assert a.put(b"k", b"v", ["T:1"], a.current_seq(), 60)
        assert b.get(b"k") == b"v"
        assert b.invalidate(["T:1"]) == a.current_seq() == 1
        assert a.get(b"k") is None


def test_attach_missing_raises_not_found(name: str) -> None:
    with pytest.raises(ArenaNotFound, match="no arena"):
        Arena.attach(name)


def test_attach_foreign_file_is_a_layout_mismatch(name: str) -> None:
    with open("/dev/shm" + name, "wb") as f:
        f.write(b"\0" * 8192)
    with pytest.raises(ArenaLayoutMismatch, match="not a fraiseshm arena"):
        Arena.attach(name)
    with open("/dev/shm" + name, "wb") as f:
        f.write(b"tiny")
    with pytest.raises(ArenaLayoutMismatch, match="smaller than an arena header"):
        Arena.attach(name)


def test_attach_other_version_names_both_versions(name: str) -> None:
    Arena.create(name, size=8 * MiB, max_entry=4096, shards=1).close()
    with open("/dev/shm" + name, "r+b") as f:
        f.seek(8)
        f.write((LAYOUT_VERSION + 1).to_bytes(4, "little"))
    with pytest.raises(ArenaLayoutMismatch, match=f"version {LAYOUT_VERSION + 1}.*version {LAYOUT_VERSION}"):
        Arena.attach(name)


def test_create_fails_at_start_when_dev_shm_is_too_small(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int, off: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(ArenaTooSmall, match=r"cannot hold an arena of 8388608 B: \d+ B free"):
        Arena.create(name, size=8 * MiB, max_entry=4096)
    assert not os.path.exists("/dev/shm" + name)


def test_create_replaces_a_stale_segment(name: str) -> None:
    with Arena.create(name, size=8 * MiB, max_entry=4096, shards=1) as old:
        put(old, b"k", b"old")
        with Arena.create(name, size=8 * MiB, max_entry=4096, shards=1) as new:
            assert new.get(b"k") is None
            assert not old.linked and new.linked


def test_unlinked_name_is_detected_loudly(arena: Arena, caplog: pytest.LogCaptureFixture) -> None:
    arena.ensure_linked()
    Arena.unlink(arena.name)
    Arena.unlink(arena.name)  # absent: no error
    assert not arena.linked
    with pytest.raises(ArenaUnlinked, match="unlinked"):
        arena.ensure_linked()
    assert any("I0" in p for p in arena.check())
    assert "RemoveIPC" in caplog.text


@pytest.mark.parametrize(
    "kw, exc",
    [
        ({"size": 1000}, ValueError),
        ({"max_entry": 0}, ValueError),
        ({"shards": 0}, ValueError),
        ({"tag_slots": 1000}, ValueError),
        ({"flight_slots": 0}, ValueError),
        ({"size": 2 * MiB, "max_entry": 1 * MiB}, ConfigError),
    ],
)
def test_create_rejects_bad_geometry(name: str, kw: dict[str, int], exc: type[Exception]) -> None:
    args = {"size": 8 * MiB, "max_entry": 4096} | kw
    with pytest.raises(exc):
        Arena.create(name, **args)


@pytest.mark.parametrize("bad", ["noslash", "/a/b", "/", 3])
def test_bad_names(bad: object) -> None:
    with pytest.raises(ValueError, match="arena name"):
        Arena.attach(bad)  # type: ignore[arg-type]


def test_shards_are_reduced_when_memory_per_shard_is_too_small(name: str) -> None:
    with Arena.create(name, size=8 * MiB, max_entry=256 * 1024, shards=16) as a:
        assert a.stats()["shards"] < 16


def test_closed_arena_refuses_calls(name: str) -> None:
    a = Arena.create(name, size=8 * MiB, max_entry=4096, shards=1)
    get = a.get
    a.close()
    a.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        get(b"k")


# --- get / put -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 100, 1024, 4000, 64 * 1024, 65536 - 100, 200_000, 256 * 1024])
def test_roundtrip_every_size(arena: Arena, size: int) -> None:
    value = os.urandom(size)
    assert put(arena, b"key", value, ["A:1", "A:*"])
    assert arena.get(b"key") == value
    got = arena.get_with_checksum(b"key")
    assert got is not None and got[0] == value and got[1] == _native.hash(value)
    assert arena.check() == []


def test_overwrite_and_missing(arena: Arena) -> None:
    assert arena.get(b"nope") is None
    put(arena, b"k", b"one")
    put(arena, b"k", b"two" * 1000)
    assert arena.get(b"k") == b"two" * 1000
    assert arena.stats()["entries"] == 1
    assert arena.check() == []


def test_ttl_uses_the_injected_clock(arena: Arena, clock: Clock) -> None:
    put(arena, b"k", b"v", ttl=5)
    clock.now += 5 * S - 1
    assert arena.get(b"k") == b"v"
    clock.now += 1
    assert arena.get(b"k") is None
    assert arena.get_stale(b"k") == b"v"  # only the TTL is wrong: stale-while-revalidate
    assert arena.stats()["totals"]["stale_hits"] == 1


def test_get_stale_never_returns_an_invalidated_value(arena: Arena, clock: Clock) -> None:
    put(arena, b"k", b"v", ["User:1"], ttl=1)
    clock.now += 2 * S
    arena.invalidate(["User:1"])
    assert arena.get_stale(b"k") is None
    put(arena, b"f", b"v", ttl=1)
    clock.now += 2 * S
    arena.flush()
    assert arena.get_stale(b"f") is None


def test_invalidate_only_hits_dependents(arena: Arena) -> None:
    put(arena, b"u1", b"1", ["User:1", "User:*"])
    put(arena, b"u2", b"2", ["User:2", "User:*"])
    put(arena, b"p", b"3", ["Post:1"])
    assert arena.invalidate(["User:1"]) == 1
    assert arena.get(b"u1") is None and arena.get(b"u2") == b"2"
    assert arena.invalidate(iter(["User:*", "User:*"])) == 2  # any iterable, duplicates harmless
    assert arena.get(b"u2") is None and arena.get(b"p") == b"3"
    assert arena.invalidate([]) == 3


def test_put_refuses_a_fill_that_raced_an_invalidation(arena: Arena) -> None:
    s0 = arena.current_seq()  # read before the "database"
    arena.invalidate(["User:1"])  # a mutation commits meanwhile
    assert arena.put(b"k", b"old", ["User:1"], s0, 60) is False
    assert arena.get(b"k") is None
    assert arena.put(b"k", b"new", ["User:1"], arena.current_seq(), 60) is True
    assert arena.stats()["totals"]["put_rejected_stale"] == 1


def test_flush_invalidates_everything_before_it(arena: Arena) -> None:
    s0 = arena.current_seq()
    put(arena, b"k", b"v")
    seq = arena.flush()
    assert seq == s0 + 1 and arena.stats()["valid_from"] == seq
    assert arena.get(b"k") is None
    assert arena.put(b"k", b"v", [], s0, 60) is False
    assert put(arena, b"k", b"w") and arena.get(b"k") == b"w"


def test_entry_too_large_is_refused_without_evicting(arena: Arena) -> None:
    put(arena, b"small", b"s")
    with pytest.raises(EntryTooLarge, match=r"262145 B exceeds max_entry 262144 B"):
        put(arena, b"big", b"x" * (256 * 1024 + 1))
    assert arena.get(b"small") == b"s"
    assert arena.stats()["totals"]["entry_too_large"] == 1
    with pytest.raises(EntryTooLarge, match="deps"):
        put(arena, b"k", b"v", [f"T:{i}" for i in range(20000)])


def test_many_deps_and_unicode_tags(arena: Arena) -> None:
    deps = [f"Üser:{i}" for i in range(500)]
    put(arena, b"k", b"v", deps)
    assert arena.get(b"k") == b"v"
    arena.invalidate(["Üser:499"])
    assert arena.get(b"k") is None


@pytest.mark.parametrize(
    "args, exc",
    [
        (("k", b"v", [], 0, 1.0), TypeError),
        ((b"", b"v", [], 0, 1.0), ValueError),
        ((b"k" * 1025, b"v", [], 0, 1.0), ValueError),
        ((b"k", "v", [], 0, 1.0), TypeError),
        ((b"k", b"v", "User:1", 0, 1.0), TypeError),
        ((b"k", b"v", [1], 0, 1.0), TypeError),
        ((b"k", b"v", None, 0, 1.0), TypeError),
        ((b"k", b"v", [], -1, 1.0), ValueError),
        ((b"k", b"v", [], 99, 1.0), ValueError),
        ((b"k", b"v", [], 0, 0.0), ValueError),
        ((b"k", b"v", [], 0, float("nan")), ValueError),
        ((b"k", b"v", [], 0, "1"), TypeError),
    ],
)
def test_put_bad_arguments(arena: Arena, args: tuple[object, ...], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        arena.put(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["k", None, b"", bytearray(b"k")])
def test_get_bad_keys(arena: Arena, bad: object) -> None:
    for fn in (arena.get, arena.get_stale, arena.get_with_checksum):
        with pytest.raises((TypeError, ValueError)):
            fn(bad)  # type: ignore[arg-type]


def test_invalidate_bad_arguments(arena: Arena) -> None:
    with pytest.raises(TypeError):
        arena.invalidate("User:1")
    with pytest.raises(TypeError):
        arena.invalidate([b"User:1"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        arena.invalidate(5)  # type: ignore[arg-type]
    assert arena.current_seq() == 0  # nothing bumped on a bad call


def test_infinite_ttl(arena: Arena, clock: Clock) -> None:
    put(arena, b"k", b"v", ttl=float("inf"))
    clock.now += 10**6 * S
    assert arena.get(b"k") == b"v"


# --- memory bound, eviction, CLOCK -------------------------------------------------


def test_filling_ten_times_the_size_stays_bounded_and_clean(name: str) -> None:
    with Arena.create(name, size=8 * MiB, max_entry=128 * 1024, shards=2) as a:
        seq = a.current_seq()
        sizes = [80, 700, 3000, 20_000, 100_000]
        total = i = 0
        while total < 10 * 8 * MiB:
            v = os.urandom(sizes[i % len(sizes)])
            assert a.put(b"k%d" % i, v, ["T"], seq, 60)
            total += len(v)
            i += 1
        st = a.stats()
        assert st["used_bytes"] <= st["capacity_bytes"] and st["totals"]["evictions"] > 0
        assert st["fill_ratio"] > 0.5
        assert a.check() == []
        assert a.get(b"k%d" % (i - 1)) is not None  # the newest survives


def test_hot_set_survives_a_scan_of_cold_keys(name: str) -> None:
    with Arena.create(name, size=8 * MiB, max_entry=64 * 1024, shards=1) as a:
        seq = a.current_seq()
        value = b"x" * 900  # one size class
        hot = [b"hot-%d" % i for i in range(300)]
        for k in hot:
            a.put(k, value, [], seq, 60)
        capacity = a.stats()["capacity_bytes"] // 1536
        for i in range(5 * capacity):  # a scan of five times the arena's worth of cold keys
            a.put(b"cold-%d" % i, value, [], seq, 60)
            if i % 500 == 0:
                for k in hot:
                    a.get(k)  # the hot set keeps being read
        survivors = sum(a.get(k) is not None for k in hot)
        assert survivors >= 0.95 * len(hot), survivors
        assert a.get(b"cold-0") is None
        assert a.check() == []


def test_size_classes_share_pages_as_the_mix_changes(name: str) -> None:
    with Arena.create(name, size=8 * MiB, max_entry=64 * 1024, shards=1) as a:
        seq = a.current_seq()
        for phase, size in enumerate([100, 60_000, 1000, 100]):
            for i in range(3000):
                a.put(b"%d-%d" % (phase, i), b"v" * size, [], seq, 60)
            assert a.get(b"%d-2999" % phase) == b"v" * size
            assert a.check() == []
        assert len(CLASS_SIZES) == 20


def _flip_in_value(arena: Arena, marker: bytes) -> None:
    with open("/dev/shm" + arena.name, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        at = m.find(marker)
        m[at + 3] ^= 0xFF


def test_corruption_is_detected_and_never_served(arena: Arena, caplog: pytest.LogCaptureFixture) -> None:
    marker = os.urandom(64)
    put(arena, b"k", marker * 20)
    _flip_in_value(arena, marker)
    assert arena.get(b"k") is None  # the value hash on the copy catches it
    st = arena.stats()
    assert st["checksum_failures"] == 1 and st["totals"]["checksum_failures"] == 1
    assert st["corruption_wipes"] == 1 and st["totals"]["corruption_wipes"] == 1
    assert "WIPED: an entry's value hash failed" in caplog.text
    assert arena.check() == []  # the shard was wiped, not repaired


def test_check_reports_and_wipes_a_corrupt_shard(arena: Arena) -> None:
    marker = os.urandom(64)
    put(arena, b"k", marker * 20)
    _flip_in_value(arena, marker)
    problems = arena.check()
    assert any("I6" in p and "value checksum" in p for p in problems)
    assert any("I0" in p and "wiped" in p for p in problems)
    assert arena.check() == [] and arena.get(b"k") is None
    assert arena.stats()["corruption_wipes"] == 1


# --- stats ---------------------------------------------------------------------------


def test_counters_histogram_and_figures(arena: Arena, clock: Clock) -> None:
    put(arena, b"k", b"v" * 100)
    arena.get(b"k")
    arena.get(b"missing")
    arena.incr(Counter.REQUESTS)
    arena.incr(Counter.DB_EXECUTIONS, 5)
    arena.observe(0.0002)
    arena.observe(3.0)
    arena.observe(100.0)
    clock.now += 7 * S
    st = arena.stats()
    t = st["totals"]
    assert (t["hits"], t["misses"], t["puts"], t["requests"], t["db_executions"]) == (1, 1, 1, 1, 5)
    assert t["bytes_read"] == 100 and t["bytes_written"] == 100
    assert st["latency"]["count"] == 3 and st["latency"]["counts"][1] == 1 and st["latency"]["counts"][-1] == 1
    assert st["latency"]["sum_seconds"] == pytest.approx(103.0002)
    [me] = [p for p in st["processes"] if p["pid"] == os.getpid()]
    assert me["counters"]["hits"] == 1
    assert st["entries"] == 1 and st["blocks_per_class"] == {192: 1}
    assert st["oldest_entry_age_seconds"] == pytest.approx(7.0)
    assert st["shards"] == 4 and st["size"] == 16 * MiB and st["lock_wipes"] == 0


def test_incr_and_observe_bad_arguments(arena: Arena) -> None:
    with pytest.raises(ValueError):
        arena.incr(99)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        arena.incr("hits")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        arena.incr(Counter.HITS, -1)
    with pytest.raises(ValueError):
        arena.observe(-1.0)
    with pytest.raises(TypeError):
        arena.observe("fast")  # type: ignore[arg-type]


def test_counter_enum_mirrors_c() -> None:
    assert len(Counter) == _native.N_COUNTERS
    assert [c.value for c in Counter] == list(range(len(Counter)))


def test_dead_process_is_reaped_and_totals_stay(arena: Arena, name: str) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: its own slot, some counts, then exit
        b = Arena.attach(name)
        b.register_process()
        b.incr(Counter.ERRORS, 7)
        os.write(w, b"x")
        os._exit(0)
    assert os.read(r, 1) == b"x"
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    before = arena.stats()
    assert before["totals"]["errors"] == 7
    assert any(p["pid"] == pid for p in before["processes"])
    assert arena.reap(pid) is True
    assert arena.reap(pid) is False
    after = arena.stats()
    assert after["totals"]["errors"] == 7 and after["archived"]["errors"] == 7
    assert not any(p["pid"] == pid for p in after["processes"])
    with pytest.raises(ValueError):
        arena.reap(0)


def test_register_twice_keeps_one_slot(arena: Arena) -> None:
    slot = arena.register_process()
    assert arena.register_process() == slot
    with Arena.attach(arena.name) as b:
        assert b.register_process() == slot  # same process: shared slot


def test_stats_table_full_still_counts_locally(name: str) -> None:
    with Arena.create(name, size=8 * MiB, max_entry=4096, shards=1, stats_slots=1) as a:
        assert a.register_process() == 0
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"%d" % a.register_process())  # parent alive: no slot for the child
            a.incr(Counter.HITS)
            os._exit(0)
        assert os.read(r, 8) == b"-1"
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)


# --- flights -------------------------------------------------------------------------


def test_flight_lead_follow_done(arena: Arena) -> None:
    role, slot, gen = arena.flight_begin(b"q", 10.0)
    assert role is FlightRole.LEAD
    assert arena.flight_begin(b"q", 10.0) == (FlightRole.FOLLOW, slot, gen)
    assert arena.flight_join(slot, gen) and arena.flight_join(slot, gen)
    assert arena.flight_leave(slot, gen)
    assert arena.flight_poll(slot, b"q", gen) == (FlightState.RUNNING, "")
    assert arena.flight_end(slot, gen, True)
    assert arena.flight_poll(slot, b"q", gen) == (FlightState.DONE_OK, "")
    role2, slot2, gen2 = arena.flight_begin(b"q", 10.0)  # a later miss leads a new flight,
    assert role2 is FlightRole.LEAD and slot2 != slot  # in an EMPTY slot: late followers still see DONE_OK
    assert arena.flight_poll(slot, b"q", gen) == (FlightState.DONE_OK, "")
    assert arena.flight_poll(slot2, b"other", gen2) == (FlightState.GONE, "")
    t = arena.stats()["totals"]
    assert (t["coalesce_led"], t["coalesce_followed"]) == (2, 1)


def test_flight_error_message_reaches_followers(arena: Arena) -> None:
    _, slot, gen = arena.flight_begin(b"q", 10.0)
    assert arena.flight_end(slot, gen, False, "boom: " + "é" * 200)
    state, msg = arena.flight_poll(slot, b"q", gen)
    assert state is FlightState.DONE_ERROR and msg.startswith("boom: é")
    assert len(msg.encode("utf-8", "replace")) <= _native.ERR_MAX + 3
    assert arena.flight_end(slot, gen, True) is False  # only once


def test_expired_lease_is_abandoned_then_taken_over(arena: Arena, clock: Clock) -> None:
    _, slot, gen = arena.flight_begin(b"q", 2.0)
    assert arena.flight_takeover(slot, b"q", gen, 2.0) is None  # alive and in time
    clock.now += 3 * S
    assert arena.flight_poll(slot, b"q", gen)[0] is FlightState.ABANDONED
    new = arena.flight_takeover(slot, b"q", gen, 2.0)
    assert new == gen + 1  # a takeover is a new flight of the same slot
    assert arena.flight_poll(slot, b"q", gen)[0] is FlightState.GONE
    assert arena.flight_poll(slot, b"q", new)[0] is FlightState.RUNNING
    assert arena.flight_end(slot, gen, True) is False  # the late leader cannot end the new flight
    assert arena.flight_poll(slot, b"q", new)[0] is FlightState.RUNNING
    assert arena.flight_end(slot, new, True)
    assert arena.stats()["totals"]["coalesce_takeovers"] == 1


def test_dead_leader_is_detected_without_waiting_for_the_lease(arena: Arena, name: str) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        b = Arena.attach(name)
        role, slot, gen = b.flight_begin(b"q", 1000.0)
        os.write(w, b"%d %d %d" % (role, slot, gen))
        os._exit(0)  # dies while leading
    role, slot, gen = map(int, os.read(r, 64).split())
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    assert role == FlightRole.LEAD
    assert arena.flight_poll(slot, b"q", gen)[0] is FlightState.ABANDONED
    role2, slot2, gen2 = arena.flight_begin(b"q", 10.0)  # begin takes over directly
    assert (role2, slot2, gen2) == (FlightRole.LEAD, slot, gen + 1)
    assert arena.flight_end(slot, gen2, True)


def test_release_flights_of_a_reaped_worker(arena: Arena, name: str) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        b = Arena.attach(name)
        _, slot, gen = b.flight_begin(b"q", 1000.0)
        os.write(w, b"%d %d" % (slot, gen))
        os._exit(0)
    slot, gen = map(int, os.read(r, 64).split())
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    assert arena.reap(pid) is True
    assert arena.flight_poll(slot, b"q", gen) == (FlightState.GONE, "")
    assert arena.release_flights_of(pid) == 0
    assert arena.check() == []


def test_full_flight_table_says_none(name: str) -> None:
    with Arena.create(name, size=8 * MiB, max_entry=4096, shards=1, flight_slots=2) as a:
        keys = [b"a", b"b", b"c"]
        roles = [a.flight_begin(k, 10.0)[0] for k in keys]
        assert roles[:2] == [FlightRole.LEAD, FlightRole.LEAD] and roles[2] is FlightRole.NONE


@pytest.mark.parametrize("slot, gen", [(-1, 0), (10**6, 0), (0, 2**33)])
def test_flight_bad_slot(arena: Arena, slot: int, gen: int) -> None:
    with pytest.raises(ValueError):
        arena.flight_poll(slot, b"q", gen)
    with pytest.raises(ValueError):
        arena.flight_end(slot, gen, True)
    with pytest.raises(ValueError):
        arena.flight_join(slot, gen)


def test_flight_bad_lease(arena: Arena) -> None:
    with pytest.raises(ValueError):
        arena.flight_begin(b"q", 0)
    with pytest.raises(TypeError):
        arena.flight_end(0, 0, False, b"bytes")  # type: ignore[arg-type]


def test_proc_start_tells_processes_apart() -> None:
    me = _native.proc_start(os.getpid())
    assert me > 0 and _native.proc_start(os.getpid()) == me
    assert _native.proc_start(2**22 + 12345) == 0
