"""Batches: a JSON array of GraphQL requests, answered as a JSON array in the same order.

Each item is one ordinary POST body: it goes through the service's whole
single-request path (persisted query, key, hit or miss, coalescing, body
memo), so each is cached on its own and a batch mixes hits and misses. Items
run one after another, in order: a mutation's invalidation happens before
the items after it are answered, as for separate requests. The batch shares
one deadline (request_timeout) and one identity.

No HTTP framing here: falcon stays in graphql_resource.py.
"""

from __future__ import annotations

import dataclasses

import msgspec

from fraiseshm import jsondepth
from fraiseshm.errors import BatchError
from fraiseshm.service import GraphQLService, Reply, RequestMeta

_decode_array = msgspec.json.Decoder(list[msgspec.Raw]).decode


def is_batch(body: bytes) -> bool:
    return body.lstrip()[:1] == b"["


def split(body: bytes, max_items: int, max_json_depth: int) -> list[bytes]:
    """The items' own bytes; BatchError (400) for anything that is not 1..max_items JSON objects."""
    if max_items == 0:
        raise BatchError("batched requests are switched off on this server (FRAISESHM_MAX_BATCH_SIZE = 0)")
    try:
        items = jsondepth.decode(_decode_array, body, "request body", max_json_depth)  # JSONTooDeep: 400
    except msgspec.DecodeError as exc:
        raise BatchError(f"request body is not valid JSON: {exc}") from None
    if not items:
        raise BatchError("the batch is an empty array; send at least one request")
    if len(items) > max_items:
        raise BatchError(f"the batch has {len(items)} requests; the limit is {max_items} (FRAISESHM_MAX_BATCH_SIZE)")
    raws = [bytes(item) for item in items]
    for i, raw in enumerate(raws):
        if raw[:1] != b"{":
            raise BatchError(f"batch item {i} is not a GraphQL request: a batch is an array of JSON objects")
    return raws


async def answer(service: GraphQLService, body: bytes, meta: RequestMeta, max_items: int) -> Reply:
    items = split(body, max_items, service.settings.max_json_depth)
    # An item's ETag match would make it a bodiless 304 inside the array: items never revalidate.
    item_meta = dataclasses.replace(meta, if_none_match=None)
    replies = [await service.post(item, item_meta) for item in items]
    return combine(replies, meta)


def combine(replies: list[Reply], meta: RequestMeta) -> Reply:
    """One 200 array; each item's own status shows in its errors. Caching headers are the
    strictest of the items': a batch holding a mutation or an error is never stored downstream."""
    body = b"[" + b",".join(r.body for r in replies) + b"]"
    controls = [r.headers.get("Cache-Control") for r in replies]
    headers = {"X-Cache": ", ".join(r.headers.get("X-Cache", "NONE") for r in replies)}
    if any(c is None or "no-store" in c for c in controls) or any(r.status != 200 for r in replies):
        headers["Cache-Control"] = "no-store"
    elif any("private" in c for c in controls if c):
        headers["Cache-Control"] = "private, no-cache"
        if meta.vary:
            headers["Vary"] = meta.vary
    else:
        headers["Cache-Control"] = "no-cache"
    return Reply(200, body, meta.media_type, headers)


__all__ = ["answer", "combine", "is_batch", "split"]
