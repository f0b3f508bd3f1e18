"""The colliding-keys attack of issue 14, replayed: get latency on an attacked bucket.

Keys contain client variables, so a client can choose them. Against the old
unseeded xxh64 an attacker computes offline keys that all land in one bucket
of one shard; every get on that bucket then walks the whole chain with the
shard lock held. This script:

1. finds N keys colliding in bucket 0 of shard 0 under the UNSEEDED hash
   (a small C search program compiled on the fly, checked against
   fraiseshm._native.hash);
2. stores them and times get() of the attacked key at the end of the chain
   next to a get() of a normal key, for
   - this build with its random per-arena seed (the precomputed set spreads),
   - this build with the seed forced to 0 (an attacker who knows the seed:
     the chain is trimmed to CHAIN_MAX),
   - optionally the old build (--old-tree DIR: a checkout with its own
     built extension), where the chain is N long.

Usage: .venv/bin/python scripts/attack_collisions.py [--keys 20000] [--old-tree /tmp/old]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20
SIZE, SHARDS, MAX_ENTRY = 64 * MiB, 16, 1 * MiB  # perf/bench_arena.py's arena

SEARCH_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL
static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint64_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t xround(uint64_t acc, uint64_t in) { return rotl(acc + in * P2, 31) * P1; }
static uint64_t xxh64(const uint8_t *p, size_t len, uint64_t seed) { /* inputs < 32 bytes */
    const uint8_t *end = p + len;
    uint64_t h = seed + P5 + len;
    for (; p + 8 <= end; p += 8) h = rotl(h ^ xround(0, rd64(p)), 27) * P1 + P4;
    if (p + 4 <= end) { h = rotl(h ^ (rd32(p) * P1), 23) * P2 + P3; p += 4; }
    for (; p < end; p++) h = rotl(h ^ (*p * P5), 11) * P1;
    h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32;
    return h;
}
int main(int argc, char **argv) {
    long want = atol(argv[1]); uint64_t nb = strtoull(argv[2], 0, 10), shards = strtoull(argv[3], 0, 10);
    if (argc > 4) { printf("%llu\n", (unsigned long long)xxh64((const uint8_t *)argv[4], strlen(argv[4]), 0)); return 0; }
    char key[] = "atk:0000000000000000"; /* a 16-digit counter, incremented in place */
    size_t n = sizeof key - 1;
    while (want > 0) {
        uint64_t h = xxh64((const uint8_t *)key, n, 0);
        if ((h & (nb - 1)) == 0 && (h >> 32) % shards == 0) { puts(key); want--; }
        for (size_t i = n - 1; i >= 4; i--) {
            if (key[i] == '9') { key[i] = 'a'; break; }
            if (key[i] != 'f') { key[i]++; break; }
            key[i] = '0';
        }
    }
    return 0;
}
"""


def colliding_keys(n: int, nb: int, shards: int) -> list[bytes]:
    from fraiseshm import _native

    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "search.c"), os.path.join(d, "search")
        with open(src, "w") as f:
            f.write(SEARCH_C)
        subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
        probe = subprocess.run([exe, "1", "1", "1", "atk:probe-key"], capture_output=True, text=True, check=True)
        assert int(probe.stdout) == _native.hash(b"atk:probe-key", 0), "search hash differs from the arena's"
        out = subprocess.run([exe, str(n), str(nb), str(shards)], capture_output=True, text=True, check=True)
    return [k.encode() for k in out.stdout.split()]


