"""Request ids: one per request, in every log line of it and in the response headers.

``request_id(header_value)`` takes the id a client or a proxy sent (the
header named by Settings.request_id_header, default X-Request-ID) when it is
sane, else makes one. Sane: 1 to 128 characters of letters, digits and
``-_.:@/+=`` (UUIDs, W3C trace ids, base64 tokens). Anything else (too long,
spaces, control characters, quotes, non-ASCII) is replaced, never logged or
echoed: a client cannot forge a log line or a header through it.

Made ids are a random per-process prefix and a counter (``4f1c9a0e2b7d-1a2``):
unique across processes and hosts in practice, and cheap enough for the hit
path, which calls this on every request.

The id of the request being handled lives in fraiseshm.logs.request_id_var
(a contextvar, set by the app's middleware), which puts it in every record
logged while that request runs.
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
    """The client's id when it is sane (see the module docstring), else a new one."""
    if header_value is not None and len(header_value) <= MAX_LENGTH and _SANE.fullmatch(header_value):
        return header_value
    return _new()
