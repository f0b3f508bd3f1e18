"""Feeds the worker's Hub: every committed cascade, from any worker of any host, and plain SQL.

    mutation (any worker, any host)
      -> committed -> GraphQLService calls published(response) -> spec shape,
         private entries reduced to typeInvalidations, fit under 7,900 bytes
      -> signed NOTIFY fraiseshm_cascades (fraiseshm/db/push_channel.py)
    every worker's push channel hears it -> Hub.publish -> its subscribers

    plain SQL (kit triggers) -> signed NOTIFY fraiseshm_changes
    every worker's push channel hears it -> r:<table>:<key> items mapped to
    typename + id by the bound catalog -> the rows re-read from the types'
    views (public types only) -> updated / deleted entries -> Hub.publish

The NOTIFY never carries an entity of a private type: any database role may
LISTEN, so such entries leave as ``typeInvalidations`` (the mutating tab has
them from its own response). A change notification of a transaction whose
cascade was already pushed is skipped (it would repeat it). A lost connection
is a gap: after it comes back every subscriber gets an ``ALL`` invalidation
(refetch what is shown), since what was sent meanwhile is unknown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import msgspec

from fraiseshm.cascade.changes import Changes, parse_payload, table_of
from fraiseshm.cascade.tags import CascadePlan
from fraiseshm.config import Settings
from fraiseshm.db.pool import Database, RequestSession
from fraiseshm.db.push_channel import CASCADE_CHANNEL, MAX_PAYLOAD, PushChannel
from fraiseshm.errors import CascadeError, DatabaseError, DatabaseUnavailable, RequestTimeout
from fraiseshm.graphql.schema import RootMutation, ServedSchema
from fraiseshm.push.hub import Hub
from fraiseshm.push.shape import fit, for_subscriber, graphql_entity, spec_cascade, with_types
from fraiseshm.tasks import cancel_and_wait

log = logging.getLogger("fraiseshm.push")

PAYLOAD_VERSION = 1
RECENT_TX = 4096  # transactions whose cascade was pushed, remembered to skip their change notifications
CHANGE_QUEUE = 1024  # change notifications waiting to be re-read; past it: one ALL invalidation

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


def _now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _cascade(**parts: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"updated": [], "deleted": [], "invalidations": [], "typeInvalidations": [],
                            "metadata": {"timestamp": _now_iso(), "transactionId": None, "depth": 1, "affectedCount": 0}}
    base.update(parts)
    return base


def refetch_all() -> dict[str, Any]:
    """What a subscriber gets after a gap: everything it shows may be stale."""
    return _cascade(invalidations=[{"queryName": None, "strategy": "INVALIDATE", "scope": "ALL"}])


class Pusher:
    def __init__(self, settings: Settings, served: ServedSchema, db: Database, hub: Hub) -> None:
        self.settings = settings
        self.served = served
        self.db = db
        self.hub = hub
        self.private_types = private_types(served)
        self._by_table: dict[str, list[str]] = {}
        for name, binding in served.bindings.items():
            self._by_table.setdefault(binding.table, []).append(name)
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._changes: asyncio.Queue[Changes | dict[str, Any]] = asyncio.Queue(CHANGE_QUEUE)
        self._session = RequestSession(role=settings.db_role or None)
        self.channel = PushChannel(
            settings.database_dsn, self._on_message, self._on_gap,
            secret=settings.notify_secret, max_age=settings.notify_max_age,
            retry_interval=settings.listener_retry_interval, keepalive=settings.listener_keepalive,
            connect_timeout=settings.db_connect_timeout,
        )
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.channel.start()
        self._reader = asyncio.get_running_loop().create_task(self._read_changes(), name="fraiseshm-push-changes")
        # Serve only once LISTEN is up: a subscriber accepted before would miss cascades.
        if not await self.channel.wait_listening(self.settings.db_connect_timeout):
            log.error("push: LISTEN %s not established yet; subscribers connect once it is", CASCADE_CHANNEL)

    async def stop(self) -> None:
        self.hub.close()
        await cancel_and_wait(self._reader)
        self._reader = None
        await self.channel.stop()

    # --- the mutation side (the worker that ran it) -------------------------------

    @staticmethod
    def spec_of(response: Any) -> dict[str, Any] | None:
        """The spec-shaped cascade of a mutation function's response, when the service built none."""
        if isinstance(response, Mapping) and isinstance(response.get("cascade"), Mapping):
            return spec_cascade(response["cascade"])
        return None

    def on_cascade(self, mutation: RootMutation, response: Any, plan: CascadePlan, _seq: int | None,
                   call: Any, _changes: Any) -> None:
        """GraphQLService's hook, after the commit and the invalidation, before the response."""
        # The server's own spec-shaped cascade (its query hints included) when the mutation path built one.
        cascade = spec_cascade(plan.spec) if plan.spec is not None else self.spec_of(response)
        if plan.is_failure or plan.flush or cascade is None:
            # What the server cache did (a wider invalidation), the subscribers do too: the types over
            # the tables the cascade left out, or (missing, malformed) every type the mutation touches.
            cascade = cascade or _cascade()
            if plan.verdict == "unlisted" and cascade is not None:
                tables = {item[2:] if item.startswith("w:") else table_of(item) for item in plan.unlisted}
                with_types(cascade, {t for table in tables for t in self._by_table.get(table, ())})
            else:
                with_types(cascade, mutation.touches)
            if plan.flush:
                cascade["invalidations"].append({"queryName": None, "strategy": "INVALIDATE", "scope": "ALL"})
        for entry in cascade["updated"]:
            entry["entity"] = graphql_entity(self.served.schema, entry["typename"], entry["entity"])
        if cascade["metadata"].get("transactionId") is None and getattr(call, "transaction_id", None) is not None:
            cascade["metadata"]["transactionId"] = call.transaction_id  # lets workers skip its change notifications
        self.published(cascade)

    def published(self, cascade: dict[str, Any]) -> None:
        """A committed mutation's cascade (spec shape): send it to every worker of every host."""
        # Any role may LISTEN: no private entity leaves in a NOTIFY.
        cascade = for_subscriber(cascade, origin=b"", scope=b"", private_types=self.private_types,
                                 private_fields=self.hub.private_fields)
        if not (cascade["updated"] or cascade["deleted"] or cascade["invalidations"] or cascade["typeInvalidations"]):
            return
        envelope = {"v": PAYLOAD_VERSION, "ts": round(time.time(), 6), "cascade": cascade}
        body = _encode(envelope)
        room = MAX_PAYLOAD - 65  # the MAC and its space
        if len(body) > room:
            # Too large for one NOTIFY: first without the entities' data (every worker re-reads
            # them from the views), then as typeInvalidations.
            slim = {**cascade, "updated": [{**e, "entity": None} for e in cascade["updated"]]}
            envelope["cascade"] = fit(slim, room - (len(body) - len(_encode(cascade))))
            body = _encode(envelope)
        self.channel.send(body)

    # --- every worker: what the channel hears ---------------------------------------

    def _on_message(self, channel: str, body: str) -> None:
        if channel == CASCADE_CHANNEL:
            cascade = _decode(body).get("cascade")
            if not isinstance(cascade, dict):
                return
            tx = (cascade.get("metadata") or {}).get("transactionId")
            if tx is not None:
                # Now, not when dequeued: this transaction's change notifications are skipped.
                self._recent[str(tx)] = None
                while len(self._recent) > RECENT_TX:
                    self._recent.popitem(last=False)
            if self.hub.connections:
                self._enqueue(cascade)
            return
        if self.hub.connections == 0:
            return  # nobody to tell: not even worth parsing
        raw = _decode(body)
        if isinstance(raw, dict) and raw.get("flush") is not None:
            self.hub.publish(refetch_all())  # the database's definitions changed
            return
        try:
            changes = parse_payload(body)
        except CascadeError as exc:
            log.error("push: %s; subscribers refetch", exc)
            self.hub.publish(refetch_all())
            return
        self._enqueue(changes)

    def _enqueue(self, item: Changes | dict[str, Any]) -> None:
        """Cascades and changes go through one queue: subscribers get them in arrival order."""
        try:
            self._changes.put_nowait(item)
        except asyncio.QueueFull:
            self._drain_changes()
            self.hub.publish(refetch_all())

    def _drain_changes(self) -> None:
        while not self._changes.empty():
            self._changes.get_nowait()

    def _on_gap(self) -> None:
        log.warning("push: the channel reconnected; subscribers refetch what they show")
        self._drain_changes()
        self.hub.publish(refetch_all())

    async def _read_changes(self) -> None:
        """One at a time, in arrival order: plain-SQL changes -> entities re-read -> pushed."""
        while True:
            changes = await self._changes.get()
            if not self.hub.connections:
                continue  # the last subscriber left while this waited: no rows re-read for nobody
            if isinstance(changes, dict):
                try:
                    self.hub.publish(await self._completed(changes))
                except (DatabaseUnavailable, DatabaseError, RequestTimeout) as exc:
                    log.error("push: re-reading a cascade's entities failed (%s); subscribers refetch", exc)
                    self.hub.publish(refetch_all())
                continue
            if changes.tx is not None and changes.tx in self._recent:
                continue  # a mutation's own rows: its cascade was pushed
            try:
                cascade = await self._cascade_of(changes)
            except (DatabaseUnavailable, DatabaseError, RequestTimeout) as exc:
                log.error("push: re-reading changed rows failed (%s); subscribers refetch", exc)
                cascade = refetch_all()
            if changes.tx is not None and changes.tx in self._recent:
                continue  # its cascade arrived while the rows were read
            if cascade["updated"] or cascade["deleted"] or cascade["typeInvalidations"] or cascade["invalidations"]:
                self.hub.publish(cascade)

    async def _completed(self, cascade: dict[str, Any]) -> dict[str, Any]:
        """A cascade that came without its entities' data (too large for a NOTIFY): read them."""
        missing: dict[str, list[str]] = {}
        for e in cascade["updated"]:
            if e.get("entity") is None and e["typename"] in self.served.bindings \
                    and e["typename"] not in self.private_types:
                missing.setdefault(e["typename"], []).append(e["id"])
        if not missing:
            return cascade
        found: dict[tuple[str, str], Any] = {}
        for name, ids in missing.items():
            for key, data in (await self._read(name, ids)).items():
                found[(name, key)] = graphql_entity(self.served.schema, name, data)
        updated, deleted = [], list(cascade["deleted"])
        for e in cascade["updated"]:
            if e.get("entity") is None and e["typename"] in missing:
                if (e["typename"], e["id"]) not in found:  # gone since: deleted by a later transaction
                    deleted.append({"typename": e["typename"], "id": e["id"], "deletedAt": _now_iso()})
                    continue
                e = {**e, "entity": found[(e["typename"], e["id"])]}
            updated.append(e)
        return {**cascade, "updated": updated, "deleted": deleted}

    async def _read(self, name: str, ids: list[str]) -> dict[str, Any]:
        """id -> the view's data, for the rows of type name that exist (as the server's role)."""
        binding = self.served.bindings[name]
        rows = await self.db.fetch_column(
            f"SELECT jsonb_build_object('id', id::text, 'data', data) FROM {binding.view} "
            f"WHERE id = ANY ($1::text[]::{binding.key_type}[])", (ids,), session=self._session)
        found = {}
        for row in rows:
            row = _decode(row) if isinstance(row, str) else row
            found[row["id"]] = row["data"]
        return found

    async def _cascade_of(self, changes: Changes) -> dict[str, Any]:
        keys: dict[str, list[str]] = {}  # type -> ids
        wide: set[str] = set()
        for item in sorted(changes.direct | changes.derived):
            table = table_of(item)
            for name in self._by_table.get(table, ()):
                if item.startswith("w:"):
                    wide.add(name)
                elif item.startswith("r:"):
                    keys.setdefault(name, []).append(item[len(table) + 3:])
        updated: list[dict[str, Any]] = []
        deleted: list[dict[str, Any]] = []
        for name, ids in keys.items():
            if name in self.private_types or len(ids) > self.settings.push_entity_reads:
                wide.add(name)
                continue
            found = await self._read(name, ids)
            now = _now_iso()
            for key in ids:
                if key in found:
                    updated.append({"typename": name, "id": key, "operation": "UPDATED",
                                    "entity": graphql_entity(self.served.schema, name, found[key])})
                else:
                    deleted.append({"typename": name, "id": key, "deletedAt": now})
        return _cascade(
            updated=updated, deleted=deleted,
            typeInvalidations=[{"typename": t, "affectedCount": None} for t in sorted(wide)],
            metadata={"timestamp": _now_iso(), "transactionId": changes.tx, "depth": 1,
                      "affectedCount": len(updated) + len(deleted)},
        )


def private_types(served: ServedSchema) -> set[str]:
    """Types whose entities depend on who asks: @cache(private: true), or a view under RLS."""
    names = {name for name, e in served.entities.items() if e.private}
    names |= {name for name, b in served.bindings.items() if b.per_identity}
    return names


def private_fields(served: ServedSchema, private: set[str]) -> set[str]:
    """Root query fields that return a private type (their arguments may name private ids)."""
    return {field for field, q in served.queries.items() if q.entity.name in private}
