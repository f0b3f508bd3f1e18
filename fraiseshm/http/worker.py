"""gunicorn's ASGI worker with cache hits answered inside the HTTP/1.1 protocol.

gunicorn's native ASGI worker spends ~45 us of CPU per request on its own
machinery (pure-Python parsing, a scope, a body receiver, a task and futures
per request, response framing) against ~8 us for falcon's constant-bytes
answer and ~8 us for the kernel's share (measured here: perf/bench_cache.py,
the README's profile). So a hit answered as an ASGI app (fraiseshm/http/fast_hit.py)
costs about what a constant-bytes falcon POST does. This worker answers the
steady state of a hit earlier: when a kept-alive connection is idle and
the bytes handed to its parser hold exactly one complete, plain request for /graphql, the
protocol asks FastHit's synchronous core (the same memo, verifier, arena lookup
and headers) and writes the response itself, with the status line, Server and
Date headers gunicorn writes. Everything else is fed to gunicorn unchanged,
and FastHit's ASGI app still serves what the protocol declined.

Declined (gunicorn's own path): a request arriving while another is being
served or while gunicorn's parser holds part of one (only gunicorn's pure-Python
parser is understood: with gunicorn_h1c installed the protocol answers nothing),
more or less than one complete request in the bytes at hand, anything but HTTP/1.1 POST/GET on /graphql in
origin form, Transfer-Encoding, Connection, Upgrade, Expect, TE or
HTTP2-Settings headers, header names with "_" (gunicorn's header policy
rewrites those), obsolete line folding, a missing Host, GET with a body, a
worker shutting down or about to reach max_requests, access logging or
request hooks configured, write backpressure.

A request the protocol asked about but could not answer carries what it
learnt (the missed key, the GET query string to memoise) in its ASGI scope, so
the arena is never asked twice for one request and every counter counts once.

gunicorn's internals used here (pinned: gunicorn>=27,<28): ASGIProtocol's
connection state (_feed_callback_parser, _request_ready, _current_request, the
PythonProtocol parser's _state and _buffer,
_finishing_calls, _closed, _flow_control, _http1_buffered, _arm_keepalive_timer,
_build_http_scope), the worker's nr /
max_requests, and the module's cached status line, Server and Date header
helpers. If any is missing the worker says so once and uses plain ASGIProtocol.

    gunicorn.conf.py: worker_class = "fraiseshm.http.worker.FastHitWorker" (fast_hit and fast_hit_protocol)
"""

from __future__ import annotations

import logging
import re
from typing import Any

import gunicorn.asgi.protocol as gprotocol
import gunicorn.workers.gasgi as gasgi
from gunicorn.asgi.protocol import ASGIProtocol

from fraiseshm.http.fast_hit import PROBE_SCOPE_KEY, FastHit
from fraiseshm.service import MEMO_BODY_BYTES, Probe

log = logging.getLogger("fraiseshm.http")

_PATHS = (b"/graphql", b"/graphql/")
_DECLINED_HEADERS = frozenset((b"transfer-encoding", b"connection", b"upgrade", b"expect", b"te", b"http2-settings"))
# Bytes gunicorn's parser refuses or treats specially in a request head: controls other than
# tab (CR and LF only as line ends), DEL, non-ASCII; and a header name must be a token.
_ODD_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]|\r(?!\n)|(?<!\r)\n")
_TOKEN = re.compile(rb"[!#$%&'*+.^`|~0-9A-Za-z-]+")
_MAX_LINE = 4094  # gunicorn's limit_request_line default; also held to for header lines
_MAX_FIELDS = 100  # gunicorn's limit_request_fields default
_INTERNALS = ("_get_cached_status_line", "_get_cached_date_header", "_CACHED_SERVER_HEADER")
_PROTOCOL_METHODS = ("_feed_callback_parser", "_http1_buffered", "_arm_keepalive_timer", "_build_http_scope")


