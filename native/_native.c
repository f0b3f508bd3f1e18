/* fraiseshm._native: the few things Python cannot do on a shared mapping.
 *
 * Robust process-shared mutexes (one per shard), 64-bit atomics and CAS on
 * the mapped buffer, the key/tag hash, and every structural edit of the
 * arena as ONE call made under one shard lock. The layout, its invariants,
 * the lock order and the crash-recovery story are documented in
 * fraiseshm/arena/layout.py; the offsets here are asserted against it by
 * tests/unit/test_native.py.
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
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/*************************************************************************
 * Layout constants (mirrored in fraiseshm/arena/layout.py)              *
 *************************************************************************/

#define FS_MAGIC 0x314d485345534946ULL /* "FISESHM1" in memory order */
#define FS_VERSION 1u
#define HDR_SIZE 4096u
#define PAGE 65536u
#define BLK_HDR 72u
#define CHUNK_HDR 16u
#define NCLASS 20
#define PFREE 0xFFu
#define N_VALUES 64 /* per stats slot: counters 0..31, histogram 32..48, sum 49 */
#define N_COUNTERS 24
#define N_BUCKETS 17
#define V_HIST 32
#define V_HIST_SUM 49
#define ERR_MAX 216
#define FLIGHT_PROBE 8
#define EVICT_BATCH 8
#define STEAL_EVERY 16
#define MAX_KEY 1024

static const uint32_t CLASS_SIZE[NCLASS] = {
    64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048,
    3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 65536};
static const uint64_t HIST_BOUND_NS[N_BUCKETS - 1] = {
    100000ULL, 250000ULL, 500000ULL, 1000000ULL, 2500000ULL, 5000000ULL,
    10000000ULL, 25000000ULL, 50000000ULL, 100000000ULL, 250000000ULL,
    500000000ULL, 1000000000ULL, 2500000000ULL, 5000000000ULL, 10000000000ULL};

enum { FS_OK = 0, FS_STALE, FS_TOO_LARGE, FS_FULL, FS_LOCK_BROKEN, FS_BAD_MAGIC,
       FS_BAD_VERSION, FS_TOO_SMALL, FS_NOMEM, FS_SYS };
enum { B_FREE = 0, B_LIVE = 1, B_CHUNK = 2, B_WRITING = 3 };
enum { F_EMPTY = 0, F_RUNNING = 1, F_DONE_OK = 2, F_DONE_ERROR = 3, F_CLAIMING = 4,
       F_ABANDONED = 5, F_GONE = 6 };
enum { ROLE_NONE = 0, ROLE_LEAD = 1, ROLE_FOLLOW = 2 };
enum { C_HITS = 1, C_MISSES = 2, C_PUTS = 4, C_PUT_REJECTED_STALE = 5, C_EVICTIONS = 6,
       C_INVALIDATIONS = 7, C_TAGS_BUMPED = 8, C_LOCK_WIPES = 9, C_ENTRY_TOO_LARGE = 10,
       C_COALESCE_LED = 11, C_COALESCE_FOLLOWED = 12, C_COALESCE_TAKEOVERS = 13,
       C_STALE_HITS = 19, C_CHECKSUM_FAILURES = 20, C_FLUSHES = 21, C_BYTES_READ = 22,
       C_BYTES_WRITTEN = 23 };
enum { DBG_NONE = 0, DBG_LOCK_HELD = 1, DBG_PUT_WRITE = 2, DBG_EVICT = 3, DBG_TAG_BUMP = 4,
       DBG_FLIGHT_CLAIM = 5 };

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
    uint8_t pad0[24];         /* +104 */
    uint64_t global_seq;      /* +128 atomic: ++ per invalidate/flush */
    uint64_t valid_from;      /* +136 atomic max: entries filled before are invalid */
    uint64_t lock_wipes;      /* +144 atomic: shards wiped after EOWNERDEAD */
    uint32_t nonce_ctr;       /* +152 atomic: registration nonces */
    uint32_t pad1;            /* +156 */
    uint64_t checksum_failures; /* +160 atomic */
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
    pthread_mutex_t mu;       /* +0 robust, process-shared */
    uint8_t mu_pad[64 - sizeof(pthread_mutex_t)];
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
    uint8_t ref;              /* CLOCK second-chance bit, set by reads */
    uint16_t ndeps;           /* u32 tag slot indexes following the header */
    uint32_t next;            /* LIVE: index chain; FREE: free list; CHUNK: next chunk */
    uint32_t aux;             /* LIVE: first chunk; FREE: free prev; CHUNK: head */
    uint32_t key_len;
    uint32_t value_len;
    uint32_t pad;
    uint64_t key_hash;
    uint64_t fill_seq;
    uint64_t expiry;          /* CLOCK_MONOTONIC ns; UINT64_MAX = none */
    uint64_t created;
    uint64_t vhash;           /* hash of the value bytes: the ETag */
    uint64_t check;           /* hash of the fields above + deps + key */
} blk_t;

typedef struct {              /* flight slot, 256 B */
    uint64_t ctl;             /* generation << 32 | F_* state */
    uint64_t key_hash;
    uint64_t lease;           /* owner pid << 32 | registration nonce; 0 = none */
    uint64_t deadline;        /* (ns >> 20) << 24 | low 24 bits of the lease nonce */
    uint32_t waiters;
    uint32_t err_len;
    char err[ERR_MAX];
} fslot_t;

typedef struct {              /* stats slot, 1088 B */
    uint64_t owner;           /* pid << 32 | nonce; 0 = free */
    uint64_t start;           /* owner's start time, clock ticks since boot */
    uint64_t claimed_ns;
    uint64_t pad[5];
    uint64_t v[N_VALUES];     /* written by the owner only, never decrease */
    uint64_t base[N_VALUES];  /* v at claim time: this owner's share is v - base */
} sslot_t;

_Static_assert(offsetof(hdr_t, global_seq) == 128, "header layout");
_Static_assert(offsetof(hdr_t, checksum_failures) == 160, "header layout");
_Static_assert(sizeof(blk_t) == BLK_HDR, "block header");
_Static_assert(sizeof(fslot_t) == 256, "flight slot");
_Static_assert(sizeof(sslot_t) == 1088, "stats slot");
_Static_assert(sizeof(shard_t) <= 4096, "shard header");
_Static_assert(sizeof(pthread_mutex_t) <= 64, "mutex");

#define LD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define ST(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define CAS(p, e, d) __atomic_compare_exchange_n((p), &(e), (d), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)

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
    h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32;
    return h;
}

#define SEED_TAG 0x7461677300000000ULL
#define SEED_FLIGHT 0x666c696768740000ULL

/*************************************************************************
 * Handle object and addressing                                          *
 *************************************************************************/

typedef struct {
    PyObject_HEAD
    uint8_t *base;
    uint64_t size;
    hdr_t *hdr;
    sslot_t *my;              /* this process's stats slot, NULL until claimed */
    uint64_t me;              /* its owner word, also our lease word */
    int claim_failed;
    int last_wiped;           /* shard wiped during this call, -1 if none */
    uint64_t dummy[N_VALUES]; /* counts when no stats slot could be claimed */
} Handle;

static PyObject *error_map = NULL; /* {status code: exception class}, from Python */
static PyObject *wipe_hook = NULL; /* callable(shard), called after the lock is released */
static int dbg_point = DBG_NONE, dbg_fd = -1;

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Test hook: block forever at a chosen point inside a critical section so a
 * test can SIGKILL us there. Costs one predictable branch. */
static void debug_point(int point) {
    if (dbg_point != point) return;
    if (write(dbg_fd, "!", 1) < 0) { /* the killer will time out */ }
    for (;;) pause();
}

