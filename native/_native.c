/* fraiseshm._native: the few things Python cannot do on a shared mapping.
 *
 * Robust process-shared mutexes (one per shard), 64-bit atomics and CAS on
 * the mapped buffer, the key/tag hash, and every structural edit of the
 * arena as ONE call made under one shard lock. The layout, its invariants,
 * the lock order and the crash-recovery story are documented in
 * fraiseshm/arena/layout.py; the offsets here are asserted against it by
 * tests/unit/test_arena_layout.py.
 *
 * Trust model: any byte of the segment may be wrong (a stray write, a bug in
 * another process, a hostile co-tenant of /dev/shm). So:
 * - the geometry is validated once at attach and kept in the Handle; no
 *   size, count or offset is ever re-read from shared memory for control flow;
 * - every block ref, class, length and link read from shared memory is
 *   bounds-checked before use, and every walk is bounded (cycle-proof);
 * - an inconsistency found under a shard lock wipes that shard (an empty
 *   cache is always correct), counts it and tells Python, never acts on it;
 * - an entry is served only if its header check (which covers its position,
 *   block generation and chunk chain) and its value hash verify.
 *
 * Conventions: internal functions return FS_* status codes (LMDB style);
 * only the Python-facing wrappers turn a code into an exception, through the
 * error classes registered by fraiseshm.arena (fs_raise). A function named
 * *_locked expects its caller to hold the shard lock (nginx convention).
 * No Python object is created while a shard lock is held, except the bytes
 * object a get copies into.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/*************************************************************************
 * Layout constants (mirrored in fraiseshm/arena/layout.py)              *
 *************************************************************************/

#define FS_MAGIC 0x314d485345534946ULL /* "FISESHM1" in memory order */
#define FS_VERSION 3u
#define HDR_SIZE 4096u
#define PAGE 65536u
#define BLK_HDR 72u
#define CHUNK_HDR 16u
#define NCLASS 20
#define PFREE 0xFFu
#define N_VALUES 64 /* per stats slot: counters 0..31, histogram 32..48, sum 49 */
#define N_COUNTERS 25
#define N_BUCKETS 17
#define V_HIST 32
#define V_HIST_SUM 49
#define ERR_MAX 216
#define FLIGHT_PROBE 8
#define EVICT_BATCH 8
#define STEAL_EVERY 16
#define MAX_KEY 1024
#define CHAIN_MAX 32          /* longest index chain; put trims, readers wipe beyond */
#define MAX_PAGES (1u << 20)  /* per shard, so every block ref fits 32 bits */
#define PID_MAX_BITS 24       /* Linux pid_max <= 2^22 */
#define LOCK_WAIT_NS 1000000000ULL /* re-judge a lock owner after this long */
#define CLAIM_SPINS 200       /* yields spent waiting for a CLAIMING flight slot to settle */
#define OPT_TRIES 4           /* optimistic read attempts before a get takes the shard lock */
#define OPT_SPINS 256         /* pause instructions an attempt waits for an odd version to turn even */

static const uint32_t CLASS_SIZE[NCLASS] = {
    64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048,
    3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 65536};
static const uint64_t HIST_BOUND_NS[N_BUCKETS - 1] = {
    100000ULL, 250000ULL, 500000ULL, 1000000ULL, 2500000ULL, 5000000ULL,
    10000000ULL, 25000000ULL, 50000000ULL, 100000000ULL, 250000000ULL,
    500000000ULL, 1000000000ULL, 2500000000ULL, 5000000000ULL, 10000000000ULL};

enum { FS_OK = 0, FS_STALE, FS_TOO_LARGE, FS_FULL, FS_LOCK_BROKEN, FS_BAD_MAGIC,
       FS_BAD_VERSION, FS_TOO_SMALL, FS_NOMEM, FS_SYS, FS_CORRUPT, FS_BAD_GEOMETRY };
enum { B_FREE = 0, B_LIVE = 1, B_CHUNK = 2, B_WRITING = 3 };
enum { F_EMPTY = 0, F_RUNNING = 1, F_DONE_OK = 2, F_DONE_ERROR = 3, F_CLAIMING = 4,
       F_ABANDONED = 5, F_GONE = 6 };
enum { ROLE_NONE = 0, ROLE_LEAD = 1, ROLE_FOLLOW = 2 };
enum { C_HITS = 1, C_MISSES = 2, C_PUTS = 4, C_PUT_REJECTED_STALE = 5, C_EVICTIONS = 6,
       C_INVALIDATIONS = 7, C_TAGS_BUMPED = 8, C_LOCK_WIPES = 9, C_ENTRY_TOO_LARGE = 10,
       C_COALESCE_LED = 11, C_COALESCE_FOLLOWED = 12, C_COALESCE_TAKEOVERS = 13,
       C_STALE_HITS = 19, C_CHECKSUM_FAILURES = 20, C_FLUSHES = 21, C_BYTES_READ = 22,
       C_BYTES_WRITTEN = 23, C_CORRUPTION_WIPES = 24 };
enum { DBG_NONE = 0, DBG_LOCK_HELD = 1, DBG_PUT_WRITE = 2, DBG_EVICT = 3, DBG_TAG_BUMP = 4,
       DBG_FLIGHT_CLAIM = 5, DBG_FLIGHT_END = 6, DBG_REAP = 7, DBG_SLOT_CLAIM = 8, DBG_OPT_READ = 9 };

typedef struct {              /* offset: the arena header, 4096 B at +0 */
    uint64_t magic;           /* +0   FS_MAGIC, written last at create */
    uint32_t version;         /* +8   FS_VERSION */
    uint32_t header_size;     /* +12  HDR_SIZE */
    uint64_t size;            /* +16  segment bytes */
    uint64_t max_entry;       /* +24  largest value accepted, bytes */
    uint32_t shards;          /* +32 */
    uint32_t tag_slots;       /* +36  power of two */
    uint32_t flight_slots;    /* +40 */
    uint32_t stats_slots;     /* +44 */
    uint32_t pages;           /* +48  pages per shard */
    uint32_t buckets;         /* +52  index buckets per shard, power of two */
    uint64_t off_tags;        /* +56 */
    uint64_t off_flights;     /* +64 */
    uint64_t off_stats;       /* +72 */
    uint64_t off_shards;      /* +80 */
    uint64_t shard_stride;    /* +88 */
    uint64_t created_ns;      /* +96  CLOCK_MONOTONIC at create */
    uint64_t seed;            /* +104 random at create: every key and tag hash uses it */
    uint8_t pad0[16];         /* +112 */
    uint64_t global_seq;      /* +128 atomic: ++ per invalidate/flush (copy A) */
    uint64_t valid_from;      /* +136 atomic max: entries filled before are invalid (copy A) */
    uint64_t lock_wipes;      /* +144 atomic: shards wiped after EOWNERDEAD */
    uint32_t nonce_ctr;       /* +152 atomic: registration nonces */
    uint32_t pad1;            /* +156 */
    uint64_t checksum_failures; /* +160 atomic */
    uint64_t corrupt_wipes;   /* +168 atomic: shards wiped after an inconsistency */
    uint64_t global_seq_b;    /* +176 copy B: readers take max(A, B) */
    uint64_t valid_from_b;    /* +184 copy B */
} hdr_t;

typedef struct {              /* one per size class, inside shard_t */
    uint32_t free_head;       /* block ref of the doubly linked free list */
    uint32_t page_head;       /* page index + 1 of this class's page list */
    uint32_t pages;           /* pages assigned */
    uint32_t live;            /* LIVE heads + CHUNKs in this class */
    uint32_t hand_page;       /* CLOCK hand: page index + 1 */
    uint32_t hand_blk;        /* CLOCK hand: block index in that page */
    uint32_t ticks;           /* evictions, drives page stealing */
    uint32_t pad;
} class_t;

typedef struct {              /* shard header, 4096 B at off_shards + i*shard_stride */
    pthread_mutex_t mu;       /* +0 robust, process-shared (40 B on glibc x86-64) */
    uint64_t version;         /* +40 seqlock: odd while the lock holder may be editing the shard,
                               * +1 at lock and at unlock; in the mutex's line, so a reader's
                               * start (type word, lock word, version) reads one line */
    uint8_t mu_pad[64 - sizeof(pthread_mutex_t) - 8];
    uint64_t entries;         /* +64 LIVE heads */
    uint64_t used;            /* +72 bytes of blocks in use */
    uint64_t wipes;           /* +80 */
    uint32_t free_page_head;  /* +88 page index + 1 */
    uint32_t free_pages;      /* +92 */
    uint32_t page_hand;       /* +96 page CLOCK hand (index) */
    uint32_t pad;             /* +100 */
    class_t cls[NCLASS];      /* +104 */
} shard_t;

typedef struct { uint8_t cls, ref; uint16_t pad; uint32_t next; } pdesc_t;

typedef struct {              /* block header, BLK_HDR bytes */
    uint8_t state;            /* B_* */
    uint8_t ref;              /* unused since layout 3 (the CLOCK bit is in the hit map); 0 */
    uint16_t ndeps;           /* u32 tag slot indexes following the header */
    uint32_t next;            /* LIVE: index chain; FREE: free list; CHUNK: next chunk */
    uint32_t aux;             /* LIVE: first chunk; FREE: free prev; CHUNK: head */
    uint32_t key_len;         /* CHUNK: the head's generation */
    uint32_t value_len;
    uint32_t gen;             /* +20 ++ at every allocation of this block */
    uint64_t key_hash;
    uint64_t fill_seq;
    uint64_t expiry;          /* CLOCK_MONOTONIC ns; UINT64_MAX = none */
    uint64_t created;
    uint64_t vhash;           /* hash of the value bytes: the ETag */
    uint64_t check;           /* hash of the fields above + deps + key, mixed with ref, gen, aux */
} blk_t;

typedef struct {              /* flight slot, 256 B */
    uint64_t ctl;             /* generation << 32 | owner pid << 8 | F_* state */
    uint64_t key_hash;
    uint64_t owner;           /* owner pid << 32 | registration nonce */
    uint64_t deadline;        /* (ns >> 20) << 24 | low 24 bits of the generation */
    uint32_t waiters;
    uint32_t err_len;
    char err[ERR_MAX];
} fslot_t;

typedef struct {              /* stats slot, 1088 B */
    uint64_t owner;           /* pid << 32 | nonce; 0 = free */
    uint64_t start;           /* owner's start time, clock ticks since boot */
    uint64_t claimed_ns;
    uint64_t start_owner;     /* the owner word "start" belongs to (written after it) */
    uint64_t pad[4];
    uint64_t v[N_VALUES];     /* written by the owner only, never decrease */
    uint64_t base[N_VALUES];  /* v at claim time: this owner's share is v - base */
} sslot_t;

_Static_assert(offsetof(hdr_t, seed) == 104, "header layout");
_Static_assert(offsetof(hdr_t, global_seq) == 128, "header layout");
_Static_assert(offsetof(hdr_t, checksum_failures) == 160, "header layout");
_Static_assert(offsetof(hdr_t, valid_from_b) == 184, "header layout");
_Static_assert(sizeof(blk_t) == BLK_HDR, "block header");
_Static_assert(offsetof(blk_t, gen) == 20, "block header");
_Static_assert(sizeof(fslot_t) == 256, "flight slot");
_Static_assert(sizeof(sslot_t) == 1088, "stats slot");
_Static_assert(sizeof(shard_t) <= 4096, "shard header");
_Static_assert(offsetof(shard_t, version) == 40, "shard header");
_Static_assert(sizeof(pthread_mutex_t) <= 40, "mutex");

#define LD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define ST(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define CAS(p, e, d) __atomic_compare_exchange_n((p), &(e), (d), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
/* One load of a word a lock holder may be writing concurrently (optimistic reads). */
#define RLX(p) __atomic_load_n((p), __ATOMIC_RELAXED)

/*************************************************************************
 * Hash (XXH64 algorithm)                                                *
 *************************************************************************/

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint64_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t xround(uint64_t acc, uint64_t in) { return rotl(acc + in * P2, 31) * P1; }
static inline uint64_t xmerge(uint64_t h, uint64_t v) { return (h ^ xround(0, v)) * P1 + P4; }
static inline uint64_t avalanche(uint64_t h) { h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32; return h; }

static uint64_t fs_hash(const void *data, size_t len, uint64_t seed) {
    const uint8_t *p = data, *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        do {
            v1 = xround(v1, rd64(p)); v2 = xround(v2, rd64(p + 8));
            v3 = xround(v3, rd64(p + 16)); v4 = xround(v4, rd64(p + 24));
            p += 32;
        } while (p + 32 <= end);
        h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
        h = xmerge(xmerge(xmerge(xmerge(h, v1), v2), v3), v4);
    } else {
        h = seed + P5;
    }
    h += len;
    for (; p + 8 <= end; p += 8) h = rotl(h ^ xround(0, rd64(p)), 27) * P1 + P4;
    if (p + 4 <= end) { h = rotl(h ^ (rd32(p) * P1), 23) * P2 + P3; p += 4; }
    for (; p < end; p++) h = rotl(h ^ (*p * P5), 11) * P1;
    return avalanche(h);
}

/* Per-purpose seeds, xored with the arena's random seed: keys chosen by a
 * client cannot be precomputed to collide in one bucket. */
#define SEED_TAG 0x7461677300000000ULL
#define SEED_FLIGHT 0x666c696768740000ULL

/*************************************************************************
 * Handle, geometry (validated once, kept in process memory), addressing *
 *************************************************************************/

typedef struct {              /* copied from the header at attach, after validation */
    uint64_t size, max_entry, seed, off_tags, off_flights, off_stats, off_shards, stride, pages_off;
    uint32_t shards, tag_slots, flight_slots, stats_slots, pages, buckets, nrefs;
} geo_t;

typedef struct {
    PyObject_HEAD
    uint8_t *base;
    hdr_t *hdr;
    geo_t g;
    sslot_t *my;              /* this process's stats slot, NULL until claimed */
    uint64_t me;              /* its owner word, also our flight owner word */
    int claim_failed;
    int last_wiped;           /* shard wiped during this call, -1 if none */
    const char *wipe_reason;  /* why, for the Python log */
    const char *why;          /* the inconsistency found by the failing check */
    int odd_at_lock;          /* the last shard_lock found the version odd without EOWNERDEAD */
    uint64_t dummy[N_VALUES]; /* counts when no stats slot could be claimed */
} Handle;

static PyObject *error_map = NULL; /* {status code: exception class}, from Python */
static PyObject *wipe_hook = NULL; /* callable(shard, reason), called after the lock is released */
static int dbg_point = DBG_NONE, dbg_fd = -1, dbg_resume = -1;
static int mu_kind = -1;           /* glibc's __kind of a robust pshared mutex, from a local one */

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Test hook: stop at a chosen point (inside a critical section, between two
 * steps of a lock-free protocol) and write one byte; then block forever so a
 * test can SIGKILL us there, or, with a resume fd, go on once a byte arrives
 * (a deterministic interleaving, fired once). Costs one predictable branch. */
static void debug_point(int point) {
    if (dbg_point != point) return;
    if (write(dbg_fd, "!", 1) < 0) { /* the test will time out */ }
    if (dbg_resume < 0) for (;;) pause();
    char c;
    if (read(dbg_resume, &c, 1) < 0) { /* resumed by EOF or error alike */ }
    dbg_point = DBG_NONE;
}

/* Tags live twice ([2i], [2i+1]); a reader takes the larger, so one bad
 * byte can never lower a tag and make an invalidated entry valid again. */
static inline uint64_t *tags_of(Handle *h) { return (uint64_t *)(h->base + h->g.off_tags); }
static inline uint64_t max2(uint64_t a, uint64_t b) { return a > b ? a : b; }
static inline uint64_t tag_last(const uint64_t *t, uint32_t i) { return max2(LD(&t[2 * i]), LD(&t[2 * i + 1])); }
static inline uint64_t seq_now(Handle *h) { return max2(LD(&h->hdr->global_seq), LD(&h->hdr->global_seq_b)); }
static inline uint64_t valid_from_now(Handle *h) { return max2(LD(&h->hdr->valid_from), LD(&h->hdr->valid_from_b)); }

