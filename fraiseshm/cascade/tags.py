"""A mutation response's graphql-cascade -> the cache tags it invalidates.

The cascade arrives parsed (fraiseshm/cascade/spec.py ``parse``: any dialect,
the server's own truncation not yet applied, so every entity the function
listed is here). Tags name tables and keys (fraiseshm/graphql/deps.py): every updated or
deleted entity of type T bumps ``r:<root table of T's view>:<id>`` and
``t:<root table>`` (no list survives a change of its membership). Query
invalidations map onto the schema's root fields: EXACT one, PREFIX/PATTERN
those that match, ALL a flush. A cascade that is missing or malformed is a
failure: the safe wider invalidation, ``w:`` + ``t:`` of every table in the
read sets of the types the mutation touches. A cascade's typeInvalidations
(a function that truncated, or could not list a bulk change) bump what it lists
plus that wider invalidation for the types it names.

``tables`` maps each @view type to its root table, ``wide`` to its wider
invalidation (fraiseshm/graphql/deps.py Binding.table / Binding.wide).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fraiseshm.cascade.spec import Parsed


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
    deleted: set[tuple[str, str]] = field(default_factory=set)  # (typename, id) the cascade deletes
    created: set[tuple[str, str]] = field(default_factory=set)  # (typename, id) the cascade creates
    spec: dict[str, Any] | None = None  # the spec-shaped cascade the response carries (fraiseshm/cascade/spec.py)

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
    parsed: Parsed,
    *,
    touches: Sequence[str],
    query_names: Sequence[str],
    tables: Mapping[str, str],
    wide: Mapping[str, Iterable[str]],
) -> CascadePlan:
    """Never raises: a bad cascade becomes a failure verdict with the wide fallback."""
    plan = CascadePlan()
    fallback = wide_tags(touches, wide)

    if parsed.problem is not None:
        plan.verdict, plan.detail, plan.tags = "malformed", parsed.problem, fallback
        return plan
    cascade = parsed.cascade
    if cascade is None:
        if not parsed.success or not parsed.changed:
            plan.verdict = "not_applied"  # a refused mutation (or a FraiseQL no-op) changed nothing
            return plan
        plan.verdict, plan.detail, plan.tags = "missing", "response has no cascade", fallback
        return plan

    plan.transaction_id = cascade.transaction_id
    unknown = {e.typename for e in [*cascade.updated, *cascade.deleted]} - set(tables)
    unknown |= set(cascade.type_invalidations) - set(tables)
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
    plan.deleted = {(e.typename, e.id) for e in cascade.deleted}
    plan.created = {(e.typename, e.id) for e in cascade.updated if e.operation == "CREATED"}

    for inv in cascade.invalidations:
        if inv.scope == "ALL":
            plan.flush = True
            continue
        name = inv.query_name or inv.query_pattern
        if name is None:
            continue  # a queryHash alone names a client's document: the r:/t: tags cover the server's entries
        if inv.scope == "EXACT":
            matched = [q for q in query_names if q == name]
        elif inv.scope == "PREFIX":
            matched = [q for q in query_names if q.startswith(name)]
        else:
            matched = [q for q in query_names if fnmatch.fnmatchcase(q, name)]
        plan.tags.update("query:" + q for q in matched)

    if cascade.type_invalidations:
        # Types the cascade covers wholesale (truncated, or a bulk change it could not list).
        cut = [t for t in cascade.type_invalidations if t in tables]
        plan.cut_types.update(cut)
        plan.tags |= wide_tags(cut, wide)
        if plan.verdict == "ok":
            plan.verdict, plan.detail = "truncated", f"cascade covers {sorted(cut)} by type; wide invalidation of them"
    return plan
