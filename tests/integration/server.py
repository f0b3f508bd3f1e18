"""Real gunicorn processes for integration tests (no mocks of HTTP or gunicorn)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).with_name("gunicorn")

USER_QUERY = "query($id: ID!) { user(id: $id) { id name email } }"
# The blog schema has a private type (Draft): a server refuses to start without a verified identity.
JWT_SECRET = "test-secret-of-sixty-four-bytes-so-that-every-hmac-algorithm-fits"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One gunicorn master with N workers on a free port, its own arena."""

    def __init__(self, dsn: str, *, workers: int = 2, env: Mapping[str, str] | None = None, tag: str = "t") -> None:
        self.port = free_port()
        self.workers = workers
        self.arena_name = f"/fraiseshm-{tag}-{os.getpid()}-{self.port}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FRAISESHM_")},
            "FRAISESHM_DATABASE_DSN": dsn,
            "FRAISESHM_BIND": f"127.0.0.1:{self.port}",
            "FRAISESHM_WORKERS": str(workers),
            "FRAISESHM_ARENA_NAME": self.arena_name,
            "FRAISESHM_ARENA_SIZE": str(32 << 20),
            "FRAISESHM_SCHEMA_SDL": str(ROOT / "examples/blog/schema.graphql"),
            "FRAISESHM_LOG_LEVEL": "warning",
            "FRAISESHM_EXPOSE_WORKER_HEADER": "true",
            "FRAISESHM_JWT_SECRET": JWT_SECRET,
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(f"/tmp/fraiseshm-gunicorn-{self.port}.log")

    def start(self, timeout: float = 30.0) -> Server:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(GUNICORN), "-c", str(ROOT / "gunicorn.conf.py")],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.wait_all_workers(timeout)
        except BaseException:
            self.stop()  # no gunicorn left behind, and its log file closed
            raise
        return self

    def worker_pids(self) -> set[int]:
        assert self.proc is not None
        try:
            return {c.pid for c in psutil.Process(self.proc.pid).children()}
        except psutil.NoSuchProcess:
            return set()

    def wait_all_workers(self, timeout: float = 30.0) -> None:
        """Until every worker has answered a request (each finished its lifespan startup)."""
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    r = client.get("/health", headers={"Connection": "close"})
                    if "X-Fraiseshm-Worker" in r.headers:
                        seen.add(r.headers["X-Fraiseshm-Worker"])
                except httpx.TransportError:
                    time.sleep(0.05)  # nothing to await: the socket is not open yet
                    continue
                if len(seen) >= self.workers and seen <= {str(p) for p in self.worker_pids()}:
                    return
        raise TimeoutError(f"gunicorn workers not ready after {timeout}s (saw {seen}):\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 10.0), **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.proc = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def graphql(client: httpx.Client, query: str, variables: dict | None = None, **kw: object) -> httpx.Response:
    return client.post("/graphql", json={"query": query, "variables": variables or {}}, **kw)  # type: ignore[arg-type]
