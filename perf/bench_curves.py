"""Cost curves: how each cost of the cache grows with the work, plotted (issue 17).

    .venv/bin/python perf/bench_curves.py [--quick] [--out perf/results]

Each curve is measured in this run, on this machine, and is meant to be read
for its shape (where it bends), not its absolute figures:

    hit latency   vs entries held (10^3 .. 10^6): flat while the index and the
                  touched values fit the CPU caches, then a step when every get
                  misses them (random keys over the whole set);
                  vs value size (64 B .. 1 MiB): flat, then linear in the copy;
                  vs arena fill, with a writer process evicting in the background:
                  flat until eviction runs, then the shard lock is shared with it;
                  vs reader processes (1 .. 4): total gets/s grows to the core
                  count (2 here), then flattens.
    invalidation  get latency vs tags per entry (each dep's sequence is checked on
                  every hit: linear), and invalidate(k tags) vs k (linear).
    herd          database executions per herd vs herd size, coalescing on vs off
                  (real gunicorn, real PostgreSQL): flat at 1 vs growing.

Writes curves.json and curves.png to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common

from fraiseshm.arena import Arena

MiB = 1 << 20


def per_call_ns(fn: Callable[[], object], calls: int, batch: int = 200) -> float:
    """Median ns per call over batches (the median resists the noisy neighbour)."""
    samples = []
    for _ in range(max(1, calls // batch)):
        t = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter_ns() - t) / batch)
    return statistics.median(samples)


def random_get_ns(arena: Arena, keys: list[bytes], calls: int) -> float:
    """Gets of keys drawn uniformly from `keys` (so the whole set is the working set)."""
    rng = random.Random(3)
    order = [keys[rng.randrange(len(keys))] for _ in range(4096)]
    get = arena.get
    it = iter(range(0))

    def one() -> None:
        nonlocal it
        try:
            get(order[next(it)])
        except StopIteration:
            it = iter(range(len(order)))
            get(order[next(it)])

    return per_call_ns(one, calls)


def curve_entries(quick: bool) -> list[dict[str, Any]]:
    counts = [1_000, 10_000, 100_000] + ([] if quick else [1_000_000])
    points = []
    for n in counts:
        name = f"/fraiseshm-curve-{os.getpid()}-e{n}"
        # 200 B values (256 B class) + index: sized so nothing is evicted
        arena = Arena.create(name, size=max(64 * MiB, n * 640), max_entry=64 * 1024, shards=16,
                             tag_slots=1 << 16)
        try:
            seq = arena.current_seq()
            value = b"v" * 200
            keys = [b"entry-%d" % i for i in range(n)]
            for k in keys:
                arena.put(k, value, ["User:*"], seq, 3600)
            held = arena.stats()["entries"]
            points.append({"entries": n, "held": held, "get_ns": random_get_ns(arena, keys, 20_000 if quick else 100_000)})
        finally:
            arena.close()
            Arena.unlink(name)
    return points


def curve_value_size(quick: bool) -> list[dict[str, Any]]:
    name = f"/fraiseshm-curve-{os.getpid()}-v"
    arena = Arena.create(name, size=256 * MiB, max_entry=2 * MiB, shards=16)
    points = []
    try:
        seq = arena.current_seq()
        for size in (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576):
            key = b"size-%d" % size
            arena.put(key, os.urandom(size), ["User:*"], seq, 3600)
            calls = 2_000 if size >= 262144 else (10_000 if quick else 50_000)
            points.append({"bytes": size, "get_ns": per_call_ns(lambda k=key: arena.get(k), calls, batch=50)})
    finally:
        arena.close()
        Arena.unlink(name)
    return points


def curve_fill(quick: bool) -> list[dict[str, Any]]:
    """Get latency of a hot key as the arena fills, then keeps filling (eviction running).
    A child process writes 4 KiB values; the parent measures between its steps."""
    name = f"/fraiseshm-curve-{os.getpid()}-f"
    size = 32 * MiB
    arena = Arena.create(name, size=size, max_entry=64 * 1024, shards=16)
    points = []
    try:
        seq = arena.current_seq()
        hot = b"hot"
        arena.put(hot, b"h" * 1024, ["User:*"], seq, 3600)
        value = os.urandom(4096)
        step = size // len(value) // 8  # 8 steps per arena size, 24 steps: up to 3x the size written
        written = 0
        for _ in range(24):
            for i in range(step):
                arena.put(b"fill-%d" % (written + i), value, ["Post:*"], seq, 3600)
            written += step
            arena.put(hot, b"h" * 1024, ["User:*"], arena.current_seq(), 3600)  # evicted or not, keep it hot
            st = arena.stats()
            get_ns = per_call_ns(lambda: arena.get(hot), 5_000 if quick else 20_000)
            # the same, with a writer evicting concurrently in another process
            pid = os.fork()
            if pid == 0:
                a = Arena.attach(name)
                s, n = a.current_seq(), 0
                deadline = time.monotonic() + (0.2 if quick else 0.5)
                while time.monotonic() < deadline:
                    a.put(b"churn-%d" % n, value, ["Post:*"], s, 3600)
                    n += 1
                os._exit(0)
            contended_ns = per_call_ns(lambda: arena.get(hot), 2_000 if quick else 8_000)
            os.waitpid(pid, 0)
            points.append({"written_mib": written * len(value) / MiB, "fill": st["fill_ratio"],
                           "evictions": st["totals"]["evictions"], "get_ns": get_ns, "get_ns_with_writer": contended_ns})
    finally:
        arena.close()
        Arena.unlink(name)
    return points


def curve_processes(quick: bool) -> list[dict[str, Any]]:
    name = f"/fraiseshm-curve-{os.getpid()}-p"
    arena = Arena.create(name, size=64 * MiB, max_entry=64 * 1024, shards=16)
    points = []
    try:
        seq = arena.current_seq()
        for p in range(4):
            for i in range(64):
                arena.put(b"proc-%d-%d" % (p, i), b"r" * 1024, ["User:*"], seq, 3600)
        secs = 0.5 if quick else 1.5
        for procs in (1, 2, 3, 4):
            points.append({"processes": procs, "gets_per_s": _gets_per_second(name, procs, secs)})
    finally:
        arena.close()
        Arena.unlink(name)
    return points


def _gets_per_second(name: str, procs: int, seconds: float) -> float:
    r, w = os.pipe()
    pids = []
    for p in range(procs):
        pid = os.fork()
        if pid == 0:
            a = Arena.attach(name)
            get = a.get
            keys = [b"proc-%d-%d" % (p, i) for i in range(64)]
            n = 0
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                for k in keys:
                    get(k)
                n += len(keys)
            os.write(w, b"%d\n" % int(n / seconds))
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    return float(sum(int(x) for x in data.split()))


def curve_tags(quick: bool) -> list[dict[str, Any]]:
    name = f"/fraiseshm-curve-{os.getpid()}-t"
    arena = Arena.create(name, size=64 * MiB, max_entry=64 * 1024, shards=16, tag_slots=1 << 16)
    points = []
    calls = 10_000 if quick else 50_000
    try:
        for k in (1, 2, 4, 8, 16, 32, 64, 128):
            tags = [f"r:public.tb_user:{k}-{i}" for i in range(k)]
            key = b"tags-%d" % k
            arena.put(key, b"t" * 1024, tags, arena.current_seq(), 3600)
            get_ns = per_call_ns(lambda key=key: arena.get(key), calls)
            inv_ns = per_call_ns(lambda tags=tags: arena.invalidate(tags), calls // 4, batch=50)
            points.append({"tags": k, "get_ns": get_ns, "invalidate_ns": inv_ns})
    finally:
        arena.close()
        Arena.unlink(name)
    return points


def curve_herd(quick: bool) -> list[dict[str, Any]]:
    """DB executions per herd vs herd size, coalescing on vs off (2 workers, real PostgreSQL)."""
    import bench_herd  # the herd driver: invalidate a hot key, then N concurrent reads of it

    sizes = [1, 10, 50, 200] if quick else [1, 5, 20, 50, 100, 200, 400]
    points = []
    with common.database(seed_users=1_000) as cluster:
        uid = cluster.psql("SELECT id FROM tb_user ORDER BY pk_user LIMIT 1").strip()
        env = {"FRAISESHM_DATABASE_DSN": cluster.dsn}
        with common.gunicorn(env=env) as on, common.gunicorn(env={**env, "FRAISESHM_COALESCE": "false"}) as off:
            round_no = 0
            for size in sizes:
                row: dict[str, Any] = {"herd": size}
                for label, stack in (("on", on), ("off", off)):
                    before = bench_herd.executions(cluster)
                    round_no += 1
                    latencies, _ = asyncio.run(bench_herd.herd(int(stack.url.rsplit(":", 1)[1]), uid, size, 10_000 + round_no))
                    row[f"exec_{label}"] = bench_herd.executions(cluster) - before
                    row[f"p99_ms_{label}"] = bench_herd.pct(latencies, 99)
                points.append(row)
    return points


def plot(out: Path, curves: dict[str, list[dict[str, Any]]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    (a, b, c), (d, e, f) = axes
    pts = curves["entries"]
    a.plot([p["entries"] for p in pts], [p["get_ns"] for p in pts], marker="o")
    a.set(xscale="log", xlabel="entries held (random gets over all)", ylabel="ns per hit", title="hit vs entries held")
    pts = curves["value_size"]
    b.plot([p["bytes"] for p in pts], [p["get_ns"] for p in pts], marker="o")
    b.set(xscale="log", yscale="log", xlabel="value bytes", ylabel="ns per hit", title="hit vs value size")
    pts = curves["fill"]
    c.plot([p["written_mib"] for p in pts], [p["get_ns"] for p in pts], marker="o", label="alone")
    c.plot([p["written_mib"] for p in pts], [p["get_ns_with_writer"] for p in pts], marker="x", label="writer evicting")
    c2 = c.twinx()
    c2.plot([p["written_mib"] for p in pts], [p["fill"] for p in pts], color="grey", linestyle=":", label="fill")
    c2.set_ylabel("fill ratio")
    c.set(xlabel="MiB written into a 32 MiB arena", ylabel="ns per hit", title="hit vs arena fill / eviction")
    c.legend(fontsize=8)
    pts = curves["processes"]
    d.plot([p["processes"] for p in pts], [p["gets_per_s"] for p in pts], marker="o")
    d.set(xlabel=f"reader processes ({os.cpu_count()} cores)", ylabel="gets/s, all processes", title="throughput vs processes")
    pts = curves["tags"]
    e.plot([p["tags"] for p in pts], [p["get_ns"] for p in pts], marker="o", label="get (checks every dep)")
    e.plot([p["tags"] for p in pts], [p["invalidate_ns"] for p in pts], marker="x", label="invalidate(k tags)")
    e.set(xscale="log", yscale="log", xlabel="tags per entry / per invalidation", ylabel="ns", title="cost vs tags")
    e.legend(fontsize=8)
    pts = curves.get("herd") or []
    if pts:
        f.plot([p["herd"] for p in pts], [p["exec_on"] for p in pts], marker="o", label="coalescing on")
        f.plot([p["herd"] for p in pts], [p["exec_off"] for p in pts], marker="x", label="coalescing off")
        f.set(xscale="log", yscale="log", xlabel="herd size (concurrent reads of a just-invalidated key)",
              ylabel="DB executions per herd", title="herd executions vs herd size")
        f.legend(fontsize=8)
    fig.suptitle("fraiseshm cost curves (one run, this machine)")
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(out: Path, quick: bool, herd: bool = True) -> dict[str, list[dict[str, Any]]]:
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[dict[str, Any]]] = {}
    for label, fn in (("entries", curve_entries), ("value_size", curve_value_size), ("fill", curve_fill),
                      ("processes", curve_processes), ("tags", curve_tags)) + ((("herd", curve_herd),) if herd else ()):
        print(f"cost curve: {label} ...", flush=True)
        curves[label] = fn(quick)
    print_curves(curves)
    (out / "curves.json").write_text(json.dumps(curves, indent=2))
    print(f"wrote {out / 'curves.json'}, {plot(out, curves)}")
    return curves


def print_curves(curves: dict[str, list[dict[str, Any]]]) -> None:
    def line(title: str, pts: list[dict[str, Any]], x: str, ys: list[str]) -> None:
        print(f"{title}:")
        for p in pts:
            print("  " + f"{x}={p[x]:<10}" + "  ".join(f"{y}={p[y]:,.0f}" if isinstance(p[y], (int, float)) else f"{y}={p[y]}" for y in ys))

    line("hit vs entries held", curves["entries"], "entries", ["held", "get_ns"])
    line("hit vs value size", curves["value_size"], "bytes", ["get_ns"])
    print("hit vs arena fill (32 MiB arena, 4 KiB values written):")
    for p in curves["fill"]:
        print(f"  written={p['written_mib']:6.1f} MiB  fill={p['fill']:.2f}  evictions={p['evictions']:>6}  "
              f"get_ns={p['get_ns']:,.0f}  with a writer evicting={p['get_ns_with_writer']:,.0f}")
    line("throughput vs processes", curves["processes"], "processes", ["gets_per_s"])
    line("cost vs tags", curves["tags"], "tags", ["get_ns", "invalidate_ns"])
    if curves.get("herd"):
        line("herd executions vs herd size", curves["herd"], "herd", ["exec_on", "exec_off", "p99_ms_on", "p99_ms_off"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-herd", action="store_true", help="arena curves only (no PostgreSQL, no gunicorn)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    run(args.out, args.quick, herd=not args.no_herd)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