static inline fslot_t *flight(Handle *h, uint32_t i) { return (fslot_t *)(h->base + h->g.off_flights) + i; }
static inline sslot_t *sslot(Handle *h, uint32_t i) { return (sslot_t *)(h->base + h->g.off_stats) + i; }
static inline shard_t *shard(Handle *h, uint32_t i) { return (shard_t *)(h->base + h->g.off_shards + (uint64_t)i * h->g.stride); }
static inline uint32_t *buckets(shard_t *s) { return (uint32_t *)((uint8_t *)s + 4096); }
static inline pdesc_t *pdescs(Handle *h, shard_t *s) { return (pdesc_t *)(buckets(s) + h->g.buckets); }
static inline uint8_t *pages_of(Handle *h, shard_t *s) { return (uint8_t *)s + h->g.pages_off; }
/* The hit map (CLOCK reference bits): one bit per 64 B unit of the pages,
 * after them. Every block starts in its own unit (blocks are >= 64 B), so
 * block ref r owns bit (r - 1) / 4. Its address never changes with the
 * blocks, so a reader may set a bit without the lock; a stale or wrong bit
 * is only an undeserved or missed second chance. */
static inline uint8_t *hits_of(Handle *h, shard_t *s) { return pages_of(h, s) + (uint64_t)h->g.pages * PAGE; }
static inline int hit_test(uint8_t *m, uint32_t r) { return (RLX(&m[(r - 1) / 32]) >> ((r - 1) / 4 % 8)) & 1; }
/* PERF: test first, so a hot entry's hits write nothing shared. */
static inline void hit_set(uint8_t *m, uint32_t r) {
    if (!hit_test(m, r)) __atomic_fetch_or(&m[(r - 1) / 32], (uint8_t)(1u << ((r - 1) / 4 % 8)), __ATOMIC_RELAXED);
}
static inline void hit_clear(uint8_t *m, uint32_t r) {
    if (hit_test(m, r)) __atomic_fetch_and(&m[(r - 1) / 32], (uint8_t)~(1u << ((r - 1) / 4 % 8)), __ATOMIC_RELAXED);
}
/* Block refs are (byte offset in the shard's pages / 16) + 1; 0 is null. */
static inline uint32_t ref_of(Handle *h, shard_t *s, blk_t *b) { return (uint32_t)(((uint8_t *)b - pages_of(h, s)) / 16) + 1; }
static inline blk_t *blk_at(Handle *h, shard_t *s, uint32_t page, uint32_t i, int c) {
    return (blk_t *)(pages_of(h, s) + (uint64_t)page * PAGE + (uint64_t)i * CLASS_SIZE[c]);
}
static inline uint32_t *deps_of(blk_t *b) { return (uint32_t *)(b + 1); }
static inline uint8_t *key_of(blk_t *b) { return (uint8_t *)(b + 1) + 4u * b->ndeps; }
static inline uint32_t bpp(int c) { return PAGE / CLASS_SIZE[c]; }

static int class_for(uint64_t n) {
    for (int c = 0; c < NCLASS; c++) if (n <= CLASS_SIZE[c]) return c;
    return -1;
}

/* Record why a structure is inconsistent; the caller wipes the shard. */
static inline int corrupt(Handle *h, const char *why) { h->why = why; return FS_CORRUPT; }

/* A block ref read from shared memory, checked against the geometry and the
 * class of its page: the block (and *cls), or NULL if it cannot be one. */
static inline blk_t *blk_ref(Handle *h, shard_t *s, uint32_t ref, int *cls) {
    if (ref == 0 || ref > h->g.nrefs) return NULL;
    uint64_t off = (uint64_t)(ref - 1) * 16;
    uint32_t in = (uint32_t)(off % PAGE);
    int c = pdescs(h, s)[off / PAGE].cls;
    if (c >= NCLASS || in % CLASS_SIZE[c] || in / CLASS_SIZE[c] >= bpp(c)) return NULL;
    *cls = c;
    return (blk_t *)(pages_of(h, s) + off);
}

/* The fixed part of a LIVE head fits its block and the arena's limits:
 * afterwards deps, key and the first value bytes are inside the block. */
static inline int head_fits(Handle *h, blk_t *b, int c) {
    uint64_t fixed = BLK_HDR + 4ull * b->ndeps + b->key_len;
    if (b->key_len == 0 || b->key_len > MAX_KEY || b->value_len > h->g.max_entry || fixed > CLASS_SIZE[c]) return 0;
    if (!b->aux) return fixed + b->value_len <= CLASS_SIZE[c];
    return c == NCLASS - 1 && fixed + b->value_len > PAGE; /* chunked only when it must be */
}

/* First value bytes in the head, and the number of chunks the value needs. */
static inline uint32_t head_first(blk_t *b) {
    uint32_t room = PAGE - BLK_HDR - 4u * b->ndeps - b->key_len;
    return b->aux ? room : b->value_len;
}
static inline uint32_t chunks_needed(blk_t *b) {
    uint32_t first = head_first(b);
    return b->aux ? (b->value_len - first + PAGE - CHUNK_HDR - 1) / (PAGE - CHUNK_HDR) : 0;
}

/* Header check: a hash of the entry's fields, deps and key (computed by put
 * outside the lock), mixed with where the block is, its generation and its
 * first chunk (known only under the lock). A block copied, re-pointed or
 * re-linked does not verify. */
static inline uint64_t meta_base(const blk_t *b, const uint8_t *run, size_t runlen) {
    uint64_t m[7] = {b->key_hash, b->fill_seq, b->expiry, b->created, b->vhash,
                     ((uint64_t)b->key_len << 32) | b->value_len, b->ndeps};
    return fs_hash(run, runlen, fs_hash(m, sizeof m, 0));
}
static inline uint64_t meta_mix(uint64_t base, uint32_t ref, uint32_t gen, uint32_t aux) {
    return base ^ avalanche(((uint64_t)gen << 32 | ref) ^ P3) ^ avalanche((uint64_t)aux + P5);
}
static inline uint64_t meta_check(blk_t *b, uint32_t ref) {
    return meta_mix(meta_base(b, (const uint8_t *)deps_of(b), 4u * b->ndeps + b->key_len), ref, b->gen, b->aux);
}

/*************************************************************************
 * Stats slots and process liveness (conservative)                       *
 *************************************************************************/

enum { P_ALIVE = 0, P_GONE, P_UNKNOWN };

/* Reads /proc/pid/stat: *start gets field 22 (clock ticks since boot).
 * Only "no such process" is P_GONE (a zombie too: dead, not yet reaped);
 * any other failure (EMFILE, EACCES, a short read) is P_UNKNOWN, which every
 * caller treats as alive: taking a live process for dead breaks ownership,
 * the converse only delays a takeover until the lease deadline. */
static int proc_stat(long pid, uint64_t *start) {
    char path[64], buf[1024];
    *start = 0;
    if (pid <= 0) return P_GONE;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT || e == ESRCH) /* confirm: without /proc every pid would look gone */
            return (kill((pid_t)pid, 0) != 0 && errno == ESRCH) ? P_GONE : P_UNKNOWN;
        return P_UNKNOWN;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int e = errno;
    close(fd);
    if (n <= 0) return (n < 0 && e == ESRCH) ? P_GONE : P_UNKNOWN;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ') return P_UNKNOWN;
    p += 2;
    if (*p == 'Z' || *p == 'X') return P_GONE;
    for (int field = 3; field < 22; field++) { /* starttime is field 22 */
        p = strchr(p, ' ');
        if (!p) return P_UNKNOWN;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return P_ALIVE;
}

static inline int pid_dead(long pid) { uint64_t st; return proc_stat(pid, &st) == P_GONE; }

/* Is the owner w of stats slot s dead? Its recorded start time counts only
 * once written for this very owner word (start_owner), so a slot being
 * claimed is never judged by its previous owner's start time. */
static int owner_dead(sslot_t *s, uint64_t w) {
    uint64_t so = LD(&s->start_owner), st = LD(&s->start), now;
    if (LD(&s->start_owner) != so) return 0; /* being rewritten: alive */
    int r = proc_stat((long)(w >> 32), &now);
    if (r == P_GONE) return 1;
    if (r == P_UNKNOWN) return 0;
    return so == w && st && now != st; /* pid reused by another process */
}

/* A flight owner word is alive while it owns a stats slot whose process lives. */
static int lease_alive(Handle *h, uint64_t lease) {
    if (!lease) return 0;
    for (uint32_t i = 0; i < h->g.stats_slots; i++) {
        sslot_t *s = sslot(h, i);
        if (LD(&s->owner) == lease) return !owner_dead(s, lease);
    }
    return 0;
}

static int claim_slot(Handle *h) {
    long pid = (long)getpid();
    uint64_t start;
    if (pid >= (1L << PID_MAX_BITS)) return -1; /* flight words hold 24 bits of pid */
    if (proc_stat(pid, &start) != P_ALIVE) start = 0;
    for (uint32_t i = 0; i < h->g.stats_slots; i++) { /* another handle of this process */
        sslot_t *s = sslot(h, i);
        uint64_t w = LD(&s->owner);
        if (w && (long)(w >> 32) == pid && start && LD(&s->start_owner) == w && LD(&s->start) == start) {
            h->my = s; h->me = w;
            return (int)i;
        }
    }
    uint32_t nonce;
    do nonce = __atomic_add_fetch(&h->hdr->nonce_ctr, 1, __ATOMIC_ACQ_REL); while (!nonce);
    uint64_t mine = ((uint64_t)pid << 32) | nonce;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < h->g.stats_slots; i++) {
            sslot_t *s = sslot(h, i);
            uint64_t w = LD(&s->owner);
            if (pass == 0 ? w != 0 : (w == 0 || !owner_dead(s, w))) continue;
            if (!CAS(&s->owner, w, mine)) continue; /* LOCK-FREE: the CAS is the claim */
            debug_point(DBG_SLOT_CLAIM);
            ST(&s->start, start);
            ST(&s->start_owner, mine); /* after start: readers trust start only now */
            ST(&s->claimed_ns, now_ns());
            /* INVARIANT: base <= v; values are never reset, so totals stay monotonic. */
            for (int j = 0; j < N_VALUES; j++) ST(&s->base[j], LD(&s->v[j]));
            h->my = s; h->me = mine;
            return (int)i;
        }
    }
    return -1;
}

static inline uint64_t *value_ptr(Handle *h, int i) {
    if (!h->my && !h->claim_failed && claim_slot(h) < 0) h->claim_failed = 1;
    return h->my ? &h->my->v[i] : &h->dummy[i];
}

/* PERF: single writer, so a relaxed load + store (no lock prefix) suffices;
 * aligned 64-bit stores are never torn for readers. */
