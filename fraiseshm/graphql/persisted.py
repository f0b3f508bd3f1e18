"""Persisted queries: automatic persisted queries (APQ) and an allow-list of operations.

APQ is Apollo's protocol (the ``persistedQuery`` request extension, version 1):
a client sends ``{"extensions": {"persistedQuery": {"version": 1,
"sha256Hash": "<hex>"}}}`` without the query. A known hash runs the query
it names; an unknown one answers ``PersistedQueryNotFound`` and the client
sends the query text with the hash once, which registers it. A GET carries
the extension JSON-encoded in the ``extensions`` parameter, so a hashed GET is
a short URL that shared caches can keep (it is answered with the same
Cache-Control/ETag as any GET).

Registered texts live in the arena under ``apq\\0<32-byte hash>``, so every
worker on the host sees a registration at once; the arena bounds them (they
are evicted like any entry, and a flush empties them: the client registers
again, which the protocol expects). A worker remembers the texts it resolved
(bounded): a hash names one text forever, so the memo is never stale. A
registration is verified (sha256 of the text must equal the hash) and stored
only after the document compiled (parse, limits, validation).

Allow-list mode (``persisted_queries_only``) runs only the operations of a
manifest file loaded at start: a hash from the manifest, or a query text
byte-identical to one of them. Anything else is refused before parsing, and
APQ registrations are refused too, so a client cannot add to the list.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fraiseshm.errors import ConfigError, PersistedQueryError

APQ_VERSION = 1
KEY_PREFIX = b"apq\0"  # arena keys of registered texts; response keys start with the schema version
MEMO_SIZE = 1024  # hash -> text resolved per worker

NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
NOT_SUPPORTED = "PERSISTED_QUERY_NOT_SUPPORTED"
HASH_MISMATCH = "PERSISTED_QUERY_HASH_MISMATCH"
BAD_EXTENSION = "BAD_REQUEST"
NOT_ALLOWED = "PERSISTED_QUERY_NOT_IN_LIST"

_HEX64 = re.compile(r"[0-9a-f]{64}")


class _Store(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def put(self, key: bytes, value: bytes, deps: list[str], fill_seq: int, ttl: float) -> bool: ...
    def current_seq(self) -> int: ...


def sha256_hex(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Resolved:
    query: str
    register: str | None = None  # a hash to register once the document compiled


def load_manifest(path: str) -> dict[str, str]:
    """hash -> query text from a manifest file; ConfigError naming the entry on any fault.

    Two formats: Apollo's persisted query manifest (``{"format":
    "apollo-persisted-query-manifest", "version": 1, "operations": [{"id",
    "body", ...}]}``) and the plain map of graphql-codegen's and Relay's
    persisted documents (``{"<sha256>": "<query>"}``). Every id must be the
    sha256 of its body: a manifest cannot name one text and run another.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"persisted_queries_file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"persisted_queries_file {path}: not a JSON file: {exc}") from None
    if isinstance(data, dict) and data.get("format") == "apollo-persisted-query-manifest":
        operations = data.get("operations")
        if data.get("version") != 1 or not isinstance(operations, list):
            raise ConfigError(f"persisted_queries_file {path}: expected version 1 with an 'operations' list")
        pairs = []
        for i, op in enumerate(operations):
            if not isinstance(op, dict) or not isinstance(op.get("id"), str) or not isinstance(op.get("body"), str):
                raise ConfigError(f"persisted_queries_file {path}: operations[{i}] needs string 'id' and 'body'")
            pairs.append((f"operations[{i}]", op["id"], op["body"]))
    elif isinstance(data, dict):
        pairs = [(repr(k), k, v) for k, v in data.items()]
    else:
        raise ConfigError(f"persisted_queries_file {path}: expected a JSON object")
    manifest: dict[str, str] = {}
    for where, sha, body in pairs:
        if not isinstance(body, str) or not _HEX64.fullmatch(sha.lower()):
            raise ConfigError(f"persisted_queries_file {path}: {where}: expected a sha256 hex id and a query string")
        if sha256_hex(body) != sha.lower():
            raise ConfigError(f"persisted_queries_file {path}: {where}: the id is not the sha256 of its body "
                              f"(sha256 is {sha256_hex(body)})")
        manifest[sha.lower()] = body
    return manifest


