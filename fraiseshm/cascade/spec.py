"""graphql-cascade 1.8.0: read a mutation function's response, write the spec's cascade.

Two halves, both pure (no asyncpg, no arena, no GraphQL):

- ``parse(raw)``: whatever the PostgreSQL function returned -> ``Parsed``. It
  reads every dialect fraiseshm meets: the kit's helpers (snake_case keys,
  ``__typename``), graphql-cascade itself (camelCase, ``typename``), FraiseQL's
  ``mutation_response`` composite (13 columns: succeeded, state_changed,
  error_class, ..., entity, updated_fields, cascade, error_detail, metadata; and
  the older 8-column one with a ``status`` string), which the server reads as
  ``to_jsonb(row)``, and FraiseQL v1 functions that put the cascade under
  ``_cascade``. Inside a cascade a key is compared by its snake_case form; a key
  that is not one the specification defines is an error naming it, never
  dropped (a misspelt ``queryNme`` on a PREFIX invalidation would otherwise
  widen it to every root field).
- ``to_cascade(parsed, ...)``: the spec-shaped ``CascadeUpdates`` dict the
  response carries and the push publishes: camelCase keys, ``typename``,
  ``typeInvalidations``, size limits applied by removing whole types (REQ-050).

The version constant is the one `cascadeInfo` reports.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from fraiseshm.errors import CascadeError

SPEC_VERSION = "1.8.0"
SUPPORTED_VERSIONS = ("1.8.0",)
DEPRECATED_FEATURES: tuple[str, ...] = ()  # no `__typename` on entries: GraphQL forbids declaring it

OPERATIONS = ("CREATED", "UPDATED", "DELETED")
STRATEGIES = ("INVALIDATE", "REFETCH", "REMOVE")
SCOPES = ("EXACT", "PREFIX", "PATTERN", "ALL")
ERROR_CODES = (
    "VALIDATION_ERROR", "NOT_FOUND", "UNAUTHORIZED", "FORBIDDEN", "CONFLICT", "INTERNAL_ERROR",
    "TRANSACTION_FAILED", "TIMEOUT", "RATE_LIMITED", "SERVICE_UNAVAILABLE",
)
DOMAIN_CODE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*$")

# FraiseQL's error_class values (crates/fraiseql-cli/sql/helpers/mutation_response.sql) and
# the failure prefixes of its older status strings ("failed:validation") -> the spec's category.
_ERROR_CLASSES = {
    "validation": "VALIDATION_ERROR", "validation_error": "VALIDATION_ERROR", "invalid": "VALIDATION_ERROR",
    "not_found": "NOT_FOUND", "notfound": "NOT_FOUND",
    "unauthorized": "UNAUTHORIZED", "unauthenticated": "UNAUTHORIZED",
    "forbidden": "FORBIDDEN", "permission_denied": "FORBIDDEN",
    "conflict": "CONFLICT", "duplicate": "CONFLICT",
    "internal_error": "INTERNAL_ERROR", "internal": "INTERNAL_ERROR", "error": "INTERNAL_ERROR",
    "transaction_failed": "TRANSACTION_FAILED", "timeout": "TIMEOUT", "rate_limited": "RATE_LIMITED",
    "service_unavailable": "SERVICE_UNAVAILABLE", "unavailable": "SERVICE_UNAVAILABLE",
}
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


# --- the parsed, dialect-free form ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One updated or deleted entity."""

    typename: str
    id: str  # any key type, as its text (what the kit puts in r: tags)
    operation: str = "UPDATED"  # CREATED, UPDATED or DELETED
    entity: Any = None  # the view's `data` (snake_case keys), updated entries only
    updated_fields: tuple[str, ...] | None = None
    deleted_at: str | None = None


