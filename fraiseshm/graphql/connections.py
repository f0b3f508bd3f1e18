"""orderBy, and Relay cursors that stay stable across inserts (keyset, not offsets).

An ordering is a list of (view column, descending) made total by appending
the key ``id`` (unique, NOT NULL) when absent. PostgreSQL's default NULL
placement (ASC NULLS LAST, DESC NULLS FIRST) makes NULL the greatest value in
both directions; the keyset predicate below follows the same rule.

A cursor is the row's sort key: base64url of JSON ``[fingerprint, [text of
each ordering column, or null]]``. The fingerprint (of the ordering) refuses
a cursor made under another ordering. Cursor values only ever travel as
``$n`` parameters, cast to their column's type after ``bind_text`` checked
them: a forged cursor is a clear GraphQL error, never SQL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from graphql import GraphQLError

from fraiseshm.graphql.filters import Params, quote_ident

Ordering = tuple[tuple[str, bool], ...]  # (view column, descending)
MAX_CURSOR_BYTES = 4096


def total(order: Sequence[tuple[str, bool]]) -> Ordering:
    """The ordering with the key appended (once): a total order, so pages never overlap or skip."""
    seen: dict[str, bool] = {}
    for column, desc in order:
        seen.setdefault(column, desc)
    if "id" not in seen:
        seen["id"] = False
    return tuple(seen.items())


def fingerprint(order: Ordering) -> str:
    return hashlib.blake2b(repr(order).encode(), digest_size=6).hexdigest()


def encode_cursor(order: Ordering, values: Sequence[str | None]) -> str:
    raw = json.dumps([fingerprint(order), list(values)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(field: str, arg: str, cursor: Any, order: Ordering) -> list[str | None]:
    def bad(why: str) -> GraphQLError:
        return GraphQLError(f"{field}: {arg}: not a cursor of this ordering ({why})", extensions={"code": "BAD_CURSOR"})

    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_BYTES:
        raise bad("too long or not a string")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad("undecodable") from None
    if (not isinstance(decoded, list) or len(decoded) != 2 or decoded[0] != fingerprint(order)
            or not isinstance(decoded[1], list) or len(decoded[1]) != len(order)
            or not all(v is None or isinstance(v, str) for v in decoded[1])):
        raise bad("made for another ordering or altered")
    if decoded[1][-1] is None:
        raise bad("no key")
    return decoded[1]


def order_sql(order: Ordering, prefix: str = "", reverse: bool = False) -> str:
    return ", ".join(f"{prefix}{quote_ident(c)} {'DESC' if desc != reverse else 'ASC'}" for c, desc in order)


def keyset(order: Ordering, values: Sequence[str | None], types: dict[str, str], params: Params,
           check: Callable[[str, str], str], after: bool) -> str:
    """Rows strictly after (or before) the cursor's row in the ordering, NULL being the greatest value."""
    branches: list[str] = []
    equal: list[str] = []
    for (column, desc), value in zip(order, values, strict=True):
        ident = quote_ident(column)
        greater = after != desc  # want rows whose value is greater than the cursor's
        if value is None:
            ref = None
            beyond = "FALSE" if greater else f"{ident} IS NOT NULL"
            same = f"{ident} IS NULL"
        else:
            ref = params.add(check(value, column), f"text::{types[column]}")
            beyond = f"({ident} > {ref} OR {ident} IS NULL)" if greater else f"{ident} < {ref}"
            same = f"{ident} = {ref}"
        branches.append("(" + " AND ".join([*equal, beyond]) + ")")
        equal.append(same)
    return "(" + " OR ".join(branches) + ")"
