"""redact_url(): signature values never reach a log line. redact_error_body(): what an origin's
error body repeats of the signed request never reaches a client."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from shim.providers import ALL_SIGNATURE_PARAMS
from shim.redact import redact_error_body, redact_url, redact_urls, signature_secrets

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


# -- error bodies -------------------------------------------------------------------------------

# The shape of S3's answer to a wrong signature (its documented elements), for SIGNED.
SIGNATURE_DOES_NOT_MATCH = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code>'
    b"<Message>The request signature we calculated does not match the signature you provided."
    b" Check your key and signing method.</Message><AWSAccessKeyId>AKIDEXAMPLE</AWSAccessKeyId>"
    b"<StringToSign>AWS4-HMAC-SHA256\n20240101T000000Z\n20240101/eu-west-1/s3/aws4_request\n"
    b"9f2c5d0a</StringToSign><SignatureProvided>deadbeef</SignatureProvided>"
    b"<StringToSignBytes>41 57 53 34</StringToSignBytes><CanonicalRequest>GET\n/dir/model.bin\n"
    b"X-Amz-Algorithm=AWS4-HMAC-SHA256&amp;X-Amz-Credential=AKIDEXAMPLE%2F20240101\n"
    b"host:my-bucket.s3.eu-west-1.amazonaws.com\n\nhost\nUNSIGNED-PAYLOAD</CanonicalRequest>"
    b"<CanonicalRequestBytes>47 45 54 0a</CanonicalRequestBytes><RequestId>4442587FB7D0A2F9"
    b"</RequestId><HostId>hostid</HostId></Error>"
)


def test_signature_does_not_match_keeps_its_code_and_loses_what_was_signed() -> None:
    body = redact_error_body(SIGNATURE_DOES_NOT_MATCH, SIGNED)
    for kept in (b"<Code>SignatureDoesNotMatch</Code>", b"Check your key", b"4442587FB7D0A2F9"):
        assert kept in body
    for element in (
        "AWSAccessKeyId",
        "StringToSign",
        "SignatureProvided",
        "StringToSignBytes",
        "CanonicalRequest",
        "CanonicalRequestBytes",
    ):
        assert f"<{element}>REDACTED</{element}>".encode() in body
    for secret in (b"AKIDEXAMPLE", b"deadbeef", b"aws4_request", b"UNSIGNED-PAYLOAD", b"41 57"):
        assert secret not in body


def test_secret_values_of_the_signed_url_are_redacted_wherever_they_occur() -> None:
    url = (
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKID2EXAMPLE%2F20240101%2Fus-east-1%2Fs3"
        "%2Faws4_request&X-Amz-Security-Token=IQoJb3Jp%2BZ2lu%2Fab%3D%3D&X-Amz-Signature=cafe01"
    )
    body = (
        b"<Error><Code>AccessDenied</Code><Message>token IQoJb3Jp+Z2lu/ab== (IQoJb3Jp%2BZ2lu%2Fab"
        b"%3D%3D) of AKID2EXAMPLE/20240101/us-east-1/s3/aws4_request signed cafe01; key "
        b"AKID2EXAMPLE</Message></Error>"
    )
    redacted = redact_error_body(body, url)
    assert redacted.startswith(b"<Error><Code>AccessDenied</Code><Message>token REDACTED")
    for secret in (b"IQoJb3Jp", b"AKID2EXAMPLE", b"cafe01"):
        assert secret not in redacted


def test_values_that_only_say_how_a_url_was_signed_are_left_in_the_text() -> None:
    body = b"<Error><Message>AWS4-HMAC-SHA256 on host, 3600 s from 20240101T000000Z</Message>"
    assert redact_error_body(body, SIGNED) == body


def test_an_element_cut_off_by_a_truncated_body_is_redacted_to_the_end() -> None:
    body = b"<Error><Code>SignatureDoesNotMatch</Code><StringToSign>AWS4-HMAC-SHA256\n2024"
    assert redact_error_body(body, "https://h/k") == (
        b"<Error><Code>SignatureDoesNotMatch</Code><StringToSign>REDACTED</StringToSign>"
    )


def test_an_expired_token_error_loses_the_token() -> None:
    body = b"<Error><Code>ExpiredToken</Code><Token-0>FwoGZXIvYXdz</Token-0></Error>"
    assert redact_error_body(body, "https://h/k") == (
        b"<Error><Code>ExpiredToken</Code><Token-0>REDACTED</Token-0></Error>"
    )


def test_a_body_without_secrets_is_unchanged() -> None:
    body = b"<Error><Code>NoSuchKey</Code><Key>dir/model.bin</Key></Error>"
    assert redact_error_body(body, SIGNED) == body


def test_the_secrets_of_a_signed_url_are_its_identity_and_signature_values() -> None:
    assert signature_secrets(SIGNED) == {
        "AKIDEXAMPLE%2F20240101%2Feu-west-1%2Fs3%2Faws4_request",
        "AKIDEXAMPLE/20240101/eu-west-1/s3/aws4_request",
        "AKIDEXAMPLE",
        "SESSIONTOKEN",
        "deadbeef",
    }


@pytest.mark.parametrize(
    "url",
    [
        "https://b.oss-cn-hangzhou.aliyuncs.com/k?x-oss-credential=LTAIKEYID%2F20260101%2F"
        "cn-hangzhou%2Foss%2Faliyun_v4_request&x-oss-signature=abc",
        "https://storage.googleapis.com/b/k?X-Goog-Credential=sa%40p.iam.gserviceaccount.com"
        "%2F20260101%2Fauto%2Fstorage%2Fgoog4_request&X-Goog-Signature=abc",
    ],
)
def test_the_key_id_heading_any_stores_credential_is_a_secret(url: str) -> None:
    key_id = unquote(url.split("redential=")[1].split("%2F")[0])
    assert key_id in signature_secrets(url)
    body = f"<Error><Message>access key {key_id} denied</Message></Error>".encode()
    assert key_id.encode() not in redact_error_body(body, url)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "InvalidUrlClientError: http://:80/x?X-Amz-Signature=SECRET&a=1 (bad host)",
            "InvalidUrlClientError: http://:80/x?X-Amz-Signature=REDACTED&a=1 (bad host)",
        ),
        ("'x?X-Amz-Signature=SECRET'", "'x?X-Amz-Signature=REDACTED'"),
        ("http://[zz/x?X-Amz-Signature=SECRET", "http://[zz/x?REDACTED"),  # cannot be parsed
        ("no URL here", "no URL here"),
    ],
)
def test_urls_inside_a_text_are_redacted(text: str, expected: str) -> None:
    assert redact_urls(text) == expected
