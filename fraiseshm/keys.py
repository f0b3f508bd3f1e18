"""Cache keys: (schema version, document, operation, variables, scope) -> arena key bytes.

The document part is the digest of the *normalised* document (graphql-core's
print_ast: whitespace, comments and formatting do not matter) and operation
name, computed once per query text per worker. Variables are canonical JSON
with sorted keys, so key order and spacing in the request do not matter
either; variables the operation does not declare are dropped first. The schema's version is in the key: a new schema never serves an old
entry. A result that can hold a private type is keyed with the scope (the
canonical encoding of the verified identity, fraiseshm/identity.py): two
identities never share such an entry.

PERF: the key is the concatenation itself, not a hash of it: the arena hashes
keys in C and compares them byte for byte. Only a key longer than the arena's
limit is replaced by its blake2b digest; such a digest is 33 bytes, shorter
than any raw key (>= 34 bytes), so the two forms never collide.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from fraiseshm.arena.layout import MAX_KEY

_canonical = msgspec.json.Encoder(order="sorted")
_DIGESTED = b"#"


def canonical_variables(variables: dict[str, Any] | None) -> bytes:
    return _canonical.encode(variables) if variables else b"{}"


def base_key(document_digest: bytes, schema_version: bytes, variables: dict[str, Any] | None) -> bytes:
    """The key without the request's scope: fixed per request body."""
    return schema_version + document_digest + canonical_variables(variables)


def scoped_key(base: bytes, scope: bytes) -> bytes:
    """scope: the identity's canonical encoding (fraiseshm/identity.py), b"" for shared entries."""
    # INVARIANT: canonical JSON never holds a raw NUL, so "\0" separates the scope unambiguously.
    key = base + b"\0" + scope if scope else base
    if len(key) > MAX_KEY:
        key = _DIGESTED + hashlib.blake2b(key, digest_size=32).digest()
    return key


def used_variables(variables: dict[str, Any] | None, declared: frozenset[str]) -> dict[str, Any] | None:
    """Only the variables the operation declares: junk values a client adds are not keyed."""
    if not variables or all(name in declared for name in variables):
        return variables
    return {name: value for name, value in variables.items() if name in declared}


def cache_key(document_digest: bytes, schema_version: bytes, variables: dict[str, Any] | None, scope: bytes) -> bytes:
    return scoped_key(base_key(document_digest, schema_version, variables), scope)
