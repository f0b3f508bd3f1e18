"""The cascadeUpdates push (fraiseshm/push/, /graphql/ws) against real gunicorn and PostgreSQL.

Two hosts (two gunicorn masters, two arenas) on one database: a mutation on one
reaches a subscriber of the other; so does a plain SQL UPDATE. Private entities
never leave as data; a forged NOTIFY is not pushed; a subscriber that stops
reading is closed (never buffered without end); SIGTERM closes subscribers with
1001 at once; /metrics counts the open subscriptions of the host.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import websocket

from tests.integration.server import JWT_SECRET, Server, graphql

SUBSCRIPTION = """subscription($types: [String!]) { cascadeUpdates(entityTypes: $types) {
  updated { typename id operation entity } deleted { typename id deletedAt }
  invalidations { queryName scope } typeInvalidations { typename } metadata { transactionId } } }"""


def ws_url(srv: Server) -> str:
    return srv.url.replace("http://", "ws://") + "/graphql/ws"


def connect(srv: Server, token: str | None = None, types: list[str] | None = None, **kw: Any) -> websocket.WebSocket:
    ws = websocket.create_connection(ws_url(srv), subprotocols=["graphql-transport-ws"], timeout=10, **kw)
    ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"} if token else {}}))
    assert json.loads(ws.recv()) == {"type": "connection_ack"}
    ws.send(json.dumps({"id": "c", "type": "subscribe", "payload": {"query": SUBSCRIPTION, "variables": {"types": types}}}))
    return ws


def next_cascade(ws: websocket.WebSocket) -> dict[str, Any]:
    opcode, data = ws.recv_data(control_frame=True)
    if opcode == websocket.ABNF.OPCODE_CLOSE:
        raise AssertionError(f"closed by the server: {int.from_bytes(data[:2], 'big')} {data[2:].decode()}")
    msg = json.loads(data)
    assert msg["type"] == "next", msg
    return msg["payload"]["data"]["cascadeUpdates"]


def metric(srv: Server, name: str) -> float:
    for line in httpx.get(srv.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling a condition with a deadline


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, JWT_SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def hosts(pg_dsn: str) -> Iterator[tuple[Server, Server]]:
    with Server(pg_dsn, workers=2, tag="pa") as a, Server(pg_dsn, workers=2, tag="pb") as b:
        yield a, b


def first_user(srv: Server, offset: int = 0) -> str:
    with srv.client() as http:
        return graphql(http, "query($o: Int) { users(limit: 1, offset: $o) { id } }", {"o": offset}).json()["data"]["users"][0]["id"]


def test_a_mutation_on_one_host_reaches_a_subscriber_of_the_other(hosts: tuple[Server, Server]) -> None:
    a, b = hosts
    uid = first_user(a, 7)
    subs = [connect(b) for _ in range(4)]  # spread over b's two workers
    try:
        with a.client() as http:
            r = graphql(http, 'mutation($id: ID!) { updateUser(input: {id: $id, name: "pushed"}) { success } }', {"id": uid})
            assert r.json()["data"]["updateUser"]["success"] is True
        for ws in subs:
            cascade = next_cascade(ws)
            [entry] = [e for e in cascade["updated"] if e["id"] == uid]
            assert entry["typename"] == "User" and entry["operation"] == "UPDATED"
            assert entry["entity"]["name"] == "pushed" and entry["entity"]["__typename"] == "User"
            assert "createdAt" in entry["entity"]  # GraphQL names, not the view's snake_case
    finally:
        for ws in subs:
            ws.close()


def test_a_plain_sql_update_is_pushed_with_the_rows_new_data(hosts: tuple[Server, Server], pg_cluster: Any) -> None:
    _, b = hosts
    uid = first_user(b, 8)
    ws = connect(b, types=["User"])
    try:
        pg_cluster.psql(f"UPDATE tb_user SET name = 'plain sql' WHERE id = '{uid}'")
        cascade = next_cascade(ws)
        assert [(e["typename"], e["id"], e["entity"]["name"]) for e in cascade["updated"]] == [("User", uid, "plain sql")]
        assert cascade["metadata"]["transactionId"]
    finally:
        ws.close()


def test_a_forged_notify_is_not_pushed(hosts: tuple[Server, Server], pg_cluster: Any) -> None:
    _, b = hosts
    uid = first_user(b, 9)
    ws = connect(b)
    try:
        forged = {"v": 1, "ts": time.time(), "cascade": {"updated": [], "deleted": [{"typename": "User", "id": uid}],
                                                           "invalidations": [], "typeInvalidations": [], "metadata": {}}}
        pg_cluster.psql(f"SELECT pg_notify('fraiseshm_cascades', '{'0' * 64} {json.dumps(forged)}')")
        pg_cluster.psql(f"UPDATE tb_user SET name = 'after the forgery' WHERE id = '{uid}'")
        cascade = next_cascade(ws)  # the first thing pushed is the real change
        assert cascade["deleted"] == [] and cascade["updated"][0]["entity"]["name"] == "after the forgery"
    finally:
        ws.close()


def test_private_entities_never_leave_as_data(hosts: tuple[Server, Server], pg_cluster: Any) -> None:
    _, b = hosts
    owner, uid = pg_cluster.psql("SELECT d.fk_author, u.id FROM tb_draft d JOIN tb_user u ON u.pk_user = d.fk_author "
                                 "LIMIT 1").strip().split("|")
    mine, anonymous = connect(b, token=token(uid)), connect(b)
    try:
        pg_cluster.psql(f"UPDATE tb_draft SET title = 'secret plan' WHERE fk_author = {int(owner)}")
        for ws in (mine, anonymous):
            cascade = next_cascade(ws)
            # The owner's own tab refetches its drafts; nobody receives a draft's id or data.
            assert cascade["typeInvalidations"] == [{"typename": "Draft"}], cascade
            assert "secret plan" not in json.dumps(cascade)
            assert not [e for e in cascade["updated"] + cascade["deleted"] if e["typename"] == "Draft"]
    finally:
        mine.close()
        anonymous.close()


def test_bad_handshakes_get_the_protocols_close_codes(pg_dsn: str) -> None:
    with Server(pg_dsn, workers=1, tag="pc", env={"FRAISESHM_PUSH_INIT_TIMEOUT": "0.5"}) as srv:
        ws = websocket.create_connection(ws_url(srv), subprotocols=["graphql-transport-ws"], timeout=10)
        ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": "Bearer not.a.jwt"}}))
        assert _close_code(ws) == 4403
        ws = websocket.create_connection(ws_url(srv), subprotocols=["graphql-transport-ws"], timeout=10)
        assert _close_code(ws) == 4408  # no connection_init within push_init_timeout
        ws = connect(srv)
        ws.send(json.dumps({"id": "q", "type": "subscribe", "payload": {"query": "{ users { id } }"}}))
        msg = json.loads(ws.recv())
        assert msg["type"] == "error" and "cascadeUpdates" in msg["payload"][0]["message"]
        assert msg["payload"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        ws.send(json.dumps({"id": "c", "type": "subscribe", "payload": {"query": SUBSCRIPTION}}))
        assert _close_code(ws) == 4409  # the id "c" is taken
        with pytest.raises(websocket.WebSocketBadStatusException):
            websocket.create_connection(ws_url(srv), subprotocols=["graphql-ws"], timeout=10)  # the old protocol


def _close_code(ws: websocket.WebSocket) -> int:
    """The code of the server's close frame; the socket is released."""
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return int.from_bytes(data[:2], "big")
    finally:
        ws.shutdown()


