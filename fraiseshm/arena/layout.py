"""The arena's shared-memory layout: one POSIX segment, one writer discipline.

Everything below lives in ONE segment (``/dev/shm/<name>``) mapped by the
gunicorn master and every worker. The C extension (``native/_native.c``) is
the only code that reads or writes it; this docstring is its specification
and ``Arena.check()`` tests each numbered invariant on a live arena.

Trust: no byte of the segment is trusted (another process's bug, a stray
write, a co-tenant of /dev/shm). The geometry is validated once at attach and
kept in process memory; every ref, length, class and link is bounds-checked
before use; every walk is bounded; an inconsistency found under a shard lock
wipes that shard (counted, logged) instead of being acted on (I12, I13).

Byte diagram (all integers little-endian, offsets in bytes), layout version 3
-----------------------------------------------------------------------------
::

    +0        header, 4096 B
              +0   u64 magic "FISESHM1"        written LAST by create
              +8   u32 layout version (3)      attach refuses another one
              +12  u32 header size (4096)
              +16  u64 segment size            attach refuses a mismatch
              +24  u64 max_entry               largest value accepted, bytes
              +32  u32 shards   +36 u32 tag_slots   +40 u32 flight_slots
              +44  u32 stats_slots   +48 u32 pages per shard
              +52  u32 index buckets per shard (power of two)
              +56  u64 off_tags  +64 off_flights  +72 off_stats
              +80  u64 off_shards  +88 u64 shard_stride  +96 u64 created_ns
              +104 u64 hash seed        random at create; every key, tag and
                                        flight hash is xxh64(bytes, seed ^ purpose)
              +128 u64 global_seq  (copy A)  atomic ++ per invalidate / flush
              +136 u64 valid_from  (copy A)  atomic max, set by flush
              +144 u64 lock_wipes       shards wiped after EOWNERDEAD
              +152 u32 nonce counter    registration nonces
              +160 u64 checksum_failures
              +168 u64 corruption_wipes shards wiped after an inconsistency
              +176 u64 global_seq  (copy B)  readers take max(A, B)
              +184 u64 valid_from  (copy B)
    off_tags  tag table: tag_slots x 16 B = two u64 copies of "last invalidated
              at seq"; readers take the larger, writers raise both (atomic max)
              slot = xxh64(tag utf-8, seed ^ "tags") & (tag_slots - 1)
    off_flights  flight table: flight_slots x 256 B
              +0  u64 ctl       generation << 32 | owner pid (24 bits) << 8 | state
                                (0 EMPTY, 1 RUNNING, 2 DONE_OK, 3 DONE_ERROR,
                                 4 CLAIMING = the owner is writing the slot)
              +8  u64 key hash  (xxh64, seed ^ "flight")
              +16 u64 owner     pid << 32 | registration nonce of the leader
              +24 u64 deadline  (CLOCK_MONOTONIC ns >> 20, clamped to 40 bits) << 24
                                | low 24 bits of the generation it belongs to
              +32 u32 waiters   +36 u32 error length   +40 216 B error (UTF-8)
    off_stats stats slots: stats_slots x 1088 B
              +0  u64 owner     pid << 32 | nonce; 0 = free
              +8  u64 start     owner's start time (/proc/pid/stat field 22)
              +16 u64 claimed_ns
              +24 u64 start_owner  the owner word "start" was written for (after it)
              +32 32 B pad
              +64 u64 v[64]     counters 0..31 (Counter), histogram 32..48, sum ns 49
              +576 u64 base[64] v at claim time: the current owner's share is v - base
    off_shards  shards x shard_stride, each:
              +0    shard header, 4096 B:
                    +0    robust process-shared pthread mutex (40 B)
                    +40   u64 version  seqlock: odd while a lock holder may be editing the
                          shard (see "Optimistic reads"); in the mutex's cache line, so a
                          reader's start (type word, lock word, version) reads one line
                    +64   u64 entries  +72 u64 used bytes  +80 u64 wipes
                    +88   u32 free page list head  +92 u32 free pages  +96 u32 page CLOCK hand
                    +104  20 size classes x 32 B {free list head, page list head, pages, live,
                          CLOCK hand page, hand block, eviction ticks}
              +4096 u32 buckets[nb]         block ref of the first entry, 0 = empty
              then  page descriptors u64[pages] {u8 class (255 = free), u8 ref (page
                    CLOCK bit, set lock-free by reads), u16 pad, u32 next}
              then  (4096-aligned) pages x 64 KiB, each carved into blocks of one class
              then  hit map: pages x 128 B (4096-aligned), one CLOCK reference bit per
                    64 B unit of the pages; block ref r owns bit (r - 1) / 4 (every block
                    starts in its own unit: blocks are >= 64 B)

Blocks (class sizes 64 B .. 64 KiB, see CLASS_SIZES) start with a 72 B header::

    +0 u8 state (0 FREE, 1 LIVE head, 2 CHUNK, 3 WRITING)  +1 u8 unused, 0 (the CLOCK
    bit moved to the hit map in layout 3: a block's bytes may belong to another class
    by the time a lock-free reader would write them; the hit map's never do)
    +2 u16 ndeps  +4 u32 next  +8 u32 aux  +12 u32 key_len  +16 u32 value_len
    +20 u32 gen (++ at every allocation of the block)
    +24 u64 key hash  +32 u64 fill_seq  +40 u64 expiry ns  +48 u64 created ns
    +56 u64 value hash (the ETag)  +64 u64 header check
    +72 u32 dep tag slots[ndeps], key bytes, value bytes

``next`` chains LIVE heads of one index bucket, FREE blocks of one class
(doubly linked through ``aux``), and the CHUNKs of one entry. A block ref is
(offset in the shard's pages / 16) + 1. An entry larger than 64 KiB is a head
in the 64 KiB class whose ``aux`` starts a chain of 64 KiB CHUNK blocks
(16 B header: state, next, aux = head ref, key_len = the head's gen).

The header check is xxh64 of (key hash, fill_seq, expiry, created, value
hash, lengths, ndeps, deps, key), mixed with the block's own ref, its gen and
its first chunk ref: an entry copied, re-pointed, re-linked or freed and
pointed to again does not verify.

Validity: an entry is served by ``get`` only if its header check and value
hash verify, every dep slot's ``last <= fill_seq``, ``fill_seq >=
valid_from`` and ``now < expiry``. ``get_stale`` drops only the last test.

Invariants (``check()`` reports each broken one as "I<n> ...")
--------------------------------------------------------------
I1. The header's magic and version never change after create.
I2. ``tag.last <= global_seq`` for every tag copy, and ``valid_from <=
    global_seq`` (invalidate raises the sequence *before* any tag). A copy
    found ahead is a bad byte: put (on its stale path) and check() lower it
    to the sequence, then raise it to the sequence read after (never below
    an invalidation that raced).
I3. In every shard each page is on exactly one list: the free page list
    (class 255) or the page list of its class; list lengths equal the counts.
I4. Every block of a class page is FREE, LIVE or CHUNK (never WRITING while
    the shard lock is free); a class's free list is exactly its FREE blocks,
    with consistent back links.
I5. Every LIVE head is reachable from exactly the bucket of its key hash in
    the shard of its key hash; every index chain holds LIVE heads only and
    at most CHAIN_MAX (32) of them: put evicts the oldest of a full chain,
    so a longer chain (or a cycle) is corruption.
I6. Every LIVE entry's lengths fit its block and the arena's limits, its
    header check and value hash verify, its dep slots are in range, and its
    CHUNK chain has exactly the chunks its length needs, each naming its head
    (ref and gen).
I7. The shard's entries, used bytes and per-class live counts equal a recount.
I8. Flight states are valid; a RUNNING flight's owner word and deadline were
    written for its pid and generation.
I9. A stats slot's owner has a pid; ``base <= v`` for every value.
I10. Every shard lock can be taken (not ENOTRECOVERABLE).
I11. The header's geometry equals what ``plan`` gives for its size and table
    counts; attach refuses the segment otherwise (``ArenaCorrupt``), and the
    process never re-reads it: sizes, counts and offsets come from the copy
    validated at attach.
I12. Anything read from a shard (a ref, a class, a length, a link, a lock
    word) is checked before it is used; a failed check under the lock wipes
    the shard: ``corruption_wipes`` +1 (header and per process), the reason
    goes to the Python log, and the call answers a miss.
I13. A flight is (slot, generation): claim and takeover bump the generation;
    end, takeover and release are each ONE compare-and-swap of ``ctl`` from
    the exact value they judged, so none of them can act on a newer flight.
I14. A shard's version is even whenever its lock is free, and only grows:
    taking the lock makes it odd, releasing it makes it even. A version
    found odd by a locker that got the lock normally (no EOWNERDEAD) is a
    bad byte; the locker's own odd/even step repairs it and check() reports
    it. (Lock-free readers never change it.)

Optimistic reads (seqlock; get, get_with_checksum, get_stale)
-------------------------------------------------------------
Gets take no lock and write no shared cache line on a hit to an entry
already marked. Writer side (every holder of a shard lock, so no edit can
forget it): right after the lock is taken ``version = (version + 1) | 1``
(odd, and above any odd value a dead holder left), then a release fence;
right before the unlock ``version = (version | 1) + 1`` with a release store.
Reader side, at most 4 attempts (``_native.OPT_TRIES``):

1. Start on a quiet shard: the mutex type word is intact, ``v0`` (acquire
   load) is even and the lock word is 0; otherwise spin (``pause``, 256 at
   most) and retry.
2. Walk the bucket and copy the entry out, as if every byte could change
   under us (a block freed, reused, its page handed to another class, the
   shard wiped): each header is loaded once into a private snapshot (relaxed
   atomic loads) and validated there, refs go through the same bounds and
   class checks as under the lock, lengths are checked against the block
   before any memcmp/memcpy, walks are bounded by CHAIN_MAX and the chunk
   count. Nothing read is acted on before step 3.
3. Acquire fence, then re-load the version: not ``v0`` means a lock holder
   edited the shard meanwhile: drop the copy and retry.
4. Verify the copy's value hash, exactly as the locked path does.

Anything a check rejects is judged by the same re-check: if the version
moved it was a torn read (retry); if not, the shard really is inconsistent
and the get takes the lock, whose path re-walks and wipes (I12). An
invalidated entry also goes to the lock (freeing it is an edit), as does a
get after 4 attempts, so a writer that keeps the shard busy (or died with
the version odd) cannot starve readers: they queue on the mutex, and
EOWNERDEAD recovery (below) makes the version even again. Why it is safe:
an edit's stores follow the odd store and a release fence; a reader that saw
any of them has its version re-load ordered after them by its acquire fence,
so it sees an odd or larger version (Boehm 2012, "Can seqlocks get along with
programming language memory models?"). Bulk value bytes are copied with
memcpy between the two version loads, the usual practice for seqlocks; every
decision is taken on the snapshot and only after the re-check.

CLOCK reference bits are set only by gets, without the lock, in two places
whose addresses never hold anything else: the entry's bit in the hit map and
its page's ``ref`` byte. Each is tested first and written only when clear
(a relaxed ``fetch_or`` / store), so the steady state of a hot entry writes
nothing shared; the CLOCK hand clears them under the lock. A bit set on a
block that was just freed and reused only gives the new entry one unearned
second chance; allocation clears the block's bit, page assignment its page's.

Lock order
----------
One kind of lock: the shard mutex (gets normally take none: "Optimistic
reads"). A thread holds at most ONE at a time, so
there is no order to get wrong. check() and stats() take them one after the
other; check() holds each only for one memcpy of the shard (a snapshot) and
checks the snapshot unlocked. Tags, sequences, flights and stats slots are
lock-free (atomic loads, stores, compare-and-swap, atomic max). A C function
whose name ends in ``_locked`` expects its caller to hold the shard lock
(nginx's convention). The GIL is held throughout a C call, so only one thread
per process can be inside the arena and no Python code (signal handlers
included) runs while a shard lock is held. A contended lock is waited for in
1 s slices; between them its owner is judged: a lock word naming no live
thread (or ourselves), or a live thread of no registered process for 3 s, or
a mutex type word that changed, is a corrupt lock: the mutex is re-created
and the shard wiped.

Crash recovery (a process SIGKILLed at any instruction)
-------------------------------------------------------
- Shard lock held (get, put, eviction, page steal, check's memcpy): the mutex
  is robust; the next locker gets EOWNERDEAD, *wipes* the shard (all pages
  free, index empty: an empty cache is always correct), marks the mutex
  consistent, counts ``lock_wipes`` and logs an error. No repair is attempted.
  The dead holder left the version odd: lock-free readers spin briefly, then
  queue on the mutex; the recovering locker raises the version to the next
  odd value before it wipes and makes it even at its unlock, so readers go
  back to the lock-free path at once. A reader that dies is harmless: it
  holds nothing and wrote at most a reference bit.
- Half-written entry: its blocks are WRITING and not yet in the index
  (published last, after the block is complete), and the shard is wiped
  anyway. Readers copy out (lock-free with a version re-check, or under the
  lock) and verify the value hash on the copy, so a torn entry is never
  returned even if memory were corrupted.
- Tag bump: the sequence is raised first, then each tag (both copies) by an
  atomic max. A death midway leaves some tags bumped: those entries miss,
  the others stay valid exactly as if the invalidation had not happened. The
  dying request never answered, and PostgreSQL's change notifications
  invalidate the same tags again.
- Flight: ownership is the ``ctl`` word. A leader that dies in CLAIMING is
  judged by the pid in ``ctl`` (its words are not written yet); otherwise by
  its owner word: pid + registration nonce looked up in the stats slots,
  then /proc/pid start time (pid reuse cannot fool it; a zombie is dead).
  Liveness is conservative: only "no such process" is dead; EMFILE or any
  other failure to read /proc counts as alive (a live leader is never taken
  over; a dead one at worst waits for its deadline). Followers see
  ABANDONED and one takes over by CAS (new generation: GONE for the rest,
  who re-join it); the master's ``reap(pid)`` also releases them, by a CAS
  on the exact ``ctl`` it judged, so a flight taken over meanwhile survives.
- Stats slot: claimed by CAS on the owner word; the claimer then writes its
  start time and ``start_owner``: until then nobody judges the slot by the
  previous owner's start time. Only the owner writes its values and they
  never decrease; a dead owner's slot is handed over with ``base = v`` and
  never zeroed, so summed totals are monotonic without any fold to get wrong.
"""

