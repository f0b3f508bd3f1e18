"""The graphql-cascade 1.8.0 rules a live mutation payload must satisfy.

SPEC_VERSION is the version the tests conform to (fraiseshm/cascade/spec.py
must say the same). Two layers:

- a JSON Schema (draft-07, checked with the `jsonschema` package) written from
  the specification's normative schema, reference/cascade_base.graphql at
  1.8.0: every type, field, nullability and enum. The JSON schemas published
  under specification/schemas/ lag the specification (entity.schema.json still
  requires `__typename`, which 1.3.0 deprecated; error.schema.json lacks
  TIMEOUT, RATE_LIMITED, SERVICE_UNAVAILABLE and domainCode), so they cannot
  be used as they are;
- the rules of chapters 04 and 05 a schema cannot say: REQ-021 (a failed
  mutation reports no change), `truncated` exactly when types were cut and
  then typeInvalidations non-empty, REQ-050 (whole types removed, limits met),
  affectedCount counting what type invalidations cover, domainCode's pattern,
  scope/name pairing of invalidations (REQ-103, REQ-030), DateTime values,
  updatedFields null for created entities, an entity's id and type matching
  its entry.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import jsonschema

SPEC_VERSION = "1.8.0"

ERROR_CODES = ["VALIDATION_ERROR", "NOT_FOUND", "UNAUTHORIZED", "FORBIDDEN", "CONFLICT", "INTERNAL_ERROR",
               "TRANSACTION_FAILED", "TIMEOUT", "RATE_LIMITED", "SERVICE_UNAVAILABLE"]
_NULL_STR = {"type": ["string", "null"]}
_NAME = {"type": "string", "minLength": 1}

SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": f"CascadeResponse payload, graphql-cascade {SPEC_VERSION}",
    "type": "object",
    "required": ["success", "errors", "data", "cascade"],
    "additionalProperties": False,
    "properties": {
        "success": {"type": "boolean"},
        "errors": {"type": ["array", "null"], "items": {"$ref": "#/definitions/CascadeError"}},
        "data": {"type": ["object", "null"]},
        "cascade": {"$ref": "#/definitions/CascadeUpdates"},
    },
    "definitions": {
        "CascadeUpdates": {
            "type": "object",
            "required": ["updated", "deleted", "invalidations", "typeInvalidations", "metadata"],
            "additionalProperties": False,
            "properties": {
                "updated": {"type": "array", "items": {"$ref": "#/definitions/UpdatedEntity"}},
                "deleted": {"type": "array", "items": {"$ref": "#/definitions/DeletedEntity"}},
                "invalidations": {"type": "array", "items": {"$ref": "#/definitions/QueryInvalidation"}},
                "typeInvalidations": {"type": "array", "items": {"$ref": "#/definitions/TypeInvalidation"}},
                "metadata": {"$ref": "#/definitions/CascadeMetadata"},
            },
        },
        "UpdatedEntity": {
            "type": "object",
            "required": ["typename", "id", "operation", "entity"],
            "additionalProperties": False,
            "properties": {
                "typename": _NAME,
                "id": _NAME,
                "operation": {"enum": ["CREATED", "UPDATED", "DELETED"]},
                "entity": {"type": "object", "required": ["id"]},
                "updatedFields": {"type": ["array", "null"], "items": {"type": "string"}},
            },
        },
        "DeletedEntity": {
            "type": "object",
            "required": ["typename", "id", "deletedAt"],
            "additionalProperties": False,
            "properties": {"typename": _NAME, "id": _NAME, "deletedAt": {"type": "string"}},
        },
        "QueryInvalidation": {
            "type": "object",
            "required": ["strategy", "scope"],
            "additionalProperties": False,
            "properties": {
                "queryName": _NULL_STR, "queryHash": _NULL_STR, "queryPattern": _NULL_STR,
                "arguments": {},
                "strategy": {"enum": ["INVALIDATE", "REFETCH", "REMOVE"]},
                "scope": {"enum": ["EXACT", "PREFIX", "PATTERN", "ALL"]},
            },
        },
        "TypeInvalidation": {
            "type": "object",
            "required": ["typename"],
            "additionalProperties": False,
            "properties": {"typename": _NAME, "affectedCount": {"type": ["integer", "null"], "minimum": 0}},
        },
        "CascadeMetadata": {
            "type": "object",
            "required": ["timestamp", "depth", "affectedCount", "truncated"],
            "additionalProperties": False,
            "properties": {
                "timestamp": {"type": "string"},
                "transactionId": _NULL_STR,
                "depth": {"type": "integer", "minimum": 0},
                "affectedCount": {"type": "integer", "minimum": 0},
                "truncated": {"type": "boolean"},
            },
        },
        "CascadeError": {
            "type": "object",
            "required": ["message", "code"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "code": {"enum": ERROR_CODES},
                "domainCode": _NULL_STR,
                "field": _NULL_STR,
                "path": {"type": ["array", "null"], "items": {"type": "string"}},
                "extensions": {},
            },
        },
    },
}
jsonschema.Draft7Validator.check_schema(SCHEMA)
_VALIDATOR = jsonschema.Draft7Validator(SCHEMA)
_DOMAIN_CODE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*$")

# The selection a conformance test asks for: every field of every cascade type.
PAYLOAD_SELECTION = """
  success
  errors { message code domainCode field path extensions }
  data { id }
  cascade {
    updated { typename id operation updatedFields entity { __typename id } }
    deleted { typename id deletedAt }
    invalidations { queryName queryHash arguments queryPattern strategy scope }
    typeInvalidations { typename affectedCount }
    metadata { timestamp transactionId depth affectedCount truncated }
  }
