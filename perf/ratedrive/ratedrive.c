/* ratedrive: the open-loop HTTP/1.1 load generator of perf/fixed_rate.py.
 *
 * Why C: the asyncio generator it replaces spent 94 % of one of this machine's two cores
 * to send 2,100 req/s, so it could never offer 5,000 req/s and left the server one core.
 * This one sends a plan prepared by fixed_rate.py and records what came back; every
 * judgement (latency percentiles, hit rate, stale reads) stays in Python.
 *
 * Open loop: request i is due at t0 + i / rate whatever happened before it. Each
 * connection carries one request at a time (keep-alive); a due request with no idle
 * connection waits in a FIFO backlog while a new connection is opened (up to maxconn).
 * Its latency is counted from its due time, so waiting here is charged to the server.
 *
 * A rename of a user whose previous rename is still in flight is sent as that entry's
 * fallback read instead, so "the newest acknowledged rename" stays well defined.
 *
 * plan file (little endian):  "FRD1" u32 count u32 users, then per request
 *     u8 kind (0 user read, 1 posts read, 2 rename)  u32 user  u32 len_a  a[len_a]  u32 len_b  b[len_b]
 *     (b: the read sent instead of a rename, empty for reads)
 * out file, one record per scheduled request, in completion order:
 *     u32 index  u8 kind_sent  u8 outcome (0 answered, 1 connection lost, 2 never answered)
 *     u16 status  u8 cached (X-Cache HIT or STALE)  u8[3] 0  f64 due  f64 sent  f64 done
 *     u32 body_len  body[body_len]   (times in seconds from t0; sent = -1 if never sent)
 * stdout: one JSON object (wall and CPU seconds, connections, where a hopeless run stopped).
 *
 * usage: ratedrive HOST PORT PLAN OUT RATE MAXCONN PREOPEN ABORT_BACKLOG_S
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { KIND_USER = 0, KIND_POSTS = 1, KIND_RENAME = 2 };
enum { OUT_ANSWERED = 0, OUT_LOST = 1, OUT_UNANSWERED = 2 };
enum { C_CONNECTING, C_IDLE, C_BUSY };

typedef struct {
    uint8_t kind;
    uint32_t user;
    const uint8_t *a, *b;
    uint32_t len_a, len_b;
    double due, sent;
    uint8_t kind_sent;
} Req;

typedef struct {
    int fd, state;
    long inflight;           /* request index, -1 when none */
    const uint8_t *wbuf;     /* unsent part of the request */
    size_t wlen;
    int want_out;            /* EPOLLOUT asked for (a partial write) */
    char *buf;               /* received, not yet consumed */
    size_t len, cap;
} Conn;

static Req *reqs;
static uint32_t nreq, nusers;
static uint8_t *writing;     /* per user: a rename in flight */
static long *backlog;        /* FIFO of request indices */
static size_t bl_head, bl_tail;
static Conn **idle;
static size_t nidle;
static Conn **conns;
static size_t nconns, conns_cap, live_conns, maxconn;
static int ep;
static struct sockaddr_storage addr;
static socklen_t addrlen;
static double t0;
static long outstanding;
static FILE *out;
static long connect_errors;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void record(long i, uint8_t outcome, int status, int cached, double done, const char *body, uint32_t blen) {
    Req *r = &reqs[i];
    uint32_t idx = (uint32_t)i;
    uint16_t st = (uint16_t)status;
    uint8_t head[8] = {r->kind_sent, outcome, (uint8_t)(st & 0xff), (uint8_t)(st >> 8), (uint8_t)cached, 0, 0, 0};
    double times[3] = {r->due, r->sent, done};
    fwrite(&idx, 4, 1, out);
    fwrite(head, 8, 1, out);
    fwrite(times, 8, 3, out);
    fwrite(&blen, 4, 1, out);
    if (blen) fwrite(body, 1, blen, out);
}

static void open_conn(void);

static void finish(Conn *c, long i) {
    if (reqs[i].kind_sent == KIND_RENAME) writing[reqs[i].user] = 0;
    outstanding--;
    (void)c;
}