static inline void count(Handle *h, int c, uint64_t n) {
    uint64_t *v = value_ptr(h, c);
    __atomic_store_n(v, __atomic_load_n(v, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

/*************************************************************************
 * Shard locks and wipes                                                 *
 *************************************************************************/

#define FUTEX_TID_BITS 0x3fffffff
#define LOCK_FOREIGN_WAITS 3 /* waits on a live thread of no registered process, then corrupt */

/* Zero the hit bits of pages [p, p + n): relaxed stores, readers may be setting bits. */
static void hits_clear_pages(Handle *h, shard_t *s, uint32_t p, uint32_t n) {
    uint64_t *w = (uint64_t *)(hits_of(h, s) + (uint64_t)p * (PAGE / 64 / 8));
    for (uint64_t i = 0; i < (uint64_t)n * (PAGE / 64 / 64); i++) __atomic_store_n(&w[i], 0, __ATOMIC_RELAXED);
}

/* INVARIANT: only the handle's geometry is used; nothing is read from the shard. */
static void shard_wipe_locked(Handle *h, shard_t *s) {
    uint32_t np = h->g.pages;
    pdesc_t *pd = pdescs(h, s);
    memset(buckets(s), 0, (size_t)h->g.buckets * 4);
    for (uint32_t i = 0; i < np; i++) {
        pd[i].cls = PFREE; __atomic_store_n(&pd[i].ref, 0, __ATOMIC_RELAXED); pd[i].pad = 0;
        pd[i].next = (i + 1 < np) ? i + 2 : 0;
    }
    hits_clear_pages(h, s, 0, np);
    s->free_page_head = np ? 1 : 0;
    s->free_pages = np;
    s->entries = 0; s->used = 0; s->page_hand = 0;
    memset(s->cls, 0, sizeof s->cls);
}

/* An inconsistency was found under the lock: wipe instead of acting on it. */
static void wipe_corrupt_locked(Handle *h, uint32_t si, const char *why) {
    shard_t *s = shard(h, si);
    shard_wipe_locked(h, s);
    s->wipes++;
    __atomic_add_fetch(&h->hdr->corrupt_wipes, 1, __ATOMIC_ACQ_REL);
    count(h, C_CORRUPTION_WIPES, 1);
    h->last_wiped = (int)si;
    h->wipe_reason = why ? why : "inconsistent";
}

static void mutex_init_robust(pthread_mutex_t *mu) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    memset(mu, 0, sizeof *mu);
    pthread_mutex_init(mu, &a);
    pthread_mutexattr_destroy(&a);
}

/* Who holds a lock we waited LOCK_WAIT_NS for: 0 nobody alive (or us: we
 * never hold a lock between calls), 1 a thread of a registered process,
 * 2 a live thread of some other process (plausible only for a while). */
static int lock_owner(Handle *h, int tid) {
    if (tid <= 0 || tid == (int)gettid()) return 0;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/status", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return (errno == ENOENT && kill(tid, 0) != 0 && errno == ESRCH) ? 0 : 1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 1;
    buf[n] = 0;
    char *t = strstr(buf, "\nTgid:");
    if (!t) return 1;
    long tgid = strtol(t + 6, NULL, 10);
    for (uint32_t i = 0; i < h->g.stats_slots; i++)
        if ((long)(LD(&sslot(h, i)->owner) >> 32) == tgid) return 1;
    return 2;
}

/* Contended: wait in LOCK_WAIT_NS slices and judge the owner between them,
 * so a lock word overwritten with a dead or bogus owner never hangs us. */
static int lock_slow(Handle *h, shard_t *s, const char **broken) {
    int foreign = 0, last = 0;
    for (;;) {
        uint64_t t = now_ns() + LOCK_WAIT_NS;
        struct timespec ts = {(time_t)(t / 1000000000ULL), (long)(t % 1000000000ULL)};
        int r = pthread_mutex_clocklock(&s->mu, CLOCK_MONOTONIC, &ts);
        if (r != ETIMEDOUT) return r;
        int word = __atomic_load_n(&s->mu.__data.__lock, __ATOMIC_RELAXED);
        int v = lock_owner(h, word & FUTEX_TID_BITS);
        if (v == 0) { *broken = "its lock word names no live thread"; return EINVAL; }
        if (v == 2) {
            foreign = word == last ? foreign + 1 : 1;
            last = word;
            if (foreign >= LOCK_FOREIGN_WAITS) { *broken = "its lock was held for seconds by a foreign thread"; return EINVAL; }
        }
    }
}

/* Seqlock, writer side (the shard lock is held): make the version odd before
 * the first edit. A version already odd was left by a holder that died (or is
 * a bad byte): raise it to the next odd value, so no reader can mistake the
 * states before and after our edits for one. The release fence orders the
 * odd store before every edit that follows (Boehm, "Can seqlocks get along
 * with programming language memory models?", 2012): a reader that sees any
 * of our edits then sees the odd version at its re-check. */
static inline uint64_t version_enter_locked(shard_t *s) {
    uint64_t v = RLX(&s->version);
    __atomic_store_n(&s->version, (v + 1) | 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    return v;
}

/* Even again, with release: a reader that loads it (acquire) sees every edit. */
static inline void version_leave_locked(shard_t *s) {
    __atomic_store_n(&s->version, (RLX(&s->version) | 1) + 1, __ATOMIC_RELEASE);
}

/* Every holder of a shard lock may edit the shard, so taking the lock makes
 * the version odd and releasing it makes it even (one rule, no writer can
 * forget it); a wipe after EOWNERDEAD happens with the version odd. */
static int shard_lock(Handle *h, uint32_t si) {
    shard_t *s = shard(h, si);
    const char *broken = NULL;
    int r;
    h->odd_at_lock = 0;
    if (s->mu.__data.__kind != mu_kind) { broken = "its mutex type word was overwritten"; r = EINVAL; }
    else if ((r = pthread_mutex_trylock(&s->mu)) == EBUSY) r = lock_slow(h, s, &broken);
    if (r == 0) {
        /* I14: odd with the lock free and no EOWNERDEAD is a bad byte; entering repairs it */
        h->odd_at_lock = version_enter_locked(s) & 1;
        return FS_OK;
    }
    if (r == EOWNERDEAD) {
        version_enter_locked(s); /* the dead holder's odd version becomes the next odd one */
        /* LOCK: the holder died inside a critical section. Do not repair: an
         * empty shard is always a correct cache. */
        shard_wipe_locked(h, s);
        s->wipes++;
        pthread_mutex_consistent(&s->mu);
        __atomic_add_fetch(&h->hdr->lock_wipes, 1, __ATOMIC_ACQ_REL);
        count(h, C_LOCK_WIPES, 1);
        h->last_wiped = (int)si;
        h->wipe_reason = "a process died holding its lock (EOWNERDEAD)";
        return FS_OK;
    }
    /* The mutex itself is corrupt (EINVAL, ENOTRECOVERABLE, a bogus owner):
     * re-create it; waiters time out of their futex wait and retry. */
    mutex_init_robust(&s->mu);
    if (pthread_mutex_lock(&s->mu) != 0) return FS_LOCK_BROKEN; /* the version stays as it is: readers take the lock */
    version_enter_locked(s);
    wipe_corrupt_locked(h, si, broken ? broken : "its mutex was unusable");
    return FS_OK;
}

static void shard_unlock(Handle *h, uint32_t si) {
    shard_t *s = shard(h, si);
    version_leave_locked(s);
    pthread_mutex_unlock(&s->mu);
}

/* After a locked section: wipe the shard if it found an inconsistency. */
static inline int settle_locked(Handle *h, uint32_t si, int st) {
    if (st == FS_CORRUPT) wipe_corrupt_locked(h, si, h->why);
    return st;
}

/*************************************************************************
 * Free lists and pages (every link validated)                           *
 *************************************************************************/

static inline blk_t *free_blk(Handle *h, shard_t *s, uint32_t r, int c) {
    int bc;
    blk_t *b = blk_ref(h, s, r, &bc);
    return (b && bc == c && b->state == B_FREE) ? b : NULL;
}

static int free_push_locked(Handle *h, shard_t *s, int c, blk_t *b, uint32_t r) {
    uint32_t head = s->cls[c].free_head;
    blk_t *hb = NULL;
    if (head && !(hb = free_blk(h, s, head, c))) return corrupt(h, "a free list head is not a free block of its class");
    b->state = B_FREE; b->next = head; b->aux = 0;
    if (hb) hb->aux = r;
    s->cls[c].free_head = r;
    return FS_OK;
}

static int free_remove_locked(Handle *h, shard_t *s, int c, blk_t *b, uint32_t r) {
    blk_t *prev = NULL, *next = NULL;
    if (b->aux && (!(prev = free_blk(h, s, b->aux, c)) || prev->next != r)) return corrupt(h, "free list back link broken");
    if (!b->aux && s->cls[c].free_head != r) return corrupt(h, "free list head broken");
    if (b->next && (!(next = free_blk(h, s, b->next, c)) || next->aux != r)) return corrupt(h, "free list link broken");
    if (prev) prev->next = b->next; else s->cls[c].free_head = b->next;
    if (next) next->aux = b->aux;
    return FS_OK;
}

static int page_assign_locked(Handle *h, shard_t *s, uint32_t p, int c) {
    pdesc_t *pd = pdescs(h, s);
    pd[p].cls = (uint8_t)c; __atomic_store_n(&pd[p].ref, 0, __ATOMIC_RELAXED);
    hits_clear_pages(h, s, p, 1); /* block boundaries change with the class */
    pd[p].next = s->cls[c].page_head;
    s->cls[c].page_head = p + 1;
    s->cls[c].pages++;
    for (uint32_t i = bpp(c); i-- > 0;) {
        blk_t *b = blk_at(h, s, p, i, c);
        int st = free_push_locked(h, s, c, b, ref_of(h, s, b));
        if (st) return st;
    }
    return FS_OK;
}

/*************************************************************************
 * Entries: lookup, free, CLOCK eviction, page stealing, allocation      *
 *************************************************************************/

static inline uint32_t shard_index(Handle *h, uint64_t kh) { return (uint32_t)((kh >> 32) % h->g.shards); }
static inline uint32_t bucket_index(Handle *h, uint64_t kh) { return (uint32_t)(kh & (h->g.buckets - 1)); }

typedef struct { blk_t *b; uint32_t ref; int cls; uint32_t len, last; } found_t;

/* Walk index bucket bi: every link a LIVE head of this bucket, at most
 * CHAIN_MAX of them (so a cycle ends here). With key: stop at its head
 * unless full. */
static int chain_find_locked(Handle *h, shard_t *s, uint32_t bi, uint64_t kh, const uint8_t *key,
                             uint32_t klen, int full, found_t *f) {
    uint32_t n = 0, r = buckets(s)[bi];
    f->b = NULL; f->last = 0;
    for (; r; n++) {
        int c;
        blk_t *b = blk_ref(h, s, r, &c);
        if (n >= CHAIN_MAX) return corrupt(h, "an index chain is longer than CHAIN_MAX (a cycle?)");
        if (!b || b->state != B_LIVE || bucket_index(h, b->key_hash) != bi)
            return corrupt(h, "an index chain links a block that is no live entry of its bucket");
        if (key && !f->b && b->key_hash == kh && b->key_len == klen) {
            if (!head_fits(h, b, c)) return corrupt(h, "an entry's lengths do not fit its block");
            if (memcmp(key_of(b), key, klen) != 0) goto next;
            f->b = b; f->ref = r; f->cls = c;
            if (!full) return FS_OK;
        }
    next:
        f->last = r;
        r = b->next;
    }
    f->len = n;
    return FS_OK;
}

/* Unlink a LIVE head (ref r, class c) from its chain and free it with its
 * chunks; every link on the way is validated. */
static int entry_free_locked(Handle *h, shard_t *s, blk_t *b, uint32_t r, int c) {
    if (!head_fits(h, b, c)) return corrupt(h, "an entry's lengths do not fit its block");
    uint32_t *link = &buckets(s)[bucket_index(h, b->key_hash)];
    for (uint32_t n = 0; *link != r; n++) {
        int xc;
        blk_t *x = blk_ref(h, s, *link, &xc);
        if (!*link || n >= CHAIN_MAX || !x || x->state != B_LIVE) return corrupt(h, "a live entry is missing from its bucket");
        link = &x->next;
    }
    *link = b->next;
    uint32_t need = chunks_needed(b), k = 0;
    for (uint32_t cr = b->aux; cr; k++) {
        int cc;
        blk_t *ch = blk_ref(h, s, cr, &cc);
        if (k >= need || !ch || cc != NCLASS - 1 || ch->state != B_CHUNK || ch->aux != r || ch->key_len != b->gen)
            return corrupt(h, "an entry's chunk chain is broken");
        uint32_t next = ch->next;
        s->cls[NCLASS - 1].live--;
        s->used -= PAGE;
        int st = free_push_locked(h, s, NCLASS - 1, ch, cr);
        if (st) return st;
        cr = next;
    }
    if (k != need) return corrupt(h, "an entry's chunk chain is short");
    s->cls[c].live--;
    s->used -= CLASS_SIZE[c];
    s->entries--;
    return free_push_locked(h, s, c, b, r);
}

static inline int expired(blk_t *b, uint64_t now) { return now >= b->expiry; }

static int clock_evict_locked(Handle *h, shard_t *s, int c, uint64_t now) {
    class_t *k = &s->cls[c];
    pdesc_t *pd = pdescs(h, s);
    uint32_t np = h->g.pages, pages = k->pages < np ? k->pages : np;
    uint32_t evicted = 0, limit = 2 * pages * bpp(c) + 1;
    for (uint32_t scanned = 0; scanned < limit && evicted < EVICT_BATCH; scanned++) {
        uint32_t hp = k->hand_page;
        if (!hp || hp > np || pd[hp - 1].cls != c || k->hand_blk >= bpp(c)) {
            k->hand_page = (hp && hp <= np && pd[hp - 1].cls == c) ? pd[hp - 1].next : 0;
            if (!k->hand_page) k->hand_page = k->page_head;
            k->hand_blk = 0;
            if (!k->hand_page) return FS_OK;
            if (k->hand_page > np || pd[k->hand_page - 1].cls != c) return corrupt(h, "a class page list is broken");
        }
        blk_t *b = blk_at(h, s, k->hand_page - 1, k->hand_blk++, c);
        if (b->state != B_LIVE) continue;
        uint32_t br = ref_of(h, s, b);
        if (hit_test(hits_of(h, s), br) && !expired(b, now)) { hit_clear(hits_of(h, s), br); continue; }
        int st = entry_free_locked(h, s, b, br, c);
        if (st) return st;
        count(h, C_EVICTIONS, 1);
        if (++evicted == 1) debug_point(DBG_EVICT);
        if (scanned >= 64) break; /* bounded batch: enough once one is free */
    }
    return FS_OK;
}

/* Take a page from another class (page CLOCK, hot pages get a second
 * chance), evicting everything in it, and give it to class c. */
static int steal_page_locked(Handle *h, shard_t *s, int c, int *stolen) {
    uint32_t np = h->g.pages;
    pdesc_t *pd = pdescs(h, s);
    *stolen = 0;
    for (uint32_t step = 0; step < 2 * np; step++) {
        uint32_t p = s->page_hand < np ? s->page_hand : 0;
        s->page_hand = (p + 1) % np;
        int v = pd[p].cls, st;
        if (v == PFREE || v == c) continue;
        if (v >= NCLASS) return corrupt(h, "a page has no valid class");
        if (RLX(&pd[p].ref)) { __atomic_store_n(&pd[p].ref, 0, __ATOMIC_RELAXED); continue; }
        int busy = 0;
        for (uint32_t i = 0; i < bpp(v) && !busy; i++) busy = blk_at(h, s, p, i, v)->state == B_WRITING;
        if (busy) continue;
        for (uint32_t i = 0; i < bpp(v); i++) {
            blk_t *b = blk_at(h, s, p, i, v);
            int bc = v;
            if (b->state == B_CHUNK) {
                blk_t *head = blk_ref(h, s, b->aux, &bc);
                if (!head || head->state != B_LIVE || bc != NCLASS - 1) return corrupt(h, "a chunk's head is no live entry");
                b = head;
            }
            if (b->state == B_LIVE) {
                if ((st = entry_free_locked(h, s, b, ref_of(h, s, b), bc))) return st;
                count(h, C_EVICTIONS, 1);
            } else if (b->state != B_FREE) {
                return corrupt(h, "a block is in no valid state");
            }
        }
        for (uint32_t i = 0; i < bpp(v); i++) {
            blk_t *b = blk_at(h, s, p, i, v);
            if (b->state != B_FREE) return corrupt(h, "a stolen page kept a used block");
            if ((st = free_remove_locked(h, s, v, b, ref_of(h, s, b)))) return st;
        }
        uint32_t *link = &s->cls[v].page_head;
        for (uint32_t n = 0; *link != p + 1; n++) {
            if (!*link || *link > np || n > np) return corrupt(h, "a page is missing from its class list");
            link = &pd[*link - 1].next;
        }
        *link = pd[p].next;
        s->cls[v].pages--;
        if (s->cls[v].hand_page == p + 1) s->cls[v].hand_page = 0;
        if ((st = page_assign_locked(h, s, p, c))) return st;
        *stolen = 1;
        return FS_OK;
    }
    return FS_OK;
}

/* A block of class c in state WRITING, or *out = NULL when the shard is full. */
static int block_alloc_locked(Handle *h, shard_t *s, int c, uint64_t now, blk_t **out) {
    class_t *k = &s->cls[c];
    uint32_t np = h->g.pages;
    pdesc_t *pd = pdescs(h, s);
    int st, stolen;
    *out = NULL;
    for (int tries = 0; tries < 4; tries++) {
        if (k->free_head) {
            uint32_t r = k->free_head;
            blk_t *b = free_blk(h, s, r, c);
            if (!b) return corrupt(h, "a free list head is not a free block of its class");
            if ((st = free_remove_locked(h, s, c, b, r))) return st;
            b->state = B_WRITING; b->ref = 0; b->next = 0; b->aux = 0;
            b->gen++; /* a stale pointer to the old life of this block no longer verifies */
            hit_clear(hits_of(h, s), r); /* a new entry earns its own second chance */
            k->live++;
            s->used += CLASS_SIZE[c];
            *out = b;
            return FS_OK;
        }
        if (s->free_page_head) {
            uint32_t fp = s->free_page_head;
            if (fp > np || pd[fp - 1].cls != PFREE || pd[fp - 1].next > np) return corrupt(h, "the free page list is broken");
            s->free_page_head = pd[fp - 1].next;
            s->free_pages--;
            if ((st = page_assign_locked(h, s, fp - 1, c))) return st;
            continue;
        }
        if (k->pages == 0 || ++k->ticks % STEAL_EVERY == 0) {
            if ((st = steal_page_locked(h, s, c, &stolen))) return st;
            if (stolen) continue;
        }
        if ((st = clock_evict_locked(h, s, c, now))) return st;
        if (!k->free_head && (st = steal_page_locked(h, s, c, &stolen))) return st; /* only chunks or writers here */
    }
    return FS_OK;
}

/*************************************************************************
 * Error raising and argument helpers                                    *
 *************************************************************************/

static PyObject *fs_raise(int code, const char *fmt, ...) {
    PyObject *cls = NULL, *key = PyLong_FromLong(code);
    if (key && error_map) cls = PyDict_GetItemWithError(error_map, key);
    Py_XDECREF(key);
    if (PyErr_Occurred()) return NULL;
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (!msg) return NULL;
    PyErr_SetObject(cls ? cls : PyExc_RuntimeError, msg);
    Py_DECREF(msg);
    return NULL;
}

/* Tell Python (which logs it) about a wipe, after the lock was released. */
static void report_wipe(Handle *h) {
    int si = h->last_wiped;
    h->last_wiped = -1;
    if (si < 0 || !wipe_hook) return;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *r = PyObject_CallFunction(wipe_hook, "is", si, h->wipe_reason ? h->wipe_reason : "");
    Py_XDECREF(r);
    PyErr_Clear(); /* logging must never fail a cache call */
    PyErr_Restore(et, ev, tb);
}

static int get_bytes(PyObject *o, const char *what, const uint8_t **p, Py_ssize_t *n) {
    if (!PyBytes_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes, not %.80s", what, Py_TYPE(o)->tp_name);
        return -1;
    }
    *p = (const uint8_t *)PyBytes_AS_STRING(o);
    *n = PyBytes_GET_SIZE(o);
    return 0;
}

static int get_key(PyObject *o, const uint8_t **p, Py_ssize_t *n) {
    if (get_bytes(o, "key", p, n) < 0) return -1;
    if (*n == 0 || *n > MAX_KEY) {
        PyErr_Format(PyExc_ValueError, "key must be 1..%d bytes, got %zd", MAX_KEY, *n);
        return -1;
    }
    return 0;
}

static int get_u64(PyObject *o, const char *what, uint64_t *out) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be int, not %.80s", what, Py_TYPE(o)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a non-negative 64-bit int", what);
        return -1;
    }
    *out = v;
    return 0;
}

static int get_now(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t i, uint64_t *now) {
    if (nargs <= i || args[i] == Py_None) { *now = now_ns(); return 0; }
    return get_u64(args[i], "now", now);
}