"""


def mutation(field: str, input_type: str) -> str:
    return f"mutation($input: {input_type}!) {{ {field}(input: $input) {{ {PAYLOAD_SELECTION} }} }}"


def _datetime(value: str, where: str) -> None:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise AssertionError(f"{where}: {value!r} is not an ISO 8601 DateTime") from None
    assert parsed.tzinfo is not None, f"{where}: {value!r} has no time zone"


def check(payload: dict[str, Any], *, root_fields: set[str], limits: tuple[int, int] | None = None) -> list[str]:
    """Assert every rule; return the problems found as a list (empty = conforming), so a
    caller can also check that a broken payload is caught."""
    problems = [f"schema: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in _VALIDATOR.iter_errors(payload)]
    if problems:
        return problems
    cascade, meta = payload["cascade"], payload["cascade"]["metadata"]
    listed = cascade["updated"] + cascade["deleted"]
    cut = {t["typename"] for t in cascade["typeInvalidations"]}
    try:
        _datetime(meta["timestamp"], "metadata.timestamp")
        for d in cascade["deleted"]:
            _datetime(d["deletedAt"], f"deleted {d['typename']}:{d['id']}.deletedAt")
    except AssertionError as exc:
        problems.append(str(exc))
    if not payload["success"]:
        if listed or meta["affectedCount"] != 0:
            problems.append("REQ-021: a failed mutation lists entity changes")
        if not payload["errors"]:
            problems.append("a failed mutation has no errors")
    if meta["truncated"] and not cut:
        problems.append("metadata.truncated without typeInvalidations")
    if meta["affectedCount"] < len(listed):
        problems.append(f"affectedCount {meta['affectedCount']} < {len(listed)} entities listed")
    covered = sum(t["affectedCount"] or 0 for t in cascade["typeInvalidations"])
    if meta["truncated"] and meta["affectedCount"] < len(listed) + covered:
        problems.append("affectedCount does not count what the type invalidations cover")
    if limits is not None:
        if len(cascade["updated"]) > limits[0] or len(cascade["deleted"]) > limits[1]:
            problems.append(f"REQ-050: limits {limits} not met")
        if meta["truncated"] and {e["typename"] for e in listed} & cut:
            problems.append("REQ-050: a truncated type still has entries (whole types are removed)")
    for e in cascade["updated"]:
        if e["entity"]["id"] != e["id"] or e["entity"].get("__typename", e["typename"]) != e["typename"]:
            problems.append(f"entity of {e['typename']}:{e['id']} is {e['entity']}")
        if e["operation"] == "CREATED" and e["updatedFields"] is not None:
            problems.append("updatedFields on a created entity")
    for err in payload["errors"] or ():
        if err["domainCode"] is not None and not _DOMAIN_CODE.match(err["domainCode"]):
            problems.append(f"domainCode {err['domainCode']!r} is not UPPER_SNAKE_CASE segments")
    for inv in cascade["invalidations"]:
        scope, name = inv["scope"], inv["queryName"]
        if scope in ("EXACT", "PREFIX") and not name:
            problems.append(f"{scope} invalidation without queryName: {inv}")
        if scope == "PATTERN" and not (inv["queryPattern"] or name):
            problems.append(f"PATTERN invalidation without queryPattern: {inv}")
        if scope == "EXACT" and name not in root_fields:
            problems.append(f"EXACT invalidation names {name!r}, not a root query field")
        if scope == "PREFIX" and name and not any(q.startswith(name) for q in root_fields):
            problems.append(f"PREFIX invalidation {name!r} matches no root query field")
    return problems


def assert_conforms(payload: dict[str, Any], **kw: Any) -> None:
    problems = check(payload, **kw)
    assert not problems, f"graphql-cascade {SPEC_VERSION}: " + "; ".join(problems) + f"\n{payload}"
