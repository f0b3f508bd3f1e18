"""Log lines: what a client sent can never forge one, and each carries its request id.

``configure(settings)`` builds the one handler every logger writes through
(gunicorn's own loggers included, via ``gunicorn_logconfig``):

- EscapeControlCharacters: control characters (newline, carriage return,
  escape, NUL, the Unicode line separators) in a record's message are written
  as escapes, so an operationName with a newline stays on its own line.
  Tracebacks are formatted separately and keep their lines. Variable values
  are only ever logged at DEBUG.
- RequestIdFilter: ``record.request_id`` is the id of the request being
  handled (``request_id_var``, set by the app's middleware), or None outside a
  request. The id was checked or made by fraiseshm.http.request_id: never a
  raw header.
- ``log_format = "text"``: ``time [pid] LEVEL logger: message request_id=ID``;
  ``"json"``: one JSON object per line with time, level, logger, pid, message,
  request_id (when in a request) and exc_info (formatted traceback).
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextvars import ContextVar
from typing import Any

from fraiseshm.config import Settings

# The id of the request this task is handling; None outside a request.
request_id_var: ContextVar[str | None] = ContextVar("fraiseshm_request_id", default=None)

_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


class EscapeControlCharacters(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _CONTROL.search(message):
            record.msg = escape_controls(message)
            record.args = None
        return True


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    """The classic line, plus ` request_id=ID` for records logged inside a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid is None:
            return line
        head, sep, tail = line.partition("\n")  # after the message, before a traceback
        return f"{head} request_id={rid}{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: json.dumps escapes every control character itself."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            out["request_id"] = rid
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def formatter_for(settings: Settings) -> logging.Formatter:
    return JsonFormatter() if settings.log_format == "json" else TextFormatter()


def install(logger: logging.Logger | None = None) -> None:
    """Add both filters to every handler of logger (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, EscapeControlCharacters) for f in handler.filters):
            handler.addFilter(EscapeControlCharacters())
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())


def gunicorn_logconfig(settings: Settings) -> dict[str, Any]:
    """gunicorn's logconfig_dict: one stderr handler on the root logger, with our
    formatter and filters; gunicorn's own loggers propagate to it (one format for all)."""
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "escape": {"()": EscapeControlCharacters},
            "request_id": {"()": RequestIdFilter},
        },
        "formatters": {"fraiseshm": {"()": formatter_for, "settings": settings}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "fraiseshm",
                "filters": ["escape", "request_id"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
    }