def ns_per_get(get: object, key: bytes, n: int = 3000) -> float:
    samples = []
    for _ in range(max(1, n // 100)):
        t = time.perf_counter_ns()
        for _ in range(100):
            get(key)  # type: ignore[operator]
        samples.append((time.perf_counter_ns() - t) / 100)
    return statistics.median(samples)


def geometry() -> dict[str, int]:
    """Buckets and shards of the arena this build creates for SIZE / MAX_ENTRY / SHARDS."""
    from fraiseshm.arena import Arena

    name = f"/fraiseshm-attack-geo-{os.getpid()}"
    with Arena.create(name, size=SIZE, max_entry=MAX_ENTRY, shards=SHARDS) as a:
        info = a._h.info()
    Arena.unlink(name)
    return {"buckets": info["buckets"], "shards": info["shards"]}


def measure(keyfile: str, seed: int | None) -> dict[str, float]:
    """Store the keys in a fresh arena, time the attacked get next to a normal one."""
    from fraiseshm.arena import Arena

    with open(keyfile) as f:
        keys = [k.encode() for k in f.read().split()]
    name = f"/fraiseshm-attack-{os.getpid()}"
    kw = {} if seed is None else {"hash_seed": seed}
    a = Arena.create(name, size=SIZE, max_entry=MAX_ENTRY, shards=SHARDS, **kw)
    try:
        a.register_process()
        seq = a.current_seq()
        t = time.perf_counter()
        for k in keys:
            a.put(k, b"x" * 100, [], seq, 3600)
        put_s = time.perf_counter() - t
        a.put(b"a normal key", b"x" * 100, [], seq, 3600)
        stored = a.stats()["entries"] - 1
        # the oldest stored colliding key sits at the end of its chain
        attacked = next((k for k in keys if a.get(k) is not None), keys[-1])
        return {"stored": stored, "put_all_s": put_s, "attacked_get_ns": ns_per_get(a.get, attacked),
                "normal_get_ns": ns_per_get(a.get, b"a normal key")}
    finally:
        a.close()
        Arena.unlink(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--old-tree", help="a checkout of the old code with its extension built")
    ap.add_argument("--measure", nargs=2, metavar=("KEYFILE", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure and args.measure[0] == "geometry":
        print(json.dumps(geometry()))
        return 0
    if args.measure:
        keyfile, seed = args.measure
        print(json.dumps(measure(keyfile, None if seed == "random" else int(seed))))
        return 0
    sys.path.insert(0, os.path.dirname(HERE))
    runs = [("this build, random seed", os.path.dirname(HERE), "random"),
            ("this build, seed known to the attacker (0)", os.path.dirname(HERE), "0")]
    if args.old_tree:
        runs.append(("old build (unseeded, unbounded chains)", args.old_tree, "random"))

    def sub(tree: str, *a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, os.path.join(HERE, "attack_collisions.py"), "--measure", *a],
                              cwd=tree, env=dict(os.environ, PYTHONPATH=tree), capture_output=True, text=True)

    geos = [json.loads(sub(tree, "geometry", "-").stdout) for _, tree, _ in runs]
    nb = max(g["buckets"] for g in geos)  # colliding mod the largest also collides mod the others
    shards = 1
    for g in geos:
        shards = shards * g["shards"] // __import__("math").gcd(shards, g["shards"])
    t = time.perf_counter()
    keys = colliding_keys(args.keys, nb, shards)
    print(f"{len(keys)} keys colliding in one bucket of one shard under the unseeded hash "
          f"({nb} buckets, shard index mod {shards}), found in {time.perf_counter() - t:.1f} s")
    with tempfile.NamedTemporaryFile("w", suffix=".keys", delete=False) as f:
        f.write("\n".join(k.decode() for k in keys))
    try:
        print(f"{'arena':<44}{'stored':>8}{'put all':>10}{'attacked get':>15}{'normal get':>13}")
        for label, tree, seed in runs:
            r = sub(tree, f.name, seed)
            if r.returncode:
                print(f"{label:<44} failed: {r.stderr.strip().splitlines()[-1:]}")
                continue
            m = json.loads(r.stdout)
            print(f"{label:<44}{m['stored']:>8}{m['put_all_s']:>9.2f}s{m['attacked_get_ns']:>12.0f} ns"
                  f"{m['normal_get_ns']:>10.0f} ns")
    finally:
        os.unlink(f.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
