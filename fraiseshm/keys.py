"""Cache keys: one 32-byte digest per (document, operation, variables, schema, scope).

The document part is the hash of the *normalised* document (graphql-core's
print_ast: whitespace, comments and formatting do not matter), computed once
per query text per worker. Variables are canonical JSON with sorted keys, so
key order and spacing in the request do not matter either. The schema's
version is in the key: a new schema never serves an old entry. The scope
(tenant / role / user) is in the key: two scopes never share an entry.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

_canonical = msgspec.json.Encoder(order="sorted")


def canonical_variables(variables: dict[str, Any] | None) -> bytes:
    return _canonical.encode(variables) if variables else b"{}"


def cache_key(document_digest: bytes, schema_version: bytes, variables: dict[str, Any] | None, scope: str) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    h.update(schema_version)
    h.update(document_digest)
    h.update(canonical_variables(variables))
    h.update(b"\0scope\0")
    h.update(scope.encode())
    return h.digest()
