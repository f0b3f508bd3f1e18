"""What PostgreSQL says changed -> cache tags; and a cascade checked against it.

Two sources, one shape (``Changes``), both written by the SQL kit's change
triggers (docs/ARCHITECTURE.md, "Dependencies"):

- a NOTIFY payload on channel ``fraiseshm_changes``, whose MAC the listener
  checked and removed: ``{"v":1,"tx":"<txid>","tags":["t:public.orders",
  "r:public.orders:8","+r:public.customers:3", ...]}`` -> ``parse_payload``;
- the transaction-local setting ``fraiseshm.changes``, the same items
  separated by spaces, read by the server in a mutation's own transaction
  right after its function returned -> ``parse_setting``.

Items: ``t:<table>``, ``w:<table>``, ``r:<table>:<key>``; a leading ``+``
marks a *derived* item (a parent row reached through a foreign key): it is
bumped like the others, but cascade verification does not demand it.

``verify`` compares a mutation's planned cascade with what its transaction
changed: a row changed *directly* in a table that is the root table of a
served type, absent from the cascade (and not covered by a truncation of a
type over that table), is a cascade failure ("unlisted"); so is a wide change
(``w:``) of such a table the cascade names no entity of. Whatever the
verdict, every item the transaction recorded is invalidated before the
response. Pure code: no asyncpg, no arena.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from fraiseshm.cascade.tags import CascadePlan, wide_tags
from fraiseshm.errors import CascadeError

PAYLOAD_VERSION = 1
_KINDS = ("t:", "w:", "r:", "f:", "v:")  # f:, v: lists filtered by value (graphql/deps.py)


@dataclass(frozen=True, slots=True)
class Changes:
    """The items one transaction (or one statement's notification) recorded."""

    tx: str | None = None
    direct: frozenset[str] = field(default_factory=frozenset)  # rows/tables the statements changed
    derived: frozenset[str] = field(default_factory=frozenset)  # parents reached through FKs, "+" stripped

    def __bool__(self) -> bool:
        return bool(self.direct or self.derived)

    def tags(self) -> set[str]:
        return set(self.direct) | set(self.derived)

    def direct_rows(self) -> set[str]:
        return {item for item in self.direct if item.startswith("r:")}

    def wide_tables(self) -> set[str]:
        return {item[2:] for item in self.direct if item.startswith("w:")}


def table_of(item: str) -> str:
    """``r:public.orders:8`` / ``t:public.orders`` -> ``public.orders``."""
    body = item[2:]
    if item.startswith("r:"):
        # Tables are "schema.name"; the key is everything after the first ':' that follows the dot.
        dot = body.find(".")
        colon = body.find(":", dot + 1 if dot >= 0 else 0)
        return body[:colon]
    return body


def _item(raw: object, what: str) -> tuple[str, bool]:
    if not isinstance(raw, str) or not raw:
        raise CascadeError(f"{what}: bad item {raw!r}")
    derived = raw.startswith("+")
    item = raw[1:] if derived else raw
    kind = item[:2]
    if kind not in _KINDS or len(item) <= 2:
        raise CascadeError(f"{what}: bad item {raw!r} (expected t:, w:, r:, f: or v: followed by a table)")
    if kind == "r:":
        table = table_of(item)
        if not table or len(item) <= len(table) + 3:
            raise CascadeError(f"{what}: bad row item {raw!r} (expected r:<schema.table>:<key>)")
    return item, derived


def _changes(tx: str | None, items: Iterable[object], what: str) -> Changes:
    direct: set[str] = set()
    derived: set[str] = set()
    for raw in items:
        item, is_derived = _item(raw, what)
        (derived if is_derived else direct).add(item)
    return Changes(tx, frozenset(direct), frozenset(derived))


class _Payload(msgspec.Struct, forbid_unknown_fields=False):
    v: int
    tags: list[str]
    tx: str | int | None = None


_decode_payload = msgspec.json.Decoder(_Payload).decode


def parse_payload(text: str | bytes) -> Changes:
    """One notification's JSON (MAC already checked and removed) -> Changes; CascadeError if malformed."""
    try:
        p = _decode_payload(text)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CascadeError(f"change notification is not a fraiseshm payload: {exc}: {str(text)[:200]!r}") from None
    if p.v != PAYLOAD_VERSION:
        raise CascadeError(f"change notification has version {p.v}, this server reads {PAYLOAD_VERSION}")
    return _changes(None if p.tx is None else str(p.tx), p.tags, "change notification")


def parse_setting(text: str | None, tx: str | None = None) -> Changes:
    """The fraiseshm.changes setting ("t:public.orders r:public.orders:8 +r:public.customers:3") -> Changes."""
    return _changes(tx, (text or "").split(), "fraiseshm.changes")


def verify(
    plan: CascadePlan,
    changes: Changes,
    *,
    touches: Iterable[str],
    tables: Mapping[str, str],
    wide: Mapping[str, Iterable[str]],
) -> CascadePlan:
    """Check plan (from the cascade) against what the transaction changed; widen it on failure.

    ``tables``: @view type -> root table. Mutates and returns ``plan``. Whatever
    the verdict, every item the transaction recorded ends up invalidated.
    """
    touches = tuple(touches)
    served_tables = set(tables.values())
    named_tables = {table_of(ref) for ref in plan.entities}
    covered = {tables[t] for t in plan.cut_types if t in tables} if plan.verdict == "truncated" else set()
    unlisted = {
        ref for ref in changes.direct_rows()
        if ref not in plan.entities and table_of(ref) in served_tables and table_of(ref) not in covered
    }
    # A wide record cannot be checked row by row: the cascade must at least name
    # an entity over that table, or declare a type over it cut by truncation.
    unlisted_wide = {t for t in changes.wide_tables() if t in served_tables and t not in named_tables | covered}
    problems: list[str] = []
    if unlisted or unlisted_wide:
        what = sorted(unlisted) + ["w:" + t for t in sorted(unlisted_wide)]
        shown = ", ".join(what[:20]) + (f" and {len(what) - 20} more" if len(what) > 20 else "")
        problems.append(f"transaction {changes.tx or plan.transaction_id or '?'} changed {shown}, absent from its cascade")
    if (
        changes
        and plan.transaction_id is not None
        and changes.tx is not None
        and plan.transaction_id != changes.tx
    ):
        problems.append(f"cascade metadata.transaction_id {plan.transaction_id} is not the transaction's id {changes.tx}")

    plan.tags |= changes.tags()  # always: derived parents too, so computed values are fresh
    if plan.is_failure or problems:
        # Repair: the mutation's types, and every served type over a table that changed.
        changed_tables = {table_of(item) for item in changes.direct}
        hit = [t for t, table in tables.items() if table in changed_tables]
        plan.tags |= wide_tags([*touches, *hit], wide)
    if problems and not plan.is_failure:
        plan.verdict = "unlisted"
        plan.detail = "; ".join(problems)
    elif problems:
        plan.detail = "; ".join([plan.detail, *problems]) if plan.detail else "; ".join(problems)
    plan.unlisted = unlisted | {"w:" + t for t in unlisted_wide}
    return plan


def describe(plan: CascadePlan, changes: Changes | None) -> dict[str, Any]:
    """The audit record's details: what was checked, what was missing."""
    details: dict[str, Any] = {}
    if plan.detail:
        details["detail"] = plan.detail
    if plan.unlisted:
        details["unlisted"] = sorted(plan.unlisted)
    if changes is not None:
        details["changed"] = sorted(changes.direct) + ["+" + d for d in sorted(changes.derived)]
    if plan.cut_types:
        details["truncated_types"] = sorted(plan.cut_types)
    return details