@dataclass(frozen=True, slots=True)
class Hint:
    """A QueryInvalidation."""

    scope: str
    strategy: str = "INVALIDATE"
    query_name: str | None = None
    query_pattern: str | None = None
    query_hash: str | None = None
    arguments: Any = None

    def key(self) -> str:
        return msgspec.json.encode(self.as_dict(), order="sorted").decode()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.query_name is not None:
            out["queryName"] = self.query_name
        if self.query_hash is not None:
            out["queryHash"] = self.query_hash
        if self.arguments is not None:
            out["arguments"] = self.arguments
        if self.query_pattern is not None:
            out["queryPattern"] = self.query_pattern
        out["strategy"] = self.strategy
        out["scope"] = self.scope
        return out


@dataclass(slots=True)
class Cascade:
    updated: list[Entry] = field(default_factory=list)
    deleted: list[Entry] = field(default_factory=list)
    invalidations: list[Hint] = field(default_factory=list)
    type_invalidations: dict[str, int | None] = field(default_factory=dict)  # typename -> affectedCount
    timestamp: str | None = None
    transaction_id: str | None = None
    depth: int | None = None
    affected_count: int | None = None
    truncated: bool = False


@dataclass(slots=True)
class Parsed:
    """A mutation function's response, whatever its dialect."""

    success: bool = False
    errors: list[dict[str, Any]] = field(default_factory=list)  # spec-shaped CascadeError dicts
    data: Any = None
    cascade: Cascade | None = None  # None: the response carried none
    changed: bool = True  # False: FraiseQL said state_changed = false (a no-op)
    problem: str | None = None  # why the response or its cascade is malformed
    dialect: str = "fraiseshm"  # fraiseshm | fraiseql | fraiseql-v1 (for the audit)


# --- reading -------------------------------------------------------------------------------


def _snake(key: str) -> str:
    if key == "__typename":
        return "typename"
    return _CAMEL.sub(r"_\1", key).lower()


def _fields(obj: Any, allowed: Iterable[str], where: str) -> dict[str, Any]:
    """An object's keys by their snake_case form; CascadeError on an unknown or doubled key."""
    if not isinstance(obj, dict):
        raise CascadeError(f"{where}: expected an object, got {type(obj).__name__}")
    allowed = set(allowed)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _snake(key) if isinstance(key, str) else ""
        if name not in allowed:
            raise CascadeError(f"{where}: unknown key {key!r} (graphql-cascade {SPEC_VERSION} defines "
                               f"{', '.join(sorted(allowed))})")
        if name in out and out[name] != value:
            raise CascadeError(f"{where}: key {key!r} given twice with different values")
        out[name] = value
    return out


