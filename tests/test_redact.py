"""redact_url(): signature values never reach a log line."""

from __future__ import annotations

import pytest

from shim.providers import ALL_SIGNATURE_PARAMS
from shim.redact import redact_url

SIGNED = (
    "https://my-bucket.s3.eu-west-1.amazonaws.com/dir/model.bin?versionId=v1"
    "&X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIDEXAMPLE%2F20240101%2Feu-west-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Security-Token=SESSIONTOKEN&X-Amz-Signature=deadbeef"
    "&response-content-type=text%2Fplain"
)


def test_every_signature_value_is_redacted_and_other_params_untouched() -> None:
    assert redact_url(SIGNED) == (
        "https://my-bucket.s3.eu-west-1.amazonaws.com/dir/model.bin?versionId=v1"
        "&X-Amz-Algorithm=REDACTED&X-Amz-Credential=REDACTED&X-Amz-Date=REDACTED"
        "&X-Amz-Expires=REDACTED&X-Amz-SignedHeaders=REDACTED"
        "&X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED"
        "&response-content-type=text%2Fplain"
    )


@pytest.mark.parametrize("secret", ["AKIDEXAMPLE", "SESSIONTOKEN", "deadbeef"])
def test_redacted_url_holds_no_secret(secret: str) -> None:
    assert secret in SIGNED
    assert secret not in redact_url(SIGNED)


def test_sigv2_params_are_redacted() -> None:
    url = "https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKID&Expires=1700000000&Signature=abc%3D"
    assert redact_url(url) == (
        "https://b.s3.amazonaws.com/k?AWSAccessKeyId=REDACTED&Expires=REDACTED&Signature=REDACTED"
    )


@pytest.mark.parametrize("name", sorted(ALL_SIGNATURE_PARAMS))
def test_each_known_signature_param_is_redacted(name: str) -> None:
    assert redact_url(f"http://h/k?a=1&{name}=secret&b=2") == f"http://h/k?a=1&{name}=REDACTED&b=2"


@pytest.mark.parametrize(
    "url",
    [
        "https://b.s3.amazonaws.com/dir/model.bin",
        "https://b.s3.amazonaws.com/dir/model.bin?",
        "http://h:9000/a%20b/c+d",
        "https://b.s3.amazonaws.com/k#X-Amz-Signature=frag",
    ],
)
def test_url_without_query_is_unchanged(url: str) -> None:
    assert redact_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "https://h/k?versionId=1&response-content-disposition=attachment%3B%20a",
        "https://h/k?x-amz-signature=lowercase-is-another-name",
        "https://h/k?Signature&flag",
        "https://h/k?a=1&&b=2",
        "https://h/k?Signature-Extra=1",
    ],
)
def test_non_signature_params_are_untouched(url: str) -> None:
    assert redact_url(url) == url


def test_fragment_and_path_survive_redaction() -> None:
    url = "https://h:8443/a%20b/c?X-Amz-Signature=s#part"
    assert redact_url(url) == "https://h:8443/a%20b/c?X-Amz-Signature=REDACTED#part"


def test_percent_encoded_signature_name_is_redacted() -> None:
    redacted = redact_url("https://h/k?X%2DAmz%2DSignature=deadbeef")
    assert "deadbeef" not in redacted
