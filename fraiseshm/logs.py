"""Log hygiene: what a client sent can never forge a log line.

Installed on the root handlers (gunicorn.conf.py), so it covers every logger.
Control characters (newline, carriage return, escape, NUL, the Unicode line
separators) in a record's message are written as escapes: an operationName
with a newline stays on its own line. Tracebacks are formatted separately and
keep their lines. Variable values are only ever logged at DEBUG.
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


class EscapeControlCharacters(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _CONTROL.search(message):
            record.msg = escape_controls(message)
            record.args = None
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of logger (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, EscapeControlCharacters) for f in handler.filters):
            handler.addFilter(EscapeControlCharacters())
