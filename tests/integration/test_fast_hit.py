"""The hit path before falcon (fraiseshm/http/fast_hit.py) answers exactly as falcon's path does.

The first half drives the worker's real ASGI application in-process (real
Runtime, PostgreSQL, arena, verifier; no gunicorn, which both paths share):
each request is sent once through the fast path and once straight to the
falcon app behind it, at the same moment on the same arena, and the two
answers must agree in status, body and every header, in order. A real
call-through wrapper around falcon tells which path answered, so a test can
also insist that the fast path served the hit (and not falcon, which would
make the comparison trivial), or that it handed a request on.

The second half runs real gunicorn workers: coherence across workers after a
mutation, counters in /metrics, and the wire headers of a server with the fast
path beside one without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import falcon.asgi
import httpx
import jwt
import pytest

from fraiseshm.arena import Counter
from fraiseshm.config import load_settings
from fraiseshm.db.embedded import EmbeddedCluster
from fraiseshm.http.app import create_app
from fraiseshm.http.fast_hit import FastHit
from fraiseshm.master import start_master
from fraiseshm.runtime import Runtime
from tests.integration.server import JWT_SECRET, ROOT, USER_QUERY, Server

DRAFTS = "{ drafts(limit: 100) { id title } }"
UPDATE_USER = "mutation($id: ID!, $name: String) { updateUser(input: {id: $id, name: $name}) { success } }"
MADE_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]+")  # fraiseshm/http/request_id.py's made ids


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k == name.lower().encode()]
        assert len(found) <= 1, (name, self.headers)
        return found[0].decode() if found else None


class CountingApp:
    """Calls through to falcon and counts the calls: which path answered."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await self.app(scope, receive, send)


class InProcess:
    """One worker's application (create_app) on a real runtime, driven by ASGI calls."""

    def __init__(self, dsn: str, **env: str) -> None:
        self.arena_name = f"/fraiseshm-fast-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.settings = load_settings(environ={
            "FRAISESHM_DATABASE_DSN": dsn,
            "FRAISESHM_ARENA_NAME": self.arena_name,
            "FRAISESHM_ARENA_SIZE": str(16 << 20),
            "FRAISESHM_SCHEMA_SDL": str(ROOT / "examples/blog/schema.graphql"),
            "FRAISESHM_JWT_SECRET": JWT_SECRET,
            "FRAISESHM_DB_ROLE": "blog_web",  # row-level security applies (drafts)
            "FRAISESHM_EXPOSE_WORKER_HEADER": "true",
            "FRAISESHM_LISTEN_CHANGES": "false",
            "FRAISESHM_AUDIT_ENABLED": "false",
            "FRAISESHM_SCHEMA_RECHECK_INTERVAL": "0",
            "FRAISESHM_LOG_LEVEL": "warning",
            **{"FRAISESHM_" + k.upper(): v for k, v in env.items()},
        })
        self.runner = asyncio.Runner()
        self.master = start_master(self.settings)
        self.runtime = Runtime(self.settings)
        app = create_app(self.settings, self.runtime)
        assert isinstance(app, FastHit)
        self.fast = app
        self.falcon = CountingApp(app.app)
        app.app = self.falcon
        self.runner.run(self.runtime.start())

    def close(self) -> None:
        self.runner.run(self.runtime.stop())
        self.runner.close()
        self.master.stop()

    def request(self, method: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None, *,
                path: str = "/graphql", query_string: bytes = b"", falcon: bool = False) -> Answer:
        """One request, through the fast path (falcon=False) or straight to falcon."""
        raw_headers = [(b"host", b"127.0.0.1:8000")]
        raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers or []]
        if method == "POST":
            raw_headers.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": query_string, "root_path": "", "headers": raw_headers,
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 40000),
        }
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return pending.pop(0) if pending else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        self.runner.run((self.falcon.app if falcon else self.fast)(scope, receive, send))
        start, *bodies = sent
        assert start["type"] == "http.response.start" and all(b["type"] == "http.response.body" for b in bodies)
        assert not any(b.get("more_body") for b in bodies)
        return Answer(start["status"], list(start["headers"]), b"".join(b.get("body", b"") for b in bodies))

    def both(self, method: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
             **kw: Any) -> tuple[Answer, Answer, bool]:
        """The same request through falcon, then the fast path: (falcon's, fast's, fast path answered)."""
        slow = self.request(method, body, headers, falcon=True, **kw)
        calls = self.falcon.calls
        fast = self.request(method, body, headers, **kw)
        return slow, fast, self.falcon.calls == calls

    def counters(self) -> dict[str, int]:
        assert self.runtime.arena is not None
        mine = next(p for p in self.runtime.arena.stats()["processes"] if p["pid"] == os.getpid())
        return {c.name: mine["counters"][c.name.lower()] for c in (Counter.REQUESTS, Counter.HITS, Counter.MISSES)}


