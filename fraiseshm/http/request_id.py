"""Request ids: ``request_id(header_value)`` takes the id a client or a proxy sent
(the header named by Settings.request_id_header) when it is sane, else makes one.

Sane: 1 to 128 characters of letters, digits and ``-_.:@/+=``; anything else is
replaced, never echoed. Made ids are a random per-process prefix and a counter:
cheap enough for the hit path, which calls this on every request.
"""

from __future__ import annotations

import itertools
import os
import re

MAX_LENGTH = 128
_SANE = re.compile(r"[A-Za-z0-9\-_.:@/+=]{1,%d}" % MAX_LENGTH)

_prefix = os.urandom(6).hex()
_counter = itertools.count(1)


def _reseed() -> None:
    # PERF: a forked child gets its own prefix here, not by a getpid() (a syscall) per request.
    global _prefix, _counter
    _prefix, _counter = os.urandom(6).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_reseed)


def _new() -> str:
    return f"{_prefix}-{next(_counter):x}"


def request_id(header_value: str | None) -> str:
    """The client's id when it is sane, else a new one."""
    if header_value is not None and len(header_value) <= MAX_LENGTH and _SANE.fullmatch(header_value):
        return header_value
    return _new()
