from __future__ import annotations

from fraiseshm.arena.layout import MAX_KEY
from fraiseshm.keys import cache_key, canonical_variables


def test_variable_order_and_spacing_do_not_matter() -> None:
    assert canonical_variables({"b": 1, "a": {"y": 2, "x": 1}}) == canonical_variables({"a": {"x": 1, "y": 2}, "b": 1})
    assert canonical_variables(None) == canonical_variables({}) == b"{}"


def test_every_component_changes_the_key() -> None:
    base = cache_key(b"d" * 16, b"v" * 16, {"id": "1"}, b"")
    assert cache_key(b"e" * 16, b"v" * 16, {"id": "1"}, b"") != base
    assert cache_key(b"d" * 16, b"w" * 16, {"id": "1"}, b"") != base
    assert cache_key(b"d" * 16, b"v" * 16, {"id": "2"}, b"") != base
    assert cache_key(b"d" * 16, b"v" * 16, {"id": "1"}, b"tenant-a") != base
    assert cache_key(b"d" * 16, b"v" * 16, {"id": "1"}, b"tenant-a") != cache_key(b"d" * 16, b"v" * 16, {"id": "1"}, b"tenant-b")
    assert cache_key(b"d" * 16, b"v" * 16, {"id": "1"}, b"") == base


def test_long_keys_are_digested_to_fit_the_arena() -> None:
    big = {"ids": [str(i) for i in range(500)]}
    key = cache_key(b"d" * 16, b"v" * 16, big, b"")
    assert len(key) == 33 and key.startswith(b"#")
    assert key != cache_key(b"d" * 16, b"v" * 16, {**big, "x": 1}, b"")
    assert len(cache_key(b"d" * 16, b"v" * 16, {"id": "1"}, b"s")) <= MAX_KEY