/* Seconds to ns, clamped to 2^62 ns (146 years): sums with a "now" never overflow. */
static int get_seconds(PyObject *o, const char *what, uint64_t *ns) {
    double d = PyFloat_AsDouble(o);
    if (d == -1.0 && PyErr_Occurred()) return -1;
    if (!(d > 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be > 0 seconds, got %R", what, o);
        return -1;
    }
    *ns = d >= 4.6e9 ? (1ULL << 62) : (uint64_t)(d * 1e9);
    return 0;
}

#define NARGS(lo, hi, name)                                                          \
    if (nargs < (lo) || nargs > (hi)) {                                              \
        PyErr_Format(PyExc_TypeError, name "() takes %d to %d arguments (%zd given)", \
                     (lo), (hi), nargs);                                             \
        return NULL;                                                                 \
    }

/*************************************************************************
 * get / put                                                             *
 *************************************************************************/

enum { MODE_GET = 0, MODE_ETAG = 1, MODE_STALE = 2, MODE_PEEK = 3 }; /* PEEK: as GET, counts nothing */

/* CLOCK reference bits of a hit: the entry's bit in the hit map and its
 * page's ref byte (page stealing). Both sit at addresses that never hold
 * anything else, so a lock-free reader may set them; each is tested first,
 * so a hit on an entry already marked writes no shared cache line. */
static inline void mark_hit(Handle *h, shard_t *s, uint32_t ref) {
    hit_set(hits_of(h, s), ref);
    uint8_t *pref = &pdescs(h, s)[(uint64_t)(ref - 1) * 16 / PAGE].ref;
    if (!RLX(pref)) __atomic_store_n(pref, 1, __ATOMIC_RELAXED);
}

/* Under the lock: the verified entry of key copied into *out, or nothing.
 * FS_CORRUPT when anything on the way does not verify (the caller wipes). */
static int get_locked(Handle *h, shard_t *s, uint64_t kh, const uint8_t *key, uint32_t klen, int mode,
                      uint64_t now, uint64_t valid_from, PyObject **out, uint64_t *vhash) {
    found_t f;
    int st = chain_find_locked(h, s, bucket_index(h, kh), kh, key, klen, 0, &f);
    if (st || !f.b) return st;
    blk_t *b = f.b;
    if (meta_check(b, f.ref) != b->check) return corrupt(h, "an entry's header check failed");
    const uint64_t *tags = tags_of(h);
    const uint32_t *deps = deps_of(b);
    int valid = b->fill_seq >= valid_from;
    for (uint32_t i = 0; valid && i < b->ndeps; i++) {
        if (deps[i] >= h->g.tag_slots) return corrupt(h, "an entry's dep slot is out of range");
        valid = tag_last(tags, deps[i]) <= b->fill_seq;
    }
    if (!valid) return entry_free_locked(h, s, b, f.ref, f.cls); /* INVARIANT: invalidation is forever */
    if (mode != MODE_STALE && expired(b, now)) return FS_OK;
    uint32_t first = head_first(b), need = chunks_needed(b), k = 0;
    mark_hit(h, s, f.ref);
    PyObject *o = PyBytes_FromStringAndSize(NULL, b->value_len);
    if (!o) return FS_NOMEM;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(o);
    memcpy(dst, key_of(b) + b->key_len, first);
    uint32_t done = first;
    for (uint32_t cr = b->aux; cr; k++) {
        int cc;
        blk_t *ch = blk_ref(h, s, cr, &cc);
        if (k >= need || !ch || cc != NCLASS - 1 || ch->state != B_CHUNK || ch->aux != f.ref || ch->key_len != b->gen) {
            Py_DECREF(o);
            return corrupt(h, "an entry's chunk chain is broken");
        }
        uint32_t n = b->value_len - done;
        if (n > PAGE - CHUNK_HDR) n = PAGE - CHUNK_HDR;
        memcpy(dst + done, (uint8_t *)ch + CHUNK_HDR, n);
        done += n;
        cr = ch->next;
    }
    if (k != need) { Py_DECREF(o); return corrupt(h, "an entry's chunk chain is short"); }
    *vhash = b->vhash;
    *out = o;
    return FS_OK;
}

/*************************************************************************
 * Optimistic reads (seqlock): no lock, no shared write on a hit         *
 *                                                                       *
 * A reader loads the shard's version (acquire); odd means a lock holder *
 * may be editing, so it waits a little. It then walks the index, copies *
 * the entry out and re-loads the version after an acquire fence: equal  *
 * means no lock holder edited the shard meanwhile, so the copy is a     *
 * snapshot of one consistent state. Until that re-check any byte may be *
 * torn (a block freed, reused, its page given to another class), so     *
 * every read inside is bounds-safe on its own: header fields are read   *
 * once into a local snapshot and validated there, every ref through     *
 * blk_ref_opt, every length against the block before memcmp or memcpy. *
 * Whatever fails a check is thrown away and judged by the version: if   *
 * it moved, retry; if not, the shard really is inconsistent and the     *
 * locked path decides (and wipes). A copy that passed the re-check is   *
 * still verified against its value hash, exactly like a locked copy.    *
 * After OPT_TRIES attempts the get takes the lock. Anything that needs  *
 * an edit (an invalidated entry to free) also goes to the lock.         *
 *************************************************************************/

enum { OPT_DONE = 0, OPT_RETRY, OPT_LOCK, OPT_NOMEM };

static int opt_enabled = 1;   /* per process; the locked path stays for comparison (bench) */
static uint64_t opt_stats[5]; /* per process: answered, retries, fallbacks, anomalies, odd waits */
enum { OS_ANSWERED = 0, OS_RETRIES, OS_FALLBACKS, OS_ANOMALIES, OS_ODD };

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* blk_ref with the page's class read once: it may change under us. */
static inline blk_t *blk_ref_opt(Handle *h, shard_t *s, uint32_t ref, int *cls) {
    if (ref == 0 || ref > h->g.nrefs) return NULL;
    uint64_t off = (uint64_t)(ref - 1) * 16;
    uint32_t in = (uint32_t)(off % PAGE);
    int c = RLX(&pdescs(h, s)[off / PAGE].cls);
    if (c >= NCLASS || in % CLASS_SIZE[c] || in / CLASS_SIZE[c] >= bpp(c)) return NULL;
    *cls = c;
    return (blk_t *)(pages_of(h, s) + off);
}

/* A private copy of the first `words` u64 of a block header, each loaded
 * once (blocks are 16-aligned); the rest of *dst is zero. */
typedef union { blk_t b; uint64_t w[BLK_HDR / 8]; } snap_t;
static inline void snap_blk(snap_t *dst, const blk_t *src, int words) {
    const uint64_t *p = (const uint64_t *)src;
    for (int i = 0; i < words; i++) dst->w[i] = RLX(&p[i]);
    for (int i = words; i < (int)(BLK_HDR / 8); i++) dst->w[i] = 0;
}

/* Did a lock holder edit the shard since v0 was loaded? The acquire fence
 * keeps every load above it from being satisfied after the version load. */
static inline int version_moved(shard_t *s, uint64_t v0) {
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return RLX(&s->version) != v0;
}

/* One optimistic attempt. OPT_DONE: *out is the verified copy, or NULL for
 * a miss, both judged on a stable version. */
static int get_optimistic(Handle *h, shard_t *s, uint64_t kh, const uint8_t *key, uint32_t klen, int mode,
                          uint64_t now, uint64_t valid_from, PyObject **out, uint64_t *vhash) {
    /* Start only on a quiet shard: version even and the mutex free. A lock
     * word that stays set (a holder between its lock and its odd store, or a
     * word naming a dead or bogus owner) sends us to the lock, whose slow
     * path judges the owner; a mutex whose type word changed, likewise. */
    if (RLX(&s->mu.__data.__kind) != mu_kind) { opt_stats[OS_ANOMALIES]++; return OPT_LOCK; }
    uint64_t v0 = LD(&s->version);
    for (int spin = 0; ((v0 & 1) || RLX(&s->mu.__data.__lock)) && spin < OPT_SPINS; spin++) {
        cpu_relax();
        v0 = LD(&s->version);
    }
    if ((v0 & 1) || RLX(&s->mu.__data.__lock)) { opt_stats[OS_ODD]++; return OPT_RETRY; }
    uint32_t bi = bucket_index(h, kh), r = RLX(&buckets(s)[bi]), n = 0;
    blk_t *b = NULL;
    snap_t hs;
    blk_t *const hp = &hs.b; /* the snapshot of the head being looked at */
    int c = 0;
    PyObject *o = NULL;
    for (; r; n++) {
        if (n >= CHAIN_MAX) goto anomaly;
        blk_t *x = blk_ref_opt(h, s, r, &c);
        if (!x) goto anomaly;
        snap_blk(&hs, x, BLK_HDR / 8);
        if (hp->state != B_LIVE || bucket_index(h, hp->key_hash) != bi) goto anomaly;
        if (hp->key_hash == kh && hp->key_len == klen) {
            if (!head_fits(h, hp, c)) goto anomaly;
            if (memcmp((uint8_t *)(x + 1) + 4u * hp->ndeps, key, klen) == 0) { b = x; break; }
        }
        r = hp->next;
    }
    if (!b) return version_moved(s, v0) ? OPT_RETRY : OPT_DONE; /* a miss, unless the walk was torn */
    /* *hp is a snapshot of the head that head_fits() accepted: deps, key and
     * the first value bytes lie inside block b whatever its bytes are now. */
    const uint32_t *deps = (const uint32_t *)(b + 1);
    if (meta_mix(meta_base(hp, (const uint8_t *)deps, 4u * hp->ndeps + hp->key_len), r, hp->gen, hp->aux) != hp->check)
        goto anomaly;
    const uint64_t *tags = tags_of(h);
    int valid = hp->fill_seq >= valid_from;
    for (uint32_t i = 0; valid && i < hp->ndeps; i++) {
        uint32_t d = RLX(&deps[i]);
        if (d >= h->g.tag_slots) goto anomaly;
        valid = tag_last(tags, d) <= hp->fill_seq;
    }
    if (!valid) return OPT_LOCK; /* freeing it is an edit: the locked path re-judges and frees */
    if (mode != MODE_STALE && expired(hp, now)) return version_moved(s, v0) ? OPT_RETRY : OPT_DONE;
    debug_point(DBG_OPT_READ);
    uint32_t first = head_first(hp), need = chunks_needed(hp), k = 0, done;
    o = PyBytes_FromStringAndSize(NULL, hp->value_len); /* value_len <= max_entry: head_fits */
    if (!o) return OPT_NOMEM;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(o);
    memcpy(dst, (uint8_t *)(b + 1) + 4u * hp->ndeps + hp->key_len, first);
    done = first;
    for (uint32_t cr = hp->aux; cr; k++) {
        int cc;
        blk_t *ch = blk_ref_opt(h, s, cr, &cc);
        snap_t chs;
        if (k >= need || !ch || cc != NCLASS - 1) goto anomaly;
        snap_blk(&chs, ch, CHUNK_HDR / 8);
        if (chs.b.state != B_CHUNK || chs.b.aux != r || chs.b.key_len != hp->gen) goto anomaly;
        uint32_t m = hp->value_len - done;
        if (m > PAGE - CHUNK_HDR) m = PAGE - CHUNK_HDR;
        memcpy(dst + done, (uint8_t *)ch + CHUNK_HDR, m);
        done += m;
        cr = chs.b.next;
    }
    if (k != need) goto anomaly;
    if (version_moved(s, v0)) { Py_DECREF(o); return OPT_RETRY; }
    /* A stable version: the copy is one consistent entry, unless the memory itself is bad. */
    if (fs_hash(dst, hp->value_len, 0) != hp->vhash) goto anomaly;
    mark_hit(h, s, r);
    *vhash = hp->vhash;
    *out = o;
    return OPT_DONE;
anomaly:
    Py_XDECREF(o);
    if (version_moved(s, v0)) return OPT_RETRY;
    opt_stats[OS_ANOMALIES]++; /* inconsistent on a stable version: corruption, or a protocol bug */
    return OPT_LOCK;
}

static PyObject *do_get(Handle *h, PyObject *const *args, Py_ssize_t nargs, int mode) {
    const uint8_t *key; Py_ssize_t klen; uint64_t now;
    NARGS(1, 2, "get");
    if (get_key(args[0], &key, &klen) < 0 || get_now(args, nargs, 1, &now) < 0) return NULL;
    uint64_t kh = fs_hash(key, (size_t)klen, h->g.seed);
    uint32_t si = shard_index(h, kh);
    shard_t *s = shard(h, si);
    uint64_t vhash = 0, valid_from = valid_from_now(h);
    PyObject *out = NULL;
    int bad = 0;
    /* The crash tests arm DBG_LOCK_HELD on a get to die holding the lock: such a get takes it. */
    if (opt_enabled && dbg_point != DBG_LOCK_HELD) {
        for (int attempt = 0; attempt < OPT_TRIES; attempt++) {
            int r = get_optimistic(h, s, kh, key, (uint32_t)klen, mode, now, valid_from, &out, &vhash);
            if (r == OPT_NOMEM) return NULL;
            if (r == OPT_DONE) { opt_stats[OS_ANSWERED]++; goto counted; }
            if (r == OPT_LOCK) break;
            opt_stats[OS_RETRIES]++;
        }
        opt_stats[OS_FALLBACKS]++;
    }
    if (shard_lock(h, si) != FS_OK) return fs_raise(FS_LOCK_BROKEN, "shard %u lock is not recoverable", si);
    debug_point(DBG_LOCK_HELD);
    int st = settle_locked(h, si, get_locked(h, s, kh, key, (uint32_t)klen, mode, now, valid_from, &out, &vhash));
    shard_unlock(h, si);
    report_wipe(h);
    if (st == FS_NOMEM) return NULL;
    if (st == FS_CORRUPT) bad = 1;
    if (out && fs_hash(PyBytes_AS_STRING(out), (size_t)PyBytes_GET_SIZE(out), 0) != vhash) {
        Py_CLEAR(out); /* torn or corrupt: never returned; the shard is wiped under the lock */
        bad = 1;
        if (shard_lock(h, si) == FS_OK) {
            wipe_corrupt_locked(h, si, "an entry's value hash failed");
            shard_unlock(h, si);
            report_wipe(h);
        }
    }
    if (bad) {
        __atomic_add_fetch(&h->hdr->checksum_failures, 1, __ATOMIC_ACQ_REL);
        count(h, C_CHECKSUM_FAILURES, 1);
    }
counted:
    if (!out) {
        if (mode != MODE_STALE && mode != MODE_PEEK) count(h, C_MISSES, 1);
        Py_RETURN_NONE;
    }
    if (mode == MODE_PEEK) return out;
    count(h, mode == MODE_STALE ? C_STALE_HITS : C_HITS, 1);
    count(h, C_BYTES_READ, (uint64_t)PyBytes_GET_SIZE(out));
    if (mode != MODE_ETAG) return out;
    return Py_BuildValue("(NK)", out, (unsigned long long)vhash);
}

static PyObject *H_get(Handle *h, PyObject *const *a, Py_ssize_t n) { return do_get(h, a, n, MODE_GET); }
static PyObject *H_get_with_checksum(Handle *h, PyObject *const *a, Py_ssize_t n) { return do_get(h, a, n, MODE_ETAG); }
static PyObject *H_get_stale(Handle *h, PyObject *const *a, Py_ssize_t n) { return do_get(h, a, n, MODE_STALE); }
static PyObject *H_peek(Handle *h, PyObject *const *a, Py_ssize_t n) { return do_get(h, a, n, MODE_PEEK); }

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Hash every tag of an iterable into tag-table slots, sorted and unique. */
static uint32_t *tag_slots_of(Handle *h, PyObject *tags, uint32_t *stackbuf, size_t cap, Py_ssize_t *n_out) {
    PyObject *seq = PySequence_Fast(tags, "tags must be an iterable of str");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    uint32_t *out = (size_t)n <= cap ? stackbuf : PyMem_Malloc((size_t)n * 4 + 4);
    if (!out) { Py_DECREF(seq); PyErr_NoMemory(); return NULL; }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const char *u = PyUnicode_Check(items[i]) ? PyUnicode_AsUTF8AndSize(items[i], &len) : NULL;
        if (!u) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "tags must be str, not %.80s", Py_TYPE(items[i])->tp_name);
            if (out != stackbuf) PyMem_Free(out);
            Py_DECREF(seq);
            return NULL;
        }
        out[i] = (uint32_t)(fs_hash(u, (size_t)len, h->g.seed ^ SEED_TAG) & (h->g.tag_slots - 1));
    }
    Py_DECREF(seq);
    qsort(out, (size_t)n, 4, cmp_u32);
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) if (m == 0 || out[m - 1] != out[i]) out[m++] = out[i];
    *n_out = m;
    return out;
}

