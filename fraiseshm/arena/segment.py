"""The Arena: create / attach / unlink the segment, and the Python face of the C calls.

The master creates the arena (``Arena.create``), workers attach after fork
(``Arena.attach``) and register a stats slot; see layout.py for what is in the
segment and why it survives a SIGKILL anywhere.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fraiseshm import _native
from fraiseshm.arena.layout import (
    CLASS_SIZES,
    HIST_BOUNDS,
    MAX_KEY,
    PAGE_SIZE,
    Counter,
    FlightRole,
    FlightState,
)
from fraiseshm.errors import (
    ArenaCorrupt,
    ArenaError,
    ArenaLayoutMismatch,
    ArenaNotFound,
    ArenaTooSmall,
    ArenaUnlinked,
    ConfigError,
    EntryTooLarge,
)

log = logging.getLogger("fraiseshm.arena")

SHM_DIR = "/dev/shm"
_MIN_PAGES = 8  # per shard, so size classes have room to share pages


def _on_wipe(shard: int, reason: str) -> None:
    log.error(
        "arena shard %d WIPED: %s; its entries are gone (an empty shard is always correct)",
        shard,
        reason,
    )


_native.set_hooks(
    {
        _native.FS_TOO_LARGE: EntryTooLarge,
        _native.FS_FULL: ArenaError,
        _native.FS_LOCK_BROKEN: ArenaCorrupt,
        _native.FS_BAD_MAGIC: ArenaLayoutMismatch,
        _native.FS_BAD_VERSION: ArenaLayoutMismatch,
        _native.FS_TOO_SMALL: ConfigError,
        _native.FS_BAD_GEOMETRY: ArenaCorrupt,
    },
    _on_wipe,
)

_open_arenas: weakref.WeakSet[Arena] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child shares the parent's mapping but must not write the
    # parent's stats slot or hold its leases: it claims its own lazily.
    for arena in list(_open_arenas):
        arena._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _path(name: str) -> str:
    if not isinstance(name, str) or not name.startswith("/") or "/" in name[1:] or len(name) < 2:
        raise ValueError(f"arena name must look like '/fraiseshm-x', got {name!r}")
    return SHM_DIR + name


def _pages_for_entry(max_entry: int) -> int:
    payload = PAGE_SIZE - 16
    return -(-(max_entry + _native.BLK_HDR + MAX_KEY + 4 * 256) // payload)


def _plan_shards(size: int, max_entry: int, shards: int, tag_slots: int, flight_slots: int, stats_slots: int) -> int:
    """Fewer shards when each could not hold 4 maximum entries (memory is per shard)."""
    need = max(_MIN_PAGES, 4 * _pages_for_entry(max_entry))
    wanted = shards
    while True:
        plan = _native.plan(size, shards, tag_slots, flight_slots, stats_slots)
        if plan is not None and plan["pages"] >= need:
            if shards != wanted:
                log.warning("arena: %d shards would leave under %d pages each; using %d", wanted, need, shards)
            return shards
        if shards == 1:
            raise ConfigError(
                f"arena_size ({size} B) is too small: with max_entry {max_entry} B one shard needs "
                f"{need} pages of {PAGE_SIZE} B plus the tables; raise FRAISESHM_ARENA_SIZE "
                f"or lower FRAISESHM_MAX_ENTRY_BYTES / FRAISESHM_TAG_SLOTS"
            )
        shards = max(1, shards // 2)


class Arena:
    """One mapped arena. Every public method is safe from any process."""

    name: str
    max_entry: int

    def __init__(self, name: str, fd: int, handle: Any, clock: Callable[[], int] | None) -> None:
        self.name = name
        self._fd = fd
        self._h = handle
        self._clock = clock
        info = handle.info()
        self.max_entry = info["max_entry"]
        self.size = info["size"]
        self.shards = info["shards"]
        self._pages = info["pages"]
        if clock is None:
            # PERF: the hot calls are the C methods themselves (no Python frame);
            # C reads CLOCK_MONOTONIC when no "now" is passed.
            self.get = handle.get  # type: ignore[method-assign]
            self.get_with_checksum = handle.get_with_checksum  # type: ignore[method-assign]
            self.get_stale = handle.get_stale  # type: ignore[method-assign]
            self.put = handle.put  # type: ignore[method-assign]
        self.incr = handle.incr  # type: ignore[method-assign]
        self.observe = handle.observe  # type: ignore[method-assign]
        self.invalidate = handle.invalidate  # type: ignore[method-assign]
        self.current_seq = handle.current_seq  # type: ignore[method-assign]
        _open_arenas.add(self)

    # --- segment -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        *,
        size: int,
        max_entry: int,
        shards: int = 16,
        tag_slots: int = 65536,
        flight_slots: int = 1024,
        stats_slots: int = 256,
        clock: Callable[[], int] | None = None,
        hash_seed: int | None = None,
    ) -> Arena:
        """Create (or replace a stale) arena of exactly ``size`` bytes; the master calls this.

        ``hash_seed`` is for tests only: by default the arena draws a random seed,
        so clients cannot precompute keys that collide in one bucket."""
        path = _path(name)
        for what, v, lo in (("size", size, 1 << 20), ("max_entry", max_entry, 1), ("shards", shards, 1),
                            ("tag_slots", tag_slots, 1), ("flight_slots", flight_slots, 1),
                            ("stats_slots", stats_slots, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{what} must be an int >= {lo}, got {v!r}")
        if tag_slots & (tag_slots - 1):
            raise ValueError(f"tag_slots must be a power of two, got {tag_slots}")
        shards = _plan_shards(size, max_entry, shards, tag_slots, flight_slots, stats_slots)
        Arena.unlink(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                    raise
                st = os.statvfs(SHM_DIR)
                raise ArenaTooSmall(
                    e.errno,
                    f"{SHM_DIR} cannot hold an arena of {size} B: {st.f_bavail * st.f_frsize} B free "
                    f"of {st.f_blocks * st.f_frsize} B; lower FRAISESHM_ARENA_SIZE or enlarge {SHM_DIR} "
                    f"(mount -o remount,size=...)",
                ) from e
            handle = _native.create(fd, size, max_entry, shards, tag_slots, flight_slots, stats_slots, hash_seed)
        except BaseException:
            os.close(fd)
            Arena.unlink(name)
            raise
        return cls(name, fd, handle, clock)

    @classmethod
    def attach(cls, name: str, clock: Callable[[], int] | None = None) -> Arena:
        """Map an existing arena (workers, after fork; the CLI)."""
        path = _path(name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ArenaNotFound(errno.ENOENT, f"no arena {name} in {SHM_DIR}: is the master running?") from None
        try:
            handle = _native.attach(fd, os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd, handle, clock)

    @staticmethod
    def unlink(name: str) -> None:
        """Remove the name (mappings stay valid until closed); no error if absent."""
        try:
            os.unlink(_path(name))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        if self._fd >= 0:
            _open_arenas.discard(self)
            self._h.close()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def linked(self) -> bool:
        """False once the name was removed under us (RemoveIPC, rm): a silent split risk."""
        return self._fd >= 0 and os.fstat(self._fd).st_nlink > 0

    def ensure_linked(self) -> None:
        """Raise ArenaUnlinked (and log it loudly) if the name no longer points at our segment."""
        if self._fd < 0:
            raise ValueError("arena is closed")
        if os.fstat(self._fd).st_nlink == 0:
            msg = (
                f"arena {self.name} was unlinked from {SHM_DIR} while in use (systemd RemoveIPC? rm?): "
                "this process no longer shares a cache with new workers; restart the service "
                "(and set RemoveIPC=no or run as a system user)"
            )
            log.critical(msg)
            raise ArenaUnlinked(msg)

    def _forked(self) -> None:
        self._h.forked()

    # --- cache ---------------------------------------------------------------
    # With an injected clock these Python methods pass its "now"; without one
    # __init__ replaced them by the C methods (same signatures).

    def get(self, key: bytes) -> bytes | None:
        """The value if still valid (deps, flush, TTL); counts a hit or miss."""
        return self._h.get(key, self._now())

    def get_with_checksum(self, key: bytes) -> tuple[bytes, int] | None:
        """Like get(), with the stored 64-bit value hash (usable as an ETag)."""
        return self._h.get_with_checksum(key, self._now())

    def peek(self, key: bytes) -> bytes | None:
        """As get(), counting nothing: a second look by a request whose miss is already counted."""
        return self._h.peek(key, self._now())

    def get_stale(self, key: bytes) -> bytes | None:
        """A value whose only fault is an expired TTL (stale-while-revalidate)."""
        return self._h.get_stale(key, self._now())

    def put(self, key: bytes, value: bytes, deps: Sequence[str], fill_seq: int, ttl: float) -> bool:
        """Store unless a dep was invalidated after fill_seq (then False, nothing stored)."""
        return self._h.put(key, value, deps, fill_seq, ttl, self._now())

    def current_seq(self) -> int:
        return self._h.current_seq()

    def invalidate(self, tags: Iterable[str]) -> int:
        """Raise the global sequence once; every tag's last = max(last, seq). Returns seq."""
        return self._h.invalidate(tags)

    def flush(self) -> int:
        """Invalidate everything: valid_from = ++seq. Returns seq."""
        return self._h.flush()

    def _now(self) -> int:
        return self._clock() if self._clock is not None else time.monotonic_ns()

    # --- stats ---------------------------------------------------------------

    def register_process(self) -> int:
        """Claim this process's stats slot (reclaiming a dead owner's); -1 if the table is full."""
        slot = self._h.register()
        if slot < 0:
            log.warning("arena %s: no free stats slot for pid %d; its counters are not shared", self.name, os.getpid())
        return slot

    def incr(self, counter: Counter, n: int = 1) -> None:
        self._h.incr(counter, n)

    def observe(self, seconds: float) -> None:
        """Add one latency observation to this process's histogram."""
        self._h.observe(seconds)

    def reap(self, pid: int) -> bool:
        """Master, after a worker exited: free its stats slot (counters stay in the totals)
        and release its flights. True if anything was reaped."""
        return self._h.reap(pid)

    def release_flights_of(self, pid: int) -> int:
        """Release the flights led by a dead pid (followers see GONE and retry)."""
        return self._h.release_flights_of(pid)

    def stats(self) -> dict[str, Any]:
        """Per-process and summed counters, histogram and arena figures; lock-free for counters."""
        info = self._h.info()
        names = [c.name.lower() for c in Counter]
        nc, vh, vs = len(names), _native.V_HIST, _native.V_HIST_SUM
        totals = [0] * _native.N_VALUES
        live = [0] * _native.N_VALUES
        procs = []
        for slot, owner, start, claimed_ns, values, base in self._h.stats_slots():
            for i, v in enumerate(values):
                totals[i] += v
            if owner:
                share = [max(0, v - b) for v, b in zip(values, base, strict=True)]
                for i, v in enumerate(share):
                    live[i] += v
                procs.append({"pid": owner >> 32, "slot": slot, "start_ticks": start,
                              "counters": dict(zip(names, share[:nc], strict=True)),
                              "latency": _hist(share, vh, vs)})
        shards = self._h.shard_info()
        now = self._now()
        entries = sum(s[0] for s in shards)
        used = sum(s[1] for s in shards)
        per_class = [sum(s[5][c] for s in shards) for c in range(len(CLASS_SIZES))]
        oldest = min((s[6] for s in shards), default=2**64 - 1)
        capacity = self.shards * self._pages * PAGE_SIZE
        archived = [t - x for t, x in zip(totals, live, strict=True)]
        return {
            "name": self.name,
            "linked": self.linked,
            "size": info["size"],
            "max_entry": info["max_entry"],
            "shards": info["shards"],
            "pages_per_shard": info["pages"],
            "capacity_bytes": capacity,
            "used_bytes": used,
            "fill_ratio": used / capacity if capacity else 0.0,
            "entries": entries,
            "blocks_per_class": {size: n for size, n in zip(CLASS_SIZES, per_class, strict=True) if n},
            "global_seq": info["global_seq"],
            "valid_from": info["valid_from"],
            "oldest_entry_age_seconds": max(0, now - oldest) / 1e9 if entries else 0.0,
            "lock_wipes": info["lock_wipes"],
            "checksum_failures": info["checksum_failures"],
            "corruption_wipes": info["corruption_wipes"],
            "processes": procs,
            "archived": dict(zip(names, archived[:nc], strict=True)),
            "totals": dict(zip(names, totals[:nc], strict=True)),
            "latency": _hist(totals, vh, vs),
        }

    def check(self) -> list[str]:
        """fsck of every invariant in layout.py; [] means clean. Safe on a live arena: each
        shard is checked on a snapshot copied under its lock (one memcpy), and a shard
        found inconsistent is wiped (reported as "I0 shard N was wiped")."""
        problems: list[str] = []
        if not self.linked:
            problems.append(f"I0 segment {self.name} is unlinked from {SHM_DIR} (st_nlink == 0)")
            log.critical("arena %s: %s", self.name, problems[-1])
        problems += self._h.check()
        return problems

    def shard_versions(self) -> list[int]:
        """Each shard's seqlock version, read without its lock: even while no lock holder
        is editing the shard (layout.py, "Optimistic reads")."""
        return self._h.shard_versions()

    # --- flights (cross-process request coalescing) ---------------------------

    def flight_begin(self, key: bytes, lease_seconds: float) -> tuple[FlightRole, int, int]:
        """LEAD (execute, then flight_end), FOLLOW (wait, poll) or NONE (table full: execute)."""
        role, slot, gen = self._h.flight_begin(key, lease_seconds, self._now())
        return FlightRole(role), slot, gen

    def flight_poll(self, slot: int, key: bytes, generation: int) -> tuple[FlightState, str]:
        """(state, leader's error message if DONE_ERROR else "")."""
        state, msg = self._h.flight_poll(slot, key, generation, self._now())
        return FlightState(state), msg

    def flight_takeover(self, slot: int, key: bytes, generation: int, lease_seconds: float) -> int | None:
        """Become the leader of an ABANDONED flight: the flight's NEW generation (a CAS
        that bumps it, so the old leader's late flight_end fails), or None if another
        process took it over first or its leader turned out alive."""
        return self._h.flight_takeover(slot, key, generation, lease_seconds, self._now())

    def flight_end(self, slot: int, generation: int, ok: bool, error: str = "") -> bool:
        """Leader only: publish DONE_OK / DONE_ERROR(error). False if (slot, generation)
        is no longer this process's flight (taken over, released or reused)."""
        return self._h.flight_end(slot, generation, ok, error)

    def flight_join(self, slot: int, generation: int) -> bool:
        return self._h.flight_join(slot, generation)

    def flight_leave(self, slot: int, generation: int) -> bool:
        return self._h.flight_leave(slot, generation)


def _hist(values: Sequence[int], vh: int, vs: int) -> dict[str, Any]:
    counts = list(values[vh : vh + len(HIST_BOUNDS) + 1])
    return {
        "bounds_seconds": list(HIST_BOUNDS),  # the last bucket is +Inf
        "counts": counts,
        "count": sum(counts),
        "sum_seconds": values[vs] / 1e9,
    }