def post(query: str, variables: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"query": query, "variables": variables or {}}).encode()


JSON_CT = ("Content-Type", "application/json")


def same(slow: Answer, fast: Answer, *, client_request_id: bool = True) -> None:
    """Status, body and every header in order; a made request id is only compared in shape."""
    assert (fast.status, fast.body) == (slow.status, slow.body)
    if not client_request_id:
        for answer in (slow, fast):
            rid = answer.header("X-Request-ID")
            assert rid is not None and MADE_ID.fullmatch(rid), answer.headers
        slow_h = [(k, b"<made>" if k == b"x-request-id" else v) for k, v in slow.headers]
        fast_h = [(k, b"<made>" if k == b"x-request-id" else v) for k, v in fast.headers]
        assert fast_h == slow_h
    else:
        assert fast.headers == slow.headers


@pytest.fixture(scope="module")
def app(pg_dsn: str) -> Iterator[InProcess]:
    inproc = InProcess(pg_dsn)
    try:
        yield inproc
    finally:
        inproc.close()


@pytest.fixture(scope="module")
def uids(pg_cluster: EmbeddedCluster) -> list[str]:
    return pg_cluster.psql("SELECT id FROM tb_user ORDER BY pk_user LIMIT 20").split()


def author_with_drafts(cluster: EmbeddedCluster) -> str:
    return cluster.psql("SELECT u.id FROM tb_user u JOIN tb_draft d ON d.fk_author = u.pk_user ORDER BY u.pk_user LIMIT 1").strip()


def token(sub: str, *, secret: str = JWT_SECRET, lifetime: float = 300) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + lifetime)}, secret, algorithm="HS256")


# --- the same answer, header by header -------------------------------------------------


HIT_VARIANTS = {
    "plain": [JSON_CT],
    "client request id": [JSON_CT, ("X-Request-ID", "trace-42.a:b@c/d+e=f")],
    "graphql-response accept": [JSON_CT, ("Accept", "application/graphql-response+json")],
    "json accept with q": [JSON_CT, ("Accept", "text/html;q=0.9, application/json;q=0.8")],
    "any accept": [JSON_CT, ("Accept", "*/*")],
    "content type with charset": [("Content-Type", "Application/JSON; charset=utf-8")],
    "graphql-response content type": [("Content-Type", "application/graphql-response+json")],
    "stale if-none-match": [JSON_CT, ("If-None-Match", '"0000000000000000"')],
    "unrelated headers": [JSON_CT, ("User-Agent", "x"), ("Cookie", "a=b"), ("Cache-Control", "no-cache")],
}


@pytest.mark.parametrize("variant", HIT_VARIANTS)
def test_a_hit_through_the_fast_path_is_falcons_hit(app: InProcess, uids: list[str], variant: str) -> None:
    body = post(USER_QUERY, {"id": uids[1]})
    headers = HIT_VARIANTS[variant]
    app.request("POST", body, headers)  # miss via falcon: fills the arena and the memo
    slow, fast, fast_answered = app.both("POST", body, headers)
    assert fast_answered, "the fast path handed a memoised hit to falcon"
    assert slow.header("X-Cache") == "HIT" and slow.status == 200
    same(slow, fast, client_request_id="X-Request-ID" in dict(headers))


def test_if_none_match_gives_the_same_304(app: InProcess, uids: list[str]) -> None:
    body = post(USER_QUERY, {"id": uids[2]})
    etag = app.request("POST", body, [JSON_CT]).header("ETag")
    assert etag is not None
    for inm in (etag, f'"0000000000000001", {etag}', f"W/{etag}"):
        slow, fast, fast_answered = app.both("POST", body, [JSON_CT, ("If-None-Match", inm)])
        assert fast_answered and slow.status == 304 and fast.body == b""
        same(slow, fast, client_request_id=False)