static inline uint64_t *tags_of(Handle *h) { return (uint64_t *)(h->base + h->hdr->off_tags); }
static inline fslot_t *flight(Handle *h, uint32_t i) { return (fslot_t *)(h->base + h->hdr->off_flights) + i; }
static inline sslot_t *sslot(Handle *h, uint32_t i) { return (sslot_t *)(h->base + h->hdr->off_stats) + i; }
static inline shard_t *shard(Handle *h, uint32_t i) {
    return (shard_t *)(h->base + h->hdr->off_shards + (uint64_t)i * h->hdr->shard_stride);
}
static inline uint32_t *buckets(shard_t *s) { return (uint32_t *)((uint8_t *)s + 4096); }
static inline pdesc_t *pdescs(Handle *h, shard_t *s) { return (pdesc_t *)(buckets(s) + h->hdr->buckets); }
static inline uint8_t *pages_of(Handle *h, shard_t *s) {
    uint64_t off = 4096 + (uint64_t)h->hdr->buckets * 4 + (uint64_t)h->hdr->pages * sizeof(pdesc_t);
    return (uint8_t *)s + ((off + 4095) & ~4095ULL);
}
/* Block refs are (byte offset in the shard's pages / 16) + 1; 0 is null. */
static inline blk_t *blk(Handle *h, shard_t *s, uint32_t ref) { return (blk_t *)(pages_of(h, s) + (uint64_t)(ref - 1) * 16); }
static inline uint32_t ref_of(Handle *h, shard_t *s, blk_t *b) { return (uint32_t)(((uint8_t *)b - pages_of(h, s)) / 16) + 1; }
static inline uint32_t page_of(Handle *h, shard_t *s, blk_t *b) { return (uint32_t)(((uint8_t *)b - pages_of(h, s)) / PAGE); }
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

/*************************************************************************
 * Stats slots and process liveness                                      *
 *************************************************************************/

/* Start time (clock ticks since boot) of pid, 0 if absent; *state gets the
 * /proc state letter ('Z' for a zombie: dead, not yet reaped). */
static uint64_t proc_start(long pid, char *state) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ') return 0;
    p += 2;
    if (state) *state = *p;
    for (int field = 3; field < 22; field++) { /* starttime is field 22 */
        p = strchr(p, ' ');
        if (!p) return 0;
        p++;
    }
    return strtoull(p, NULL, 10);
}

static int owner_dead(sslot_t *s, uint64_t w) {
    long pid = (long)(w >> 32);
    uint64_t st = LD(&s->start);
    if (!st) return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
    char state = '?';
    uint64_t now = proc_start(pid, &state);
    return now != st || state == 'Z' || state == 'X';
}

static int lease_alive(Handle *h, uint64_t lease) {
    if (!lease) return 0;
    for (uint32_t i = 0; i < h->hdr->stats_slots; i++) {
        sslot_t *s = sslot(h, i);
        if (LD(&s->owner) == lease) return !owner_dead(s, lease);
    }
    return 0;
}

