"""Error classification: one table from what happened to the error class."""

from email.utils import formatdate

import pytest

from routemesh_sidecar.protocol.http1 import ConnectFailed, MalformedResponse, UpstreamClosed
from routemesh_sidecar.upstream.classify import (
    FALLBACK_CLASSES,
    classify_exception,
    classify_status,
    failure_from_response,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (429, b"{}", "rate_limited"),
        (503, b"", "overloaded"),
        (529, b'{"type":"error","error":{"type":"overloaded_error"}}', "overloaded"),
        (500, b"", "server_error"),
        (502, b"", "server_error"),
        (504, b"", "server_error"),
        (408, b"", "timeout"),
        (400, b'{"error":{"code":"context_length_exceeded"}}', "context_length"),
        (400, b'{"error":{"message":"prompt is too long: 300000 tokens"}}', "context_length"),
        (400, b'{"error":{"code":"content_filter"}}', "content_policy"),
        (400, b'{"error":{"message":"bad temperature"}}', "client_error"),
        (401, b"", "client_error"),
        (404, b"", "client_error"),
    ],
)
def test_status_classes(status: int, body: bytes, expected: str):
    assert classify_status(status, body) == expected


def test_exceptions_are_classified_by_where_they_came_from():
    """What the upstream client raises (`protocol.http1`), by where it happened."""
    refused = ConnectFailed("cannot connect to h:1: [Errno 111] refused")
    assert classify_exception(refused) == "connect_error"
    assert classify_exception(TimeoutError()) == "timeout"
    assert classify_exception(UpstreamClosed("closed mid-answer")) == "server_error"
    assert classify_exception(MalformedResponse("malformed HTTP")) == "bad_response"
    assert classify_exception(ValueError("bad json")) == "bad_response"


def test_a_400_never_falls_back_but_a_context_length_error_may():
    assert "client_error" not in FALLBACK_CLASSES
    assert "content_policy" not in FALLBACK_CLASSES
    assert "context_length" in FALLBACK_CLASSES
    assert {"connect_error", "timeout", "rate_limited", "server_error"} <= FALLBACK_CLASSES


def test_retry_after_in_seconds_and_as_an_http_date():
    now = 1_800_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_failure_from_response_reads_the_message_and_retry_after():
    failure = failure_from_response(
        429, {"retry-after": "3"}, b'{"error":{"message":"slow down"}}', 0.0
    )
    assert (failure.error_class, failure.status, failure.retry_after) == ("rate_limited", 429, 3.0)
    assert failure.message == "slow down"
