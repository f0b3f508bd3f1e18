"""Request ids (fraiseshm/http/request_id.py) and log lines (fraiseshm/logs.py): what a
client sends never reaches a log line raw, and every line logged inside a request
carries its id, in text and in JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os

import pytest

from fraiseshm.config import load_settings
from fraiseshm.errors import ConfigError
from fraiseshm.http.request_id import MAX_LENGTH, request_id
from fraiseshm.logs import (
    EscapeControlCharacters,
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    gunicorn_logconfig,
    request_id_var,
)


@pytest.mark.parametrize("value", ["abc", "0f8fad5b-d9cb-469f-a165-70867728950e",
                                   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "a" * MAX_LENGTH,
                                   "tok+en/with=base64:chars@host_1.2"])
def test_sane_client_ids_are_kept(value: str) -> None:
    assert request_id(value) == value


@pytest.mark.parametrize("value", [None, "", "a" * (MAX_LENGTH + 1), "with space", "new\nline", "quote\"d",
                                   "café", "<script>", "semi;colon", "\x00", "tab\t", "x" * 100_000])
def test_hostile_or_missing_ids_are_replaced(value: str | None) -> None:
    made = request_id(value)
    assert made != value and 1 <= len(made) <= MAX_LENGTH
    assert request_id(made) == made  # a made id is itself sane (passes through proxies and back)


def test_made_ids_are_unique_and_differ_across_a_fork() -> None:
    ids = {request_id(None) for _ in range(10_000)}
    assert len(ids) == 10_000
    prefix = request_id(None).split("-")[0]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's ids must not repeat the parent's sequence
        os.write(w, request_id(None).encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 200).decode()
    os.waitpid(pid, 0)
    os.close(r)
    assert child.split("-")[0] != prefix


def test_request_id_header_setting_is_validated() -> None:
    assert load_settings(environ={}).request_id_header == "X-Request-ID"
    assert load_settings(environ={"FRAISESHM_REQUEST_ID_HEADER": "X-Correlation-ID"}).request_id_header == \
        "X-Correlation-ID"
    with pytest.raises(ConfigError, match="request_id_header"):
        load_settings(environ={"FRAISESHM_REQUEST_ID_HEADER": "X Bad: header"})
    with pytest.raises(ConfigError, match="log_format"):
        load_settings(environ={"FRAISESHM_LOG_FORMAT": "xml"})


def _logger(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(EscapeControlCharacters())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger(f"fraiseshm.test.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


async def _request(logger: logging.Logger, rid: str, started: asyncio.Event, gate: asyncio.Event) -> None:
    request_id_var.set(rid)  # what the app's middleware does for each request
    logger.info("start of %s", rid)
    started.set()
    await gate.wait()  # the other requests run meanwhile
    logger.info("end of %s", rid)


def test_each_line_carries_its_own_requests_id_under_concurrency() -> None:
    logger, stream = _logger(JsonFormatter())

    async def main() -> None:
        gate = asyncio.Event()
        started = [asyncio.Event() for _ in range(3)]
        tasks = [asyncio.create_task(_request(logger, f"r{i}", started[i], gate)) for i in range(3)]
        for event in started:
            await event.wait()
        gate.set()
        await asyncio.gather(*tasks)
        logger.info("outside any request")

    asyncio.run(main())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    for line in lines[:-1]:
        assert line["message"].endswith(line["request_id"]), line
    assert "request_id" not in lines[-1]
    assert len(lines) == 7


def test_json_lines_escape_and_keep_tracebacks_in_one_line() -> None:
    logger, stream = _logger(JsonFormatter())
    request_id_var.set("abc")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("operation %s failed", "evil\nINFO forged line")
    finally:
        request_id_var.set(None)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["request_id"] == "abc" and record["level"] == "error" and "\\x0a" in record["message"]
    assert "ValueError: boom" in record["exc_info"]


def test_text_lines_end_with_the_request_id_before_a_traceback() -> None:
    logger, stream = _logger(TextFormatter())
    request_id_var.set("abc-1")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        request_id_var.set(None)
    logger.info("no request")
    text = stream.getvalue().splitlines()
    assert text[0].endswith("failed request_id=abc-1") and "Traceback" in text[1]
    assert text[-1].endswith("no request")


def test_gunicorn_logconfig_is_a_valid_dictconfig() -> None:
    import logging.config

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(gunicorn_logconfig(load_settings(environ={"FRAISESHM_LOG_FORMAT": "json"})))
        handler = root.handlers[0]
        assert isinstance(handler.formatter, JsonFormatter)
        assert {type(f) for f in handler.filters} == {EscapeControlCharacters, RequestIdFilter}
        assert logging.getLogger("gunicorn.error").handlers == []
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