def _text(value: Any, where: str, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise CascadeError(f"{where}: expected a non-empty string, got {value!r}")
    return str(value)


def _enum(value: Any, allowed: Sequence[str], where: str) -> str:
    if value not in allowed:
        raise CascadeError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CascadeError(f"{where}: expected a count, got {value!r}")
    return value


def _entry(raw: Any, where: str, *, deleted: bool) -> Entry:
    if deleted:
        f = _fields(raw, ("typename", "id", "deleted_at"), where)
    else:
        f = _fields(raw, ("typename", "id", "operation", "entity", "updated_fields", "view"), where)
    typename = _text(f.get("typename"), where + ".typename")
    key = _text(f.get("id"), where + ".id")
    assert typename is not None and key is not None
    if deleted:
        return Entry(typename, key, "DELETED", deleted_at=_text(f.get("deleted_at"), where + ".deletedAt", required=False))
    fields = f.get("updated_fields")
    if fields is not None and (not isinstance(fields, list) or not all(isinstance(x, str) for x in fields)):
        raise CascadeError(f"{where}.updatedFields: expected a list of field names, got {fields!r}")
    return Entry(typename, key, _enum(f.get("operation", "UPDATED"), OPERATIONS, where + ".operation"),
                 entity=f.get("entity"), updated_fields=None if fields is None else tuple(fields))


def _hint(raw: Any, where: str) -> Hint:
    f = _fields(raw, ("query_name", "query_hash", "arguments", "query_pattern", "strategy", "scope"), where)
    hint = Hint(
        scope=_enum(f.get("scope"), SCOPES, where + ".scope"),
        strategy=_enum(f.get("strategy", "INVALIDATE"), STRATEGIES, where + ".strategy"),
        query_name=_text(f.get("query_name"), where + ".queryName", required=False),
        query_pattern=_text(f.get("query_pattern"), where + ".queryPattern", required=False),
        query_hash=_text(f.get("query_hash"), where + ".queryHash", required=False),
        arguments=f.get("arguments"),
    )
    # INVARIANT: a scoped invalidation names what it scopes; an empty name would match every root field.
    if hint.scope in ("EXACT", "PREFIX") and hint.query_name is None and hint.query_hash is None:
        raise CascadeError(f"{where}: scope {hint.scope} needs queryName")
    if hint.scope == "PATTERN" and hint.query_pattern is None and hint.query_name is None:
        raise CascadeError(f"{where}: scope PATTERN needs queryPattern")
    return hint


def parse_cascade(raw: Any, where: str = "cascade") -> Cascade:
    """A cascade object in any dialect -> Cascade; CascadeError naming the first problem."""
    f = _fields(raw, ("updated", "deleted", "invalidations", "type_invalidations", "metadata"), where)
    out = Cascade()
    for name in ("updated", "deleted", "invalidations"):
        value = f.get(name, [])
        if not isinstance(value, list):
            raise CascadeError(f"{where}.{name}: expected a list, got {type(value).__name__}")
    if "updated" not in f and "deleted" not in f:
        raise CascadeError(f"{where}: has neither updated nor deleted")
    out.updated = [_entry(e, f"{where}.updated[{i}]", deleted=False) for i, e in enumerate(f.get("updated", []))]
    out.deleted = [_entry(e, f"{where}.deleted[{i}]", deleted=True) for i, e in enumerate(f.get("deleted", []))]
    out.invalidations = [_hint(h, f"{where}.invalidations[{i}]") for i, h in enumerate(f.get("invalidations", []))]
    types = f.get("type_invalidations") or []
    if not isinstance(types, list):
        raise CascadeError(f"{where}.typeInvalidations: expected a list")
    for i, t in enumerate(types):
        tf = _fields(t, ("typename", "affected_count"), f"{where}.typeInvalidations[{i}]")
        name = _text(tf.get("typename"), f"{where}.typeInvalidations[{i}].typename")
        assert name is not None
        out.type_invalidations[name] = _count(tf.get("affected_count"), f"{where}.typeInvalidations[{i}].affectedCount")
    meta = f.get("metadata")
    if meta is not None:
        m = _fields(meta, ("timestamp", "transaction_id", "depth", "affected_count", "truncated"), where + ".metadata")
        out.timestamp = _text(m.get("timestamp"), where + ".metadata.timestamp", required=False)
        out.transaction_id = _text(m.get("transaction_id"), where + ".metadata.transactionId", required=False)
        out.depth = _count(m.get("depth"), where + ".metadata.depth")
        out.affected_count = _count(m.get("affected_count"), where + ".metadata.affectedCount")
        truncated = m.get("truncated", False)
        if not isinstance(truncated, bool):
            raise CascadeError(f"{where}.metadata.truncated: expected a boolean, got {truncated!r}")
        out.truncated = truncated
        if truncated and not out.type_invalidations:
            raise CascadeError(f"{where}: metadata.truncated without typeInvalidations leaves what was cut unnamed")
    return out


def error(code: Any, message: Any, *, field: Any = None, path: Any = None, domain_code: Any = None,
          extensions: Any = None) -> dict[str, Any]:
    """A spec CascadeError dict. A code outside the enum becomes INTERNAL_ERROR with the code as domainCode."""
    text = str(code or "INTERNAL_ERROR")
    if text not in ERROR_CODES:
        domain_code = domain_code or text.upper()
        text = "INTERNAL_ERROR"
    if domain_code is not None and not DOMAIN_CODE.match(str(domain_code)):
        domain_code = None  # never emit a domainCode the spec's pattern forbids
    if path is None and field:
        path = ["input", str(field)]
    return {
        "message": str(message) if message else text.lower().replace("_", " "),
        "code": text,
        "domainCode": domain_code,
        "field": None if field is None else str(field),
        "path": None if path is None else [str(p) for p in path],
        "extensions": extensions,
    }


def _errors(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CascadeError(f"errors: expected a list, got {type(raw).__name__}")
    out = []
    for i, e in enumerate(raw):
        f = _fields(e, ("message", "code", "domain_code", "field", "path", "extensions"), f"errors[{i}]")
        out.append(error(f.get("code"), f.get("message"), field=f.get("field"), path=f.get("path"),
                         domain_code=f.get("domain_code"), extensions=f.get("extensions")))
    return out


def _fraiseql_error(row: Mapping[str, Any], error_class: str) -> dict[str, Any]:
    detail = row.get("error_detail")
    detail_field = detail.get("field") if isinstance(detail, dict) else None
    cls = error_class.lower()
    code = _ERROR_CLASSES.get(cls, "INTERNAL_ERROR")
    domain = None if cls in _ERROR_CLASSES else re.sub(r"[^A-Z0-9_.]", "_", error_class.upper())
    return error(code, row.get("message") or row.get("status_detail") or error_class, field=detail_field,
                 domain_code=domain, extensions=detail if isinstance(detail, dict) else None)


def _fraiseql(row: Mapping[str, Any]) -> Parsed:
    """FraiseQL's mutation_response composite (to_jsonb of the row)."""
    out = Parsed(dialect="fraiseql")
    if "succeeded" in row:  # 13 columns (FraiseQL >= 2.2)
        out.success = row.get("succeeded") is True
        out.changed = row.get("state_changed") is not False
        failure = None if out.success else str(row.get("error_class") or "internal_error")
    else:  # 8 columns: status 'new' | 'updated' | 'deleted' | 'success' | 'noop:...' | 'failed:...'
        status = str(row.get("status") or "")
        kind, _, rest = status.partition(":")
        out.success = kind not in ("failed", "error", "")
        out.changed = kind != "noop"
        failure = None if out.success else (rest or kind or "internal_error")
    out.data = row.get("entity")
    if failure is not None:
        out.errors = [_fraiseql_error(row, failure)]
        out.changed = False
    raw = row.get("cascade")
    if raw is not None:
        out.cascade = parse_cascade(raw)
        fields = row.get("updated_fields")
        if fields and row.get("entity_type") and row.get("entity_id") is not None:
            # updated_fields describe the primary entity: carry them to its entry.
            key = (str(row["entity_type"]), str(row["entity_id"]))
            out.cascade.updated = [
                Entry(e.typename, e.id, e.operation, e.entity, tuple(fields), e.deleted_at)
                if (e.typename, e.id) == key and e.updated_fields is None and e.operation == "UPDATED" else e
                for e in out.cascade.updated
            ]
    return out


def parse(raw: Any) -> Parsed:
    """Never raises: a response that cannot be read is returned with ``problem`` set."""
    if not isinstance(raw, dict):
        return Parsed(problem=f"the function returned {type(raw).__name__}, not a JSON object or composite")
    try:
        if "succeeded" in raw or ("status" in raw and "entity_type" in raw):
            return _fraiseql(raw)
        out = Parsed()
        success = raw.get("success")
        if not isinstance(success, bool):
            raise CascadeError(f"success: expected a boolean, got {success!r}")
        out.success = success
        out.errors = _errors(raw.get("errors"))
        out.data = raw.get("data")
        if "cascade" in raw and "_cascade" in raw:
            raise CascadeError("response has both cascade and _cascade")
        key = "_cascade" if "_cascade" in raw else "cascade"
        if key == "_cascade":
            out.dialect = "fraiseql-v1"
        if raw.get(key) is not None:
            out.cascade = parse_cascade(raw[key], key)
        return out
    except CascadeError as exc:
        return Parsed(success=raw.get("success") is True or raw.get("succeeded") is True,
                      data=raw.get("data", raw.get("entity")), problem=str(exc))


# --- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Cascade size limits (Settings.cascade_max_*; the spec's defaults)."""

    max_updated: int = 500
    max_deleted: int = 100
    max_bytes: int = 5 << 20
    max_invalidations: int = 200


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def graphql_shape(value: Any, typename: str | None, walk: Mapping[str, Sequence[tuple[str, str, bool]]]) -> Any:
    """A view's `data` (snake_case) -> the object as GraphQL writes it: camelCase keys and
    `__typename` on every object whose type the SDL says (what a normalised client cache needs)."""
    if isinstance(value, list):
        return [graphql_shape(v, typename, walk) for v in value]
    if not isinstance(value, dict):
        return value
    children = {key: child for key, child, _is_list in walk.get(typename or "", ())}
    out: dict[str, Any] = {}
    if typename:
        out["__typename"] = typename
    for key, item in value.items():
        if key == "__typename":
            continue
        out[_camel(key)] = graphql_shape(item, children.get(key), walk) if key in children else item
    return out


def _updated_dict(e: Entry, walk: Mapping[str, Sequence[tuple[str, str, bool]]]) -> dict[str, Any]:
    return {
        "typename": e.typename,
        "id": e.id,
        "operation": e.operation,
        "entity": graphql_shape(e.entity, e.typename, walk) if isinstance(e.entity, dict) else {"__typename": e.typename, "id": e.id},
        "updatedFields": None if e.updated_fields is None or e.operation == "CREATED"
        else [_camel(f) for f in e.updated_fields],
    }


def _deleted_dict(e: Entry, timestamp: str) -> dict[str, Any]:
    return {"typename": e.typename, "id": e.id, "deletedAt": e.deleted_at or timestamp}


def _size(obj: Any) -> int:
    return len(msgspec.json.encode(obj))


def _collapse(hints: list[Hint], limit: int) -> list[Hint]:
    """Over the limit: one hint per root field instead of one per argument set, then ALL (spec: broader hints)."""
    if len(hints) <= limit:
        return hints
    by_name: dict[str, Hint] = {}
    rest: list[Hint] = []
    for h in hints:
        if h.scope == "EXACT" and h.query_name is not None:
            by_name.setdefault(h.query_name, Hint("EXACT", "INVALIDATE", h.query_name))
        else:
            rest.append(h)
    collapsed = _dedupe([*by_name.values(), *rest])
    return collapsed if len(collapsed) <= limit else [Hint("ALL", "INVALIDATE")]


def _dedupe(hints: Iterable[Hint]) -> list[Hint]:
    """Drop repeats, and an EXACT INVALIDATE that a PREFIX or an argument-less EXACT already covers."""
    seen: dict[str, Hint] = {}
    for h in hints:
        seen.setdefault(h.key(), h)
    kept = list(seen.values())
    prefixes = [h.query_name for h in kept if h.scope == "PREFIX" and h.query_name and h.strategy == "INVALIDATE"]
    whole = {h.query_name for h in kept if h.scope == "EXACT" and h.arguments is None and h.query_hash is None
             and h.strategy == "INVALIDATE"}

    def covered(h: Hint) -> bool:
        if h.scope != "EXACT" or h.strategy != "INVALIDATE" or h.query_name is None or h.query_hash is not None:
            return False
        if h.arguments is not None and h.query_name in whole:
            return True
        return any(h.query_name.startswith(p) for p in prefixes)

    return [h for h in kept if not covered(h)]


def to_cascade(
    parsed: Parsed,
    *,
    hints: Sequence[Hint] = (),
    cover: Iterable[str] = (),
    limits: Limits = Limits(),
    walk: Mapping[str, Sequence[tuple[str, str, bool]]] | None = None,
    transaction_id: str | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """The graphql-cascade 1.8.0 ``CascadeUpdates`` dict of one mutation: what the response's
    ``cascade`` field resolves from and what the push publishes, nothing private.

    hints: the server's query invalidations (fraiseshm/graphql/hints.py), merged after the
    function's own. cover: types to invalidate wholesale besides the cascade's own (a
    missing or malformed cascade: the mutation's @function touches). A refused mutation
    (success false) reports no change. walk: the SDL's object fields per type, to give
    nested entity objects their ``__typename``.
    """
    walk = walk or {}
    source = parsed.cascade if parsed.cascade is not None else Cascade()
    cover = tuple(cover)
    ts = timestamp or source.timestamp or now_iso()
    if not parsed.success and not cover:  # REQ-021: a failed mutation reports no entity changes
        return {"updated": [], "deleted": [], "invalidations": [], "typeInvalidations": [],
                "metadata": {"timestamp": ts, "transactionId": source.transaction_id or transaction_id,
                             "depth": 0, "affectedCount": 0, "truncated": False}}

    updated, deleted = list(source.updated), list(source.deleted)
    counts: dict[str, int] = {}
    for e in [*updated, *deleted]:
        counts[e.typename] = counts.get(e.typename, 0) + 1
    types: dict[str, int | None] = dict(source.type_invalidations)
    for name in cover:
        types.setdefault(name, None)
    truncated = source.truncated

    cascade = {
        "updated": [_updated_dict(e, walk) for e in updated],
        "deleted": [_deleted_dict(e, ts) for e in deleted],
    }
    # REQ-050: over a limit, remove every entry of one type (the one with the most entries in the
    # list over its limit; ties by name) and cover it with a type invalidation, until all fit.
    while True:
        over = None
        if len(cascade["updated"]) > limits.max_updated:
            over = cascade["updated"]
        elif len(cascade["deleted"]) > limits.max_deleted:
            over = cascade["deleted"]
        elif _size(cascade) > limits.max_bytes and (cascade["updated"] or cascade["deleted"]):
            over = cascade["updated"] + cascade["deleted"]
        if over is None:
            break
        tally: dict[str, int] = {}
        for item in over:
            tally[item["typename"]] = tally.get(item["typename"], 0) + 1
        cut = min(tally, key=lambda t: (-tally[t], t))
        cascade["updated"] = [u for u in cascade["updated"] if u["typename"] != cut]
        cascade["deleted"] = [d for d in cascade["deleted"] if d["typename"] != cut]
        types[cut] = max(counts.get(cut, 0), types.get(cut) or 0)
        truncated = True

    merged = _dedupe([*source.invalidations, *hints])
    all_hints = _collapse(merged, limits.max_invalidations)
    affected = len(updated) + len(deleted) + sum(
        n or 0 for t, n in source.type_invalidations.items() if t not in counts)
    return {
        "updated": cascade["updated"],
        "deleted": cascade["deleted"],
        "invalidations": [h.as_dict() for h in all_hints],
        "typeInvalidations": [{"typename": t, "affectedCount": types[t]} for t in sorted(types)],
        "metadata": {
            "timestamp": ts,
            "transactionId": source.transaction_id or transaction_id,
            "depth": source.depth if source.depth is not None else (1 if updated or deleted else 0),
            "affectedCount": max(affected, source.affected_count or 0),
            "truncated": truncated,
        },
    }


def to_payload(parsed: Parsed, cascade: dict[str, Any]) -> dict[str, Any]:
    """The mutation field's result (a ``CascadeResponse``): success, errors, data, cascade.
    ``data`` stays as the view wrote it (snake_case): the payload's own types resolve it."""
    return {"success": parsed.success, "errors": parsed.errors or None, "data": parsed.data, "cascade": cascade}


__all__ = [
    "Cascade", "Entry", "Hint", "Limits", "Parsed", "SPEC_VERSION", "error", "graphql_shape", "parse",
    "parse_cascade", "to_cascade", "to_payload",
]