static int claim_slot(Handle *h) {
    long pid = (long)getpid();
    uint64_t start = proc_start(pid, NULL);
    for (uint32_t i = 0; i < h->hdr->stats_slots; i++) { /* another handle of this process */
        sslot_t *s = sslot(h, i);
        uint64_t w = LD(&s->owner);
        if (w && (long)(w >> 32) == pid && start && LD(&s->start) == start) {
            h->my = s; h->me = w;
            return (int)i;
        }
    }
    uint32_t nonce;
    do nonce = __atomic_add_fetch(&h->hdr->nonce_ctr, 1, __ATOMIC_ACQ_REL); while (!nonce);
    uint64_t mine = ((uint64_t)pid << 32) | nonce;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < h->hdr->stats_slots; i++) {
            sslot_t *s = sslot(h, i);
            uint64_t w = LD(&s->owner);
            if (pass == 0 ? w != 0 : (w == 0 || !owner_dead(s, w))) continue;
            if (!CAS(&s->owner, w, mine)) continue;
            ST(&s->start, start);
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
 * Shard locks, wipe, free lists                                         *
 *************************************************************************/

static void shard_wipe_locked(Handle *h, shard_t *s) {
    uint32_t np = h->hdr->pages;
    pdesc_t *pd = pdescs(h, s);
    memset(buckets(s), 0, (size_t)h->hdr->buckets * 4);
    for (uint32_t i = 0; i < np; i++) {
        pd[i].cls = PFREE; pd[i].ref = 0; pd[i].next = (i + 1 < np) ? i + 2 : 0;
    }
    s->free_page_head = np ? 1 : 0;
    s->free_pages = np;
    s->entries = 0; s->used = 0; s->page_hand = 0;
    memset(s->cls, 0, sizeof s->cls);
}

static int shard_lock(Handle *h, uint32_t si) {
    shard_t *s = shard(h, si);
    int r = pthread_mutex_lock(&s->mu);
    if (r == 0) return FS_OK;
    if (r != EOWNERDEAD) return FS_LOCK_BROKEN;
    /* LOCK: the holder died inside a critical section. Do not repair: an
     * empty shard is always a correct cache. */
    shard_wipe_locked(h, s);
    s->wipes++;
    pthread_mutex_consistent(&s->mu);
    __atomic_add_fetch(&h->hdr->lock_wipes, 1, __ATOMIC_ACQ_REL);
    count(h, C_LOCK_WIPES, 1);
    h->last_wiped = (int)si;
    return FS_OK;
}

static void shard_unlock(Handle *h, uint32_t si) { pthread_mutex_unlock(&shard(h, si)->mu); }

static void free_push_locked(Handle *h, shard_t *s, int c, blk_t *b) {
    uint32_t r = ref_of(h, s, b), head = s->cls[c].free_head;
    b->state = B_FREE; b->ref = 0; b->next = head; b->aux = 0;
    if (head) blk(h, s, head)->aux = r;
    s->cls[c].free_head = r;
}

static void free_remove_locked(Handle *h, shard_t *s, int c, blk_t *b) {
    if (b->aux) blk(h, s, b->aux)->next = b->next; else s->cls[c].free_head = b->next;
    if (b->next) blk(h, s, b->next)->aux = b->aux;
}

static void page_assign_locked(Handle *h, shard_t *s, uint32_t p, int c) {
    pdesc_t *pd = pdescs(h, s);
    pd[p].cls = (uint8_t)c; pd[p].ref = 0;
    pd[p].next = s->cls[c].page_head;
    s->cls[c].page_head = p + 1;
    s->cls[c].pages++;
    for (uint32_t i = bpp(c); i-- > 0;) free_push_locked(h, s, c, blk_at(h, s, p, i, c));
}

/*************************************************************************
 * Entries: lookup, free, CLOCK eviction, page stealing, allocation      *
 *************************************************************************/

static inline uint32_t shard_index(Handle *h, uint64_t kh) { return (uint32_t)((kh >> 32) % h->hdr->shards); }
static inline uint32_t *bucket_of(Handle *h, shard_t *s, uint64_t kh) { return &buckets(s)[kh & (h->hdr->buckets - 1)]; }

static blk_t *lookup_locked(Handle *h, shard_t *s, uint64_t kh, const uint8_t *key, uint32_t klen) {
    for (uint32_t r = *bucket_of(h, s, kh); r;) {
        blk_t *b = blk(h, s, r);
        if (b->key_hash == kh && b->key_len == klen && memcmp(key_of(b), key, klen) == 0) return b;
        r = b->next;
    }
    return NULL;
}

static inline uint64_t meta_check(blk_t *b) {
    uint64_t m[7] = {b->key_hash, b->fill_seq, b->expiry, b->created, b->vhash,
                     ((uint64_t)b->key_len << 32) | b->value_len, b->ndeps};
    uint64_t c = fs_hash(m, sizeof m, 0);
    return fs_hash(deps_of(b), 4u * b->ndeps + b->key_len, c); /* deps and key are adjacent */
}

/* Unlink a LIVE head from its chain and free it with its chunks. */
static void entry_free_locked(Handle *h, shard_t *s, blk_t *b) {
    uint32_t r = ref_of(h, s, b), *link = bucket_of(h, s, b->key_hash);
    for (uint32_t guard = 0; *link && guard < 1u << 30; guard++) {
        if (*link == r) { *link = b->next; break; }
        link = &blk(h, s, *link)->next;
    }
    pdesc_t *pd = pdescs(h, s);
    for (uint32_t cr = b->aux; cr;) {
        blk_t *ch = blk(h, s, cr);
        cr = ch->next;
        s->cls[NCLASS - 1].live--;
        s->used -= PAGE;
        free_push_locked(h, s, NCLASS - 1, ch);
    }
    int c = pd[page_of(h, s, b)].cls;
    s->cls[c].live--;
    s->used -= CLASS_SIZE[c];
    s->entries--;
    free_push_locked(h, s, c, b);
}

static inline int expired(blk_t *b, uint64_t now) { return now >= b->expiry; }

static void clock_evict_locked(Handle *h, shard_t *s, int c, uint64_t now) {
    class_t *k = &s->cls[c];
    pdesc_t *pd = pdescs(h, s);
    uint32_t evicted = 0, limit = 2 * k->pages * bpp(c) + 1;
    for (uint32_t scanned = 0; scanned < limit && evicted < EVICT_BATCH; scanned++) {
        if (!k->hand_page || pd[k->hand_page - 1].cls != c || k->hand_blk >= bpp(c)) {
            if (k->hand_page && pd[k->hand_page - 1].cls == c) k->hand_page = pd[k->hand_page - 1].next;
            else k->hand_page = 0;
            if (!k->hand_page) k->hand_page = k->page_head;
            k->hand_blk = 0;
            if (!k->hand_page) return;
        }
        blk_t *b = blk_at(h, s, k->hand_page - 1, k->hand_blk++, c);
        if (b->state != B_LIVE) continue;
        if (b->ref && !expired(b, now)) { b->ref = 0; continue; }
        entry_free_locked(h, s, b);
        count(h, C_EVICTIONS, 1);
        if (++evicted == 1) debug_point(DBG_EVICT);
        if (scanned >= 64) break; /* bounded batch: enough once one is free */
    }
}

/* Take a page from another class (page CLOCK, hot pages get a second
 * chance), evicting everything in it, and give it to class c. */
static int steal_page_locked(Handle *h, shard_t *s, int c) {
    uint32_t np = h->hdr->pages;
    pdesc_t *pd = pdescs(h, s);
    for (uint32_t step = 0; step < 2 * np; step++) {
        uint32_t p = s->page_hand;
        s->page_hand = (p + 1) % np;
        int v = pd[p].cls;
        if (v == PFREE || v == c) continue;
        if (pd[p].ref) { pd[p].ref = 0; continue; }
        int busy = 0;
        for (uint32_t i = 0; i < bpp(v) && !busy; i++) busy = blk_at(h, s, p, i, v)->state == B_WRITING;
        if (busy) continue;
        for (uint32_t i = 0; i < bpp(v); i++) {
            blk_t *b = blk_at(h, s, p, i, v);
            if (b->state == B_CHUNK) b = blk(h, s, b->aux);
            if (b->state == B_LIVE) { entry_free_locked(h, s, b); count(h, C_EVICTIONS, 1); }
        }
        for (uint32_t i = 0; i < bpp(v); i++) free_remove_locked(h, s, v, blk_at(h, s, p, i, v));
        uint32_t *link = &s->cls[v].page_head;
        while (*link && *link != p + 1) link = &pd[*link - 1].next;
        if (*link) *link = pd[p].next;
        s->cls[v].pages--;
        if (s->cls[v].hand_page == p + 1) s->cls[v].hand_page = 0;
        page_assign_locked(h, s, p, c);
        return 1;
    }
    return 0;
}

static blk_t *block_alloc_locked(Handle *h, shard_t *s, int c, uint64_t now) {
    class_t *k = &s->cls[c];
    for (int tries = 0; tries < 4; tries++) {
        if (k->free_head) {
            blk_t *b = blk(h, s, k->free_head);
            free_remove_locked(h, s, c, b);
            b->state = B_WRITING; b->ref = 0; b->next = 0; b->aux = 0;
            k->live++;
            s->used += CLASS_SIZE[c];
            return b;
        }
        if (s->free_page_head) {
            uint32_t p = s->free_page_head - 1;
            s->free_page_head = pdescs(h, s)[p].next;
            s->free_pages--;
            page_assign_locked(h, s, p, c);
            continue;
        }
        if ((k->pages == 0 || ++k->ticks % STEAL_EVERY == 0) && steal_page_locked(h, s, c)) continue;
        clock_evict_locked(h, s, c, now);
        if (!k->free_head) steal_page_locked(h, s, c); /* only chunks or writers here */
    }
    return NULL;
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

static void report_wipe(Handle *h) {
    int si = h->last_wiped;
    h->last_wiped = -1;
    if (si < 0 || !wipe_hook) return;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *r = PyObject_CallFunction(wipe_hook, "i", si);
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

static int get_seconds(PyObject *o, const char *what, uint64_t *ns) {
    double d = PyFloat_AsDouble(o);
    if (d == -1.0 && PyErr_Occurred()) return -1;
    if (!(d > 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be > 0 seconds, got %R", what, o);
        return -1;
    }
    *ns = d >= 1e9 ? UINT64_MAX / 2 : (uint64_t)(d * 1e9);
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

enum { MODE_GET = 0, MODE_ETAG = 1, MODE_STALE = 2 };

static PyObject *do_get(Handle *h, PyObject *const *args, Py_ssize_t nargs, int mode) {
    const uint8_t *key; Py_ssize_t klen; uint64_t now;
    NARGS(1, 2, "get");
    if (get_key(args[0], &key, &klen) < 0 || get_now(args, nargs, 1, &now) < 0) return NULL;
    uint64_t kh = fs_hash(key, (size_t)klen, 0);
    uint32_t si = shard_index(h, kh);
    shard_t *s = shard(h, si);
    uint64_t vhash = 0, valid_from = LD(&h->hdr->valid_from);
    const uint64_t *tags = tags_of(h);
    PyObject *out = NULL;
    int bad_check = 0;
    if (shard_lock(h, si) != FS_OK) return fs_raise(FS_LOCK_BROKEN, "shard %u lock is not recoverable", si);
    debug_point(DBG_LOCK_HELD);
    blk_t *b = lookup_locked(h, s, kh, key, (uint32_t)klen);
    if (b && meta_check(b) != b->check) {
        bad_check = 1;
        entry_free_locked(h, s, b);
        b = NULL;
    }
    if (b) {
        int valid = b->fill_seq >= valid_from;
        for (uint32_t i = 0; valid && i < b->ndeps; i++) valid = LD(&tags[deps_of(b)[i]]) <= b->fill_seq;
        if (!valid) {
            entry_free_locked(h, s, b); /* INVARIANT: invalidation is forever */
            b = NULL;
        } else if (mode != MODE_STALE && expired(b, now)) {
            b = NULL;
        }
    }
    if (b) {
        if (!b->ref) b->ref = 1; /* PERF: reads never move anything; avoid dirtying the line */
        pdesc_t *pd = &pdescs(h, s)[page_of(h, s, b)];
        if (!pd->ref) pd->ref = 1;
        out = PyBytes_FromStringAndSize(NULL, b->value_len);
        if (out) {
            uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
            uint32_t first = b->aux ? CLASS_SIZE[NCLASS - 1] - BLK_HDR - 4u * b->ndeps - b->key_len : b->value_len;
            memcpy(dst, key_of(b) + b->key_len, first);
            uint32_t done = first;
            for (uint32_t cr = b->aux; cr && done < b->value_len;) {
                blk_t *ch = blk(h, s, cr);
                uint32_t n = b->value_len - done;
                if (n > PAGE - CHUNK_HDR) n = PAGE - CHUNK_HDR;
                memcpy(dst + done, (uint8_t *)ch + CHUNK_HDR, n);
                done += n;
                cr = ch->next;
            }
            vhash = b->vhash;
        }
    }
    shard_unlock(h, si);
    report_wipe(h);
    if (out && fs_hash(PyBytes_AS_STRING(out), (size_t)PyBytes_GET_SIZE(out), 0) != vhash) {
        Py_CLEAR(out); /* torn or corrupt: never returned; drop it under the lock */
        bad_check = 1;
        if (shard_lock(h, si) == FS_OK) {
            b = lookup_locked(h, s, kh, key, (uint32_t)klen);
            if (b && b->vhash == vhash) entry_free_locked(h, s, b);
            shard_unlock(h, si);
            report_wipe(h);
        }
    }
    if (bad_check) {
        __atomic_add_fetch(&h->hdr->checksum_failures, 1, __ATOMIC_ACQ_REL);
        count(h, C_CHECKSUM_FAILURES, 1);
    }
    if (!out) {
        if (PyErr_Occurred()) return NULL;
        if (mode != MODE_STALE) count(h, C_MISSES, 1);
        Py_RETURN_NONE;
    }
    count(h, mode == MODE_STALE ? C_STALE_HITS : C_HITS, 1);
    count(h, C_BYTES_READ, (uint64_t)PyBytes_GET_SIZE(out));
    if (mode != MODE_ETAG) return out;
    PyObject *t = Py_BuildValue("(NK)", out, (unsigned long long)vhash);
    return t;
}

static PyObject *H_get(Handle *h, PyObject *const *a, Py_ssize_t n) { return do_get(h, a, n, MODE_GET); }
static PyObject *H_get_with_checksum(Handle *h, PyObject *const *a, Py_ssize_t n) { return do_get(h, a, n, MODE_ETAG); }
static PyObject *H_get_stale(Handle *h, PyObject *const *a, Py_ssize_t n) { return do_get(h, a, n, MODE_STALE); }

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
        out[i] = (uint32_t)(fs_hash(u, (size_t)len, SEED_TAG) & (h->hdr->tag_slots - 1));
    }
    Py_DECREF(seq);
    qsort(out, (size_t)n, 4, cmp_u32);
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) if (m == 0 || out[m - 1] != out[i]) out[m++] = out[i];
    *n_out = m;
    return out;
}

static int put_locked(Handle *h, shard_t *s, blk_t *tmpl, const uint32_t *deps, const uint8_t *key,
                      const uint8_t *val, uint64_t now) {
    uint64_t fixed = BLK_HDR + 4ull * tmpl->ndeps + tmpl->key_len, total = fixed + tmpl->value_len;
    int c = class_for(total);
    uint32_t first = c >= 0 ? tmpl->value_len : (uint32_t)(PAGE - fixed);
    uint32_t nchunks = c >= 0 ? 0 : (uint32_t)((tmpl->value_len - first + PAGE - CHUNK_HDR - 1) / (PAGE - CHUNK_HDR));
    if (c < 0) c = NCLASS - 1;
    blk_t *b = block_alloc_locked(h, s, c, now);
    if (!b) return FS_FULL;
    b->aux = 0;
    blk_t *prev = NULL;
    for (uint32_t i = 0; i < nchunks; i++) {
        blk_t *ch = block_alloc_locked(h, s, NCLASS - 1, now);
        if (!ch) { /* undo: give back what we took */
            for (uint32_t cr = b->aux; cr;) {
                blk_t *x = blk(h, s, cr);
                cr = x->next;
                s->cls[NCLASS - 1].live--; s->used -= PAGE;
                free_push_locked(h, s, NCLASS - 1, x);
            }
            s->cls[c].live--; s->used -= CLASS_SIZE[c];
            free_push_locked(h, s, c, b);
            return FS_FULL;
        }
        ch->state = B_WRITING; ch->next = 0; ch->aux = ref_of(h, s, b);
        if (prev) prev->next = ref_of(h, s, ch); else b->aux = ref_of(h, s, ch);
        prev = ch;
    }
    uint32_t first_chunk = b->aux;
    memcpy((uint8_t *)b + 8, (uint8_t *)tmpl + 8, BLK_HDR - 8);
    memcpy(deps_of(b), deps, 4u * tmpl->ndeps);
    b->ndeps = tmpl->ndeps;
    memcpy(key_of(b), key, tmpl->key_len);
    memcpy(key_of(b) + tmpl->key_len, val, first);
    debug_point(DBG_PUT_WRITE);
    uint32_t done = first;
    for (uint32_t cr = first_chunk; cr;) {
        blk_t *ch = blk(h, s, cr);
        uint32_t n = tmpl->value_len - done;
        if (n > PAGE - CHUNK_HDR) n = PAGE - CHUNK_HDR;
        memcpy((uint8_t *)ch + CHUNK_HDR, val + done, n);
        done += n;
        ch->state = B_CHUNK;
        cr = ch->next;
    }
    b->aux = first_chunk;
    blk_t *old = lookup_locked(h, s, tmpl->key_hash, key, tmpl->key_len);
    uint32_t *head = bucket_of(h, s, tmpl->key_hash);
    b->next = *head;
    b->state = B_LIVE;
    /* INVARIANT: publish the block first, the index pointer last. */
    __atomic_store_n(head, ref_of(h, s, b), __ATOMIC_RELEASE);
    s->entries++;
    if (old) entry_free_locked(h, s, old);
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
    if ((uint64_t)vlen > h->hdr->max_entry) {
        count(h, C_ENTRY_TOO_LARGE, 1);
        return fs_raise(FS_TOO_LARGE, "value of %zd B exceeds max_entry %llu B; serve it uncached "
                        "or raise FRAISESHM_MAX_ENTRY_BYTES", vlen, (unsigned long long)h->hdr->max_entry);
    }
    uint64_t seq = LD(&h->hdr->global_seq);
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
    int stale = fill_seq < LD(&h->hdr->valid_from);
    for (Py_ssize_t i = 0; !stale && i < ndeps; i++) stale = LD(&tags[deps[i]]) > fill_seq;
    if (stale) {
        count(h, C_PUT_REJECTED_STALE, 1);
        res = Py_NewRef(Py_False);
        goto done;
    }
    blk_t t;
    memset(&t, 0, sizeof t);
    t.ndeps = (uint16_t)ndeps; t.key_len = (uint32_t)klen; t.value_len = (uint32_t)vlen;
    t.key_hash = fs_hash(key, (size_t)klen, 0);
    t.fill_seq = fill_seq;
    t.expiry = ttl_ns >= UINT64_MAX - now ? UINT64_MAX : now + ttl_ns;
    t.created = now;
    t.vhash = fs_hash(val, (size_t)vlen, 0);
    uint64_t m[7] = {t.key_hash, t.fill_seq, t.expiry, t.created, t.vhash,
                     ((uint64_t)t.key_len << 32) | t.value_len, t.ndeps};
    uint64_t c = fs_hash(m, sizeof m, 0);
    /* deps and key are adjacent in the block; hash them as one run */
    uint8_t small[4 * 64 + MAX_KEY];
    size_t runlen = 4u * (size_t)ndeps + (size_t)klen;
    uint8_t *run = runlen <= sizeof small ? small : PyMem_Malloc(runlen);
    if (!run) { PyErr_NoMemory(); goto done; }
    memcpy(run, deps, 4u * (size_t)ndeps);
    memcpy(run + 4u * (size_t)ndeps, key, (size_t)klen);
    t.check = fs_hash(run, runlen, c);
    if (run != small) PyMem_Free(run);
    uint32_t si = shard_index(h, t.key_hash);
    if (shard_lock(h, si) != FS_OK) goto lock_broken; /* LOCK: not held on this path */
    int st = put_locked(h, shard(h, si), &t, deps, key, val, now);
    shard_unlock(h, si);
    report_wipe(h);
    if (st == FS_FULL) {
        fs_raise(FS_FULL, "shard %u cannot hold %zd B even after eviction", si, vlen);
        goto done;
    }
    count(h, C_PUTS, 1);
    count(h, C_BYTES_WRITTEN, (uint64_t)vlen);
    res = Py_NewRef(Py_True);
    goto done;
lock_broken:
    fs_raise(FS_LOCK_BROKEN, "shard %u lock is not recoverable", si);
done:
    if (deps != stackbuf) PyMem_Free(deps);
    return res;
}

/*************************************************************************
 * Sequences and tags                                                    *
 *************************************************************************/

static inline void atomic_max(uint64_t *p, uint64_t v) {
    uint64_t cur = LD(p);
    while (cur < v && !CAS(p, cur, v)) { /* cur reloaded by the failed CAS */ }
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
    uint64_t seq = __atomic_add_fetch(&h->hdr->global_seq, 1, __ATOMIC_ACQ_REL);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i == n / 2) debug_point(DBG_TAG_BUMP);
        atomic_max(&tags[slots[i]], seq);
    }
    if (slots != stackbuf) PyMem_Free(slots);
    count(h, C_INVALIDATIONS, 1);
    count(h, C_TAGS_BUMPED, (uint64_t)n);
    return PyLong_FromUnsignedLongLong(seq);
}

