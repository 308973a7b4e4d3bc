"""JsonFormatter: one JSON object per line, a request's record as fields; use_log_format switches
mitmproxy's terminal log, which prints shim's lines, between JSON and mitmproxy's own text."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys

from mitmproxy.addons.termlog import TermLog
from mitmproxy.log import MitmFormatter
from mitmproxy.test import taddons

from shim.logformat import REQUEST, JsonFormatter, use_log_format
from shim.requestlog import RequestRecord, text_line

RECORD = RequestRecord(
    time=1_700_000_000.0,
    method="GET",
    url="http://models.s3.local/models/resnet.mar?X-Amz-Signature=REDACTED",
    bucket="models",
    status=200,
    cache="MISS",
    route="direct",
    task_id="a" * 64,
    bytes=100_000,
    duration=0.25,
)


def log_record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("shim", logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_a_line_has_time_level_logger_and_message() -> None:
    line = JsonFormatter().format(log_record("shim ready: %d bucket(s)", 2))
    entry = json.loads(line)
    assert entry.keys() == {"time", "level", "logger", "message"}
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "INFO",
        "shim",
        "shim ready: 2 bucket(s)",
    )
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]


def test_a_request_line_carries_the_record_as_fields() -> None:
    line = JsonFormatter().format(log_record("%s", text_line(RECORD), **{REQUEST: RECORD}))
    entry = json.loads(line)
    assert entry["message"] == text_line(RECORD)
    assert {key: entry[key] for key in ("method", "url", "bucket", "status", "cache")} == {
        "method": "GET",
        "url": RECORD.url,
        "bucket": "models",
        "status": 200,
        "cache": "MISS",
    }
    assert (entry["route"], entry["task_id"], entry["bytes"], entry["duration"]) == (
        "direct",
        "a" * 64,
        100_000,
        0.25,
    )


def test_one_object_is_one_line_whatever_the_message_holds() -> None:
    hostile = "a\nb\r\u2028c\u2029d\x00é"
    line = JsonFormatter().format(log_record(hostile))
    assert line.isascii() and len(line.splitlines()) == 1
    assert json.loads(line)["message"] == hostile


def test_an_exception_is_a_field_of_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("shim", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "ERROR" and "ValueError: boom" in entry["exception"]


def test_mitmproxys_client_address_is_a_field() -> None:
    entry = json.loads(JsonFormatter().format(log_record("client connect", client=("10.0.0.7", 5))))
    assert entry["client"] == "10.0.0.7:5"


def test_the_request_line_in_text() -> None:
    assert text_line(RECORD) == (
        "GET http://models.s3.local/models/resnet.mar?X-Amz-Signature=REDACTED -> 200 MISS "
        f"via direct task={'a' * 64} bucket=models bytes=100000 duration=0.250s"
    )


def test_a_refused_or_failed_request_says_why_on_its_line_and_in_a_field() -> None:
    failed = dataclasses.replace(RECORD, status=502, error="signing: no credentials found")
    assert text_line(failed) == text_line(RECORD).replace("-> 200", "-> 502") + (
        " error: signing: no credentials found"
    )
    line = JsonFormatter().format(log_record("%s", text_line(failed), **{REQUEST: failed}))
    assert json.loads(line)["error"] == "signing: no credentials found"


def test_use_log_format_switches_the_terminal_log() -> None:
    out = io.StringIO()
    with taddons.context() as tctx:  # type: ignore[no-untyped-call]
        termlog = TermLog(out)
        tctx.master.addons.add(termlog)
        try:
            use_log_format(tctx.master, "json")
            logging.getLogger("shim").warning("as json")
            use_log_format(tctx.master, "text")
            assert isinstance(termlog.logger.formatter, MitmFormatter)
            logging.getLogger("shim").warning("as text")
        finally:
            termlog.uninstall()
    first, second = out.getvalue().splitlines()
    assert json.loads(first)["message"] == "as json"
    assert second.endswith("] as text") and not second.startswith("{")
