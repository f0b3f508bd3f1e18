"""One-byte corruption fuzz of a live arena: no byte may crash, hang or serve a wrong value.

Builds an arena in use (small, chunked and stale entries, a flush, a running
flight, registered processes), snapshots its bytes, then per trial: restores
the snapshot, changes ONE byte in a chosen region of the layout
(fraiseshm/arena/layout.py), and forks a child that attaches and runs
get / get_stale / put / invalidate / flights / stats / check against a model
of what each key may answer. The parent classifies each trial:

  crash     the child died of a signal or exited abnormally
  hang      the child did not finish within --timeout seconds
  wrong     a get served a value the model forbids (stale, foreign, torn)
  untyped   a call raised something other than a fraiseshm ArenaError
  detected  the corruption was noticed: attach refused it with a typed error,
            a shard was wiped (counted), a checksum failed, or check() saw it
  harmless  nothing noticed and every answer allowed (padding, a CLOCK bit, ...)
  left      (a flag, not a class) check() still reported problems at the end

Usage: .venv/bin/python scripts/fuzz_arena.py [--trials 2000] [--seed 1] [--timeout 20]
Exit 1 on any crash, hang, wrong or untyped trial. Not part of `make test`;
tests/unit/test_arena_fuzz.py runs a small version of it.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import mmap
import os
import random
import select
import signal
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fraiseshm import _native  # noqa: E402
from fraiseshm.arena import Arena  # noqa: E402
from fraiseshm.errors import ArenaError  # noqa: E402

MiB = 1 << 20
PAGE = _native.PAGE
BLK_HDR = _native.BLK_HDR
CLASS_SIZES = _native.CLASS_SIZES


class Model:
    """Per key: the one value a get may return (None: must miss), and what get_stale may return."""

    def __init__(self) -> None:
        self.valid: dict[bytes, bytes | None] = {}
        self.stale_ok: dict[bytes, bytes | None] = {}
        self.deps: dict[bytes, list[str]] = {}


def build(name: str) -> tuple[Arena, Model]:
    a = Arena.create(name, size=8 * MiB, max_entry=200_000, shards=2, tag_slots=1024, flight_slots=64,
                     stats_slots=16)
    a.register_process()
    m = Model()
    rnd = random.Random(7)

    def put(key: bytes, value: bytes, deps: list[str], ttl: float = 3600.0) -> None:
        assert a.put(key, value, deps, a.current_seq(), ttl)
        m.valid[key] = value
        m.stale_ok[key] = value
        m.deps[key] = deps

    for i in range(20):  # filled before a flush: must never come back
        put(b"flushed-%d" % i, rnd.randbytes(rnd.choice((40, 700, 5000))), ["F:%d" % i])
    a.flush()
    for k in list(m.valid):
        m.valid[k] = m.stale_ok[k] = None
    for _ in range(300):  # a high sequence, so a bad byte in a tag can lower it below a fill
        a.invalidate(["warm-up"])
    for i in range(120):
        size = rnd.choice((10, 100, 300, 1000, 3000, 9000, 30_000, 70_000, 150_000))
        put(b"key-%d" % i, rnd.randbytes(size), ["User:%d" % (i % 10), "query:users", "Q:%d" % i])
    for i in range(0, 120, 7):  # overwritten: the old value must never come back
        put(b"key-%d" % i, rnd.randbytes(rnd.choice((50, 2000, 80_000))), ["User:%d" % (i % 10), "Q:%d" % i])
    for tag in ("User:3", "User:7", "Q:11", "Q:50"):  # stale entries left in place until someone reads them
        a.invalidate([tag])
        for k, deps in m.deps.items():
            if tag in deps:
                m.valid[k] = m.stale_ok[k] = None
    for i in range(10):  # expired: get misses, get_stale may serve
        put(b"ttl-%d" % i, rnd.randbytes(500), ["T:%d" % i], ttl=0.001)
        m.valid[b"ttl-%d" % i] = None
    time.sleep(0.01)  # let the 1 ms TTLs pass (setup, not synchronisation)
    a.flight_begin(b"running-flight", 3600.0)  # a live leader (this process)
    return a, m


def regions(a: Arena) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges [lo, hi) of every region of the layout, from the plan and the live bytes."""
    info = a._h.info()
    plan = _native.plan(info["size"], info["shards"], info["tag_slots"], info["flight_slots"], info["stats_slots"])
    assert plan is not None
    off_shards, stride, pages, nb = plan["off_shards"], plan["shard_stride"], plan["pages"], plan["buckets"]
    off_tags = _native.HDR_SIZE
    tag_bytes = 16 if _native.VERSION >= 2 else 8  # version 2 keeps two copies of each tag
    off_flights = off_tags + ((info["tag_slots"] * tag_bytes + 4095) // 4096) * 4096
    off_stats = off_flights + ((info["flight_slots"] * 256 + 4095) // 4096) * 4096
    pages_off = 4096 + ((nb * 4 + pages * 8 + 4095) // 4096) * 4096
    r: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    r["header (used fields)"].append((0, 192))
    r["header (padding)"].append((192, 4096))
    with open("/dev/shm" + a.name, "rb") as f:
        raw = f.read()
    for at in range(off_tags, off_tags + info["tag_slots"] * tag_bytes, 8):  # an invalidated tag: lowering it must not revive entries
        r["tag table (set)" if raw[at:at + 8] != bytes(8) else "tag table (unset)"].append((at, at + 8))
    r["flight slots"].append((off_flights, off_flights + info["flight_slots"] * 256))
    r["stats slots"].append((off_stats, off_stats + info["stats_slots"] * 1088))
    for si in range(info["shards"]):
        s = off_shards + si * stride
        r["shard mutex"].append((s, s + 64))  # with the seqlock version at +40
        r["shard header"].append((s + 64, s + 104 + 20 * 32))
        r["index buckets"].append((s + 4096, s + 4096 + nb * 4))
        pd = s + 4096 + nb * 4
        # the CLOCK bits: the pages' ref bytes (in their descriptors) and the blocks' hit map
        r["page descriptors and hit map"].append((pd, pd + pages * 8))
        hits = s + pages_off + pages * PAGE
        r["page descriptors and hit map"].append((hits, hits + pages * 128))
        for p in range(pages):
            c = raw[pd + p * 8]
            if c == 0xFF:
                continue
            size = CLASS_SIZES[c]
            for i in range(PAGE // size):
                b = s + pages_off + p * PAGE + i * size
                state = raw[b]
                if state == 1:
                    ndeps, klen = int.from_bytes(raw[b + 2:b + 4], "little"), int.from_bytes(raw[b + 12:b + 16], "little")
                    r["live block header"].append((b, b + BLK_HDR))
                    r["deps and key"].append((b + BLK_HDR, b + BLK_HDR + 4 * ndeps + klen))
                    r["value bytes"].append((b + BLK_HDR + 4 * ndeps + klen, b + size))
                elif state == 2:
                    r["chunk header"].append((b, b + 16))
                    r["value bytes"].append((b + 16, b + size))
                elif state == 0:
                    r["free block header"].append((b, b + 16))
    return dict(r)


def child(name: str, m: Model, w: int) -> None:
    """Runs in the forked child: exercise every call, report what it saw as JSON."""
    out: dict[str, Any] = {"wrong": [], "typed": None, "untyped": None, "detected": 0, "left": 0}
    logging.getLogger("fraiseshm").setLevel(logging.CRITICAL)  # the wipes are counted, not printed
    try:
        try:
            a = Arena.attach(name)
        except ArenaError as e:
            out["typed"] = f"attach: {type(e).__name__}"
            out["detected"] = 1
            raise SystemExit from None
        a.register_process()
        before = a._h.info()

        def read_all() -> None:
            for k, want in m.valid.items():
                got = a.get(k)
                if got is not None and got != want:
                    out["wrong"].append(f"get {k!r}")
                got = a.get_stale(k)
                if got is not None and got != m.stale_ok[k]:
                    out["wrong"].append(f"get_stale {k!r}")
                got2 = a.get_with_checksum(k)
                if got2 is not None and (got2[0] != want or got2[1] != _native.hash(got2[0])):
                    out["wrong"].append(f"get_with_checksum {k!r}")

        read_all()
        seq = a.current_seq()
        fresh = {b"new-%d" % i: os.urandom(n) for i, n in enumerate((20, 800, 5000, 90_000))}
        for k, v in fresh.items():
            a.put(k, v, ["N:1"], seq, 60)
        for k, v in fresh.items():
            got = a.get(k)
            if got is not None and got != v:
                out["wrong"].append(f"fresh {k!r}")
        a.invalidate(["N:1", "User:5"])
        for k in list(fresh) + [k for k, d in m.deps.items() if "User:5" in d]:
            if a.get(k) is not None:
                out["wrong"].append(f"served after invalidate {k!r}")
            m.valid[k] = None
        role, slot, gen = a.flight_begin(b"fuzz-flight", 5.0)
        if role == 1:
            a.flight_end(slot, gen, True)
        a.flight_poll(0, b"running-flight", 1)
        a.stats()
        problems = a.check()
        read_all()
        after = a._h.info()
        left = a.check()
        noticed = sum(after.get(k, 0) - before.get(k, 0) for k in ("corruption_wipes", "checksum_failures", "lock_wipes"))
        out["detected"] = int(bool(noticed or problems))
        out["left"] = len(left)
        out["left_sample"] = left[:2]
    except SystemExit:
        pass
    except ArenaError as e:
        out["typed"] = f"{type(e).__name__}: {e}"[:200]
        out["detected"] = 1
    except BaseException as e:  # noqa: BLE001 - every other exception is a finding
        out["untyped"] = f"{type(e).__name__}: {e}"[:200]
    os.write(w, json.dumps(out).encode())


def trial(name: str, m: Model, timeout: float) -> tuple[str, dict[str, Any]]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            child(name, m, w)
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "hang", {}
        ready, _, _ = select.select([r], [], [], left)
        if ready:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0 or not data:
        return "crash", {"status": status}
    out = json.loads(data)
    if out["wrong"]:
        return "wrong", out
    if out["untyped"]:
        return "untyped", out
    return ("detected" if out["detected"] else "harmless"), out


def run(trials: int, seed: int, timeout: float, verbose: bool = False) -> dict[str, Any]:
    name = f"/fraiseshm-fuzz-{os.getpid()}"
    a, m = build(name)
    path = "/dev/shm" + name
    try:
        regs = regions(a)
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            pristine = bytes(mm)
            rnd = random.Random(seed)
            names = sorted(regs)
            table: dict[str, collections.Counter[str]] = {n: collections.Counter() for n in names}
            left: collections.Counter[str] = collections.Counter()
            findings = []
            for t in range(trials):
                region = names[t % len(names)]  # every region gets its share
                lo, hi = rnd.choice(regs[region])
                at = rnd.randrange(lo, hi)
                mm[:] = pristine
                mm[at] ^= rnd.randrange(1, 256)
                verdict, out = trial(name, m, timeout)
                table[region][verdict] += 1
                if out.get("left"):
                    left[region] += 1
                if verdict in ("crash", "hang", "wrong", "untyped"):
                    findings.append({"trial": t, "region": region, "offset": at, "verdict": verdict, **out})
                    if verbose:
                        print("FINDING", findings[-1], flush=True)
            mm[:] = pristine
    finally:
        a.close()
        Arena.unlink(name)
    return {"table": table, "left": left, "findings": findings}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()
    t0 = time.monotonic()
    res = run(args.trials, args.seed, args.timeout, verbose=True)
    cols = ("crash", "hang", "wrong", "untyped", "detected", "harmless")
    print(f"\n{args.trials} one-byte trials in {time.monotonic() - t0:.0f} s (seed {args.seed})")
    print(f"{'region':<24}" + "".join(f"{c:>10}" for c in cols) + f"{'left':>8}")
    total: collections.Counter[str] = collections.Counter()
    for region, counts in res["table"].items():
        total.update(counts)
        print(f"{region:<24}" + "".join(f"{counts[c]:>10}" for c in cols) + f"{res['left'][region]:>8}")
    print(f"{'TOTAL':<24}" + "".join(f"{total[c]:>10}" for c in cols) + f"{sum(res['left'].values()):>8}")
    bad = sum(total[c] for c in ("crash", "hang", "wrong", "untyped"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