def _parse(data: bytes) -> tuple[str, bytes, list[tuple[bytes, bytes]], bytes] | None:
    """(method, query string, headers as gunicorn's ASGI scope gives them, body) of exactly one
    plain request for /graphql in data; None for anything else."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or _ODD_BYTES.search(data, 0, end):
        return None
    lines = data[:end].split(b"\r\n")
    if len(lines) > _MAX_FIELDS + 1 or max(map(len, lines)) > _MAX_LINE:
        return None
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in (b"POST", b"GET"):
        return None
    path, _, query = parts[1].partition(b"?")
    if path not in _PATHS or b"#" in query:
        return None
    headers = []
    length = None
    host = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or b"_" in name or not _TOKEN.fullmatch(name):
            return None
        name = name.lower()
        if name in _DECLINED_HEADERS:
            return None
        value = value.strip(b" \t")
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name == b"host":
            host = True
        headers.append((name, value))
    body = data[end + 4:]
    if not host or len(body) != (length or 0):
        return None
    if parts[0] == b"GET" and body:
        return None
    return parts[0].decode(), query, headers, body


class FastHitProtocol(ASGIProtocol):
    answered = 0  # hits this worker answered in the protocol (logged when it stops)

    def __init__(self, worker: Any) -> None:
        super().__init__(worker)
        app = self.app
        self.fast = app if isinstance(app, FastHit) else None
        self._probe: Probe | None = None
        self._plain = (not self.log.access_log_enabled and self._pre_request is None and self._post_request is None
                       and not self._uses_uwsgi and self._proxy_protocol in ("off", None, False))

    def _feed_callback_parser(self, data: bytes) -> bool:
        # Both ways bytes reach the parser pass here: data_received() and the connection
        # loop's re-feed of bytes that arrived while the previous response was going out
        # (a quick client's next request usually does). Between requests the loop has
        # cleared _request_ready and _current_request and reset the parser.
        if (self.fast is not None and self._plain and not self._closed and self._current_request is None
                and not self._request_ready.is_set() and len(data) <= MEMO_BODY_BYTES + 8192 and self._answer(data)):
            return True
        return super()._feed_callback_parser(data)

    def _answer(self, data: bytes) -> bool:
        """True when the hit was written; False: gunicorn serves data (with self._probe, if asked)."""
        worker = self.worker
        if not worker.alive or not self._keepalive or worker.nr + 1 >= worker.max_requests or self._http1_buffered():
            return False
        # INVARIANT: gunicorn's parser holds nothing (not half a request line or header block
        # from an earlier segment): these bytes then start a request, as gunicorn would read them.
        parser = self._callback_parser
        if getattr(parser, "_state", None) != "request_line" or getattr(parser, "_buffer", b"?"):
            return False
        flow = self._flow_control
        if flow is not None and flow.write_paused:
            return False
        parsed = _parse(data)
        if parsed is None:
            return False
        method, query, headers, body = parsed
        fast = self.fast
        assert fast is not None
        service = fast.service()
        if service is None:
            return False
        inspected = fast.inspect(method, headers)
        if inspected is None:
            return False
        values, meta = inspected
        get = method == "GET"
        request = query if get else body
        if get and (not request or len(request) > MEMO_BODY_BYTES):
            return False
        reply, missed = service.memo_hit(request, get, meta)
        if reply is None:
            self._probe = Probe(missed=missed, get_query=request if get else None)
            return False
        # gunicorn's framing, as its _send_response_start + _send_body write it
        parts = [gprotocol._get_cached_status_line((1, 1), reply.status)]
        for name, value in fast.headers_of(reply, values, get):
            parts += (name, b": ", value, b"\r\n")
        parts += (gprotocol._CACHED_SERVER_HEADER, gprotocol._get_cached_date_header(), b"\r\n", reply.body)
        self.transport.write(b"".join(parts))
        # what gunicorn's connection loop does after a response it served
        self.req_count += 1
        worker.nr += 1
        if not self._finishing_calls:  # else _finishing_call_done() arms it, as after gunicorn's own responses
            self._arm_keepalive_timer()
        FastHitProtocol.answered += 1
        return True

    def _build_http_scope(self, request: Any, sockname: Any, peername: Any) -> dict[str, Any]:
        scope = super()._build_http_scope(request, sockname, peername)
        probe, self._probe = self._probe, None
        if probe is not None:
            scope[PROBE_SCOPE_KEY] = probe
        return scope


def _internals_present() -> bool:
    missing = [n for n in _INTERNALS if not hasattr(gprotocol, n)]
    missing += [n for n in _PROTOCOL_METHODS if not hasattr(ASGIProtocol, n)]
    if missing:
        log.warning("gunicorn %s lacks %s: hits are answered by the ASGI fast path only", gprotocol.__name__, missing)
    return not missing


class FastHitWorker(gasgi.ASGIWorker):
    """gunicorn's ASGI worker whose connections use FastHitProtocol."""

    def run(self) -> None:
        if _internals_present():
            # gunicorn's worker builds ``ASGIProtocol(self)`` by this module-level name, in this process only.
            gasgi.ASGIProtocol = FastHitProtocol  # type: ignore[misc]
        try:
            super().run()
        finally:
            log.info("worker %d answered %d cache hits in the HTTP/1.1 protocol", self.pid, FastHitProtocol.answered)


__all__ = ["FastHitProtocol", "FastHitWorker"]