static int repair_ahead(Handle *h, uint64_t *p);

/* tmpl->check holds meta_base(); the final check is mixed in once the
 * block's place, generation and first chunk are known. */
static int put_locked(Handle *h, shard_t *s, blk_t *tmpl, const uint32_t *deps, const uint8_t *key,
                      const uint8_t *val, uint64_t now) {
    uint64_t fixed = BLK_HDR + 4ull * tmpl->ndeps + tmpl->key_len, total = fixed + tmpl->value_len;
    int c = class_for(total), st;
    uint32_t first = c >= 0 ? tmpl->value_len : (uint32_t)(PAGE - fixed);
    uint32_t nchunks = c >= 0 ? 0 : (uint32_t)((tmpl->value_len - first + PAGE - CHUNK_HDR - 1) / (PAGE - CHUNK_HDR));
    if (c < 0) c = NCLASS - 1;
    blk_t *b, *prev = NULL;
    if ((st = block_alloc_locked(h, s, c, now, &b))) return st;
    if (!b) return FS_FULL;
    uint32_t r = ref_of(h, s, b);
    for (uint32_t i = 0; i < nchunks; i++) {
        blk_t *ch;
        if ((st = block_alloc_locked(h, s, NCLASS - 1, now, &ch))) return st;
        if (!ch) { /* undo: give back what we took */
            for (uint32_t cr = b->aux; cr;) {
                int cc;
                blk_t *x = blk_ref(h, s, cr, &cc);
                if (!x || cc != NCLASS - 1 || x->state != B_WRITING) return corrupt(h, "a chunk being written changed");
                cr = x->next;
                s->cls[NCLASS - 1].live--; s->used -= PAGE;
                if ((st = free_push_locked(h, s, NCLASS - 1, x, ref_of(h, s, x)))) return st;
            }
            s->cls[c].live--; s->used -= CLASS_SIZE[c];
            if ((st = free_push_locked(h, s, c, b, r))) return st;
            return FS_FULL;
        }
        ch->state = B_WRITING; ch->next = 0; ch->aux = r;
        if (prev) prev->next = ref_of(h, s, ch); else b->aux = ref_of(h, s, ch);
        prev = ch;
    }
    uint32_t first_chunk = b->aux;
    memcpy((uint8_t *)b + 12, (uint8_t *)tmpl + 12, 8);             /* key_len, value_len (gen kept) */
    memcpy((uint8_t *)b + 24, (uint8_t *)tmpl + 24, BLK_HDR - 24);  /* hashes, seqs, times, check */
    memcpy(deps_of(b), deps, 4u * tmpl->ndeps);
    b->ndeps = tmpl->ndeps;
    memcpy(key_of(b), key, tmpl->key_len);
    memcpy(key_of(b) + tmpl->key_len, val, first);
    debug_point(DBG_PUT_WRITE);
    uint32_t done = first;
    for (uint32_t cr = first_chunk; cr;) {
        int cc;
        blk_t *ch = blk_ref(h, s, cr, &cc);
        if (!ch || cc != NCLASS - 1) return corrupt(h, "a chunk being written changed");
        uint32_t n = tmpl->value_len - done;
        if (n > PAGE - CHUNK_HDR) n = PAGE - CHUNK_HDR;
        memcpy((uint8_t *)ch + CHUNK_HDR, val + done, n);
        done += n;
        ch->key_len = b->gen; /* the chunk's head generation */
        ch->state = B_CHUNK;
        cr = ch->next;
    }
    b->aux = first_chunk;
    b->check = meta_mix(tmpl->check, r, b->gen, first_chunk);
    /* the old entry of this key goes first; then the chain is trimmed to CHAIN_MAX */
    uint32_t bi = bucket_index(h, tmpl->key_hash);
    found_t f;
    if ((st = chain_find_locked(h, s, bi, tmpl->key_hash, key, tmpl->key_len, 1, &f))) return st;
    if (f.b && (st = entry_free_locked(h, s, f.b, f.ref, f.cls))) return st;
    for (int trims = 0; trims < 2; trims++) {
        if ((st = chain_find_locked(h, s, bi, 0, NULL, 0, 1, &f))) return st;
        if (f.len < CHAIN_MAX) break;
        int lc = 0;
        blk_t *last = blk_ref(h, s, f.last, &lc);
        if (!last) return corrupt(h, "an index chain changed under the lock");
        if ((st = entry_free_locked(h, s, last, f.last, lc))) return st; /* the oldest of the chain */
        count(h, C_EVICTIONS, 1);
    }
    b->next = buckets(s)[bi];
    b->state = B_LIVE;
    /* INVARIANT: publish the block first, the index pointer last. */
    __atomic_store_n(&buckets(s)[bi], r, __ATOMIC_RELEASE);
    s->entries++;
    return FS_OK;
}

static PyObject *H_put(Handle *h, PyObject *const *args, Py_ssize_t nargs) {
    const uint8_t *key, *val; Py_ssize_t klen, vlen, ndeps;
    uint64_t fill_seq, ttl_ns, now;
    uint32_t stackbuf[64];
    NARGS(5, 6, "put");
    if (get_key(args[0], &key, &klen) < 0 || get_bytes(args[1], "value", &val, &vlen) < 0 ||
        get_u64(args[3], "fill_seq", &fill_seq) < 0 || get_seconds(args[4], "ttl", &ttl_ns) < 0 ||
        get_now(args, nargs, 5, &now) < 0)
        return NULL;
    if (PyUnicode_Check(args[2]) || PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "deps must be a sequence of str, not a single string");
        return NULL;
    }
    if ((uint64_t)vlen > h->g.max_entry) {
        count(h, C_ENTRY_TOO_LARGE, 1);
        return fs_raise(FS_TOO_LARGE, "value of %zd B exceeds max_entry %llu B; serve it uncached "
                        "or raise FRAISESHM_MAX_ENTRY_BYTES", vlen, (unsigned long long)h->g.max_entry);
    }
    uint64_t seq = seq_now(h);
    if (fill_seq > seq)
        return PyErr_Format(PyExc_ValueError, "fill_seq %llu is ahead of the arena's sequence %llu; "
                            "pass current_seq() read before the database", (unsigned long long)fill_seq,
                            (unsigned long long)seq);
    uint32_t *deps = tag_slots_of(h, args[2], stackbuf, 64, &ndeps);
    if (!deps) return NULL;
    PyObject *res = NULL;
    if (BLK_HDR + 4ull * ndeps + (uint64_t)klen > PAGE - 64) {
        count(h, C_ENTRY_TOO_LARGE, 1);
        fs_raise(FS_TOO_LARGE, "%zd deps and a %zd B key do not fit one %u B block", ndeps, klen, PAGE);
        goto done;
    }
    const uint64_t *tags = tags_of(h);
    int stale = fill_seq < valid_from_now(h);
    for (Py_ssize_t i = 0; !stale && i < ndeps; i++) stale = tag_last(tags, deps[i]) > fill_seq;
    if (stale) { /* rare path: a copy ahead of the sequence is a bad byte, not an invalidation */
        uint64_t *t = (uint64_t *)tags;
        for (Py_ssize_t i = 0; i < ndeps; i++) { repair_ahead(h, &t[2 * deps[i]]); repair_ahead(h, &t[2 * deps[i] + 1]); }
        repair_ahead(h, &h->hdr->valid_from);
        repair_ahead(h, &h->hdr->valid_from_b);
        count(h, C_PUT_REJECTED_STALE, 1);
        res = Py_NewRef(Py_False);
        goto done;
    }
    blk_t t;
    memset(&t, 0, sizeof t);
    t.ndeps = (uint16_t)ndeps; t.key_len = (uint32_t)klen; t.value_len = (uint32_t)vlen;
    t.key_hash = fs_hash(key, (size_t)klen, h->g.seed);
    t.fill_seq = fill_seq;
    t.expiry = ttl_ns >= UINT64_MAX - now ? UINT64_MAX : now + ttl_ns;
    t.created = now;
    t.vhash = fs_hash(val, (size_t)vlen, 0);
    /* deps and key are adjacent in the block; hash them as one run */
    uint8_t small[4 * 64 + MAX_KEY];
    size_t runlen = 4u * (size_t)ndeps + (size_t)klen;
    uint8_t *run = runlen <= sizeof small ? small : PyMem_Malloc(runlen);
    if (!run) { PyErr_NoMemory(); goto done; }
    memcpy(run, deps, 4u * (size_t)ndeps);
    memcpy(run + 4u * (size_t)ndeps, key, (size_t)klen);
    t.check = meta_base(&t, run, runlen);
    if (run != small) PyMem_Free(run);
    uint32_t si = shard_index(h, t.key_hash);
    /* LOCK: not held on the failure path */
    if (shard_lock(h, si) != FS_OK) { fs_raise(FS_LOCK_BROKEN, "shard %u lock is not recoverable", si); goto done; }
    int st = settle_locked(h, si, put_locked(h, shard(h, si), &t, deps, key, val, now));
    shard_unlock(h, si);
    report_wipe(h);
    if (st == FS_FULL) {
        fs_raise(FS_FULL, "shard %u cannot hold %zd B even after eviction", si, vlen);
        goto done;
    }
    if (st == FS_CORRUPT) { /* the shard was wiped; the value is simply not cached */
        res = Py_NewRef(Py_False);
        goto done;
    }
    count(h, C_PUTS, 1);
    count(h, C_BYTES_WRITTEN, (uint64_t)vlen);
    res = Py_NewRef(Py_True);
done:
    if (deps != stackbuf) PyMem_Free(deps);
    return res;
}

/*************************************************************************
 * Sequences and tags (two copies each, readers take the larger)         *
 *************************************************************************/

static inline void atomic_max(uint64_t *p, uint64_t v) {
    uint64_t cur = LD(p);
    while (cur < v && !CAS(p, cur, v)) { /* cur reloaded by the failed CAS */ }
}

/* The next sequence: above both copies as read, raised in both. Every
 * invalidation starting after current_seq() returned S gets a seq > S. */
static uint64_t seq_next(Handle *h) {
    uint64_t a = __atomic_add_fetch(&h->hdr->global_seq, 1, __ATOMIC_ACQ_REL), b = LD(&h->hdr->global_seq_b);
    uint64_t s = a > b ? a : b + 1;
    atomic_max(&h->hdr->global_seq, s);
    atomic_max(&h->hdr->global_seq_b, s);
    return s;
}

/* A tag or valid_from copy ahead of the global sequence can only be a bad
 * byte (the sequence is raised first). Bring it down, then up to the
 * sequence as read after the CAS: never below an invalidation that raced. */
static int repair_ahead(Handle *h, uint64_t *p) {
    uint64_t v = LD(p), s = seq_now(h);
    if (v <= s || !CAS(p, v, s)) return 0;
    atomic_max(p, seq_now(h));
    return 1;
}

static PyObject *H_invalidate(Handle *h, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t stackbuf[64];
    Py_ssize_t n;
    NARGS(1, 1, "invalidate");
    if (PyUnicode_Check(args[0]) || PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "tags must be an iterable of str, not a single string");
        return NULL;
    }
    uint32_t *slots = tag_slots_of(h, args[0], stackbuf, 64, &n);
    if (!slots) return NULL;
    uint64_t *tags = tags_of(h);
    /* INVARIANT: the sequence is raised before any tag, so tag.last <= global_seq. */
    uint64_t seq = seq_next(h);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i == n / 2) debug_point(DBG_TAG_BUMP);
        atomic_max(&tags[2 * slots[i]], seq);
        atomic_max(&tags[2 * slots[i] + 1], seq);
    }
    if (slots != stackbuf) PyMem_Free(slots);
    count(h, C_INVALIDATIONS, 1);
    count(h, C_TAGS_BUMPED, (uint64_t)n);
    return PyLong_FromUnsignedLongLong(seq);
}

static PyObject *H_flush(Handle *h, PyObject *Py_UNUSED(ignored)) {
    uint64_t seq = seq_next(h);
    atomic_max(&h->hdr->valid_from, seq);
    atomic_max(&h->hdr->valid_from_b, seq);
    count(h, C_FLUSHES, 1);
    return PyLong_FromUnsignedLongLong(seq);
}

static PyObject *H_current_seq(Handle *h, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromUnsignedLongLong(seq_now(h));
}

/*************************************************************************
 * Counters and histogram                                                *
 *************************************************************************/

static PyObject *H_incr(Handle *h, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(1, 2, "incr");
    long c = PyLong_AsLong(args[0]);
    if (c == -1 && PyErr_Occurred()) return NULL;
    if (c < 0 || c >= N_COUNTERS) return PyErr_Format(PyExc_ValueError, "no counter %ld", c);
    uint64_t n = 1;
    if (nargs == 2 && get_u64(args[1], "n", &n) < 0) return NULL;
    count(h, (int)c, n);
    Py_RETURN_NONE;
}

static PyObject *H_observe(Handle *h, PyObject *arg) {
    double d = PyFloat_AsDouble(arg);
    if (d == -1.0 && PyErr_Occurred()) return NULL;
    if (!(d >= 0) || d > 1e9) return PyErr_Format(PyExc_ValueError, "observe() needs seconds >= 0, got %R", arg);
    uint64_t ns = (uint64_t)(d * 1e9);
    int b = 0;
    while (b < N_BUCKETS - 1 && ns > HIST_BOUND_NS[b]) b++;
    count(h, V_HIST + b, 1);
    count(h, V_HIST_SUM, ns);
    Py_RETURN_NONE;
}

static PyObject *H_register(Handle *h, PyObject *Py_UNUSED(ignored)) {
    h->claim_failed = 0;
    int i = h->my ? (int)(h->my - sslot(h, 0)) : claim_slot(h);
    if (i < 0) h->claim_failed = 1;
    return PyLong_FromLong(i);
}

static PyObject *H_forked(Handle *h, PyObject *Py_UNUSED(ignored)) {
    h->my = NULL; h->me = 0; h->claim_failed = 0;
    Py_RETURN_NONE;
}

/*************************************************************************
 * Flights (cross-process request coalescing)                            *
 *                                                                       *
 * A flight is (slot, generation). ctl = gen << 32 | pid << 8 | state is *
 * the one word every transition CASes, so each transition names the     *
 * exact flight it acts on: a late end, a takeover or a reap of an older *
 * flight fails its CAS. Claim and takeover bump the generation; the     *
 * owner then writes owner word and deadline (tagged with the generation)*
 * in state CLAIMING and publishes RUNNING by CAS. end goes RUNNING ->   *
 * CLAIMING (writing the error) -> DONE by CAS, all with its generation. *
 *************************************************************************/

#define CTL(gen, pid, st) (((uint64_t)(gen) << 32) | ((uint64_t)(pid) & 0xFFFFFF) << 8 | (uint64_t)(st))
#define CTL_GEN(c) ((uint32_t)((c) >> 32))
#define CTL_PID(c) ((long)(((c) >> 8) & 0xFFFFFF))
#define CTL_ST(c) ((uint32_t)((c) & 0xFF))

/* (until ns >> 20) in 40 bits, clamped: a long lease never wraps to "expired". */
static inline uint64_t deadline_word(uint64_t now, uint64_t lease_ns, uint32_t gen) {
    uint64_t t = (now + lease_ns) >> 20; /* both < 2^63: no overflow */
    if (t > 0xFFFFFFFFFFULL) t = 0xFFFFFFFFFFULL;
    return (t << 24) | (gen & 0xFFFFFF);
}

/* Is the RUNNING or CLAIMING flight ctl abandoned (owner dead or past its
 * deadline)? Before the owner wrote its words for this generation, only
 * its pid can be judged, conservatively. */
