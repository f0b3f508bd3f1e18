"""fraiseshm/push/shape.py: the cascade a subscriber receives (pure code)."""

from __future__ import annotations

import asyncio

import msgspec
from graphql import build_schema, parse

from fraiseshm.push.hub import Hub
from fraiseshm.push.shape import fit, for_subscriber, graphql_entity, project, spec_cascade

KIT = {  # the SQL kit's shape today (fraiseshm.cascade_response)
    "updated": [{"__typename": "Post", "id": "p1", "operation": "UPDATED", "entity": {"id": "p1", "title": "t"}},
                {"__typename": "Draft", "id": "d1", "operation": "CREATED", "entity": {"id": "d1", "title": "secret"}}],
    "deleted": [{"typeName": "User", "id": 7, "deleted_at": "2026-01-01T00:00:00Z"}],
    "invalidations": [{"query_name": "posts", "strategy": "INVALIDATE", "scope": "PREFIX"},
                      {"queryName": "draft", "arguments": {"id": "d1"}, "strategy": "REFETCH", "scope": "EXACT"}],
    "metadata": {"timestamp": "2026-01-01T00:00:00Z", "transaction_id": "42", "depth": 1, "affected_count": 3,
                 "truncated": True, "truncated_types": ["Comment"]},
}


def test_spec_names_whatever_the_server_wrote() -> None:
    c = spec_cascade(KIT)
    assert [(e["typename"], e["id"]) for e in c["updated"]] == [("Post", "p1"), ("Draft", "d1")]
    assert c["deleted"] == [{"typename": "User", "id": "7", "deletedAt": "2026-01-01T00:00:00Z"}]
    assert c["invalidations"][0] == {"queryName": "posts", "strategy": "INVALIDATE", "scope": "PREFIX"}
    assert c["typeInvalidations"] == [{"typename": "Comment", "affectedCount": None}]  # truncation, the spec's way
    assert c["metadata"] == {"timestamp": "2026-01-01T00:00:00Z", "transactionId": "42", "depth": 1, "affectedCount": 3}


def test_private_entities_become_type_invalidations_for_other_scopes() -> None:
    c = spec_cascade(KIT)
    other = for_subscriber(c, origin=b"alice", scope=b"bob", private_types={"Draft"}, private_fields={"draft", "drafts"})
    assert "secret" not in msgspec.json.encode(other).decode() and "d1" not in msgspec.json.encode(other).decode()
    assert {"typename": "Draft", "affectedCount": None} in other["typeInvalidations"]
    assert other["invalidations"][1] == {"queryName": "draft", "strategy": "REFETCH", "scope": "PREFIX"}
    same = for_subscriber(c, origin=b"alice", scope=b"alice", private_types={"Draft"}, private_fields={"draft"})
    assert same["updated"] == c["updated"]
    anonymous_origin = for_subscriber(c, origin=b"", scope=b"", private_types={"Draft"}, private_fields=set())
    assert [e["typename"] for e in anonymous_origin["updated"]] == ["Post"]


def test_fit_degrades_to_type_invalidations_then_all() -> None:
    c = spec_cascade(KIT)
    assert fit(c, 10_000) is c
    small = fit(c, 400)
    assert small["updated"] == [] and small["deleted"] == []
    assert {t["typename"]: t["affectedCount"] for t in small["typeInvalidations"]} == {"Comment": None, "Post": 1,
                                                                                       "Draft": 1, "User": 1}
    tiny = fit(c, 10)
    assert tiny["invalidations"] == [{"queryName": None, "strategy": "INVALIDATE", "scope": "ALL"}]


def test_selection_and_graphql_names() -> None:
    schema = build_schema("type Query { post: Post } type Post { id: ID! createdAt: String author: User } "
                          "type User { id: ID! name: String }")
    entity = graphql_entity(schema, "Post", {"id": "p", "created_at": "x", "author": {"id": "u", "name": "n"}})
    assert entity == {"__typename": "Post", "id": "p", "createdAt": "x", "author": {"__typename": "User", "id": "u", "name": "n"}}
    field = parse("subscription { c: cascadeUpdates { updated { typename id } metadata { transactionId } } }")
    selection = field.definitions[0].selection_set.selections[0].selection_set
    assert project(spec_cascade(KIT), selection) == {
        "updated": [{"typename": "Post", "id": "p1"}, {"typename": "Draft", "id": "d1"}], "metadata": {"transactionId": "42"}}


def test_hub_queues_are_bounded_and_a_full_one_is_closed() -> None:
    async def scenario() -> None:
        hub = Hub(queue_max=2, max_connections=10, private_types=set(), private_fields=set())
        slow, fast = hub.subscribe(b"", None), hub.subscribe(b"", ["Post"])
        c = spec_cascade(KIT)
        for _ in range(3):
            hub.publish(c)
            fast.queue.get_nowait()
        assert slow.closed.is_set() and slow.close_code == 1013 and hub.connections == 1
        assert slow.queue.qsize() == 2  # never more than queue_max
        hub.drain()
        assert fast.closed.is_set() and fast.close_code == 1001 and hub.connections == 0

    asyncio.run(scenario())
