"""Shared pieces of the perf scripts: a private PostgreSQL, gunicorn stacks, wrk runs.

Every benchmark starts what it measures itself and compares against a
baseline measured in the same run: this machine is small (2 cores) and
noisy, so only ratios within one run mean anything.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fraiseshm.db.embedded import DB_NAME, EmbeddedCluster  # noqa: E402

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def database(seed_users: int = 10_000) -> Iterator[EmbeddedCluster]:
    """A throw-away embedded cluster with the blog schema and seed data."""
    directory = Path(tempfile.mkdtemp(prefix="fraiseshm-perf-pg-"))
    os.chmod(directory, 0o755)
    cluster = EmbeddedCluster(directory, fast=True)
    try:
        cluster.ensure([ROOT / "examples/blog/schema.sql", ROOT / "examples/blog/private.sql"], seed_users=seed_users)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def database_copies(cluster: EmbeddedCluster, names: Iterable[str]) -> dict[str, str]:
    """One copy of the seeded database per stack (CREATE DATABASE ... TEMPLATE): same rows, and
    NOTIFY is per database, so no stack's listener or push channel wakes for another stack's writes
    (with one shared database, every write woke every idle stack on the same 2 cores). Call before
    anything connects to the seeded database. Database executions are still counted cluster-wide."""
    dsns = {}
    for name in names:
        copy = "perf_" + "".join(c if c.isalnum() else "_" for c in name)
        cluster.psql(f"DROP DATABASE IF EXISTS {copy}")
        cluster.psql(f"CREATE DATABASE {copy} TEMPLATE {DB_NAME}")
        dsns[name] = cluster.dsn_of(copy)
    return dsns


@dataclass
class Stack:
    url: str
    proc: subprocess.Popen[bytes]
    arena_name: str | None = None


JWT_SECRET = "perf-secret-of-at-least-thirty-two-bytes"


@contextmanager
def gunicorn(app: str | None = None, *, env: Mapping[str, str] | None = None, workers: int = 2) -> Iterator[Stack]:
    """fraiseshm under gunicorn.conf.py (app=None), or another ASGI app with the same worker settings."""
    port = free_port()
    arena = f"/fraiseshm-perf-{os.getpid()}-{port}"
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FRAISESHM_")},
        "FRAISESHM_BIND": f"127.0.0.1:{port}",
        "FRAISESHM_WORKERS": str(workers),
        "FRAISESHM_ARENA_NAME": arena,
        "FRAISESHM_LOG_LEVEL": "warning",
        "FRAISESHM_SCHEMA_SDL": str(ROOT / "examples/blog/schema.graphql"),
        "FRAISESHM_JWT_SECRET": JWT_SECRET,  # the blog has a private type: a verified identity is required
        **(env or {}),
    }
    cmd = [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")]
    if app is not None:
        # Same worker class, loop and worker count; only the application differs. The
        # alternatives are fraiseshm with another store: fraiseshm's worker (gunicorn.conf.py);
        # the constant-bytes baseline keeps gunicorn's plain ASGI worker.
        worker = "fraiseshm.http.worker.FastHitWorker" if app.startswith("alt_app") else "asgi"
        cmd = [str(BIN / "gunicorn"), "-k", worker, "--asgi-loop", "uvloop", "-w", str(workers),
               "-b", f"127.0.0.1:{port}", "--no-control-socket", "--log-level", "warning", app]
    # gunicorn reads ./gunicorn.conf.py by default: other apps run from perf/.
    cwd = ROOT if app is None else ROOT / "perf"
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        yield Stack(url=url, proc=proc, arena_name=arena if app is None else None)
    finally:
        _stop(proc)


YOGA_DIR = ROOT / "perf" / "yoga"


def yoga_install() -> None:
    """The Node peer's packages, exactly as perf/yoga/package-lock.json pins them (npm ci, once)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("node/npm are not installed: apt-get install nodejs npm (make perf does it)")
    stamp = YOGA_DIR / "node_modules" / ".package-lock.json"
    lock = YOGA_DIR / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel", "error"], cwd=YOGA_DIR, check=True, timeout=600)


@contextmanager
def yoga(dsn: str, *, workers: int = 0, redis_url: str = "") -> Iterator[Stack]:
    """GraphQL Yoga 5 + response cache over the same database: one process (workers=0), or node:cluster
    with `workers` processes, each with its own in-memory cache or all sharing `redis_url`."""
    yoga_install()
    port = free_port()
    env = {**os.environ, "PORT": str(port), "DATABASE_URL": dsn, "YOGA_WORKERS": str(workers),
           "YOGA_REDIS_URL": redis_url, "NODE_ENV": "production"}
    proc = subprocess.Popen(["node", str(YOGA_DIR / "server.mjs")], cwd=YOGA_DIR, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        yield Stack(url=url, proc=proc)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode(errors='replace')[-3000:] if proc.stderr else ''}")
        try:
            httpx.post(url + "/graphql", json={"query": "{ users(limit: 1) { id } }"}, timeout=2.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)  # the socket is not open yet; nothing to await
    raise TimeoutError(f"{url} not ready after {timeout}s")


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    requests: int