def test_a_subscriber_that_stops_reading_is_closed_and_memory_stays_bounded(pg_dsn: str, pg_cluster: Any) -> None:
    uid, pk = pg_cluster.psql("SELECT id, pk_user FROM tb_user ORDER BY pk_user OFFSET 150 LIMIT 1").strip().split("|")
    bodies = pg_cluster.psql(f"SELECT id || '|' || body FROM tb_post WHERE fk_author = {int(pk)}").strip().splitlines()
    # Each pushed cascade carries this user with their posts: ~1 MB, so that a few of them
    # overflow every buffer on the way (gunicorn's 64 KiB write limit, the kernel's socket buffers).
    pg_cluster.psql(f"UPDATE tb_post SET body = repeat('x', 200000) WHERE fk_author = {int(pk)}")
    try:
        with Server(pg_dsn, workers=1, tag="pd", env={"FRAISESHM_PUSH_QUEUE_MAX": "4"}) as srv:
            # A tiny receive buffer and no reads: the server's sends soon wait on the socket (drain).
            stalled = connect(srv, types=["User"], sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
            healthy = connect(srv, types=["User"])
            until(lambda: metric(srv, "fraiseshm_push_connections") == 2, "two subscriptions")
            flood = 30
            for i in range(flood):  # one transaction each; the healthy subscriber reads each one
                pg_cluster.psql(f"UPDATE tb_user SET name = 'flood {i}' WHERE id = '{uid}'")
                assert next_cascade(healthy)["updated"][0]["entity"]["name"] == f"flood {i}"
            until(lambda: metric(srv, "fraiseshm_push_slow_closed_total") >= 1, "the stalled subscriber to be closed")
            assert metric(srv, "fraiseshm_push_connections") == 1
            healthy.close()
            stalled.shutdown()
            until(lambda: metric(srv, "fraiseshm_push_connections") == 0, "no subscriptions")
    finally:
        pg_cluster.psql(" ".join(f"UPDATE tb_post SET body = $b${body}$b$ WHERE id = '{pid}';"
                                 for pid, body in (line.split("|", 1) for line in bodies)))


def test_sigterm_closes_subscribers_at_once(pg_dsn: str) -> None:
    srv = Server(pg_dsn, workers=2, tag="pe").start()
    subs: list[websocket.WebSocket] = []
    try:
        subs = [connect(srv) for _ in range(4)]
        until(lambda: metric(srv, "fraiseshm_push_connections") == 4, "four subscriptions")
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        codes = [_close_code(ws) for ws in subs]
        took = time.monotonic() - started
        assert codes == [1001] * 4
        assert took < 5, f"subscribers were closed after {took:.1f}s (graceful_timeout is 10s)"
        srv.proc.wait(timeout=20)
    finally:
        for ws in subs:
            ws.shutdown()
        srv.stop()