static PyObject *H_flush(Handle *h, PyObject *Py_UNUSED(ignored)) {
    uint64_t seq = __atomic_add_fetch(&h->hdr->global_seq, 1, __ATOMIC_ACQ_REL);
    atomic_max(&h->hdr->valid_from, seq);
    count(h, C_FLUSHES, 1);
    return PyLong_FromUnsignedLongLong(seq);
}

static PyObject *H_current_seq(Handle *h, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromUnsignedLongLong(LD(&h->hdr->global_seq));
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
 *************************************************************************/

static inline uint64_t deadline_word(uint64_t until_ns, uint64_t lease) {
    return ((until_ns >> 20) << 24) | (lease & 0xFFFFFF);
}

static int abandoned(Handle *h, fslot_t *f, uint64_t lease, uint64_t now) {
    if (!lease) return 1;
    uint64_t dl = LD(&f->deadline);
    /* the deadline only counts once written by this lease's owner */
    if ((dl & 0xFFFFFF) == (lease & 0xFFFFFF) && (now >> 20) > (dl >> 24)) return 1;
    return !lease_alive(h, lease);
}

static int me_or_claim(Handle *h) {
    if (!h->my && !h->claim_failed && claim_slot(h) < 0) h->claim_failed = 1;
    return h->my != NULL;
}

static PyObject *H_flight_begin(Handle *h, PyObject *const *args, Py_ssize_t nargs) {
    const uint8_t *key; Py_ssize_t klen; uint64_t lease_ns, now;
    NARGS(2, 3, "flight_begin");
    if (get_key(args[0], &key, &klen) < 0 || get_seconds(args[1], "lease_seconds", &lease_ns) < 0 ||
        get_now(args, nargs, 2, &now) < 0)
        return NULL;
    if (!me_or_claim(h)) return Py_BuildValue("(iiI)", ROLE_NONE, -1, 0u);
    uint64_t kh = fs_hash(key, (size_t)klen, SEED_FLIGHT), me = h->me;
    uint32_t n = h->hdr->flight_slots;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t p = 0; p < FLIGHT_PROBE && p < n; p++) {
            uint32_t i = (uint32_t)((kh + p) % n);
            fslot_t *f = flight(h, i);
            for (int tries = 0; tries < 4; tries++) {
                uint64_t ctl = LD(&f->ctl), fk = LD(&f->key_hash), lease = LD(&f->lease);
                if (LD(&f->ctl) != ctl) continue;
                uint32_t st = (uint32_t)(ctl & 0xFF), gen = (uint32_t)(ctl >> 32);
                if (st == F_RUNNING && fk == kh) {
                    if (!abandoned(h, f, lease, now)) {
                        count(h, C_COALESCE_FOLLOWED, 1);
                        return Py_BuildValue("(iII)", ROLE_FOLLOW, i, gen);
                    }
                    if (!CAS(&f->lease, lease, me)) continue;
                    ST(&f->deadline, deadline_word(now + lease_ns, me));
                    count(h, C_COALESCE_TAKEOVERS, 1);
                    count(h, C_COALESCE_LED, 1);
                    return Py_BuildValue("(iII)", ROLE_LEAD, i, gen);
                }
                if (pass == 0) break;
                int free_ = (st == F_RUNNING || st == F_CLAIMING) ? abandoned(h, f, lease, now)
                                                                 : (!lease || !lease_alive(h, lease));
                if (!free_) break;
                if (!CAS(&f->lease, lease, me)) continue;
                gen++;
                ST(&f->ctl, ((uint64_t)gen << 32) | F_CLAIMING);
                ST(&f->key_hash, kh);
                ST(&f->deadline, deadline_word(now + lease_ns, me));
                ST(&f->waiters, 0u);
                ST(&f->err_len, 0u);
                debug_point(DBG_FLIGHT_CLAIM);
                ST(&f->ctl, ((uint64_t)gen << 32) | F_RUNNING);
                count(h, C_COALESCE_LED, 1);
                return Py_BuildValue("(iII)", ROLE_LEAD, i, gen);
            }
        }
    }
    return Py_BuildValue("(iiI)", ROLE_NONE, -1, 0u);
}