static void flush_writes(Conn *c) {
    while (c->wlen) {
        ssize_t n = write(c->fd, c->wbuf, c->wlen);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return; /* EPOLLOUT continues it */
            return;                                       /* the read side sees the error */
        }
        c->wbuf += n;
        c->wlen -= (size_t)n;
    }
}

/* A partial write waits for room (EPOLLOUT); once it is out, stop asking. */
static void sync_out(Conn *c) {
    if (!c->wlen == !c->want_out) return;
    c->want_out = c->wlen != 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (c->want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void send_req(Conn *c, long i) {
    Req *r = &reqs[i];
    const uint8_t *p = r->a;
    size_t n = r->len_a;
    r->kind_sent = r->kind;
    if (r->kind == KIND_RENAME) {
        if (writing[r->user]) {
            r->kind_sent = KIND_USER;
            p = r->b;
            n = r->len_b;
        } else {
            writing[r->user] = 1;
        }
    }
    c->state = C_BUSY;
    c->inflight = i;
    c->wbuf = p;
    c->wlen = n;
    r->sent = mono() - t0;
    flush_writes(c);
    sync_out(c);
}

static void ready(Conn *c) {
    if (bl_head != bl_tail) {
        send_req(c, backlog[bl_head++]);
    } else {
        c->state = C_IDLE;
        c->inflight = -1;
        idle[nidle++] = c;
    }
}

static void dispatch(long i) {
    outstanding++;
    if (nidle) {
        send_req(idle[--nidle], i);
        return;
    }
    backlog[bl_tail++] = i;
    if (live_conns < maxconn) open_conn();
}

static void open_conn(void) {
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
        connect_errors++;
        close(fd);
        return;
    }
    Conn *c = calloc(1, sizeof *c);
    if (!c) die("calloc");
    if (nconns == conns_cap) { /* every connection ever opened stays listed (lost ones with fd -1) */
        conns_cap = conns_cap ? conns_cap * 2 : 1024;
        conns = realloc(conns, conns_cap * sizeof *conns);
        if (!conns) die("realloc");
    }
    c->fd = fd;
    c->state = C_CONNECTING;
    c->inflight = -1;
    conns[nconns++] = c;
    live_conns++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
}

static void lost(Conn *c, double now) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (c->state == C_CONNECTING) connect_errors++;
    if (c->state == C_IDLE) {
        for (size_t k = 0; k < nidle; k++)
            if (idle[k] == c) { idle[k] = idle[--nidle]; break; }
    }
    if (c->inflight >= 0) {
        record(c->inflight, OUT_LOST, 0, 0, now, NULL, 0);
        finish(c, c->inflight);
        c->inflight = -1;
    }
    c->state = -1;
    live_conns--;
    if (bl_head != bl_tail && live_conns < maxconn) open_conn();
}