def test_a_private_hit_is_served_to_its_verified_token_only(app: InProcess, pg_cluster: EmbeddedCluster) -> None:
    uid = author_with_drafts(pg_cluster)
    body = post(DRAFTS)
    auth = [JSON_CT, ("Authorization", f"Bearer {token(uid)}")]
    first = app.request("POST", body, auth)
    assert first.status == 200 and json.loads(first.body)["data"]["drafts"], first.body
    slow, fast, fast_answered = app.both("POST", body, auth)
    assert fast_answered and slow.header("X-Cache") == "HIT"
    assert slow.header("Cache-Control") == "private, no-cache" and slow.header("Vary") == "Authorization"
    same(slow, fast, client_request_id=False)

    # A token that does not verify never reaches the entry: falcon answers 401, as it would anyway.
    for bad in (token(uid, secret="another-secret-of-at-least-thirty-two-bytes"), token(uid, lifetime=-60),
                token(uid)[:-4] + "AAAA"):
        slow, fast, fast_answered = app.both("POST", body, [JSON_CT, ("Authorization", f"Bearer {bad}")])
        assert not fast_answered and fast.status == slow.status == 401
        same(slow, fast, client_request_id=False)
    # Anonymous: a private result is never keyed without a scope (BYPASS, by falcon, no arena lookup).
    before = app.counters()
    slow, fast, fast_answered = app.both("POST", body, [JSON_CT])
    assert not fast_answered and fast.header("X-Cache") == "BYPASS"
    assert app.counters()["MISSES"] == before["MISSES"], "a BYPASS was looked up in the arena"
    assert json.loads(fast.body)["data"]["drafts"] == []


def test_a_get_hit_and_the_trailing_slash(app: InProcess, uids: list[str]) -> None:
    qs = urlencode({"query": USER_QUERY, "variables": json.dumps({"id": uids[3]})}).encode()
    app.request("GET", query_string=qs)  # falcon's path memoises the query string (through PROBE)
    for path in ("/graphql", "/graphql/"):
        slow, fast, fast_answered = app.both("GET", query_string=qs, path=path)
        assert fast_answered and slow.header("X-Cache") == "HIT"
        same(slow, fast, client_request_id=False)


REFUSED = {
    "accept html": ([JSON_CT, ("Accept", "text/html")], 406),
    "content type text": ([("Content-Type", "text/plain")], 415),
    "accept twice": ([JSON_CT, ("Accept", "application/json"), ("Accept", "application/graphql-response+json")], 200),
    "not bearer": ([JSON_CT, ("Authorization", "Basic dXNlcjpwYXNz")], 401),
}


@pytest.mark.parametrize("variant", REFUSED)
def test_what_the_fast_path_does_not_answer_goes_to_falcon(app: InProcess, uids: list[str], variant: str) -> None:
    body = post(USER_QUERY, {"id": uids[1]})
    app.request("POST", body, [JSON_CT])
    headers, status = REFUSED[variant]
    slow, fast, fast_answered = app.both("POST", body, headers)
    assert not fast_answered and fast.status == status
    same(slow, fast, client_request_id=False)


# --- coherence and counters -------------------------------------------------------------


def test_an_invalidated_entry_is_never_served_and_a_miss_counts_once(app: InProcess, uids: list[str]) -> None:
    uid = uids[5]
    body = post(USER_QUERY, {"id": uid})
    assert app.request("POST", body, [JSON_CT]).status == 200
    before = app.counters()
    fast = app.request("POST", body, [JSON_CT])
    after = app.counters()
    assert fast.header("X-Cache") == "HIT"
    assert after == {"REQUESTS": before["REQUESTS"] + 1, "HITS": before["HITS"] + 1, "MISSES": before["MISSES"]}

    renamed = app.request("POST", post(UPDATE_USER, {"id": uid, "name": "fast-renamed"}), [JSON_CT])
    assert json.loads(renamed.body)["data"]["updateUser"]["success"], renamed.body
    calls, before = app.falcon.calls, app.counters()
    answer = app.request("POST", body, [JSON_CT])
    after = app.counters()
    assert app.falcon.calls == calls + 1, "the fast path answered after the entry was invalidated"
    assert answer.header("X-Cache") == "MISS" and json.loads(answer.body)["data"]["user"]["name"] == "fast-renamed"
    assert after["MISSES"] == before["MISSES"] + 1, "the fast path's miss was looked up (and counted) twice"
    assert after["REQUESTS"] == before["REQUESTS"] + 1

    # A flush (what a DDL change or an admin does) is seen the same way.
    assert app.runtime.arena is not None
    app.runtime.arena.flush()
    calls = app.falcon.calls
    assert app.request("POST", body, [JSON_CT]).header("X-Cache") == "MISS" and app.falcon.calls == calls + 1


