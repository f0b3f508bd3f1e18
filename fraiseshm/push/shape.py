"""The cascade a subscriber receives: the specification's shape, reduced to what it may see.

graphql-cascade 1.x (specification/schemas/cascade-response.schema.json):
``{updated: [{typename, id, operation, entity}], deleted: [{typename, id,
deletedAt}], invalidations: [{queryName, arguments, strategy, scope}],
typeInvalidations: [{typename, affectedCount}], metadata: {timestamp,
transactionId, depth, affectedCount}}``.

``spec_cascade`` turns a mutation function's cascade into that shape. It reads
the SQL kit's snake_case as well as camelCase, and ``typename``,
``typeName`` or ``__typename`` (older servers; the spec's clients read
``typename``), so it keeps working whether or not the server side already
answers in the spec's names. ``truncated_types`` becomes ``typeInvalidations``.

``for_subscriber`` applies the identity rule: an entry of a private type
(``@cache(private: true)`` or a view under row-level security) reaches only a
subscriber with the same non-anonymous scope as the mutation that produced it;
everybody else gets ``typeInvalidations: [{typename}]`` instead (no id, no
data), and query invalidations of root fields that return a private type lose
their arguments. ``fit`` keeps a cascade under the NOTIFY payload limit by
turning its entity lists into type invalidations. Pure code.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import msgspec
from graphql import GraphQLObjectType, GraphQLSchema, get_named_type

from fraiseshm.graphql.schema import snake_case

_encode = msgspec.json.Encoder().encode


def _pick(d: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if name in d and d[name] is not None:
            return d[name]
    return default


def typename_of(entry: Mapping[str, Any]) -> str | None:
    """The spec's ``typename``; ``typeName`` / ``__typename`` from older servers."""
    name = _pick(entry, "typename", "typeName", "type_name", "__typename")
    return str(name) if name is not None else None


def spec_cascade(cascade: Mapping[str, Any]) -> dict[str, Any]:
    """A mutation's cascade (SQL kit or spec names) -> the specification's CascadeUpdates dict."""
    updated = []
    for e in cascade.get("updated") or ():
        if isinstance(e, Mapping) and typename_of(e) and e.get("id") is not None:
            updated.append({"typename": typename_of(e), "id": str(e["id"]),
                            "operation": e.get("operation") or "UPDATED", "entity": e.get("entity")})
    deleted = []
    for e in cascade.get("deleted") or ():
        if isinstance(e, Mapping) and typename_of(e) and e.get("id") is not None:
            deleted.append({"typename": typename_of(e), "id": str(e["id"]),
                            "deletedAt": _pick(e, "deletedAt", "deleted_at")})
    invalidations = []
    for q in cascade.get("invalidations") or ():
        if not isinstance(q, Mapping):
            continue
        inv = {"queryName": _pick(q, "queryName", "query_name"), "strategy": q.get("strategy") or "INVALIDATE",
               "scope": q.get("scope") or "PREFIX"}
        for spec, sql in (("arguments", "arguments"), ("queryPattern", "query_pattern"), ("queryHash", "query_hash")):
            value = _pick(q, spec, sql)
            if value is not None:
                inv[spec] = value
        invalidations.append(inv)
    meta = cascade.get("metadata") or {}
    types: dict[str, int | None] = {}
    for t in cascade.get("typeInvalidations") or cascade.get("type_invalidations") or ():
        if isinstance(t, Mapping) and typename_of(t):
            types[typename_of(t)] = _pick(t, "affectedCount", "affected_count")  # type: ignore[index]
    for name in _pick(meta, "truncatedTypes", "truncated_types", default=()) or ():
        types.setdefault(str(name), None)
    return {
        "updated": updated,
        "deleted": deleted,
        "invalidations": invalidations,
        "typeInvalidations": [{"typename": t, "affectedCount": n} for t, n in types.items()],
        "metadata": {
            "timestamp": meta.get("timestamp"),
            "transactionId": _pick(meta, "transactionId", "transaction_id"),
            "depth": meta.get("depth", 1),
            "affectedCount": _pick(meta, "affectedCount", "affected_count", default=len(updated) + len(deleted)),
        },
    }


def is_empty(cascade: Mapping[str, Any]) -> bool:
    return not (cascade["updated"] or cascade["deleted"] or cascade["invalidations"] or cascade["typeInvalidations"])