/* One complete response at the front of c->buf? Returns bytes consumed (0: need more, -1: bad). */
static long parse_response(Conn *c, int *status, int *cached, char **body, uint32_t *blen, char **scratch, size_t *scap) {
    char *b = c->buf;
    char *end = memmem(b, c->len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t hlen = (size_t)(end - b) + 4;
    if (hlen < 12 || memcmp(b, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(b + 9);
    *cached = 0;
    long clen = -1;
    int chunked = 0;
    for (char *line = memchr(b, '\n', hlen); line && line < end; line = memchr(line, '\n', (size_t)(end - line))) {
        line++;
        if (!strncasecmp(line, "content-length:", 15)) clen = atol(line + 15);
        else if (!strncasecmp(line, "transfer-encoding:", 18) && strcasestr(line + 18, "chunked") &&
                 strcasestr(line + 18, "chunked") < end) chunked = 1;
        else if (!strncasecmp(line, "x-cache:", 8)) {
            char *v = line + 8;
            while (*v == ' ') v++;
            *cached = !strncasecmp(v, "HIT", 3) || !strncasecmp(v, "STALE", 5);
        }
    }
    if (!chunked) {
        if (clen < 0) clen = 0;  /* 204/304, or a server that closes: not sent by the targets */
        if (c->len < hlen + (size_t)clen) return 0;
        *body = b + hlen;
        *blen = (uint32_t)clen;
        return (long)(hlen + (size_t)clen);
    }
    size_t pos = hlen, got = 0;
    for (;;) {
        char *eol = memmem(b + pos, c->len - pos, "\r\n", 2);
        if (!eol) return 0;
        size_t size = strtoul(b + pos, NULL, 16);
        pos = (size_t)(eol - b) + 2;
        if (size == 0) {
            if (c->len < pos + 2) return 0;
            pos += 2; /* the final CRLF (no trailers from these servers) */
            break;
        }
        if (c->len < pos + size + 2) return 0;
        if (got + size > *scap) {
            *scap = (got + size) * 2;
            *scratch = realloc(*scratch, *scap);
            if (!*scratch) die("realloc");
        }
        memcpy(*scratch + got, b + pos, size);
        got += size;
        pos += size + 2;
    }
    *body = *scratch;
    *blen = (uint32_t)got;
    return (long)pos;
}

static void on_readable(Conn *c, double now) {
    static char *scratch;
    static size_t scap;
    for (;;) {
        if (c->cap - c->len < 65536) {
            c->cap = c->cap ? c->cap * 2 : 131072;
            c->buf = realloc(c->buf, c->cap);
            if (!c->buf) die("realloc");
        }
        ssize_t n = read(c->fd, c->buf + c->len, c->cap - c->len);
        if (n == 0) { lost(c, now); return; }
        if (n < 0) {
            if (errno == EAGAIN) break;
            if (errno == EINTR) continue;
            lost(c, now);
            return;
        }
        c->len += (size_t)n;
    }
    for (;;) {
        int status, cached;
        char *body;
        uint32_t blen;
        long used = parse_response(c, &status, &cached, &body, &blen, &scratch, &scap);
        if (used == 0) return;
        if (used < 0 || c->inflight < 0) { lost(c, now); return; }
        long i = c->inflight;
        record(i, OUT_ANSWERED, status, cached, mono() - t0, body, blen);
        memmove(c->buf, c->buf + used, c->len - (size_t)used);
        c->len -= (size_t)used;
        finish(c, i);
        ready(c);
    }
}

static void load_plan(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = malloc((size_t)size);
    if (!data || fread(data, 1, (size_t)size, f) != (size_t)size) die("read plan");
    fclose(f);
    if (size < 12 || memcmp(data, "FRD1", 4)) { fprintf(stderr, "not a ratedrive plan\n"); exit(2); }
    memcpy(&nreq, data + 4, 4);
    memcpy(&nusers, data + 8, 4);
    reqs = calloc(nreq ? nreq : 1, sizeof *reqs);
    writing = calloc(nusers ? nusers : 1, 1);
    backlog = malloc(sizeof(long) * (nreq ? nreq : 1));
    if (!reqs || !writing || !backlog) die("calloc");
    size_t p = 12;
    for (uint32_t i = 0; i < nreq; i++) {
        Req *r = &reqs[i];
        if (p + 9 > (size_t)size) goto short_plan;
        r->kind = data[p];
        memcpy(&r->user, data + p + 1, 4);
        memcpy(&r->len_a, data + p + 5, 4);
        p += 9;
        r->a = data + p;
        p += r->len_a;
        if (p + 4 > (size_t)size) goto short_plan;
        memcpy(&r->len_b, data + p, 4);
        p += 4;
        r->b = data + p;
        p += r->len_b;
        if (p > (size_t)size || r->user >= nusers || r->kind > KIND_RENAME) goto short_plan;
        r->sent = -1;
    }
    return;
short_plan:
    fprintf(stderr, "ratedrive: plan entry malformed or truncated\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: ratedrive HOST PORT PLAN OUT RATE MAXCONN PREOPEN ABORT_BACKLOG_S\n");
        return 2;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(argv[1], argv[2], &hints, &ai) != 0) { fprintf(stderr, "cannot resolve %s\n", argv[1]); return 2; }
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    load_plan(argv[3]);
    out = fopen(argv[4], "wb");
    if (!out) die(argv[4]);
    static char obuf[1 << 20];
    setvbuf(out, obuf, _IOFBF, sizeof obuf);
    double rate = atof(argv[5]);
    maxconn = (size_t)atol(argv[6]);
    size_t preopen = (size_t)atol(argv[7]);
    double abort_backlog = atof(argv[8]);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < maxconn + 64) {
        rl.rlim_cur = rl.rlim_max < maxconn + 64 ? rl.rlim_max : maxconn + 64;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    idle = calloc(maxconn + preopen + 16, sizeof *idle);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!idle || ep < 0) die("setup");

    struct epoll_event evs[256];
    t0 = mono() + 3600; /* nothing is due while the first connections open */
    for (size_t k = 0; k < preopen; k++) open_conn();
    double deadline = mono() + 10;
    size_t connecting = preopen;
    while (connecting && mono() < deadline) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            Conn *c = evs[k].data.ptr;
            if (c->state != C_CONNECTING) continue;
            int err = 0;
            socklen_t el = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
            connecting--;
            if (err || (evs[k].events & (EPOLLERR | EPOLLHUP))) { lost(c, 0); continue; }
            struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            ready(c);
        }
    }

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double wall0 = mono();
    t0 = wall0 + 0.01;
    long n = nreq, i = 0;
    double aborted = -1, drain_deadline = 0;
    while (i < n || outstanding > 0) {
        double now = mono();
        if (i < n) {
            if ((double)(bl_tail - bl_head) > rate * abort_backlog) {
                aborted = now - t0; /* hopeless: every further request would wait longer than that */
                n = i;
                drain_deadline = now + 10;
                continue;
            }
            long due = (long)((now - t0) * rate) + 1;
            if (due > n) due = n;
            while (i < due) {
                reqs[i].due = (double)i / rate;
                dispatch(i++);
            }
            if (i == n) drain_deadline = now + 10;
        } else if (now > drain_deadline) {
            break;
        }
        double wait = i < n ? t0 + (double)i / rate - mono() : 0.005;
        struct timespec ts = {0, wait > 0 ? (long)(wait * 1e9) : 0};
        int k = epoll_pwait2(ep, evs, 256, &ts, NULL);
        now = mono();
        for (int e = 0; e < k; e++) {
            Conn *c = evs[e].data.ptr;
            if (c->fd < 0) continue;
            uint32_t f = evs[e].events;
            if (c->state == C_CONNECTING) {
                if (!(f & (EPOLLOUT | EPOLLERR | EPOLLHUP))) continue;
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err || (f & (EPOLLERR | EPOLLHUP))) { lost(c, now - t0); continue; }
                struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                ready(c);
                continue;
            }
            if (f & EPOLLOUT) {
                flush_writes(c);
                sync_out(c);
            }
            if (f & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(c, now - t0);
        }
    }
    double wall = mono() - wall0;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) * 1e-6 +
                 (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) * 1e-6;
    double end = mono() - t0;
    long unanswered = 0;
    for (size_t h = bl_head; h < bl_tail; h++, unanswered++) record(backlog[h], OUT_UNANSWERED, 0, 0, end, NULL, 0);
    for (size_t k = 0; k < nconns; k++)
        if (conns[k]->fd >= 0 && conns[k]->inflight >= 0) {
            record(conns[k]->inflight, OUT_UNANSWERED, 0, 0, end, NULL, 0);
            unanswered++;
        }
    if (fclose(out) != 0) die("write out");
    char stopped[32] = "null";
    if (aborted >= 0) snprintf(stopped, sizeof stopped, "%.3f", aborted);
    printf("{\"scheduled\": %ld, \"wall_s\": %.6f, \"cpu_s\": %.6f, \"aborted_after_s\": %s, "
           "\"connections\": %zu, \"connect_errors\": %ld, \"unanswered\": %ld}\n",
           n, wall, cpu, stopped, live_conns, connect_errors, unanswered);
    return 0;
}