static int abandoned(Handle *h, fslot_t *f, uint64_t ctl, uint64_t now) {
    uint64_t dl = LD(&f->deadline), owner = LD(&f->owner);
    if (LD(&f->ctl) != ctl) return 0; /* moved on: the caller's CAS fails anyway */
    long pid = CTL_PID(ctl);
    if ((dl & 0xFFFFFF) != (CTL_GEN(ctl) & 0xFFFFFF) || (long)(owner >> 32) != pid)
        return pid == 0 || pid_dead(pid);
    if ((now >> 20) > (dl >> 24)) return 1;
    return !lease_alive(h, owner);
}

static int me_or_claim(Handle *h) {
    if (!h->my && !h->claim_failed && claim_slot(h) < 0) h->claim_failed = 1;
    return h->my != NULL;
}

/* Own the flight slot f, seen as ctl, for key kh: the new generation, or -1. */
static int64_t flight_claim(Handle *h, fslot_t *f, uint64_t ctl, uint64_t kh, uint64_t now, uint64_t lease_ns) {
    long pid = (long)(h->me >> 32);
    uint32_t gen = CTL_GEN(ctl) + 1;
    uint64_t claiming = CTL(gen, pid, F_CLAIMING);
    if (!CAS(&f->ctl, ctl, claiming)) return -1; /* LOCK-FREE: the CAS is the claim */
    ST(&f->key_hash, kh);
    ST(&f->owner, h->me);
    ST(&f->err_len, 0u);
    ST(&f->deadline, deadline_word(now, lease_ns, gen)); /* last: tags owner + deadline as this flight's */
    debug_point(DBG_FLIGHT_CLAIM);
    if (!CAS(&f->ctl, claiming, CTL(gen, pid, F_RUNNING))) return -1; /* judged dead meanwhile: not ours */
    return gen;
}

/* Wait (yielding) for a live claimer to publish; 1 if the slot changed. */
static int settle(fslot_t *f, uint64_t ctl) {
    for (int i = 0; i < CLAIM_SPINS; i++) {
        if (LD(&f->ctl) != ctl) return 1;
        sched_yield();
    }
    return LD(&f->ctl) != ctl;
}

static PyObject *H_flight_begin(Handle *h, PyObject *const *args, Py_ssize_t nargs) {
    const uint8_t *key; Py_ssize_t klen; uint64_t lease_ns, now;
    NARGS(2, 3, "flight_begin");
    if (get_key(args[0], &key, &klen) < 0 || get_seconds(args[1], "lease_seconds", &lease_ns) < 0 ||
        get_now(args, nargs, 2, &now) < 0)
        return NULL;
    if (!me_or_claim(h)) return Py_BuildValue("(iiI)", ROLE_NONE, -1, 0u);
    uint64_t kh = fs_hash(key, (size_t)klen, h->g.seed ^ SEED_FLIGHT);
    uint32_t n = h->g.flight_slots;
    for (int attempt = 0; attempt < 16; attempt++) {
        int64_t free_i = -1;
        uint64_t free_ctl = 0;
        int free_rank = 3; /* prefer EMPTY, then DONE (its followers may still poll), then abandoned */
        int again = 0;
        for (uint32_t p = 0; p < FLIGHT_PROBE && p < n && !again; p++) {
            uint32_t i = (uint32_t)((kh + p) % n);
            fslot_t *f = flight(h, i);
            uint64_t ctl = LD(&f->ctl);
            uint32_t st = CTL_ST(ctl);
            if (st == F_CLAIMING && !abandoned(h, f, ctl, now)) {
                /* its key may be ours, not yet written: wait for it, then look again */
                if (settle(f, ctl)) again = 1;
                continue;
            }
            if (st == F_RUNNING || st == F_CLAIMING) {
                uint64_t fk = LD(&f->key_hash);
                int gone = abandoned(h, f, ctl, now);
                if (LD(&f->ctl) != ctl) { again = 1; continue; }
                if (st == F_RUNNING && fk == kh && !gone) {
                    count(h, C_COALESCE_FOLLOWED, 1);
                    return Py_BuildValue("(iII)", ROLE_FOLLOW, i, CTL_GEN(ctl));
                }
                if (st == F_RUNNING && fk == kh) { /* our key, its leader gone: take it over */
                    int64_t gen = flight_claim(h, f, ctl, kh, now, lease_ns);
                    if (gen < 0) { again = 1; continue; }
                    count(h, C_COALESCE_TAKEOVERS, 1);
                    count(h, C_COALESCE_LED, 1);
                    return Py_BuildValue("(iIL)", ROLE_LEAD, i, (long long)gen);
                }
                if (!gone) continue;
            }
            int rank = (st == F_DONE_OK || st == F_DONE_ERROR) ? 1 : (st == F_RUNNING || st == F_CLAIMING) ? 2 : 0;
            if (rank < free_rank) { free_i = i; free_ctl = ctl; free_rank = rank; } /* EMPTY, DONE_*, abandoned, or a bad state */
        }
        if (again) continue;
        if (free_i < 0) break;
        int64_t gen = flight_claim(h, flight(h, (uint32_t)free_i), free_ctl, kh, now, lease_ns);
        if (gen < 0) continue;
        count(h, C_COALESCE_LED, 1);
        return Py_BuildValue("(iLL)", ROLE_LEAD, (long long)free_i, (long long)gen);
    }
    return Py_BuildValue("(iiI)", ROLE_NONE, -1, 0u);
}

static int flight_args(Handle *h, PyObject *const *args, uint32_t *slot, uint32_t *gen) {
    uint64_t s, g;
    if (get_u64(args[0], "slot", &s) < 0 || get_u64(args[1], "generation", &g) < 0) return -1;
    if (s >= h->g.flight_slots || g > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "no flight slot %llu generation %llu", (unsigned long long)s,
                     (unsigned long long)g);
        return -1;
    }
    *slot = (uint32_t)s; *gen = (uint32_t)g;
    return 0;
}

static PyObject *H_flight_poll(Handle *h, PyObject *const *args, Py_ssize_t nargs) {
    const uint8_t *key; Py_ssize_t klen; uint32_t i, gen; uint64_t now;
    NARGS(3, 4, "flight_poll");
    if (get_key(args[1], &key, &klen) < 0) return NULL;
    PyObject *sg[2] = {args[0], args[2]};
    if (flight_args(h, sg, &i, &gen) < 0 || get_now(args, nargs, 3, &now) < 0) return NULL;
    fslot_t *f = flight(h, i);
    uint64_t kh = fs_hash(key, (size_t)klen, h->g.seed ^ SEED_FLIGHT);
    uint64_t ctl = LD(&f->ctl), fk = LD(&f->key_hash);
    uint32_t st = CTL_ST(ctl);
    if (CTL_GEN(ctl) != gen || fk != kh || st == F_EMPTY || st > F_CLAIMING || LD(&f->ctl) != ctl)
        return Py_BuildValue("(is)", F_GONE, "");
    if (st == F_RUNNING || st == F_CLAIMING)
        return Py_BuildValue("(is)", abandoned(h, f, ctl, now) ? F_ABANDONED : F_RUNNING, "");
    if (st == F_DONE_OK) return Py_BuildValue("(is)", F_DONE_OK, "");
    char err[ERR_MAX];
    uint32_t n = LD(&f->err_len);
    if (n > ERR_MAX) n = ERR_MAX;
    memcpy(err, f->err, n);
    if (LD(&f->ctl) != ctl) return Py_BuildValue("(is)", F_GONE, ""); /* seqlock: reused meanwhile */
    PyObject *msg = PyUnicode_DecodeUTF8(err, n, "replace");
    return msg ? Py_BuildValue("(iN)", F_DONE_ERROR, msg) : NULL;
}

/* A follower becomes the leader of an ABANDONED flight: its new generation, or None. */
static PyObject *H_flight_takeover(Handle *h, PyObject *const *args, Py_ssize_t nargs) {
    const uint8_t *key; Py_ssize_t klen; uint32_t i, gen; uint64_t lease_ns, now;
    NARGS(4, 5, "flight_takeover");
    if (get_key(args[1], &key, &klen) < 0) return NULL;
    PyObject *sg[2] = {args[0], args[2]};
    if (flight_args(h, sg, &i, &gen) < 0 || get_seconds(args[3], "lease_seconds", &lease_ns) < 0 ||
        get_now(args, nargs, 4, &now) < 0)
        return NULL;
    if (!me_or_claim(h)) Py_RETURN_NONE;
    fslot_t *f = flight(h, i);
    uint64_t ctl = LD(&f->ctl), kh = fs_hash(key, (size_t)klen, h->g.seed ^ SEED_FLIGHT);
    if (CTL_GEN(ctl) != gen || CTL_ST(ctl) != F_RUNNING || LD(&f->key_hash) != kh || !abandoned(h, f, ctl, now))
        Py_RETURN_NONE;
    int64_t g = flight_claim(h, f, ctl, kh, now, lease_ns);
    if (g < 0) Py_RETURN_NONE;
    count(h, C_COALESCE_TAKEOVERS, 1);
    return PyLong_FromLongLong(g);
}

/* The leader of (slot, generation) publishes DONE_OK or DONE_ERROR(error).
 * False if that flight is no longer ours (taken over, released, reused). */
static PyObject *H_flight_end(Handle *h, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t i, gen;
    Py_ssize_t elen = 0;
    const char *err = "";
    NARGS(3, 4, "flight_end");
    if (flight_args(h, args, &i, &gen) < 0) return NULL;
    int ok = PyObject_IsTrue(args[2]);
    if (ok < 0) return NULL;
    if (nargs == 4 && !(err = PyUnicode_Check(args[3]) ? PyUnicode_AsUTF8AndSize(args[3], &elen) : NULL)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "error must be str");
        return NULL;
    }
    fslot_t *f = flight(h, i);
    long pid = (long)(h->me >> 32);
    uint64_t running = CTL(gen, pid, F_RUNNING), writing = CTL(gen, pid, F_CLAIMING);
    if (!h->me || LD(&f->owner) != h->me || !CAS(&f->ctl, running, writing)) Py_RETURN_FALSE;
    debug_point(DBG_FLIGHT_END);
    uint32_t n = 0;
    if (!ok) {
        n = elen > ERR_MAX ? ERR_MAX : (uint32_t)elen;
        memcpy(f->err, err, n);
    }
    ST(&f->err_len, n);
    int done = CAS(&f->ctl, writing, CTL(gen, pid, ok ? F_DONE_OK : F_DONE_ERROR));
    return PyBool_FromLong(done);
}

static PyObject *waiters_edit(Handle *h, PyObject *const *args, Py_ssize_t nargs, int delta) {
    uint32_t i, gen;
    NARGS(2, 2, delta > 0 ? "flight_join" : "flight_leave");
    if (flight_args(h, args, &i, &gen) < 0) return NULL;
    fslot_t *f = flight(h, i);
    if (CTL_GEN(LD(&f->ctl)) != gen) Py_RETURN_FALSE;
    uint32_t w = LD(&f->waiters);
    while ((delta > 0 || w > 0) && !CAS(&f->waiters, w, w + (uint32_t)delta)) { }
    Py_RETURN_TRUE;
}
static PyObject *H_flight_join(Handle *h, PyObject *const *a, Py_ssize_t n) { return waiters_edit(h, a, n, 1); }
static PyObject *H_flight_leave(Handle *h, PyObject *const *a, Py_ssize_t n) { return waiters_edit(h, a, n, -1); }

/* Release the flights of a dead pid: a CAS on the exact ctl seen, so a
 * flight a live process took over meanwhile (new generation) is untouched. */
static long release_flights(Handle *h, long pid, uint64_t now) {
    long released = 0;
    for (uint32_t i = 0; i < h->g.flight_slots; i++) {
        fslot_t *f = flight(h, i);
        uint64_t ctl = LD(&f->ctl);
        uint32_t st = CTL_ST(ctl);
        if ((st != F_RUNNING && st != F_CLAIMING) || CTL_PID(ctl) != (pid & 0xFFFFFF)) continue;
        if (!abandoned(h, f, ctl, now) || !pid_dead(pid)) continue;
        debug_point(DBG_REAP);
        /* followers see a new generation (GONE) and retry at once */
        if (CAS(&f->ctl, ctl, CTL(CTL_GEN(ctl) + 1, 0, F_EMPTY))) released++;
    }
    return released;
}

static PyObject *H_release_flights_of(Handle *h, PyObject *arg) {
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLong(release_flights(h, pid, now_ns()));
}

static PyObject *H_reap(Handle *h, PyObject *arg) {
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred()) return NULL;
    if (pid <= 0) return PyErr_Format(PyExc_ValueError, "reap() needs a pid > 0, got %ld", pid);
    long released = release_flights(h, pid, now_ns()); /* first: they name the owner word */
    int reaped = 0;
    for (uint32_t i = 0; i < h->g.stats_slots; i++) {
        sslot_t *s = sslot(h, i);
        uint64_t w = LD(&s->owner);
        if (w && (long)(w >> 32) == pid && owner_dead(s, w) && CAS(&s->owner, w, 0)) reaped = 1;
    }
    return PyBool_FromLong(reaped | (released > 0));
}

/*************************************************************************
 * Introspection: stats, check                                           *
 *************************************************************************/

static PyObject *H_stats_slots(Handle *h, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    for (uint32_t i = 0; out && i < h->g.stats_slots; i++) {
        sslot_t *s = sslot(h, i);
        uint64_t w = LD(&s->owner);
        PyObject *v = PyTuple_New(N_VALUES), *b = PyTuple_New(N_VALUES);
        for (int j = 0; v && b && j < N_VALUES; j++) {
            PyTuple_SET_ITEM(v, j, PyLong_FromUnsignedLongLong(__atomic_load_n(&s->v[j], __ATOMIC_RELAXED)));
            PyTuple_SET_ITEM(b, j, PyLong_FromUnsignedLongLong(__atomic_load_n(&s->base[j], __ATOMIC_RELAXED)));
        }
        PyObject *t = (v && b) ? Py_BuildValue("(IKKKNN)", i, (unsigned long long)w,
                                               (unsigned long long)LD(&s->start),
                                               (unsigned long long)LD(&s->claimed_ns), v, b) : NULL;
        if (!t) { Py_XDECREF(v); Py_XDECREF(b); Py_CLEAR(out); break; }
        if (PyList_Append(out, t) < 0) Py_CLEAR(out);
        Py_DECREF(t);
    }
    return out;
}

/* Each shard's seqlock version, read without its lock (even = no holder editing). */
static PyObject *H_shard_versions(Handle *h, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(h->g.shards);
    for (uint32_t si = 0; out && si < h->g.shards; si++) {
        PyObject *v = PyLong_FromUnsignedLongLong(LD(&shard(h, si)->version));
        if (!v) { Py_CLEAR(out); break; }
        PyList_SET_ITEM(out, si, v);
    }
    return out;
}

/* Geometry comes from the handle (validated at attach), counters from the segment. */
static PyObject *H_info(Handle *h, PyObject *Py_UNUSED(ignored)) {
    hdr_t *x = h->hdr;
    return Py_BuildValue("{sKsIsKsKsIsIsIsIsIsIsKsKsKsKsKsKsIsK}", "magic", (unsigned long long)LD(&x->magic),
                         "version", FS_VERSION, "size", (unsigned long long)h->g.size,
                         "max_entry", (unsigned long long)h->g.max_entry, "shards", h->g.shards,
                         "tag_slots", h->g.tag_slots, "flight_slots", h->g.flight_slots,
                         "stats_slots", h->g.stats_slots, "pages", h->g.pages, "buckets", h->g.buckets,
                         "global_seq", (unsigned long long)seq_now(h),
                         "valid_from", (unsigned long long)valid_from_now(h),
                         "lock_wipes", (unsigned long long)LD(&x->lock_wipes),
                         "checksum_failures", (unsigned long long)LD(&x->checksum_failures),
                         "corruption_wipes", (unsigned long long)LD(&x->corrupt_wipes),
                         "created_ns", (unsigned long long)x->created_ns, "my_slot",
                         h->my ? (unsigned)(h->my - sslot(h, 0)) : 0xFFFFFFFFu,
                         "me", (unsigned long long)h->me);
}

/* Per shard (under its lock, one at a time): entries, used bytes, wipes,
 * free pages, pages per class, live blocks per class, oldest created ns. */
