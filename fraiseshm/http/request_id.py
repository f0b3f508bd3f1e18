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

_prefix = ""
_counter = itertools.count(1)
_pid = 0


def _new() -> str:
    global _prefix, _counter, _pid
    pid = os.getpid()
    if pid != _pid:  # first call, or a forked child: never share the parent's sequence
        _pid, _prefix, _counter = pid, os.urandom(6).hex(), itertools.count(1)
    return f"{_prefix}-{next(_counter):x}"


def request_id(header_value: str | None) -> str:
    """The client's id when it is sane, else a new one."""
    if header_value is not None and len(header_value) <= MAX_LENGTH and _SANE.fullmatch(header_value):
        return header_value
    return _new()
