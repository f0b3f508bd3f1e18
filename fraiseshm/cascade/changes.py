"""What PostgreSQL says changed -> cache tags; and a cascade checked against it.

Two sources, one shape (``Changes``):

- NOTIFY payloads on channel ``fraiseshm_changes`` (examples/blog/schema.sql,
  fn_notify_changes), heard by the host's listener (writes from anywhere):
      {"tx": "<txid>", "changes": [["User", "<uuid>"], ...]}
      {"tx": "<txid>", "types": ["Post", ...]}      (too many rows to list)
- the transaction-local setting ``fraiseshm.changes`` the same triggers append
  to, read by the server in the mutation's own transaction right after its
  function returned: "User:<uuid> Post:* ..." (``Type:*`` = too many to list).

Tags: an entity bumps ``Type:id`` and ``Type:*``; a type-level change bumps
``type:T`` (every cached result holding a T) and ``T:*``.

``verify`` compares a mutation's planned cascade with what its transaction
changed: an entity changed but absent from the cascade (and not covered by a
truncation that names its type) is a cascade failure ("unlisted"); the repair
is the safe wider invalidation of the mutation's types plus the changed
entities and their types. Pure code: no asyncpg, no arena.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from fraiseshm.cascade.tags import CascadePlan
from fraiseshm.errors import CascadeError


@dataclass(frozen=True, slots=True)
class Changes:
    """Entities (and types, when a statement's rows were too many) one transaction changed."""

    tx: str | None = None
    entities: frozenset[str] = field(default_factory=frozenset)  # "Type:id"
    types: frozenset[str] = field(default_factory=frozenset)  # "Type": rows not listed one by one

    def __bool__(self) -> bool:
        return bool(self.entities or self.types)

    def tags(self) -> set[str]:
        tags: set[str] = set()
        for ref in self.entities:
            tags.add(ref)
            tags.add(ref.partition(":")[0] + ":*")
        for t in self.types:
            tags.add("type:" + t)
            tags.add(t + ":*")
        return tags

    def entity_types(self) -> set[str]:
        return {ref.partition(":")[0] for ref in self.entities} | set(self.types)


class _Payload(msgspec.Struct, forbid_unknown_fields=False):
    tx: str | int | None = None
    changes: list[tuple[str, str]] | None = None
    types: list[str] | None = None


_decode_payload = msgspec.json.Decoder(_Payload).decode


def _check_name(name: str, what: str) -> str:
    if not name or ":" in name or " " in name:
        raise CascadeError(f"{what}: bad type name {name!r}")
    return name


def parse_notification(payload: str | bytes) -> Changes:
    """One NOTIFY payload -> Changes; CascadeError if it is not one of the two shapes."""
    try:
        p = _decode_payload(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CascadeError(f"change notification is not a fraiseshm payload: {exc}: {str(payload)[:200]!r}") from None
    if p.changes is None and p.types is None:
        raise CascadeError(f"change notification has neither 'changes' nor 'types': {str(payload)[:200]!r}")
    entities = frozenset(f"{_check_name(t, 'notification')}:{i}" for t, i in p.changes or ())
    types = frozenset(_check_name(t, "notification") for t in p.types or ())
    return Changes(None if p.tx is None else str(p.tx), entities, types)


def parse_recorded(text: str | None, tx: str | None = None) -> Changes:
    """The fraiseshm.changes setting ("User:<id> Post:* ...") -> Changes."""
    entities: set[str] = set()
    types: set[str] = set()
    for token in (text or "").split():
        typename, sep, ident = token.partition(":")
        if not sep or not typename or not ident:
            raise CascadeError(f"fraiseshm.changes holds a bad token {token!r}")
        if ident == "*":
            types.add(typename)
        else:
            entities.add(token)
    return Changes(tx, frozenset(entities), frozenset(types))


def tags_for(changes: Iterable[Changes]) -> set[str]:
    tags: set[str] = set()
    for c in changes:
        tags |= c.tags()
    return tags


def verify(plan: CascadePlan, changes: Changes, *, touches: Iterable[str]) -> CascadePlan:
    """Check plan (from the cascade) against what the transaction changed; widen it on failure.

    Mutates and returns ``plan``. Whatever the verdict, every changed entity ends
    up invalidated (a failure must never leave a stale entry behind).
    """
    touches = tuple(touches)
    named_types = {ref.partition(":")[0] for ref in plan.entities}
    covered_types = plan.cut_types if plan.verdict == "truncated" else set()
    unlisted = {
        ref for ref in changes.entities
        if ref not in plan.entities and ref.partition(":")[0] not in covered_types
    }
    # A type-level record cannot be checked id by id: the cascade must at least
    # name that type, or declare it cut by truncation.
    unlisted_types = {t for t in changes.types if t not in named_types and t not in covered_types}
    problems: list[str] = []
    if unlisted or unlisted_types:
        what = sorted(unlisted) + [t + ":*" for t in sorted(unlisted_types)]
        shown = ", ".join(what[:20]) + (f" and {len(what) - 20} more" if len(what) > 20 else "")
        problems.append(f"transaction {changes.tx or plan.transaction_id or '?'} changed {shown}, absent from its cascade")
    if (
        changes
        and plan.transaction_id is not None
        and changes.tx is not None
        and plan.transaction_id != changes.tx
    ):
        problems.append(f"cascade metadata.transaction_id {plan.transaction_id} is not the transaction's id {changes.tx}")

    if plan.is_failure or problems:
        # Repair: the mutation's types, and everything PostgreSQL says changed.
        for t in set(touches) | changes.entity_types():
            plan.tags.add("type:" + t)
            plan.tags.add(t + ":*")
        plan.tags |= changes.tags()
    else:
        plan.tags |= changes.tags()  # equal to what the cascade named when it is right
    if problems and not plan.is_failure:
        plan.verdict = "unlisted"
        plan.detail = "; ".join(problems)
    elif problems:
        plan.detail = "; ".join([plan.detail, *problems]) if plan.detail else "; ".join(problems)
    plan.unlisted = unlisted | {t + ":*" for t in unlisted_types}
    return plan


def describe(plan: CascadePlan, changes: Changes | None) -> dict[str, Any]:
    """The audit record's details: what was checked, what was missing."""
    details: dict[str, Any] = {}
    if plan.detail:
        details["detail"] = plan.detail
    if plan.unlisted:
        details["unlisted"] = sorted(plan.unlisted)
    if changes is not None:
        details["changed"] = sorted(changes.entities) + [t + ":*" for t in sorted(changes.types)]
    if plan.cut_types:
        details["truncated_types"] = sorted(plan.cut_types)
    return details