_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNIT[m.group(2)]


def wrk(url: str, body: bytes | None = None, *, duration: float = 5.0, connections: int = 32, threads: int = 1,
        lua: str | None = None, headers: Mapping[str, str] | None = None) -> WrkResult:
    """Run wrk (Debian package) against url with a POST body, return its figures."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make perf does it)")
    script = lua
    if script is None:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body or b'')}"]
        lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in hdrs.items()]
        script = "\n".join(lines) + "\n"
    script += (
        "\nfunction done(summary, latency, requests)\n"
        "  io.write(string.format('FRAISESHM %d %d %d\\n', summary.requests, "
        "summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))\n"
        "  for _, p in pairs({50, 90, 99}) do io.write(string.format('PCT %d %f\\n', p, latency:percentile(p) / 1000.0)) end\n"
        "  io.flush()\n"
        "end\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        run = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s", "-s", path, url],
            capture_output=True, text=True, check=True,
        )
        out = run.stdout
    finally:
        os.unlink(path)
    if "FRAISESHM" not in out:
        raise RuntimeError(f"wrk printed no summary:\n{out}\n{run.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {int(p): float(v) for p, v in re.findall(r"PCT (\d+) ([\d.]+)", out)}
    total, status_err, sock_err = (int(x) for x in re.search(r"FRAISESHM (\d+) (\d+) (\d+)", out).groups())  # type: ignore[union-attr]
    return WrkResult(rps, pct[50], pct[90], pct[99], status_err + sock_err, total)


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" if (b < 32 or b in (34, 92) or b > 126) else chr(b) for b in data) + '"'


def median_of(results: list[WrkResult]) -> WrkResult:
    return WrkResult(
        statistics.median(r.requests_per_s for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p90_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.non_2xx for r in results),
        sum(r.requests for r in results),
    )


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f"±{(max(values) - min(values)) / 2:.0f}"


@contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server (Debian package) on a free loopback port, no persistence; yields its URL."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed: apt-get install redis-server (make perf does it)")
    port = free_port()
    proc = subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.05)  # the socket is not open yet; nothing to await
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait()


# Statements the executor sends for queries: one SELECT per root field on a view.
# Mutation functions run as `SELECT fn_...($1::jsonb)` and are not counted
# (pg_stat_statements tracks top-level statements only).
_DB_EXECUTIONS = (
    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
    "WHERE query ~ 'FROM v_(user|post|comment)' AND query !~ 'fn_'"
)


def psql(dsn: str, sql: str) -> str:
    """Run SQL against dsn with the cluster's psql (unaligned, tuples only)."""
    from fraiseshm.db.embedded import find_bindir

    out = subprocess.run([str(find_bindir() / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", dsn, "-c", sql],
                         capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"})
    return out.stdout


def reset_db_executions(dsn: str) -> None:
    psql(dsn, "SELECT pg_stat_statements_reset()")


def db_executions(dsn: str) -> int:
    """Query statements PostgreSQL executed since the last reset_db_executions()."""
    return int(psql(dsn, _DB_EXECUTIONS).strip() or 0)


class RawConnection:
    """A bare HTTP/1.1 keep-alive connection: the herd's requests leave within
    microseconds of each other (an HTTP client library would trickle them)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, body: bytes) -> None:
        self.writer.write(
            b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    async def receive(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _replay(port: int, bodies: list[bytes], connections: int) -> int:
    conns = await asyncio.gather(*(RawConnection.open(port) for _ in range(connections)))
    failed = 0

    async def drive(conn: RawConnection, share: list[bytes]) -> None:
        nonlocal failed
        for body in share:
            conn.send(body)
            status, _ = await conn.receive()
            failed += status != 200

    try:
        await asyncio.gather(*(drive(c, bodies[i::connections]) for i, c in enumerate(conns)))
    finally:
        for conn in conns:
            conn.close()
    return failed


def replay(url: str, bodies: list[bytes], connections: int = 32) -> int:
    """POST every body once over `connections` keep-alive connections; returns the non-200 count.
    (wrk cannot stop after N requests: its thread:stop() still waits out -d.)"""
    return asyncio.run(_replay(int(url.rsplit(":", 1)[1].split("/")[0]), bodies, connections))
