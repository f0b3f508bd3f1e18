"""``subscription { cascadeUpdates }`` over WebSocket at /graphql/ws (graphql-transport-ws).

The graphql-ws library's protocol (its PROTOCOL.md), which Apollo Client's
GraphQLWsLink and clients/apollo-cascade.mjs speak:

    client: connection_init {payload: {Authorization: "Bearer <jwt>"}}  (within push_init_timeout, else 4408)
    server: connection_ack
    client: subscribe {id, payload: {query: "subscription { cascadeUpdates(entityTypes: [..]) {...} }"}}
    server: next {id, payload: {data: {cascadeUpdates: <CascadeUpdates>}}}   one per committed cascade
    client: complete {id} / ping -> pong

Identity: the token in connection_init (browsers cannot set headers on a
WebSocket), else the upgrade request's Authorization header, verified like
any request (fraiseshm/identity.py); a bad token closes with 4403, and the
socket closes with 4403 when the token expires. Each cascade is reduced to
what that identity may see (fraiseshm/push/shape.py for_subscriber). The
selection set is applied to the cascade as plain JSON (aliases, inline
fragments); ``entity`` is the entity's JSON as the spec's clients read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import falcon
import falcon.asgi
import msgspec
from graphql import GraphQLError, OperationDefinitionNode, OperationType, parse
from graphql.language import FieldNode, ListValueNode, StringValueNode, VariableNode

from fraiseshm.errors import PushRefused, RequestError, Unauthenticated
from fraiseshm.identity import Identity, Verifier
from fraiseshm.push.hub import Hub, Subscriber
from fraiseshm.push.shape import project
from fraiseshm.runtime import Runtime

log = logging.getLogger("fraiseshm.push")

PROTOCOL = "graphql-transport-ws"
MAX_OPERATIONS = 8  # subscriptions per socket
MAX_MESSAGE = 64 * 1024  # bytes of one client message
FIELD = "cascadeUpdates"

_encode = msgspec.json.Encoder().encode


class _Subscribe(msgspec.Struct, forbid_unknown_fields=False):
    query: str
    variables: dict[str, Any] | None = None
    operationName: str | None = None  # noqa: N815 - wire name


def _root_field(query: str, operation_name: str | None, variables: dict[str, Any] | None, max_bytes: int
                ) -> tuple[FieldNode, list[str] | None]:
    """The cascadeUpdates field of the document and its entityTypes; GraphQLError if it is anything else."""
    if len(query.encode()) > max_bytes:
        raise GraphQLError(f"document is over {max_bytes} bytes (FRAISESHM_MAX_DOCUMENT_BYTES)")
    document = parse(query, max_tokens=10_000)
    ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        ops = [o for o in ops if o.name is not None and o.name.value == operation_name]
    if len(ops) != 1 or len(document.definitions) != 1:
        raise GraphQLError("send exactly one operation, without fragments: subscription { cascadeUpdates { ... } }")
    op = ops[0]
    fields = op.selection_set.selections
    if op.operation != OperationType.SUBSCRIPTION or len(fields) != 1 or not isinstance(fields[0], FieldNode) \
            or fields[0].name.value != FIELD:
        raise GraphQLError("this endpoint serves one subscription: subscription { cascadeUpdates { ... } }; "
                           "queries and mutations go to POST /graphql")
    field = fields[0]
    types: list[str] | None = None
    for arg in field.arguments or ():
        if arg.name.value != "entityTypes":
            raise GraphQLError(f"cascadeUpdates has no argument {arg.name.value!r} (entityTypes: [String!])")
        value = arg.value
        if isinstance(value, VariableNode):
            raw = (variables or {}).get(value.name.value)
            if raw is not None and not (isinstance(raw, list) and all(isinstance(t, str) for t in raw)):
                raise GraphQLError("entityTypes must be a list of type names")
            types = raw
        elif isinstance(value, ListValueNode) and all(isinstance(v, StringValueNode) for v in value.values):
            types = [v.value for v in value.values]  # type: ignore[union-attr]
        else:
            raise GraphQLError("entityTypes must be a list of type names")
    return field, (types or None)


class SubscriptionsResource:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.verifier = Verifier(runtime.settings)
        self.init_timeout = runtime.settings.push_init_timeout
        self.max_document = runtime.settings.max_document_bytes

    async def on_websocket(self, req: falcon.asgi.Request, ws: falcon.asgi.WebSocket) -> None:
        hub = self.runtime.push_hub
        if hub is None or PROTOCOL not in ws.subprotocols:
            await ws.close()  # before accept: HTTP 403 (push disabled, or not graphql-transport-ws)
            return
        await ws.accept(subprotocol=PROTOCOL)
        socket = _Socket(self, hub, ws, req.get_header("Authorization"))
        try:
            await socket.run()
        except Exception:  # noqa: BLE001 - a bug here ends this socket (4500), never the worker's error path
            log.exception("push: subscription socket failed")
            await socket.close(4500, "Internal server error")


class _Socket:
    def __init__(self, resource: SubscriptionsResource, hub: Hub, ws: falcon.asgi.WebSocket, header: str | None) -> None:
        self.r = resource
        self.hub = hub
        self.ws = ws
        self.header = header
        self.identity: Identity | None = None
        self.subs: dict[str, tuple[Subscriber, asyncio.Task[None]]] = {}
        self.closing = False

    async def run(self) -> None:
        expiry: asyncio.Task[None] | None = None
        try:
            try:
                first = await asyncio.wait_for(self.ws.receive_text(), self.r.init_timeout)
            except TimeoutError:
                return await self.close(4408, "Connection initialisation timeout")
            if not await self._init(first):
                return
            if self.identity is not None and self.identity.expires != float("inf"):
                expiry = asyncio.get_running_loop().create_task(self._expire(self.identity.expires))
            while not self.closing:
                text = await self.ws.receive_text()
                await self._message(text)
        except (falcon.WebSocketDisconnected, falcon.errors.PayloadTypeError):
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            for sub, task in self.subs.values():
                task.cancel()
                self.hub.unsubscribe(sub)
            self.subs.clear()

    async def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        # Shielded: the receive loop's cleanup cancels the task that called this.
        with contextlib.suppress(falcon.WebSocketDisconnected, RuntimeError, OSError, asyncio.CancelledError):
            await asyncio.shield(self.ws.close(code, reason))

    async def _expire(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))  # a deadline, not a synchronisation
        await self.close(4403, "Forbidden: token expired")

    async def _init(self, text: str) -> bool:
        msg = self._decode(text)
        if msg is None or msg.get("type") != "connection_init":
            await self.close(4400, "expected connection_init")
            return False
        payload = msg.get("payload") or {}
        token = None
        if isinstance(payload, dict):
            token = payload.get("Authorization") or payload.get("authorization")
        try:
            self.identity = self.r.verifier.identify(token if isinstance(token, str) else self.header, None)
        except (Unauthenticated, RequestError) as exc:
            log.info("push: connection_init refused: %s", exc)
            await self.close(4403, "Forbidden")
            return False
        await self.ws.send_text('{"type":"connection_ack"}')
        return True

    def _decode(self, text: str) -> dict[str, Any] | None:
        if len(text) > MAX_MESSAGE:
            return None
        try:
            msg = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return None
        return msg if isinstance(msg, dict) and isinstance(msg.get("type"), str) else None

    async def _message(self, text: str) -> None:
        msg = self._decode(text)
        if msg is None:
            return await self.close(4400, "invalid message")
        kind = msg["type"]
        if kind == "ping":
            await self.ws.send_text('{"type":"pong"}')
        elif kind == "pong":
            pass
        elif kind == "connection_init":
            await self.close(4429, "Too many initialisation requests")
        elif kind == "subscribe":
            await self._subscribe(msg)
        elif kind == "complete":
            entry = self.subs.pop(str(msg.get("id")), None)
            if entry is not None:
                entry[1].cancel()
                self.hub.unsubscribe(entry[0])
        else:
            await self.close(4400, f"unknown message type {kind[:40]!r}")

    async def _subscribe(self, msg: dict[str, Any]) -> None:
        op_id = msg.get("id")
        if not isinstance(op_id, str) or not op_id or len(op_id) > 128:
            return await self.close(4400, "subscribe needs an id")
        if op_id in self.subs:
            return await self.close(4409, f"Subscriber for {op_id[:40]} already exists")
        try:
            request = msgspec.convert(msg.get("payload"), _Subscribe)
            field, types = _root_field(request.query, request.operationName, request.variables, self.r.max_document)
            if len(self.subs) >= MAX_OPERATIONS:
                raise GraphQLError(f"at most {MAX_OPERATIONS} subscriptions per socket")
            assert self.identity is not None
            sub = self.hub.subscribe(self.identity.scope, types)
        except (msgspec.ValidationError, GraphQLError) as exc:
            message = exc.message if isinstance(exc, GraphQLError) else f"subscribe payload: {exc}"
            await self.ws.send_text(_encode({"id": op_id, "type": "error", "payload": [
                {"message": message, "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]}).decode())
            return None
        except PushRefused as exc:
            return await self.close(exc.code, str(exc)[:120])
        key = field.alias.value if field.alias else FIELD
        task = asyncio.get_running_loop().create_task(self._forward(op_id, key, field, sub))
        self.subs[op_id] = (sub, task)
        return None

    async def _forward(self, op_id: str, key: str, field: FieldNode, sub: Subscriber) -> None:
        """Queue -> socket, in order, while a watcher closes the socket as soon as the hub drops the
        subscriber: gunicorn's send waits while the client does not read (drain), so a slow
        client fills its bounded queue, and the close must not wait behind that send."""
        watcher = asyncio.get_running_loop().create_task(self._watch(sub))
        try:
            while True:
                cascade = await sub.queue.get()
                body = {"id": op_id, "type": "next", "payload": {"data": {key: project(cascade, field.selection_set)}}}
                await self.ws.send_text(_encode(body).decode())
        except (falcon.WebSocketDisconnected, OSError, RuntimeError):
            await self.close(1000, "")
        finally:
            watcher.cancel()

    async def _watch(self, sub: Subscriber) -> None:
        await sub.closed.wait()
        await self.close(sub.close_code, sub.close_reason)