def test_a_mutation_body_is_never_answered_by_the_fast_path(app: InProcess, uids: list[str]) -> None:
    body = post(UPDATE_USER, {"id": uids[6], "name": "twice"})
    for _ in range(2):
        calls = app.falcon.calls
        r = app.request("POST", body, [JSON_CT])
        assert app.falcon.calls == calls + 1 and r.header("X-Cache") == "BYPASS"


def test_fast_hit_off_is_falcon_alone(pg_dsn: str) -> None:
    settings = load_settings(environ={"FRAISESHM_DATABASE_DSN": pg_dsn, "FRAISESHM_FAST_HIT": "false"})
    assert isinstance(create_app(settings), falcon.asgi.App)


# --- real gunicorn workers ----------------------------------------------------------------


class Wire:
    """One raw keep-alive HTTP/1.1 connection: the header lines exactly as the server wrote them."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def request(self, body: bytes, headers: list[tuple[str, str]] = (JSON_CT,)) -> tuple[int, list[tuple[str, str]], bytes]:  # type: ignore[assignment]
        lines = [b"POST /graphql HTTP/1.1", b"Host: 127.0.0.1", b"Content-Length: %d" % len(body)]
        lines += [f"{k}: {v}".encode("latin-1") for k, v in headers]
        self.sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed = [(name, value.strip()) for name, value in (line.split(":", 1) for line in header_lines)]
        length = next((int(v) for k, v in parsed if k.lower() == "content-length"), 0)
        while len(self.buffer) < length:
            self._read()
        payload, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), parsed, payload

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "connection closed by the server"
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def lower(headers: list[tuple[str, str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers}


def pinned(srv: Server) -> dict[str, Wire]:
    """One kept-alive connection per worker (the kernel picks the worker of each new connection)."""
    wires: dict[str, Wire] = {}
    probe = post("{ users(limit: 1) { id } }")
    for _ in range(64):
        wire = Wire(srv.port)
        pid = lower(wire.request(probe)[1])["x-fraiseshm-worker"]
        if pid in wires:
            wire.close()
        else:
            wires[pid] = wire
        if len(wires) == srv.workers:
            return wires
    raise AssertionError(f"64 connections reached only workers {sorted(wires)}")


@pytest.fixture(scope="module")
def servers(pg_dsn: str) -> Iterator[tuple[Server, Server]]:
    """The same configuration with and without the fast path."""
    with Server(pg_dsn, workers=2, tag="fast") as fast, \
            Server(pg_dsn, workers=1, tag="slow", env={"FRAISESHM_FAST_HIT": "false"}) as slow:
        yield fast, slow


def test_on_the_wire_a_fast_hit_is_a_falcon_hit(servers: tuple[Server, Server], uids: list[str]) -> None:
    """Hits answered in gunicorn's protocol (fraiseshm/http/worker.py) or by the ASGI fast path
    against the same hits through falcon, header line by header line (names' case and order too)."""
    fast_srv, slow_srv = servers
    body = post(USER_QUERY, {"id": uids[8]})

    def comparable(h: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(k, "<varies>" if k.lower() in ("date", "x-fraiseshm-worker") else v) for k, v in h]

    for headers in ([JSON_CT, ("X-Request-ID", "wire-1")],
                    [JSON_CT, ("X-Request-ID", "wire-2"), ("If-None-Match", '"0"'), ("Accept", "application/graphql-response+json")],
                    [("Content-Type", "application/json; charset=utf-8"), ("X-Request-ID", "wire-3"), ("User-Agent", "wire")]):
        answers = []
        for srv in (slow_srv, fast_srv):
            wire = Wire(srv.port)
            try:
                wire.request(body, headers)
                answers.append([wire.request(body, headers) for _ in range(5)])
            finally:
                wire.close()
        slow, fast = answers
        for (slow_status, slow_h, slow_body), (fast_status, fast_h, fast_body) in zip(slow, fast, strict=True):
            assert (fast_status, fast_body) == (slow_status, slow_body) and lower(fast_h)["x-cache"] == "HIT"
            assert comparable(fast_h) == comparable(slow_h)


def test_the_protocol_answers_hits_of_a_kept_alive_connection(pg_dsn: str, uids: list[str]) -> None:
    """The protocol path (not only the ASGI fast path) answers: its count is logged when the worker stops."""
    srv = Server(pg_dsn, workers=1, tag="proto", env={"FRAISESHM_LOG_LEVEL": "info"})
    with srv:
        wire = Wire(srv.port)
        try:
            body = post(USER_QUERY, {"id": uids[11]})
            for _ in range(21):
                status, headers, _ = wire.request(body)
                assert status == 200
            assert lower(headers)["x-cache"] == "HIT"
        finally:
            wire.close()
    m = re.search(r"answered (\d+) cache hits in the HTTP/1.1 protocol", srv.log_path.read_text())
    assert m, srv.log_path.read_text()[-3000:]
    assert int(m.group(1)) == 20, m.group(0)  # all but the first (a miss, through falcon)


def test_a_mutation_on_one_worker_is_seen_by_the_fast_path_of_the_other(servers: tuple[Server, Server], uids: list[str]) -> None:
    srv = servers[0]
    wires = pinned(srv)
    try:
        (pid_a, a), (pid_b, b) = wires.items()
        uid = uids[9]
        read = post(USER_QUERY, {"id": uid})
        for round_no in range(6):
            writer, reader = (a, b) if round_no % 2 == 0 else (b, a)
            for wire in (a, b, a, b):  # both workers memoise the body and hit
                assert wire.request(read)[0] == 200
            assert lower(reader.request(read)[1])["x-cache"] == "HIT"
            name = f"wire-{round_no}"
            status, _, out = writer.request(post(UPDATE_USER, {"id": uid, "name": name}))
            assert status == 200 and json.loads(out)["data"]["updateUser"]["success"], out
            status, headers, out = reader.request(read)
            assert json.loads(out)["data"]["user"]["name"] == name, (round_no, headers, out)
            assert lower(headers)["x-cache"] == "MISS"
    finally:
        for wire in wires.values():
            wire.close()


def test_fast_hits_count_in_the_workers_metrics(servers: tuple[Server, Server], uids: list[str]) -> None:
    srv = servers[0]
    wires = pinned(srv)
    try:
        pid, wire = next(iter(wires.items()))
        body = post(USER_QUERY, {"id": uids[10]})
        wire.request(body)
        wire.request(body)

        def figures() -> dict[str, float]:
            text = httpx.get(srv.url + "/metrics", headers={"Connection": "close"}).text
            out = {}
            for name in ("requests", "hits", "misses"):
                m = re.search(rf'^fraiseshm_worker_{name}_total\{{worker="{pid}"\}} ([0-9.e+]+)$', text, re.M)
                assert m, (name, pid)
                out[name] = float(m.group(1))
            return out

        before = figures()
        for _ in range(25):
            assert lower(wire.request(body)[1])["x-cache"] == "HIT"
        after = figures()
        assert after["requests"] - before["requests"] == 25
        assert after["hits"] - before["hits"] == 25 and after["misses"] == before["misses"]

        # A miss the protocol found is handed on with its key: looked up, and counted, once.
        status, _, out = wire.request(post(UPDATE_USER, {"id": uids[10], "name": "counted-once"}))
        assert status == 200 and json.loads(out)["data"]["updateUser"]["success"], out
        before = figures()
        status, headers, out = wire.request(body)
        assert lower(headers)["x-cache"] == "MISS" and json.loads(out)["data"]["user"]["name"] == "counted-once"
        after = figures()
        assert (after["misses"] - before["misses"], after["hits"] - before["hits"], after["requests"] - before["requests"]) == (1, 0, 1)
    finally:
        for wire in wires.values():
            wire.close()
