"""Cheap text checks over native/_native.c (msgspec's test_cpylint idea).

- every function that takes a shard lock releases it as many times, and
  never returns or jumps out while holding it;
- a *_locked function never takes or releases a lock itself;
- no Python object is created under a shard lock except the bytes a get
  copies into (check's report strings excepted, which is not a hot path);
- every PyMem_Malloc has a PyMem_Free in the same function (or is returned).
"""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "native" / "_native.c"
START = re.compile(r"^(?:static\s+)?(?:inline\s+)?[\w\*]+(?:\s+[\w\*]+)*?\s*\*?\b(\w+)\(")
ALLOWED_UNDER_LOCK = {"PyBytes_FromStringAndSize", "PyBytes_AS_STRING"}


def functions() -> dict[str, list[str]]:
    """name -> lines of each top-level function definition (signature to closing brace)."""
    lines = SRC.read_text().splitlines()
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(lines):
        m = START.match(lines[i])
        if m and not lines[i].rstrip().endswith(";") and lines[i][:1] not in (" ", "\t", "#", "/"):
            j = i
            while j < len(lines) and not lines[j].rstrip().endswith("{") and not lines[j].rstrip().endswith(";"):
                j += 1
            if j < len(lines) and lines[j].rstrip().endswith("{"):
                depth, k = 0, j
                for k in range(j, len(lines)):
                    depth += lines[k].count("{") - lines[k].count("}")
                    if depth == 0:
                        break
                out[m.group(1)] = lines[i : k + 1]
                i = k
        i += 1
    return out


def test_parser_sees_the_functions() -> None:
    fs = functions()
    assert {"do_get", "H_put", "put_locked", "shard_lock", "H_check", "entry_free_locked"} <= set(fs)


def test_locks_are_balanced_and_never_left_held() -> None:
    problems = []
    for name, body in functions().items():
        if name in ("shard_lock", "shard_unlock"):
            continue
        locks = sum(line.count("shard_lock(") for line in body)
        unlocks = sum(line.count("shard_unlock(") for line in body)
        if locks != unlocks:
            problems.append(f"{name}: {locks} shard_lock vs {unlocks} shard_unlock")
        held = False
        for line in body:
            if "shard_lock(" in line:  # a failure branch on the same line runs unlocked
                held = True
                continue
            if "shard_unlock(" in line:
                held = False
                continue
            if held and re.search(r"\b(return|goto)\b", line):
                problems.append(f"{name}: leaves with the lock held: {line.strip()}")
    assert problems == []


def test_locked_functions_do_not_lock() -> None:
    for name, body in functions().items():
        if name.endswith("_locked"):
            text = "\n".join(body[1:])
            assert "shard_lock(" not in text and "shard_unlock(" not in text, name


def test_no_python_objects_created_under_a_lock() -> None:
    problems = []
    for name, body in functions().items():
        held = False
        for line in body:
            if "shard_lock(" in line:
                held = True
                continue
            if "shard_unlock(" in line:
                held = False
            if held:
                for call in re.findall(r"\b(Py\w+)\(", line):
                    if call not in ALLOWED_UNDER_LOCK:
                        problems.append(f"{name}: {call} under a shard lock")
    assert problems == []


def test_mallocs_are_freed() -> None:
    for name, body in functions().items():
        text = "\n".join(body)
        n_alloc = text.count("PyMem_Malloc(")
        if n_alloc and name != "tag_slots_of":  # returns its buffer; callers free it
            assert "PyMem_Free(" in text, f"{name} allocates without freeing"


def test_sections_have_banners() -> None:
    banners = re.findall(r"^ \* (\w[\w /,()-]+?)\s+\*$", SRC.read_text(), re.M)
    assert len(banners) >= 8, banners