static int flight_args(Handle *h, PyObject *const *args, uint32_t *slot, uint32_t *gen) {
    uint64_t s, g;
    if (get_u64(args[0], "slot", &s) < 0 || get_u64(args[1], "generation", &g) < 0) return -1;
    if (s >= h->hdr->flight_slots || g > UINT32_MAX) {
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
    uint64_t kh = fs_hash(key, (size_t)klen, SEED_FLIGHT);
    uint64_t ctl = LD(&f->ctl), fk = LD(&f->key_hash);
    uint32_t st = (uint32_t)(ctl & 0xFF);
    if ((uint32_t)(ctl >> 32) != gen || fk != kh || st == F_EMPTY || LD(&f->ctl) != ctl)
        return Py_BuildValue("(is)", F_GONE, "");
    if (st == F_RUNNING || st == F_CLAIMING)
        return Py_BuildValue("(is)", abandoned(h, f, LD(&f->lease), now) ? F_ABANDONED : F_RUNNING, "");
    if (st == F_DONE_OK) return Py_BuildValue("(is)", F_DONE_OK, "");
    char err[ERR_MAX];
    uint32_t n = LD(&f->err_len);
    if (n > ERR_MAX) n = ERR_MAX;
    memcpy(err, f->err, n);
    if (LD(&f->ctl) != ctl) return Py_BuildValue("(is)", F_GONE, ""); /* seqlock: reused meanwhile */
    PyObject *msg = PyUnicode_DecodeUTF8(err, n, "replace");
    return msg ? Py_BuildValue("(iN)", F_DONE_ERROR, msg) : NULL;
}

static PyObject *H_flight_takeover(Handle *h, PyObject *const *args, Py_ssize_t nargs) {
    const uint8_t *key; Py_ssize_t klen; uint32_t i, gen; uint64_t lease_ns, now;
    NARGS(4, 5, "flight_takeover");
    if (get_key(args[1], &key, &klen) < 0) return NULL;
    PyObject *sg[2] = {args[0], args[2]};
    if (flight_args(h, sg, &i, &gen) < 0 || get_seconds(args[3], "lease_seconds", &lease_ns) < 0 ||
        get_now(args, nargs, 4, &now) < 0)
        return NULL;
    if (!me_or_claim(h)) Py_RETURN_FALSE;
    fslot_t *f = flight(h, i);
    uint64_t ctl = LD(&f->ctl), lease = LD(&f->lease);
    if ((uint32_t)(ctl >> 32) != gen || (ctl & 0xFF) != F_RUNNING ||
        LD(&f->key_hash) != fs_hash(key, (size_t)klen, SEED_FLIGHT) || !abandoned(h, f, lease, now) ||
        !CAS(&f->lease, lease, h->me))
        Py_RETURN_FALSE;
    ST(&f->deadline, deadline_word(now + lease_ns, h->me));
    count(h, C_COALESCE_TAKEOVERS, 1);
    Py_RETURN_TRUE;
}

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
    if (!h->me || LD(&f->lease) != h->me) Py_RETURN_FALSE;
    if (!ok) {
        uint32_t n = elen > ERR_MAX ? ERR_MAX : (uint32_t)elen;
        memcpy(f->err, err, n);
        ST(&f->err_len, n);
    }
    uint64_t expect = ((uint64_t)gen << 32) | F_RUNNING;
    int done = CAS(&f->ctl, expect, ((uint64_t)gen << 32) | (ok ? F_DONE_OK : F_DONE_ERROR));
    uint64_t me = h->me;
    CAS(&f->lease, me, 0);
    return PyBool_FromLong(done);
}

