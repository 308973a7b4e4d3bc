"""Log lines as JSON: one object per line, with ``time``, ``level``, ``logger`` and
``message``, and a request's fields (``shim.requestlog``) for the line of each request served.
mitmproxy's terminal log prints shim's lines and its own; ``log_format`` picks its formatter."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from mitmproxy.log import MitmFormatter
from mitmproxy.utils import human

from shim.requestlog import RequestRecord

# The ``extra`` key under which a request's line carries its record.
REQUEST = "request"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if client := getattr(record, "client", None):  # mitmproxy's lines about a client
            entry["client"] = human.format_address(client)
        request = getattr(record, REQUEST, None)
        if isinstance(request, RequestRecord):
            # Its time is the line's; the rest as fields of their own.
            entry.update({k: v for k, v in dataclasses.asdict(request).items() if k != "time"})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ASCII: control and line-separator characters escaped, so one line is one object.
        return json.dumps(entry, ensure_ascii=True)


def use_log_format(master: Any, log_format: Literal["text", "json"]) -> None:
    """Have mitmproxy's terminal log, if ``master`` has one, write ``log_format``."""
    termlog = master.addons.get("termlog")
    if termlog is None:
        return
    handler = termlog.logger
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif isinstance(handler.formatter, JsonFormatter):
        handler.setFormatter(MitmFormatter(handler.has_vt_codes))