def with_types(cascade: dict[str, Any], names: Collection[str]) -> None:
    have = {t["typename"] for t in cascade["typeInvalidations"]}
    cascade["typeInvalidations"].extend({"typename": n, "affectedCount": None} for n in sorted(set(names) - have))


def fit(cascade: dict[str, Any], limit: int, encode: Callable[[Any], bytes] = _encode) -> dict[str, Any]:
    """cascade if its JSON is at most limit bytes; else its entities as typeInvalidations,
    then without query invalidations' arguments, then an ALL invalidation (always fits)."""
    if len(encode(cascade)) <= limit:
        return cascade
    types: dict[str, int] = {}
    for e in [*cascade["updated"], *cascade["deleted"]]:
        types[e["typename"]] = types.get(e["typename"], 0) + 1
    smaller = {**cascade, "updated": [], "deleted": [], "typeInvalidations": list(cascade["typeInvalidations"])}
    with_types(smaller, types)
    for t in smaller["typeInvalidations"]:
        if t["typename"] in types and t["affectedCount"] is None:
            t["affectedCount"] = types[t["typename"]]
    if len(encode(smaller)) <= limit:
        return smaller
    smaller["invalidations"] = [{"queryName": None, "strategy": "INVALIDATE", "scope": "ALL"}]
    return smaller


def for_subscriber(
    cascade: Mapping[str, Any],
    *,
    origin: bytes,
    scope: bytes,
    private_types: Collection[str],
    private_fields: Collection[str],
) -> dict[str, Any]:
    """What one subscriber may receive of a cascade that a request of scope ``origin`` caused.

    origin == b"": not caused by an identified request (plain SQL, anonymous): no
    private entity reaches anyone.
    """
    same = bool(origin) and origin == scope
    if same or not private_types:
        return dict(cascade)
    hidden: set[str] = set()
    updated = [e for e in cascade["updated"] if e["typename"] not in private_types or hidden.add(e["typename"])]
    deleted = [e for e in cascade["deleted"] if e["typename"] not in private_types or hidden.add(e["typename"])]
    invalidations = []
    for q in cascade["invalidations"]:
        if q.get("queryName") in private_fields and (q.get("arguments") or q.get("scope") == "EXACT"):
            q = {"queryName": q["queryName"], "strategy": q["strategy"], "scope": "PREFIX"}
        invalidations.append(q)
    out = {**cascade, "updated": updated, "deleted": deleted, "invalidations": invalidations,
           "typeInvalidations": list(cascade["typeInvalidations"])}
    if hidden:
        with_types(out, hidden)
    return out


def project(value: Any, selections: Any) -> Any:
    """value (plain JSON) reduced to a GraphQL selection set (graphql-core SelectionSetNode), aliases
    honoured, inline fragments merged; a field without a selection set takes its whole value."""
    if selections is None:
        return value
    if isinstance(value, list):
        return [project(v, selections) for v in value]
    if not isinstance(value, Mapping):
        return value
    out: dict[str, Any] = {}
    for sel in selections.selections:
        kind = sel.kind
        if kind == "field":
            name = sel.name.value
            key = sel.alias.value if sel.alias else name
            if name == "__typename":
                out[key] = value.get("__typename")
            else:
                out[key] = project(value.get(name), sel.selection_set)
        elif kind == "inline_fragment":
            out.update(project(value, sel.selection_set))
    return out


def graphql_entity(schema: GraphQLSchema, typename: str, data: Any) -> Any:
    """A view's ``data`` (snake_case keys, the resolvers' source) -> the object a client would get
    selecting every field: GraphQL field names, ``__typename`` on every object, absent keys left out."""
    gtype = schema.type_map.get(typename)
    if not isinstance(data, Mapping) or not isinstance(gtype, GraphQLObjectType):
        return data
    out: dict[str, Any] = {"__typename": typename}
    for name, fdef in gtype.fields.items():
        key = snake_case(name)
        if key not in data:
            key = name  # already in GraphQL names (a server that converts its cascades)
            if key not in data:
                continue
        value = data[key]
        inner = get_named_type(fdef.type)
        if isinstance(inner, GraphQLObjectType) and value is not None:
            if isinstance(value, list):
                value = [graphql_entity(schema, inner.name, v) for v in value]
            else:
                value = graphql_entity(schema, inner.name, value)
        out[name] = value
    return out
