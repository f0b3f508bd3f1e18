"""Cache keys: (schema version, document, operation, variables, scope) -> arena key bytes.

The document part is the digest of the *normalised* document (graphql-core's
print_ast: whitespace, comments and formatting do not matter) and operation
name, computed once per query text per worker. Variables are canonical JSON
with sorted keys, so key order and spacing in the request do not matter
either. The schema's version is in the key: a new schema never serves an old
entry. The scope (tenant / role / user) is in the key: two scopes never share
an entry.

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


def scoped_key(base: bytes, scope: str) -> bytes:
    # INVARIANT: canonical JSON never holds a raw NUL, so "\0" separates the scope unambiguously.
    key = base + b"\0" + scope.encode() if scope else base
    if len(key) > MAX_KEY:
        key = _DIGESTED + hashlib.blake2b(key, digest_size=32).digest()
    return key


def cache_key(document_digest: bytes, schema_version: bytes, variables: dict[str, Any] | None, scope: str) -> bytes:
    return scoped_key(base_key(document_digest, schema_version, variables), scope)