static PyObject *H_shard_info(Handle *h, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    for (uint32_t si = 0; out && si < h->g.shards; si++) {
        shard_t *s = shard(h, si);
        uint64_t pages[NCLASS], live[NCLASS], oldest = UINT64_MAX;
        if (shard_lock(h, si) != FS_OK) { Py_DECREF(out); return fs_raise(FS_LOCK_BROKEN, "shard %u", si); }
        for (int c = 0; c < NCLASS; c++) { pages[c] = s->cls[c].pages; live[c] = s->cls[c].live; }
        pdesc_t *pd = pdescs(h, s);
        for (uint32_t p = 0; p < h->g.pages; p++) {
            int c = pd[p].cls;
            if (c >= NCLASS) continue;
            for (uint32_t i = 0; i < bpp(c); i++) {
                blk_t *b = blk_at(h, s, p, i, c);
                if (b->state == B_LIVE && b->created < oldest) oldest = b->created;
            }
        }
        uint64_t e = s->entries, u = s->used, w = s->wipes, fp = s->free_pages;
        shard_unlock(h, si);
        report_wipe(h);
        PyObject *tp = PyTuple_New(NCLASS), *tl = PyTuple_New(NCLASS);
        for (int c = 0; tp && tl && c < NCLASS; c++) {
            PyTuple_SET_ITEM(tp, c, PyLong_FromUnsignedLongLong(pages[c]));
            PyTuple_SET_ITEM(tl, c, PyLong_FromUnsignedLongLong(live[c]));
        }
        PyObject *t = (tp && tl) ? Py_BuildValue("(KKKKNNK)", (unsigned long long)e, (unsigned long long)u,
                                                 (unsigned long long)w, (unsigned long long)fp, tp, tl,
                                                 (unsigned long long)oldest) : NULL;
        if (!t) { Py_XDECREF(tp); Py_XDECREF(tl); Py_CLEAR(out); break; }
        if (PyList_Append(out, t) < 0) Py_CLEAR(out);
        Py_DECREF(t);
    }
    return out;
}

#define PROBLEM(...)                                                   \
    do {                                                               \
        PyObject *m_ = PyUnicode_FromFormat(__VA_ARGS__);              \
        if (!m_ || PyList_Append(out, m_) < 0) { Py_XDECREF(m_); err = 1; } \
        else Py_DECREF(m_);                                            \
    } while (0)

/* Checks a private SNAPSHOT of shard si (copied under its lock), so no lock
 * is held while it runs. Every ref is validated like on the hot path. */
static int check_shard(Handle *h, shard_t *s, uint32_t si, PyObject *out) {
    int err = 0;
    uint32_t np = h->g.pages, nb = h->g.buckets;
    pdesc_t *pd = pdescs(h, s);
    uint64_t counted = 0, free_blocks[NCLASS] = {0}, live_blocks[NCLASS] = {0}, used = 0, heads = 0, chunks = 0;
    uint8_t *seen = PyMem_Calloc(np ? np : 1, 1);
    if (!seen) { PyErr_NoMemory(); return 1; }
    for (uint32_t r = s->free_page_head, n = 0; r; r = pd[r - 1].next, n++) { /* I3 */
        if (r > np || n >= np || seen[r - 1]) { PROBLEM("I3 shard %u: free page list broken", si); goto done; }
        seen[r - 1] = 1;
        if (pd[r - 1].cls != PFREE) PROBLEM("I3 shard %u: page %u on free list has class %u", si, r - 1, pd[r - 1].cls);
        counted++;
    }
    if (counted != s->free_pages) PROBLEM("I3 shard %u: %llu free pages listed, %u counted", si, counted, s->free_pages);
    for (int c = 0; c < NCLASS; c++) {
        uint32_t n = 0;
        for (uint32_t r = s->cls[c].page_head; r; r = pd[r - 1].next, n++) {
            if (r > np || n >= np || seen[r - 1]) { PROBLEM("I3 shard %u: class %d page list broken", si, c); goto done; }
            seen[r - 1] = 1;
            if (pd[r - 1].cls != c) PROBLEM("I3 shard %u: page %u in class %d list has class %u", si, r - 1, c, pd[r - 1].cls);
        }
        if (n != s->cls[c].pages) PROBLEM("I3 shard %u: class %d lists %u pages, header says %u", si, c, n, s->cls[c].pages);
        counted += n;
    }
    if (counted != np) PROBLEM("I3 shard %u: %llu pages accounted for, %u exist", si, counted, np);
    for (uint32_t p = 0; p < np; p++) { /* I4 */
        int c = pd[p].cls;
        if (c == PFREE) continue;
        if (c >= NCLASS) { PROBLEM("I3 shard %u: page %u has class %d", si, p, c); continue; }
        for (uint32_t i = 0; i < bpp(c); i++) {
            blk_t *b = blk_at(h, s, p, i, c);
            if (b->state == B_FREE) free_blocks[c]++;
            else if (b->state == B_LIVE) { live_blocks[c]++; heads++; used += CLASS_SIZE[c]; }
            else if (b->state == B_CHUNK) { live_blocks[c]++; chunks++; used += CLASS_SIZE[c]; }
            else PROBLEM("I4 shard %u: block %u/%u in state %u", si, p, i, b->state);
        }
    }
    uint64_t maxb = (uint64_t)np * (PAGE / 64) + 1;
    for (int c = 0; c < NCLASS; c++) {
        uint64_t n = 0;
        uint32_t prev = 0;
        for (uint32_t r = s->cls[c].free_head; r; n++) {
            blk_t *b = free_blk(h, s, r, c);
            if (n > maxb || !b) { PROBLEM("I4 shard %u: class %d free list broken", si, c); goto done; }
            if (b->aux != prev) PROBLEM("I4 shard %u: class %d free list back link broken", si, c);
            prev = r;
            r = b->next;
        }
        if (n != free_blocks[c]) PROBLEM("I4 shard %u: class %d has %llu free blocks, %llu listed", si, c, free_blocks[c], n);
        if (live_blocks[c] != s->cls[c].live) PROBLEM("I7 shard %u: class %d live %u, found %llu", si, c, s->cls[c].live, live_blocks[c]);
    }
    uint64_t reached = 0, chained = 0;
    for (uint32_t bi = 0; bi < nb; bi++) { /* I5, I6 */
        uint32_t n = 0;
        for (uint32_t r = buckets(s)[bi]; r; n++) {
            int c;
            blk_t *b = blk_ref(h, s, r, &c);
            if (n >= CHAIN_MAX || !b) { PROBLEM("I5 shard %u: bucket %u chain broken or longer than %d", si, bi, CHAIN_MAX); goto done; }
            reached++;
            if (b->state != B_LIVE) { PROBLEM("I5 shard %u: bucket %u holds a block in state %u", si, bi, b->state); goto done; }
            if (shard_index(h, b->key_hash) != si || bucket_index(h, b->key_hash) != bi)
                PROBLEM("I5 shard %u: entry in bucket %u hashes elsewhere", si, bi);
            if (!head_fits(h, b, c)) { PROBLEM("I6 shard %u: entry lengths do not fit its block", si); goto done; }
            if (meta_check(b, r) != b->check) PROBLEM("I6 shard %u: entry header checksum mismatch", si);
            for (uint32_t d = 0; d < b->ndeps; d++)
                if (deps_of(b)[d] >= h->g.tag_slots) PROBLEM("I6 shard %u: dep slot out of range", si);
            uint32_t need = chunks_needed(b), got = 0, first = head_first(b), done = first;
            uint8_t *val = PyMem_Malloc((size_t)b->value_len + 1);
            if (!val) { err = 1; PyErr_NoMemory(); goto done; }
            memcpy(val, key_of(b) + b->key_len, first);
            for (uint32_t cr = b->aux; cr; got++) {
                int cc;
                blk_t *ch = blk_ref(h, s, cr, &cc);
                if (got >= need || !ch || cc != NCLASS - 1 || ch->state != B_CHUNK || ch->aux != r || ch->key_len != b->gen) {
                    PROBLEM("I6 shard %u: chunk chain broken", si);
                    break;
                }
                uint32_t k = b->value_len - done;
                if (k > PAGE - CHUNK_HDR) k = PAGE - CHUNK_HDR;
                memcpy(val + done, (uint8_t *)ch + CHUNK_HDR, k);
                done += k;
                cr = ch->next;
            }
            chained += got;
            if (got != need) PROBLEM("I6 shard %u: entry has %u chunks, needs %u", si, got, need);
            else if (fs_hash(val, b->value_len, 0) != b->vhash) PROBLEM("I6 shard %u: value checksum mismatch", si);
            PyMem_Free(val);
            r = b->next;
        }
    }
    if (reached != heads) PROBLEM("I5 shard %u: %llu live entries, %llu reachable from the index", si, heads, reached);
    if (chained != chunks) PROBLEM("I6 shard %u: %llu chunks, %llu owned by entries", si, chunks, chained);
    if (heads != s->entries) PROBLEM("I7 shard %u: entries says %llu, found %llu", si, (unsigned long long)s->entries, heads);
    if (used != s->used) PROBLEM("I7 shard %u: used says %llu B, found %llu B", si, (unsigned long long)s->used, used);
done:
    PyMem_Free(seen);
    return err;
}

/* fsck. Shards are checked on a snapshot copied under the lock (the lock is
 * held for one memcpy of the shard, never for the check); a shard found
 * inconsistent is wiped, counted and reported. */
static PyObject *H_check(Handle *h, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    int err = 0;
    if (!out) return NULL;
    hdr_t *x = h->hdr;
    if (LD(&x->magic) != FS_MAGIC || x->version != FS_VERSION) PROBLEM("I1 header magic/version changed");
    if (x->shards != h->g.shards || x->pages != h->g.pages || x->buckets != h->g.buckets ||
        x->tag_slots != h->g.tag_slots || x->off_shards != h->g.off_shards || x->shard_stride != h->g.stride)
        PROBLEM("I11 header geometry differs from the geometry validated at attach");
    uint64_t *tags = tags_of(h), top = 0;
    uint32_t ahead = 0;
    for (uint32_t i = 0; i < h->g.tag_slots; i++) top = max2(top, tag_last(tags, i));
    uint64_t seq = seq_now(h);
    if (top > seq) {
        for (uint32_t i = 0; i < 2 * h->g.tag_slots; i++) ahead += repair_ahead(h, &tags[i]);
        PROBLEM("I2 a tag was invalidated at %llu, after the global sequence %llu (%u copies lowered to it)",
                top, seq, ahead);
    }
    if (valid_from_now(h) > seq) {
        PROBLEM("I2 valid_from %llu is ahead of the global sequence %llu (lowered to it)",
                (unsigned long long)valid_from_now(h), seq);
        repair_ahead(h, &x->valid_from);
        repair_ahead(h, &x->valid_from_b);
    }
    shard_t *snap = PyMem_Malloc((size_t)h->g.stride);
    if (!snap) { Py_DECREF(out); return PyErr_NoMemory(); }
    for (uint32_t si = 0; !err && si < h->g.shards; si++) {
        if (shard_lock(h, si) != FS_OK) { PROBLEM("I10 shard %u lock is not recoverable", si); continue; }
        int odd = h->odd_at_lock;
        memcpy(snap, shard(h, si), (size_t)h->g.stride);
        shard_unlock(h, si);
        if (odd) PROBLEM("I14 shard %u: its version was odd while its lock was free (made even again)", si);
        report_wipe(h);
        Py_ssize_t before = PyList_GET_SIZE(out);
        err = check_shard(h, snap, si, out);
        if (!err && PyList_GET_SIZE(out) > before && shard_lock(h, si) == FS_OK) {
            wipe_corrupt_locked(h, si, "check() found it inconsistent");
            shard_unlock(h, si);
            report_wipe(h);
            PROBLEM("I0 shard %u was wiped (an empty shard is always correct)", si);
        }
    }
    PyMem_Free(snap);
    for (uint32_t i = 0; !err && i < h->g.flight_slots; i++) { /* I8 */
        fslot_t *f = flight(h, i);
        uint64_t ctl = LD(&f->ctl), owner = LD(&f->owner), dl = LD(&f->deadline);
        uint32_t st = CTL_ST(ctl);
        if (st > F_CLAIMING) { /* no such state: free the slot (its followers see GONE) */
            PROBLEM("I8 flight %u in state %u (freed)", i, st);
            CAS(&f->ctl, ctl, CTL(CTL_GEN(ctl) + 1, 0, F_EMPTY));
        }
        if (st == F_RUNNING && LD(&f->ctl) == ctl &&
            ((long)(owner >> 32) != CTL_PID(ctl) || (dl & 0xFFFFFF) != (CTL_GEN(ctl) & 0xFFFFFF)))
            PROBLEM("I8 flight %u runs without its owner's words", i);
        if (LD(&f->err_len) > ERR_MAX) PROBLEM("I8 flight %u error length %u", i, LD(&f->err_len));
    }
    for (uint32_t i = 0; !err && i < h->g.stats_slots; i++) { /* I9 */
        sslot_t *s = sslot(h, i);
        uint64_t w = LD(&s->owner);
        if (w && !(w >> 32)) {
            PROBLEM("I9 stats slot %u owned by pid 0 (freed)", i);
            CAS(&s->owner, w, 0);
        }
        for (int j = 0; j < N_VALUES; j++) {
            uint64_t b = LD(&s->base[j]), v = LD(&s->v[j]);
            if (b > v) { /* the owner's share of it restarts at 0; totals stay monotonic */
                PROBLEM("I9 stats slot %u value %d below its base (base reset)", i, j);
                CAS(&s->base[j], b, v);
            }
        }
    }
    if (err) { Py_DECREF(out); return NULL; }
    return out;
}

/*************************************************************************
 * Segment: plan, create, attach (validates the geometry once), close    *
 *************************************************************************/

typedef struct { uint64_t off_tags, off_flights, off_stats, off_shards, stride; uint32_t pages, buckets; } plan_t;