from __future__ import annotations

import enum

from fraiseshm import _native

LAYOUT_VERSION: int = _native.VERSION
CLASS_SIZES: tuple[int, ...] = _native.CLASS_SIZES
PAGE_SIZE: int = _native.PAGE
MAX_KEY: int = _native.MAX_KEY
#: histogram bucket upper bounds in seconds (the last bucket is +Inf)
HIST_BOUNDS: tuple[float, ...] = tuple(ns / 1e9 for ns in _native.HIST_BOUNDS_NS)


class Counter(enum.IntEnum):
    """Per-process counters; the numbers are slot offsets mirrored in C."""

    REQUESTS = 0
    HITS = 1  # counted by get() in C
    MISSES = 2  # counted by get() in C
    BYPASSES = 3
    PUTS = 4  # counted by put() in C
    PUT_REJECTED_STALE = 5  # counted by put() in C
    EVICTIONS = 6  # counted in C
    INVALIDATIONS = 7  # counted by invalidate() in C
    TAGS_BUMPED = 8  # counted by invalidate() in C
    LOCK_WIPES = 9  # counted in C
    ENTRY_TOO_LARGE = 10  # counted by put() in C
    COALESCE_LED = 11  # counted by flight_begin() in C
    COALESCE_FOLLOWED = 12  # counted by flight_begin() in C
    COALESCE_TAKEOVERS = 13  # counted by flight_begin() / flight_takeover() in C
    COALESCE_TIMEOUTS = 14
    DB_EXECUTIONS = 15
    MUTATIONS = 16
    CASCADE_FAILURES = 17
    ERRORS = 18
    STALE_HITS = 19  # counted by get_stale() in C
    CHECKSUM_FAILURES = 20  # counted in C
    FLUSHES = 21  # counted by flush() in C
    BYTES_READ = 22  # counted by get() in C
    BYTES_WRITTEN = 23  # counted by put() in C
    CORRUPTION_WIPES = 24  # shards wiped after an inconsistency was found, counted in C


assert len(Counter) == _native.N_COUNTERS


class FlightRole(enum.IntEnum):
    NONE = 0  # the flight table is full: just execute
    LEAD = 1  # execute, put, then flight_end()
    FOLLOW = 2  # wait on the doorbell, flight_poll() until done


class FlightState(enum.IntEnum):
    RUNNING = 1
    DONE_OK = 2  # the result is in the arena (or was not cacheable): get() again
    DONE_ERROR = 3  # the leader failed; the message comes with it
    ABANDONED = 5  # lease expired or leader dead: flight_takeover()
    GONE = 6  # the slot was reused or released: begin again