static PyObject *waiters_edit(Handle *h, PyObject *const *args, Py_ssize_t nargs, int delta) {
    uint32_t i, gen;
    NARGS(2, 2, delta > 0 ? "flight_join" : "flight_leave");
    if (flight_args(h, args, &i, &gen) < 0) return NULL;
    fslot_t *f = flight(h, i);
    if ((uint32_t)(LD(&f->ctl) >> 32) != gen) Py_RETURN_FALSE;
    uint32_t w = LD(&f->waiters);
    while ((delta > 0 || w > 0) && !CAS(&f->waiters, w, w + (uint32_t)delta)) { }
    Py_RETURN_TRUE;
}
static PyObject *H_flight_join(Handle *h, PyObject *const *a, Py_ssize_t n) { return waiters_edit(h, a, n, 1); }
static PyObject *H_flight_leave(Handle *h, PyObject *const *a, Py_ssize_t n) { return waiters_edit(h, a, n, -1); }

static long release_flights(Handle *h, long pid) {
    long released = 0;
    for (uint32_t i = 0; i < h->hdr->flight_slots; i++) {
        fslot_t *f = flight(h, i);
        uint64_t lease = LD(&f->lease);
        if (!lease || (long)(lease >> 32) != pid || lease_alive(h, lease)) continue;
        uint64_t ctl = LD(&f->ctl);
        /* followers see a new generation (GONE) and retry at once */
        if (CAS(&f->ctl, ctl, ((ctl >> 32) + 1) << 32 | F_EMPTY)) released++;
        CAS(&f->lease, lease, 0);
    }
    return released;
}

static PyObject *H_release_flights_of(Handle *h, PyObject *arg) {
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLong(release_flights(h, pid));
}

static PyObject *H_reap(Handle *h, PyObject *arg) {
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred()) return NULL;
    if (pid <= 0) return PyErr_Format(PyExc_ValueError, "reap() needs a pid > 0, got %ld", pid);
    int reaped = 0;
    for (uint32_t i = 0; i < h->hdr->stats_slots; i++) {
        sslot_t *s = sslot(h, i);
        uint64_t w = LD(&s->owner);
        if (w && (long)(w >> 32) == pid && owner_dead(s, w) && CAS(&s->owner, w, 0)) reaped = 1;
    }
    return PyBool_FromLong(reaped | (release_flights(h, pid) > 0));
}

/*************************************************************************
 * Introspection: stats, check                                           *
 *************************************************************************/