def _persisted_extension(extensions: Any) -> tuple[int, str] | None:
    """(version, hash) of a persistedQuery extension; None when absent; error when malformed."""
    if extensions is None:
        return None
    if not isinstance(extensions, dict):
        raise PersistedQueryError("'extensions' must be a JSON object", BAD_EXTENSION, 400)
    pq = extensions.get("persistedQuery")
    if pq is None:
        return None
    if not isinstance(pq, dict):
        raise PersistedQueryError("extensions.persistedQuery must be an object {version, sha256Hash}", BAD_EXTENSION, 400)
    version, sha = pq.get("version"), pq.get("sha256Hash")
    if version != APQ_VERSION or isinstance(version, bool):
        raise PersistedQueryError(f"unsupported persisted query version {version!r}; this server speaks version 1",
                                  BAD_EXTENSION, 400)
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise PersistedQueryError("extensions.persistedQuery.sha256Hash must be 64 lowercase hex digits",
                                  BAD_EXTENSION, 400)
    return version, sha


class PersistedQueries:
    """Resolves a request's query text from its persistedQuery extension and registers new ones."""

    def __init__(self, store: _Store | None, *, automatic: bool, manifest: Mapping[str, str] | None = None,
                 only: bool = False, ttl: float = 86_400.0) -> None:
        self.store = store
        self.automatic = automatic and not only  # INVARIANT: an allow-list never grows from requests
        self.manifest = dict(manifest or {})
        self.only = only
        self.ttl = ttl
        self._memo: OrderedDict[str, str] = OrderedDict()

    def resolve(self, query: str | None, extensions: Any) -> Resolved:
        """The text to run; PersistedQueryError when the request may not run or names nothing known."""
        persisted = _persisted_extension(extensions)
        if persisted is None:
            if not query:
                raise PersistedQueryError("the request is not a GraphQL request: no 'query' and no persistedQuery extension",
                                          BAD_EXTENSION, 400)
            if self.only and sha256_hex(query) not in self.manifest:
                raise PersistedQueryError("this server runs registered operations only "
                                          "(FRAISESHM_PERSISTED_QUERIES_ONLY); the query is not in its list",
                                          NOT_ALLOWED, 403)
            return Resolved(query)
        _, sha = persisted
        if not self.automatic and not self.manifest:
            raise PersistedQueryError("PersistedQueryNotSupported", NOT_SUPPORTED, 400)
        if query:
            if sha256_hex(query) != sha:
                raise PersistedQueryError("provided sha does not match query", HASH_MISMATCH, 400)
            if self.only and sha not in self.manifest:
                raise PersistedQueryError("this server runs registered operations only "
                                          "(FRAISESHM_PERSISTED_QUERIES_ONLY); the query is not in its list",
                                          NOT_ALLOWED, 403)
            known = sha in self.manifest or sha in self._memo
            return Resolved(query, register=None if known or not self.automatic else sha)
        text = self.lookup(sha)
        if text is None:
            if self.only:
                raise PersistedQueryError("this server runs registered operations only "
                                          "(FRAISESHM_PERSISTED_QUERIES_ONLY); the hash is not in its list",
                                          NOT_ALLOWED, 403)
            raise PersistedQueryError("PersistedQueryNotFound", NOT_FOUND, 404)
        return Resolved(text)

    def lookup(self, sha: str) -> str | None:
        text = self.manifest.get(sha)
        if text is not None:
            return text
        text = self._memo.get(sha)
        if text is not None:
            self._memo.move_to_end(sha)
            return text
        if not self.automatic or self.store is None:
            return None
        stored = self.store.get(KEY_PREFIX + bytes.fromhex(sha))
        if stored is None:
            return None
        text = stored.decode()
        if sha256_hex(text) != sha:  # shared memory is input: never run a text under another's hash
            return None
        self._remember(sha, text)
        return text

    def register(self, sha: str, query: str) -> None:
        """Store a verified, compiled text for every worker of the host."""
        self._remember(sha, query)
        if self.store is not None:
            # No dependencies: a text never goes stale; eviction and flushes only cost a re-registration.
            self.store.put(KEY_PREFIX + bytes.fromhex(sha), query.encode(), [], self.store.current_seq(), self.ttl)

    def _remember(self, sha: str, text: str) -> None:
        self._memo[sha] = text
        if len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)


__all__ = ["PersistedQueries", "Resolved", "load_manifest", "sha256_hex"]