static uint64_t align(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

static uint64_t pages_off(uint32_t pages, uint32_t nb) {
    return 4096 + align((uint64_t)nb * 4 + (uint64_t)pages * sizeof(pdesc_t), 4096);
}
/* pages, then the hit map: one bit per 64 B unit (128 B per page), 4096-aligned */
static uint64_t shard_bytes(uint32_t pages, uint32_t nb) {
    return pages_off(pages, nb) + (uint64_t)pages * PAGE + align((uint64_t)pages * (PAGE / 64 / 8), 4096);
}

static int plan_layout(uint64_t size, uint32_t shards, uint32_t tag_slots, uint32_t flight_slots,
                       uint32_t stats_slots, plan_t *pl) {
    if (!shards || !tag_slots || (tag_slots & (tag_slots - 1)) || !flight_slots || !stats_slots) return FS_BAD_GEOMETRY;
    pl->off_tags = HDR_SIZE;
    pl->off_flights = align(pl->off_tags + (uint64_t)tag_slots * 16, 4096); /* two copies per tag */
    pl->off_stats = align(pl->off_flights + (uint64_t)flight_slots * sizeof(fslot_t), 4096);
    pl->off_shards = align(pl->off_stats + (uint64_t)stats_slots * sizeof(sslot_t), 4096);
    if (size <= pl->off_shards) return FS_TOO_SMALL;
    uint64_t per = (size - pl->off_shards) / shards;
    uint64_t pages = per / PAGE;
    if (pages >= MAX_PAGES) pages = MAX_PAGES - 1;
    for (; pages > 0; pages--) {
        uint64_t nb = 64;
        while (nb < pages * (PAGE / 512)) nb <<= 1;
        if (shard_bytes((uint32_t)pages, (uint32_t)nb) <= per) { pl->buckets = (uint32_t)nb; break; }
    }
    if (pages == 0) return FS_TOO_SMALL;
    pl->pages = (uint32_t)pages;
    pl->stride = shard_bytes(pl->pages, pl->buckets);
    return FS_OK;
}

static void geo_fill(geo_t *g, uint64_t size, uint64_t max_entry, uint64_t seed, uint32_t shards, uint32_t tags,
                     uint32_t flights, uint32_t stats, const plan_t *pl) {
    g->size = size; g->max_entry = max_entry; g->seed = seed;
    g->shards = shards; g->tag_slots = tags; g->flight_slots = flights; g->stats_slots = stats;
    g->off_tags = pl->off_tags; g->off_flights = pl->off_flights; g->off_stats = pl->off_stats;
    g->off_shards = pl->off_shards; g->stride = pl->stride; g->pages = pl->pages; g->buckets = pl->buckets;
    g->pages_off = pages_off(pl->pages, pl->buckets);
    g->nrefs = pl->pages * (PAGE / 16);
}

/* The header's geometry must be exactly what plan_layout gives for its
 * size and table counts: then every offset derived from it is in bounds. */
static const char *geo_validate(hdr_t *x, uint64_t size, geo_t *g) {
    plan_t pl;
    if (x->header_size != HDR_SIZE) return "header size";
    if (!x->shards || x->shards > 65536) return "shards (0 or above 65536)";
    if (!x->tag_slots || (x->tag_slots & (x->tag_slots - 1)) || x->tag_slots > (1u << 28)) return "tag_slots (not a power of two)";
    if (!x->flight_slots || x->flight_slots > (1u << 24)) return "flight_slots";
    if (!x->stats_slots || x->stats_slots > 65536) return "stats_slots";
    if (!x->max_entry || x->max_entry > size || x->max_entry > UINT32_MAX) return "max_entry";
    if (plan_layout(size, x->shards, x->tag_slots, x->flight_slots, x->stats_slots, &pl) != FS_OK) return "size";
    if (pl.pages != x->pages || pl.buckets != x->buckets || pl.off_tags != x->off_tags ||
        pl.off_flights != x->off_flights || pl.off_stats != x->off_stats || pl.off_shards != x->off_shards ||
        pl.stride != x->shard_stride || pl.off_shards + (uint64_t)x->shards * pl.stride > size)
        return "offsets, pages or buckets";
    geo_fill(g, size, x->max_entry, x->seed, x->shards, x->tag_slots, x->flight_slots, x->stats_slots, &pl);
    return NULL;
}

static PyTypeObject HandleType;

static Handle *map_handle(int fd, uint64_t size) {
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { PyErr_SetFromErrno(PyExc_OSError); return NULL; }
    Handle *h = PyObject_New(Handle, &HandleType);
    if (!h) { munmap(p, (size_t)size); return NULL; }
    h->base = p; h->hdr = p; h->my = NULL; h->me = 0; h->claim_failed = 0; h->last_wiped = -1;
    h->wipe_reason = NULL; h->why = NULL; h->odd_at_lock = 0;
    memset(&h->g, 0, sizeof h->g);
    h->g.size = size;
    memset(h->dummy, 0, sizeof h->dummy);
    return h;
}

static PyObject *M_plan(PyObject *Py_UNUSED(m), PyObject *args) {
    unsigned long long size; unsigned shards, tags, flights, stats;
    if (!PyArg_ParseTuple(args, "KIIII", &size, &shards, &tags, &flights, &stats)) return NULL;
    plan_t pl;
    if (shards == 0) return PyErr_Format(PyExc_ValueError, "shards must be >= 1");
    if (plan_layout(size, shards, tags, flights, stats, &pl) != FS_OK) Py_RETURN_NONE;
    return Py_BuildValue("{sIsIsKsK}", "pages", pl.pages, "buckets", pl.buckets, "shard_stride",
                         (unsigned long long)pl.stride, "off_shards", (unsigned long long)pl.off_shards);
}

/* create(fd, size, max_entry, shards, tags, flights, stats, seed=None): a
 * random hash seed unless a test passes one. */
static PyObject *M_create(PyObject *Py_UNUSED(m), PyObject *args) {
    int fd; unsigned long long size, max_entry; unsigned shards, tags, flights, stats;
    PyObject *seed_o = Py_None;
    if (!PyArg_ParseTuple(args, "iKKIIII|O", &fd, &size, &max_entry, &shards, &tags, &flights, &stats, &seed_o)) return NULL;
    plan_t pl;
    if (!shards || !tags || (tags & (tags - 1)) || !flights || !stats || !max_entry || max_entry > UINT32_MAX)
        return PyErr_Format(PyExc_ValueError, "bad geometry: shards %u, tag_slots %u (power of two), "
                            "flight_slots %u, stats_slots %u, max_entry %llu", shards, tags, flights, stats, max_entry);
    int st = plan_layout(size, shards, tags, flights, stats, &pl);
    if (st != FS_OK) return fs_raise(FS_TOO_SMALL, "arena of %llu B cannot hold its tables", size);
    uint64_t seed;
    if (seed_o != Py_None) {
        if (get_u64(seed_o, "seed", &seed) < 0) return NULL;
    } else if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        seed = now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&seed;
    }
    Handle *h = map_handle(fd, size);
    if (!h) return NULL;
    hdr_t *x = h->hdr;
    memset(x, 0, HDR_SIZE);
    x->version = FS_VERSION; x->header_size = HDR_SIZE; x->size = size; x->max_entry = max_entry;
    x->shards = shards; x->tag_slots = tags; x->flight_slots = flights; x->stats_slots = stats;
    x->pages = pl.pages; x->buckets = pl.buckets; x->off_tags = pl.off_tags; x->off_flights = pl.off_flights;
    x->off_stats = pl.off_stats; x->off_shards = pl.off_shards; x->shard_stride = pl.stride;
    x->created_ns = now_ns();
    x->seed = seed;
    geo_fill(&h->g, size, max_entry, seed, shards, tags, flights, stats, &pl);
    for (uint32_t si = 0; si < shards; si++) {
        shard_t *s = shard(h, si);
        memset(s, 0, sizeof *s);
        mutex_init_robust(&s->mu);
        shard_wipe_locked(h, s);
    }
    /* fallocate gave zeroed pages: tags, flights and stats start empty */
    __atomic_store_n(&x->magic, FS_MAGIC, __ATOMIC_SEQ_CST); /* last: attachers never see half a header */
    return (PyObject *)h;
}

static PyObject *M_attach(PyObject *Py_UNUSED(m), PyObject *args) {
    int fd; unsigned long long size;
    if (!PyArg_ParseTuple(args, "iK", &fd, &size)) return NULL;
    if (size < HDR_SIZE) return fs_raise(FS_BAD_MAGIC, "segment of %llu B is smaller than an arena header", size);
    Handle *h = map_handle(fd, size);
    if (!h) return NULL;
    hdr_t *x = h->hdr;
    unsigned long long magic = LD(&x->magic);
    if (magic != FS_MAGIC) {
        Py_DECREF(h); /* unmaps: x is gone from here on */
        return fs_raise(FS_BAD_MAGIC, "not a fraiseshm arena (or still being created): magic %llu", magic);
    }
    if (x->version != FS_VERSION || x->size != size) {
        unsigned v = x->version;
        unsigned long long sz = x->size;
        Py_DECREF(h);
        return fs_raise(FS_BAD_VERSION, "arena layout version %u (size %llu B), this build reads version %u "
                        "(file size %llu B); restart the service so the master recreates it", v, sz,
                        FS_VERSION, size);
    }
    const char *bad = geo_validate(x, size, &h->g);
    if (bad) {
        unsigned sh = x->shards, tg = x->tag_slots, pg = x->pages;
        Py_DECREF(h);
        return fs_raise(FS_BAD_GEOMETRY, "arena header geometry is inconsistent (%s: shards %u, tag_slots %u, "
                        "pages %u); the segment is corrupt: restart the service so the master recreates it",
                        bad, sh, tg, pg);
    }
    return (PyObject *)h;
}

static PyObject *H_close(Handle *h, PyObject *Py_UNUSED(ignored)) {
    if (h->base) munmap(h->base, (size_t)h->g.size);
    h->base = NULL; h->hdr = NULL; h->my = NULL;
    Py_RETURN_NONE;
}

static void H_dealloc(Handle *h) {
    if (h->base) munmap(h->base, (size_t)h->g.size);
    PyObject_Free(h);
}

/*************************************************************************
 * Module                                                                *
 *************************************************************************/

static PyObject *M_hash(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs) {
    const uint8_t *p; Py_ssize_t n; uint64_t seed = 0;
    NARGS(1, 2, "hash");
    if (get_bytes(args[0], "data", &p, &n) < 0 || (nargs == 2 && get_u64(args[1], "seed", &seed) < 0)) return NULL;
    return PyLong_FromUnsignedLongLong(fs_hash(p, (size_t)n, seed));
}

static PyObject *M_set_hooks(PyObject *Py_UNUSED(m), PyObject *args) {
    PyObject *errors, *hook;
    if (!PyArg_ParseTuple(args, "O!O", &PyDict_Type, &errors, &hook)) return NULL;
    Py_XSETREF(error_map, Py_NewRef(errors));
    Py_XSETREF(wipe_hook, hook == Py_None ? NULL : Py_NewRef(hook));
    Py_RETURN_NONE;
}

static PyObject *M_debug_pause_in(PyObject *Py_UNUSED(m), PyObject *args) {
    dbg_resume = -1;
    if (!PyArg_ParseTuple(args, "ii|i", &dbg_point, &dbg_fd, &dbg_resume)) return NULL;
    Py_RETURN_NONE;
}

/* optimistic_reads(flag=None): this process's get path (optimistic or locked), the old setting. */
static PyObject *M_optimistic_reads(PyObject *Py_UNUSED(m), PyObject *args) {
    int prev = opt_enabled, flag = -1;
    if (!PyArg_ParseTuple(args, "|p", &flag)) return NULL;
    if (flag >= 0) opt_enabled = flag;
    return PyBool_FromLong(prev);
}

/* This process's optimistic read counts since it started (fork inherits them). */
static PyObject *M_read_stats(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{sKsKsKsKsK}", "answered", (unsigned long long)opt_stats[OS_ANSWERED],
                         "retries", (unsigned long long)opt_stats[OS_RETRIES],
                         "fallbacks", (unsigned long long)opt_stats[OS_FALLBACKS],
                         "anomalies", (unsigned long long)opt_stats[OS_ANOMALIES],
                         "odd_waits", (unsigned long long)opt_stats[OS_ODD]);
}

static PyObject *M_proc_start(PyObject *Py_UNUSED(m), PyObject *arg) {
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred()) return NULL;
    uint64_t st;
    proc_stat(pid, &st);
    return PyLong_FromUnsignedLongLong(st);
}

/* Bound methods are only valid while mapped: every method checks once. */
#define GUARD(fn)                                                                         \
    static PyObject *G_##fn(Handle *h, PyObject *const *a, Py_ssize_t n) {                \
        if (!h->base) return PyErr_Format(PyExc_ValueError, "arena is closed");          \
        return H_##fn(h, a, n);                                                           \
    }
#define GUARD0(fn)                                                                        \
    static PyObject *G_##fn(Handle *h, PyObject *a) {                                     \
        if (!h->base) return PyErr_Format(PyExc_ValueError, "arena is closed");          \
        return H_##fn(h, a);                                                              \
    }
GUARD(get) GUARD(get_with_checksum) GUARD(get_stale) GUARD(peek) GUARD(put) GUARD(invalidate) GUARD(incr)
GUARD(flight_begin) GUARD(flight_poll) GUARD(flight_takeover) GUARD(flight_end) GUARD(flight_join)
GUARD(flight_leave)
GUARD0(flush) GUARD0(current_seq) GUARD0(observe) GUARD0(register) GUARD0(forked) GUARD0(reap)
GUARD0(release_flights_of) GUARD0(stats_slots) GUARD0(info) GUARD0(shard_info) GUARD0(check)
GUARD0(shard_versions)

#define FAST(name) {#name, (PyCFunction)(void (*)(void))G_##name, METH_FASTCALL, NULL}
#define NOARG(name) {#name, (PyCFunction)G_##name, METH_NOARGS, NULL}
#define ONEARG(name) {#name, (PyCFunction)G_##name, METH_O, NULL}
static PyMethodDef H_methods[] = {
    FAST(get), FAST(get_with_checksum), FAST(get_stale), FAST(peek), FAST(put), FAST(invalidate), FAST(incr),
    FAST(flight_begin), FAST(flight_poll), FAST(flight_takeover), FAST(flight_end), FAST(flight_join),
    FAST(flight_leave), NOARG(flush), NOARG(current_seq), ONEARG(observe), NOARG(register),
    NOARG(forked), ONEARG(reap), ONEARG(release_flights_of), NOARG(stats_slots), NOARG(info),
    NOARG(shard_info), NOARG(check), NOARG(shard_versions), {"close", (PyCFunction)H_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyTypeObject HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "fraiseshm._native.Handle",
    .tp_basicsize = sizeof(Handle),
    .tp_dealloc = (destructor)H_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A mapped arena; create with create() or attach().",
    .tp_methods = H_methods,
};

static PyMethodDef M_methods[] = {
    {"plan", M_plan, METH_VARARGS, NULL},
    {"create", M_create, METH_VARARGS, NULL},
    {"attach", M_attach, METH_VARARGS, NULL},
    {"hash", (PyCFunction)(void (*)(void))M_hash, METH_FASTCALL, NULL},
    {"set_hooks", M_set_hooks, METH_VARARGS, NULL},
    {"_debug_pause_in", M_debug_pause_in, METH_VARARGS, NULL},
    {"proc_start", M_proc_start, METH_O, NULL},
    {"optimistic_reads", M_optimistic_reads, METH_VARARGS, NULL},
    {"read_stats", M_read_stats, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef M_def = {PyModuleDef_HEAD_INIT, "fraiseshm._native", NULL, -1, M_methods,
                                   NULL, NULL, NULL, NULL};

#define ADD_INT(name, v) (PyModule_AddIntConstant(m, name, v) < 0)

PyMODINIT_FUNC PyInit__native(void) {
    pthread_mutex_t probe;
    mutex_init_robust(&probe); /* the type word every shard mutex must carry */
    mu_kind = probe.__data.__kind;
    pthread_mutex_destroy(&probe);
    if (PyType_Ready(&HandleType) < 0) return NULL;
    PyObject *m = PyModule_Create(&M_def);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Handle", (PyObject *)&HandleType) < 0) { Py_DECREF(m); return NULL; }
    PyObject *sizes = PyTuple_New(NCLASS), *bounds = PyTuple_New(N_BUCKETS - 1);
    for (int c = 0; sizes && c < NCLASS; c++) PyTuple_SET_ITEM(sizes, c, PyLong_FromUnsignedLong(CLASS_SIZE[c]));
    for (int b = 0; bounds && b < N_BUCKETS - 1; b++) PyTuple_SET_ITEM(bounds, b, PyLong_FromUnsignedLongLong(HIST_BOUND_NS[b]));
    if (PyModule_AddObject(m, "CLASS_SIZES", sizes) < 0 || PyModule_AddObject(m, "HIST_BOUNDS_NS", bounds) < 0 ||
        ADD_INT("VERSION", FS_VERSION) || ADD_INT("PAGE", PAGE) || ADD_INT("BLK_HDR", BLK_HDR) ||
        ADD_INT("CHUNK_HDR", CHUNK_HDR) || ADD_INT("HDR_SIZE", HDR_SIZE) || ADD_INT("N_COUNTERS", N_COUNTERS) ||
        ADD_INT("N_VALUES", N_VALUES) || ADD_INT("V_HIST", V_HIST) || ADD_INT("V_HIST_SUM", V_HIST_SUM) ||
        ADD_INT("N_BUCKETS", N_BUCKETS) || ADD_INT("ERR_MAX", ERR_MAX) || ADD_INT("MAX_KEY", MAX_KEY) ||
        ADD_INT("CHAIN_MAX", CHAIN_MAX) || ADD_INT("OPT_TRIES", OPT_TRIES) || ADD_INT("FS_TOO_LARGE", FS_TOO_LARGE) || ADD_INT("FS_FULL", FS_FULL) ||
        ADD_INT("FS_LOCK_BROKEN", FS_LOCK_BROKEN) || ADD_INT("FS_BAD_MAGIC", FS_BAD_MAGIC) ||
        ADD_INT("FS_BAD_VERSION", FS_BAD_VERSION) || ADD_INT("FS_TOO_SMALL", FS_TOO_SMALL) ||
        ADD_INT("FS_BAD_GEOMETRY", FS_BAD_GEOMETRY)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