static PyObject *H_stats_slots(Handle *h, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    for (uint32_t i = 0; out && i < h->hdr->stats_slots; i++) {
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

static PyObject *H_info(Handle *h, PyObject *Py_UNUSED(ignored)) {
    hdr_t *x = h->hdr;
    return Py_BuildValue("{sKsIsKsKsIsIsIsIsIsIsKsKsKsKsKsIsK}", "magic", (unsigned long long)x->magic,
                         "version", x->version, "size", (unsigned long long)x->size,
                         "max_entry", (unsigned long long)x->max_entry, "shards", x->shards,
                         "tag_slots", x->tag_slots, "flight_slots", x->flight_slots,
                         "stats_slots", x->stats_slots, "pages", x->pages, "buckets", x->buckets,
                         "global_seq", (unsigned long long)LD(&x->global_seq),
                         "valid_from", (unsigned long long)LD(&x->valid_from),
                         "lock_wipes", (unsigned long long)LD(&x->lock_wipes),
                         "checksum_failures", (unsigned long long)LD(&x->checksum_failures),
                         "created_ns", (unsigned long long)x->created_ns, "my_slot",
                         h->my ? (unsigned)(h->my - sslot(h, 0)) : 0xFFFFFFFFu,
                         "me", (unsigned long long)h->me);
}

/* Per shard (under its lock, one at a time): entries, used bytes, wipes,
 * free pages, pages per class, live blocks per class, oldest created ns. */
static PyObject *H_shard_info(Handle *h, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    for (uint32_t si = 0; out && si < h->hdr->shards; si++) {
        shard_t *s = shard(h, si);
        uint64_t pages[NCLASS], live[NCLASS], oldest = UINT64_MAX;
        if (shard_lock(h, si) != FS_OK) { Py_DECREF(out); return fs_raise(FS_LOCK_BROKEN, "shard %u", si); }
        for (int c = 0; c < NCLASS; c++) { pages[c] = s->cls[c].pages; live[c] = s->cls[c].live; }
        pdesc_t *pd = pdescs(h, s);
        for (uint32_t p = 0; p < h->hdr->pages; p++) {
            int c = pd[p].cls;
            if (c == PFREE) continue;
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

static int check_shard_locked(Handle *h, uint32_t si, PyObject *out) {
    int err = 0;
    shard_t *s = shard(h, si);
    uint32_t np = h->hdr->pages, nb = h->hdr->buckets;
    pdesc_t *pd = pdescs(h, s);
    uint64_t counted = 0, free_blocks[NCLASS] = {0}, live_blocks[NCLASS] = {0}, used = 0, heads = 0, chunks = 0;
    for (uint32_t r = s->free_page_head, n = 0; r; r = pd[r - 1].next, n++) { /* I3 */
        if (r > np || n > np) { PROBLEM("I3 shard %u: free page list broken", si); return err; }
        if (pd[r - 1].cls != PFREE) PROBLEM("I3 shard %u: page %u on free list has class %u", si, r - 1, pd[r - 1].cls);
        counted++;
    }
    if (counted != s->free_pages) PROBLEM("I3 shard %u: %llu free pages listed, %u counted", si, counted, s->free_pages);
    for (int c = 0; c < NCLASS; c++) {
        uint32_t n = 0;
        for (uint32_t r = s->cls[c].page_head; r; r = pd[r - 1].next, n++) {
            if (r > np || n > np) { PROBLEM("I3 shard %u: class %d page list broken", si, c); return err; }
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
    uint32_t maxb = np * (PAGE / 64) + 1;
    for (int c = 0; c < NCLASS; c++) {
        uint64_t n = 0;
        uint32_t prev = 0;
        for (uint32_t r = s->cls[c].free_head; r; prev = r, r = blk(h, s, r)->next, n++) {
            blk_t *b = blk(h, s, r);
            if (n > maxb || page_of(h, s, b) >= np) { PROBLEM("I4 shard %u: class %d free list broken", si, c); return err; }
            if (b->state != B_FREE || pd[page_of(h, s, b)].cls != c || b->aux != prev)
                PROBLEM("I4 shard %u: class %d free list holds a bad block (state %u)", si, c, b->state);
        }
        if (n != free_blocks[c]) PROBLEM("I4 shard %u: class %d has %llu free blocks, %llu listed", si, c, free_blocks[c], n);
        if (live_blocks[c] != s->cls[c].live) PROBLEM("I7 shard %u: class %d live %u, found %llu", si, c, s->cls[c].live, live_blocks[c]);
    }
    uint64_t reached = 0, chained = 0;
    const uint64_t *tags = tags_of(h);
    for (uint32_t bi = 0; bi < nb; bi++) { /* I5, I6 */
        uint32_t n = 0;
        for (uint32_t r = buckets(s)[bi]; r; r = blk(h, s, r)->next, n++) {
            blk_t *b = blk(h, s, r);
            if (n > maxb || page_of(h, s, b) >= np) { PROBLEM("I5 shard %u: bucket %u chain broken", si, bi); return err; }
            reached++;
            if (b->state != B_LIVE) { PROBLEM("I5 shard %u: bucket %u holds a block in state %u", si, bi, b->state); continue; }
            if (shard_index(h, b->key_hash) != si || (b->key_hash & (nb - 1)) != bi)
                PROBLEM("I5 shard %u: entry in bucket %u hashes elsewhere", si, bi);
            if (meta_check(b) != b->check) PROBLEM("I6 shard %u: entry header checksum mismatch", si);
            for (uint32_t d = 0; d < b->ndeps; d++)
                if (deps_of(b)[d] >= h->hdr->tag_slots) PROBLEM("I6 shard %u: dep slot out of range", si);
            (void)tags;
            uint64_t want = 0;
            uint64_t fixed = BLK_HDR + 4ull * b->ndeps + b->key_len;
            if (class_for(fixed + b->value_len) < 0) want = (b->value_len - (PAGE - fixed) + PAGE - CHUNK_HDR - 1) / (PAGE - CHUNK_HDR);
            uint64_t got = 0;
            uint8_t *val = PyMem_Malloc(b->value_len + 1);
            if (!val) { err = 1; PyErr_NoMemory(); return err; }
            uint32_t first = b->aux ? (uint32_t)(PAGE - fixed) : b->value_len;
            if (first > b->value_len) first = b->value_len;
            memcpy(val, key_of(b) + b->key_len, first);
            uint32_t done = first;
            for (uint32_t cr = b->aux; cr; cr = blk(h, s, cr)->next, got++) {
                blk_t *ch = blk(h, s, cr);
                if (got > maxb || page_of(h, s, ch) >= np || ch->state != B_CHUNK || ch->aux != r) {
                    PROBLEM("I6 shard %u: chunk chain broken", si);
                    break;
                }
                uint32_t k = b->value_len - done;
                if (k > PAGE - CHUNK_HDR) k = PAGE - CHUNK_HDR;
                memcpy(val + done, (uint8_t *)ch + CHUNK_HDR, k);
                done += k;
            }
            chained += got;
            if (got != want) PROBLEM("I6 shard %u: entry has %llu chunks, needs %llu", si, got, want);
            else if (fs_hash(val, b->value_len, 0) != b->vhash) PROBLEM("I6 shard %u: value checksum mismatch", si);
            PyMem_Free(val);
        }
    }
    if (reached != heads) PROBLEM("I5 shard %u: %llu live entries, %llu reachable from the index", si, heads, reached);
    if (chained != chunks) PROBLEM("I6 shard %u: %llu chunks, %llu owned by entries", si, chunks, chained);
    if (heads != s->entries) PROBLEM("I7 shard %u: entries says %llu, found %llu", si, (unsigned long long)s->entries, heads);
    if (used != s->used) PROBLEM("I7 shard %u: used says %llu B, found %llu B", si, (unsigned long long)s->used, used);
    return err;
}

static PyObject *H_check(Handle *h, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    int err = 0;
    if (!out) return NULL;
    hdr_t *x = h->hdr;
    if (x->magic != FS_MAGIC || x->version != FS_VERSION) PROBLEM("I1 header magic/version changed");
    const uint64_t *tags = tags_of(h);
    uint64_t top = 0;
    for (uint32_t i = 0; i < x->tag_slots; i++) if (LD(&tags[i]) > top) top = LD(&tags[i]);
    uint64_t seq = LD(&x->global_seq);
    if (top > seq) PROBLEM("I2 a tag was invalidated at %llu, after the global sequence %llu", top, seq);
    if (LD(&x->valid_from) > seq) PROBLEM("I2 valid_from %llu is ahead of the global sequence %llu",
                                          (unsigned long long)LD(&x->valid_from), seq);
    for (uint32_t si = 0; !err && si < x->shards; si++) {
        if (shard_lock(h, si) != FS_OK) { PROBLEM("I10 shard %u lock is not recoverable", si); continue; }
        err = check_shard_locked(h, si, out);
        shard_unlock(h, si);
        report_wipe(h);
    }
    for (uint32_t i = 0; !err && i < x->flight_slots; i++) { /* I8 */
        fslot_t *f = flight(h, i);
        uint64_t ctl = LD(&f->ctl), lease = LD(&f->lease);
        uint32_t st = (uint32_t)(ctl & 0xFF);
        if (st > F_CLAIMING) PROBLEM("I8 flight %u in state %u", i, st);
        if ((st == F_RUNNING || st == F_CLAIMING) && !lease && LD(&f->ctl) == ctl)
            PROBLEM("I8 flight %u runs without a lease", i);
        if (LD(&f->err_len) > ERR_MAX) PROBLEM("I8 flight %u error length %u", i, LD(&f->err_len));
    }
    for (uint32_t i = 0; !err && i < x->stats_slots; i++) { /* I9 */
        sslot_t *s = sslot(h, i);
        uint64_t w = LD(&s->owner);
        if (w && !(w >> 32)) PROBLEM("I9 stats slot %u owned by pid 0", i);
        for (int j = 0; j < N_VALUES; j++)
            if (LD(&s->base[j]) > LD(&s->v[j])) { PROBLEM("I9 stats slot %u value %d below its base", i, j); break; }
    }
    if (err) { Py_DECREF(out); return NULL; }
    return out;
}

/*************************************************************************
 * Segment: create, attach, close                                        *
 *************************************************************************/

typedef struct { uint64_t off_tags, off_flights, off_stats, off_shards, stride; uint32_t pages, buckets; } plan_t;

static uint64_t align(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

static uint64_t shard_bytes(uint32_t pages, uint32_t nb) {
    return 4096 + align((uint64_t)nb * 4 + (uint64_t)pages * sizeof(pdesc_t), 4096) + (uint64_t)pages * PAGE;
}

static int plan_layout(uint64_t size, uint32_t shards, uint32_t tag_slots, uint32_t flight_slots,
                       uint32_t stats_slots, plan_t *pl) {
    pl->off_tags = HDR_SIZE;
    pl->off_flights = align(pl->off_tags + (uint64_t)tag_slots * 8, 4096);
    pl->off_stats = align(pl->off_flights + (uint64_t)flight_slots * sizeof(fslot_t), 4096);
    pl->off_shards = align(pl->off_stats + (uint64_t)stats_slots * sizeof(sslot_t), 4096);
    if (size <= pl->off_shards) return FS_TOO_SMALL;
    uint64_t per = (size - pl->off_shards) / shards;
    uint64_t pages = per / PAGE;
    for (; pages > 0; pages--) {
        uint64_t nb = 64;
        while (nb < pages * (PAGE / 512)) nb <<= 1;
        if (shard_bytes((uint32_t)pages, (uint32_t)nb) <= per) { pl->buckets = (uint32_t)nb; break; }
    }
    if (pages == 0 || pages > UINT32_MAX / 2) return FS_TOO_SMALL;
    pl->pages = (uint32_t)pages;
    pl->stride = shard_bytes(pl->pages, pl->buckets);
    return FS_OK;
}

static PyTypeObject HandleType;

static Handle *map_handle(int fd, uint64_t size) {
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { PyErr_SetFromErrno(PyExc_OSError); return NULL; }
    Handle *h = PyObject_New(Handle, &HandleType);
    if (!h) { munmap(p, (size_t)size); return NULL; }
    h->base = p; h->size = size; h->hdr = p; h->my = NULL; h->me = 0; h->claim_failed = 0; h->last_wiped = -1;
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

static PyObject *M_create(PyObject *Py_UNUSED(m), PyObject *args) {
    int fd; unsigned long long size, max_entry; unsigned shards, tags, flights, stats;
    if (!PyArg_ParseTuple(args, "iKKIIII", &fd, &size, &max_entry, &shards, &tags, &flights, &stats)) return NULL;
    plan_t pl;
    if (!shards || !tags || (tags & (tags - 1)) || !flights || !stats)
        return PyErr_Format(PyExc_ValueError, "bad geometry: shards %u, tag_slots %u (power of two), "
                            "flight_slots %u, stats_slots %u", shards, tags, flights, stats);
    if (plan_layout(size, shards, tags, flights, stats, &pl) != FS_OK)
        return fs_raise(FS_TOO_SMALL, "arena of %llu B cannot hold its tables", size);
    Handle *h = map_handle(fd, size);
    if (!h) return NULL;
    hdr_t *x = h->hdr;
    memset(x, 0, HDR_SIZE);
    x->version = FS_VERSION; x->header_size = HDR_SIZE; x->size = size; x->max_entry = max_entry;
    x->shards = shards; x->tag_slots = tags; x->flight_slots = flights; x->stats_slots = stats;
    x->pages = pl.pages; x->buckets = pl.buckets; x->off_tags = pl.off_tags; x->off_flights = pl.off_flights;
    x->off_stats = pl.off_stats; x->off_shards = pl.off_shards; x->shard_stride = pl.stride;
    x->created_ns = now_ns();
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    for (uint32_t si = 0; si < shards; si++) {
        shard_t *s = shard(h, si);
        memset(s, 0, sizeof *s);
        pthread_mutex_init(&s->mu, &a);
        shard_wipe_locked(h, s);
    }
    pthread_mutexattr_destroy(&a);
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
    return (PyObject *)h;
}

static PyObject *H_close(Handle *h, PyObject *Py_UNUSED(ignored)) {
    if (h->base) munmap(h->base, (size_t)h->size);
    h->base = NULL; h->hdr = NULL; h->my = NULL;
    Py_RETURN_NONE;
}

static void H_dealloc(Handle *h) {
    if (h->base) munmap(h->base, (size_t)h->size);
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
    if (!PyArg_ParseTuple(args, "ii", &dbg_point, &dbg_fd)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *M_proc_start(PyObject *Py_UNUSED(m), PyObject *arg) {
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromUnsignedLongLong(proc_start(pid, NULL));
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
GUARD(get) GUARD(get_with_checksum) GUARD(get_stale) GUARD(put) GUARD(invalidate) GUARD(incr)
GUARD(flight_begin) GUARD(flight_poll) GUARD(flight_takeover) GUARD(flight_end) GUARD(flight_join)
GUARD(flight_leave)
GUARD0(flush) GUARD0(current_seq) GUARD0(observe) GUARD0(register) GUARD0(forked) GUARD0(reap)
GUARD0(release_flights_of) GUARD0(stats_slots) GUARD0(info) GUARD0(shard_info) GUARD0(check)

#define FAST(name) {#name, (PyCFunction)(void (*)(void))G_##name, METH_FASTCALL, NULL}
#define NOARG(name) {#name, (PyCFunction)G_##name, METH_NOARGS, NULL}
#define ONEARG(name) {#name, (PyCFunction)G_##name, METH_O, NULL}
static PyMethodDef H_methods[] = {
    FAST(get), FAST(get_with_checksum), FAST(get_stale), FAST(put), FAST(invalidate), FAST(incr),
    FAST(flight_begin), FAST(flight_poll), FAST(flight_takeover), FAST(flight_end), FAST(flight_join),
    FAST(flight_leave), NOARG(flush), NOARG(current_seq), ONEARG(observe), NOARG(register),
    NOARG(forked), ONEARG(reap), ONEARG(release_flights_of), NOARG(stats_slots), NOARG(info),
    NOARG(shard_info), NOARG(check), {"close", (PyCFunction)H_close, METH_NOARGS, NULL},
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
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef M_def = {PyModuleDef_HEAD_INIT, "fraiseshm._native", NULL, -1, M_methods,
                                   NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&HandleType) < 0) return NULL;
    PyObject *m = PyModule_Create(&M_def);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Handle", (PyObject *)&HandleType) < 0) { Py_DECREF(m); return NULL; }
    PyObject *sizes = PyTuple_New(NCLASS), *bounds = PyTuple_New(N_BUCKETS - 1);
    for (int c = 0; sizes && c < NCLASS; c++) PyTuple_SET_ITEM(sizes, c, PyLong_FromUnsignedLong(CLASS_SIZE[c]));
    for (int b = 0; bounds && b < N_BUCKETS - 1; b++) PyTuple_SET_ITEM(bounds, b, PyLong_FromUnsignedLongLong(HIST_BOUND_NS[b]));
    if (PyModule_AddObject(m, "CLASS_SIZES", sizes) < 0 || PyModule_AddObject(m, "HIST_BOUNDS_NS", bounds) < 0 ||
        PyModule_AddIntConstant(m, "VERSION", FS_VERSION) < 0 || PyModule_AddIntConstant(m, "PAGE", PAGE) < 0 ||
        PyModule_AddIntConstant(m, "BLK_HDR", BLK_HDR) < 0 || PyModule_AddIntConstant(m, "CHUNK_HDR", CHUNK_HDR) < 0 ||
        PyModule_AddIntConstant(m, "HDR_SIZE", HDR_SIZE) < 0 || PyModule_AddIntConstant(m, "N_COUNTERS", N_COUNTERS) < 0 ||
        PyModule_AddIntConstant(m, "N_VALUES", N_VALUES) < 0 || PyModule_AddIntConstant(m, "V_HIST", V_HIST) < 0 ||
        PyModule_AddIntConstant(m, "V_HIST_SUM", V_HIST_SUM) < 0 || PyModule_AddIntConstant(m, "N_BUCKETS", N_BUCKETS) < 0 ||
        PyModule_AddIntConstant(m, "ERR_MAX", ERR_MAX) < 0 || PyModule_AddIntConstant(m, "MAX_KEY", MAX_KEY) < 0 ||
        PyModule_AddIntConstant(m, "FS_TOO_LARGE", FS_TOO_LARGE) < 0 || PyModule_AddIntConstant(m, "FS_FULL", FS_FULL) < 0 ||
        PyModule_AddIntConstant(m, "FS_LOCK_BROKEN", FS_LOCK_BROKEN) < 0 ||
        PyModule_AddIntConstant(m, "FS_BAD_MAGIC", FS_BAD_MAGIC) < 0 ||
        PyModule_AddIntConstant(m, "FS_BAD_VERSION", FS_BAD_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "FS_TOO_SMALL", FS_TOO_SMALL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
