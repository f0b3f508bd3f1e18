"""JSON nesting bounds for everything a client sends (bodies, variables, token segments).

msgspec has no depth limit of its own: it recurses until Python's recursion
limit and raises RecursionError (~1,000 levels here). ``decode`` turns that into
JSONTooDeep, and ``check_depth`` bounds what did decode, without recursion, so
later recursive code (graphql-core's coercion, canonical encoding) never sees
more than ``max_depth`` levels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fraiseshm.errors import JSONTooDeep

T = TypeVar("T")


def decode(decoder: Callable[[bytes | str], T], data: bytes | str, what: str, max_depth: int) -> T:
    """decoder(data), then check_depth; msgspec's own errors pass through."""
    try:
        value = decoder(data)
    except RecursionError:
        raise JSONTooDeep(f"{what} nests deeper than {max_depth} levels (FRAISESHM_MAX_JSON_DEPTH)") from None
    check_depth(value, what, max_depth)
    return value


def check_depth(value: Any, what: str, max_depth: int) -> None:
    # PERF: scalars and flat containers (the common case) cost one loop step each.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > max_depth:
            raise JSONTooDeep(f"{what} nests deeper than {max_depth} levels (FRAISESHM_MAX_JSON_DEPTH)")
        for child in children:
            if isinstance(child, (dict, list, tuple)):
                stack.append((child, depth + 1))
