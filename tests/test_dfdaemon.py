"""What shim sends a dfdaemon (pure parts of shim/dfdaemon.py)."""

from __future__ import annotations

import asyncio

import h11
import pytest

from shim._errors import UnansweredError
from shim.dfdaemon import (
    DragonflyOptions,
    dragonfly_headers,
    request_line,
    request_via_dfdaemon,
    task_id_from,
)
from tests.support.procs import free_port

FILTERED = ("X-Amz-Credential", "X-Amz-Signature", "sig", "se")


def test_both_filter_dialects_carry_the_whole_list_and_p2p_is_forced() -> None:
    headers = dragonfly_headers(DragonflyOptions(), FILTERED)
    assert headers == {
        "X-Dragonfly-Filter": "X-Amz-Credential&X-Amz-Signature&sig&se",
        "X-Dragonfly-Filtered-Query-Params": "X-Amz-Credential,X-Amz-Signature,sig,se",
        "X-Dragonfly-Use-P2P": "true",
    }


def test_tag_application_and_priority_are_sent_only_when_set() -> None:
    headers = dragonfly_headers(DragonflyOptions("models-v2", "torchserve", 0), FILTERED)
    assert headers["X-Dragonfly-Tag"] == "models-v2"
    assert headers["X-Dragonfly-Application"] == "torchserve"
    assert headers["X-Dragonfly-Priority"] == "0"
    assert "X-Dragonfly-Priority" not in dragonfly_headers(DragonflyOptions(), FILTERED)


def test_task_id_is_read_from_either_dialect_case_insensitively() -> None:
    assert task_id_from({"x-dragonfly-task-id": "rust"}) == "rust"
    assert task_id_from({"X-Dragonfly-Task": "go"}) == "go"
    assert task_id_from({"X-Dragonfly-Task-ID": "rust", "X-Dragonfly-Task": "go"}) == "rust"
    assert task_id_from({"X-Dragonfly-Task-ID": ""}) is None
    assert task_id_from({}) is None


def test_request_is_absolute_form_with_the_origin_host_and_the_query_untouched() -> None:
    url = "https://bucket.s3.us-east-1.amazonaws.com/a%20b?X-Amz-Signature=ab%2Fcd&x=1"
    conn = h11.Connection(h11.CLIENT)
    wire = conn.send(request_line("GET", url, {"X-Dragonfly-Use-P2P": "true"})) or b""
    head = wire.decode()
    assert head.startswith(f"GET {url} HTTP/1.1\r\n")
    assert "\r\nHost: bucket.s3.us-east-1.amazonaws.com\r\n" in head
    assert "\r\nX-Dragonfly-Use-P2P: true\r\n" in head
    assert "\r\nConnection: close\r\n" in head


def test_a_refused_connection_is_unanswered_so_the_request_may_be_sent_again() -> None:
    request = request_via_dfdaemon(
        ("127.0.0.1", free_port()), "GET", "http://h/k", {}, connect_timeout=5, read_timeout=5
    )
    with pytest.raises(UnansweredError, match="dfdaemon unreachable"):
        asyncio.run(request)
