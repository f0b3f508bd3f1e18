"""Persisted queries on a real arena: resolution, registration, manifests; batch splitting."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraiseshm.arena import Arena
from fraiseshm.config import MiB
from fraiseshm.errors import BatchError, ConfigError, JSONTooDeep, PersistedQueryError
from fraiseshm.graphql.persisted import KEY_PREFIX, PersistedQueries, load_manifest
from fraiseshm.http.batch import split

Q = "{ users { id } }"
H = hashlib.sha256(Q.encode()).hexdigest()


def _pq(sha: str = H) -> dict:
    return {"persistedQuery": {"version": 1, "sha256Hash": sha}}


@pytest.fixture
def arena() -> Iterator[Arena]:
    name = f"/fraiseshm-pq-{os.getpid()}"
    a = Arena.create(name, size=8 * MiB, max_entry=64 * 1024, shards=2)
    yield a
    a.close()
    Arena.unlink(name)


def test_registration_is_shared_through_the_arena(arena: Arena) -> None:
    one, other = PersistedQueries(arena, automatic=True), PersistedQueries(arena, automatic=True)
    with pytest.raises(PersistedQueryError) as missing:
        other.resolve(None, _pq())
    assert (missing.value.code, missing.value.status) == ("PERSISTED_QUERY_NOT_FOUND", 404)
    resolved = one.resolve(Q, _pq())
    assert resolved.register == H
    one.register(H, Q)
    assert other.resolve(None, _pq()).query == Q  # another worker's instance, the same arena
    assert one.resolve(Q, _pq()).register is None  # known: not written again
    arena.flush()
    fresh = PersistedQueries(arena, automatic=True)
    with pytest.raises(PersistedQueryError):
        fresh.resolve(None, _pq())  # a flush empties registrations; the client registers again


def test_a_text_in_the_arena_under_another_hash_is_never_run(arena: Arena) -> None:
    arena.put(KEY_PREFIX + bytes.fromhex(H), b"{ users { email } }", [], arena.current_seq(), 60)
    with pytest.raises(PersistedQueryError):
        PersistedQueries(arena, automatic=True).resolve(None, _pq())


def test_allow_list_never_grows(arena: Arena) -> None:
    listed = "{ users { name } }"
    sha = hashlib.sha256(listed.encode()).hexdigest()
    pq = PersistedQueries(arena, automatic=True, manifest={sha: listed}, only=True)
    assert pq.resolve(None, _pq(sha)).query == listed and pq.resolve(listed, None).register is None
    for query, ext in ((Q, None), (Q, _pq()), (None, _pq())):
        with pytest.raises(PersistedQueryError) as refused:
            pq.resolve(query, ext)
        assert refused.value.status == 403
    assert arena.get(KEY_PREFIX + bytes.fromhex(H)) is None


def test_manifest_formats_and_faults(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format": "apollo-persisted-query-manifest", "version": 1,
                                "operations": [{"id": H, "name": "U", "type": "query", "body": Q}]}))
    assert load_manifest(str(path)) == {H: Q}
    path.write_text(json.dumps({H.upper(): Q}))
    assert load_manifest(str(path)) == {H: Q}
    for content, message in ((json.dumps({H: Q + " "}), "not the sha256 of its body"),
                             (json.dumps({"abc": Q}), "expected a sha256 hex id"),
                             (json.dumps([Q]), "expected a JSON object"),
                             ("{", "not a JSON file"),
                             (json.dumps({"format": "apollo-persisted-query-manifest", "version": 2}), "version 1")):
        path.write_text(content)
        with pytest.raises(ConfigError, match=message):
            load_manifest(str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_manifest(str(tmp_path / "missing.json"))


def test_batch_split() -> None:
    assert split(b' [ {"query": "{ a }"} , {} ] ', 5, 64) == [b'{"query": "{ a }"}', b"{}"]
    for body, message in ((b"[]", "empty"), (b"[{}, {}]", "limit is 1"), (b"[[{}]]", "item 0"), (b"[{}", "not valid JSON")):
        with pytest.raises(BatchError, match=message):
            split(body, 1 if message == "limit is 1" else 5, 64)
    with pytest.raises(BatchError, match="switched off"):
        split(b"[{}]", 0, 64)
    with pytest.raises(JSONTooDeep):
        split(b"[" * 5000 + b"]" * 5000, 5, 64)
