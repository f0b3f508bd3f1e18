"""A mutation response's graphql-cascade -> the cache tags it invalidates.

The cascade arrives as the JSONB the PostgreSQL function built (snake_case
keys). Tags name tables and keys (fraiseshm/graphql/deps.py): every updated or
deleted entity of type T bumps ``r:<root table of T's view>:<id>`` and
``t:<root table>`` (no list survives a change of its membership). Query
invalidations map onto the schema's root fields: EXACT one, PREFIX/PATTERN
those that match, ALL a flush. A cascade that is missing or malformed is a
failure: the safe wider invalidation, ``w:`` + ``t:`` of every table in the
read sets of the types the mutation touches. A truncated cascade bumps what it
lists plus that wider invalidation for the types that were cut.

``tables`` maps each @view type to its root table, ``wide`` to its wider
invalidation (fraiseshm/graphql/deps.py Binding.table / Binding.wide).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec


class _Updated(msgspec.Struct):
    typename: str = msgspec.field(name="__typename")
    id: str | int  # any key type: text in tags either way
    operation: Literal["CREATED", "UPDATED", "DELETED"]


class _Deleted(msgspec.Struct):
    typename: str = msgspec.field(name="__typename")
    id: str | int  # any key type: text in tags either way


class _Invalidation(msgspec.Struct):
    scope: Literal["EXACT", "PREFIX", "PATTERN", "ALL"]
    strategy: Literal["INVALIDATE", "REFETCH", "REMOVE"] = "INVALIDATE"
    query_name: str | None = None
    query_pattern: str | None = None


class _Metadata(msgspec.Struct):
    transaction_id: str | int | None = None
    truncated: bool = False
    truncated_types: list[str] | None = None


class _Cascade(msgspec.Struct):
    updated: list[_Updated]
    deleted: list[_Deleted]
    invalidations: list[_Invalidation]
    metadata: _Metadata


# unlisted: PostgreSQL changed entities the cascade does not name (fraiseshm/cascade/changes.py)
Verdict = Literal["ok", "missing", "malformed", "truncated", "not_applied", "unlisted"]


@dataclass(slots=True)
class CascadePlan:
    """What to invalidate for one mutation response, and how healthy its cascade was."""

    tags: set[str] = field(default_factory=set)
    flush: bool = False
    verdict: Verdict = "ok"
    detail: str = ""
    transaction_id: str | None = None
    entities: set[str] = field(default_factory=set)  # "r:<table>:<id>" of the entities the cascade names
    cut_types: set[str] = field(default_factory=set)  # types a truncated cascade did not list in full
    unlisted: set[str] = field(default_factory=set)  # changed in PostgreSQL, absent from the cascade

    @property
    def is_failure(self) -> bool:
        return self.verdict in ("missing", "malformed", "unlisted")


def wide_tags(types: Iterable[str], wide: Mapping[str, Iterable[str]]) -> set[str]:
    """The safe wider invalidation of some types: w: + t: of their views' read sets."""
    tags: set[str] = set()
    for t in types:
        tags.update(wide.get(t, ()))
    return tags


def plan_invalidation(
    response: Any,
    *,
    touches: Sequence[str],
    query_names: Sequence[str],
    tables: Mapping[str, str],
    wide: Mapping[str, Iterable[str]],
) -> CascadePlan:
    """Never raises: a bad cascade becomes a failure verdict with the wide fallback."""
    plan = CascadePlan()
    fallback = wide_tags(touches, wide)

    if not isinstance(response, dict):
        plan.verdict, plan.detail, plan.tags = "malformed", "response is not a JSON object", fallback
        return plan
    raw = response.get("cascade")
    if raw is None:
        if response.get("success") is False:
            plan.verdict = "not_applied"  # a refused mutation changed nothing
            return plan
        plan.verdict, plan.detail, plan.tags = "missing", "response has no cascade", fallback
        return plan
    try:
        cascade = msgspec.convert(raw, _Cascade)
    except msgspec.ValidationError as exc:
        plan.verdict, plan.detail, plan.tags = "malformed", str(exc), fallback
        return plan

    plan.transaction_id = None if cascade.metadata.transaction_id is None else str(cascade.metadata.transaction_id)
    unknown = {e.typename for e in [*cascade.updated, *cascade.deleted]} - set(tables)
    if unknown:
        plan.verdict = "malformed"
        plan.detail = f"cascade names unknown types {sorted(unknown)}"
        plan.tags |= fallback
    for entity in [*cascade.updated, *cascade.deleted]:
        table = tables.get(entity.typename)
        if table is None:
            continue
        ref = f"r:{table}:{entity.id}"  # str(int) is PostgreSQL's int text
        plan.entities.add(ref)
        plan.tags.add(ref)
        plan.tags.add("t:" + table)

    for inv in cascade.invalidations:
        if inv.scope == "ALL":
            plan.flush = True
            continue
        name = inv.query_name or inv.query_pattern or ""
        if inv.scope == "EXACT":
            matched = [q for q in query_names if q == name]
        elif inv.scope == "PREFIX":
            matched = [q for q in query_names if q.startswith(name)]
        else:
            matched = [q for q in query_names if fnmatch.fnmatchcase(q, name)]
        plan.tags.update("query:" + q for q in matched)

    if cascade.metadata.truncated:
        cut = cascade.metadata.truncated_types or list(touches)
        plan.cut_types.update(cut)
        plan.tags |= wide_tags(cut, wide)
        if plan.verdict == "ok":
            plan.verdict, plan.detail = "truncated", f"cascade truncated; wide invalidation of {sorted(cut)}"
    return plan
