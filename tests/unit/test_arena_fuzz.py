"""A small run of scripts/fuzz_arena.py: one-byte corruption never crashes, hangs or lies.

The full run (2,000+ trials over every region of the layout) is
`.venv/bin/python scripts/fuzz_arena.py`; this one covers every region too,
with fewer trials, so `make test` notices a regression.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fuzz() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_arena", os.path.join(ROOT, "scripts", "fuzz_arena.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_one_byte_corruption_is_never_a_crash_a_hang_or_a_wrong_value() -> None:
    res = _fuzz().run(trials=120, seed=5, timeout=20.0)  # 8 per region
    totals: dict[str, int] = {}
    for counts in res["table"].values():
        for verdict, n in counts.items():
            totals[verdict] = totals.get(verdict, 0) + n
    assert res["findings"] == [], res["findings"][:3]
    assert sum(totals.values()) == 120 and totals.get("detected", 0) > 30
    assert all(sum(c.values()) == 8 for c in res["table"].values())  # every region was hit
