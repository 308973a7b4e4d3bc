"""The OSS verifier (tests/support/oss_verify.py) is trusted only because it agrees with three
official SDKs: it accepts the GET and HEAD URLs that oss2, alibabacloud-oss-v2 and ali-oss
(Node) sign with V1 and V4, with and without an STS token, for awkward keys; and it refuses
every tampered variant, unsigned and expired URLs."""

from __future__ import annotations

import datetime
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import alibabacloud_oss_v2 as oss_v2  # type: ignore[import-untyped]
import oss2  # type: ignore[import-untyped]
import pytest

from tests.support.oss_gateway import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    AWKWARD_KEYS,
    CREDENTIALS,
    REGION,
    STS_ACCESS_KEY_ID,
    STS_ACCESS_KEY_SECRET,
    STS_TOKEN,
)
from tests.support.oss_verify import V4_PARAMS, Credential, Denied, Verified, verify

BUCKET = "models"
NODE_SCRIPT = Path(__file__).resolve().parents[1] / "support" / "oss_sdk_urls.js"
SDKS = ("oss2", "oss-v2", "ali-oss")
VERSIONS = ("v1", "v4")
PARAMS = {
    "versionId": "CAEQNhiBgM0BYiIDc4MGZjZGI2OTBjOTRmNTE5NmU5NmFhZjhjYmY0",
    "response-content-type": "text/plain; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class Case:
    sdk: str
    version: str
    sts: bool
    method: str
    key: str
    params: tuple[tuple[str, str], ...] = ()
    expires: int = 3600

    @property
    def id(self) -> str:
        sts = "-sts" if self.sts else ""
        extra = "-params" if self.params else ""
        return f"{self.sdk}-{self.version}{sts}-{self.method}{extra}-{self.key}"


def _keys(sts: bool) -> tuple[str, str, str | None]:
    if sts:
        return STS_ACCESS_KEY_ID, STS_ACCESS_KEY_SECRET, STS_TOKEN
    return ACCESS_KEY_ID, ACCESS_KEY_SECRET, None


def _sign_oss2(case: Case) -> str:
    akid, secret, token = _keys(case.sts)
    provider = oss2.StaticCredentialsProvider(akid, secret, token or "")
    if case.version == "v4":
        auth = oss2.ProviderAuthV4(provider)
    elif case.sts:
        auth = oss2.StsAuth(akid, secret, token)
    else:
        auth = oss2.Auth(akid, secret)
    bucket = oss2.Bucket(auth, f"https://oss-{REGION}.aliyuncs.com", BUCKET, region=REGION)
    url: str = bucket.sign_url(case.method, case.key, case.expires, params=dict(case.params))
    return url


def _sign_oss_v2(case: Case) -> str:
    akid, secret, token = _keys(case.sts)
    config = oss_v2.config.load_default()
    config.credentials_provider = oss_v2.credentials.StaticCredentialsProvider(akid, secret, token)
    config.region = REGION
    # The V2 SDK on a path-style IP endpoint: the other URL shape.
    config.endpoint = "http://127.0.0.1:9000"
    config.use_path_style = True
    config.signature_version = case.version
    client = oss_v2.Client(config)
    params = dict(case.params)
    fields = {
        "bucket": BUCKET,
        "key": case.key,
        "version_id": params.get("versionId"),
        "response_content_type": params.get("response-content-type"),
    }
    request_type = oss_v2.GetObjectRequest if case.method == "GET" else oss_v2.HeadObjectRequest
    if case.method == "HEAD":
        fields.pop("response_content_type")
    result = client.presign(
        request_type(**fields), expires=datetime.timedelta(seconds=case.expires)
    )
    assert result.method == case.method
    url: str = result.url
    return url


def _sign_ali_oss(cases: list[Case]) -> list[str]:
    requests = []
    for case in cases:
        akid, secret, token = _keys(case.sts)
        requests.append(
            {
                "version": case.version,
                "method": case.method,
                "bucket": BUCKET,
                "region": REGION,
                "key": case.key,
                "accessKeyId": akid,
                "accessKeySecret": secret,
                "stsToken": token,
                "expires": case.expires,
                "params": dict(case.params),
            }
        )
    done = subprocess.run(
        ["node", str(NODE_SCRIPT)],
        input=json.dumps(requests).encode(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    urls: list[str] = json.loads(done.stdout)
    return urls


def _cases() -> list[Case]:
    cases = []
    for sdk in SDKS:
        for version in VERSIONS:
            for sts in (False, True):
                for key in AWKWARD_KEYS:
                    cases.append(Case(sdk, version, sts, "GET", key))
                cases.append(Case(sdk, version, sts, "HEAD", AWKWARD_KEYS[-1]))
                cases.append(Case(sdk, version, sts, "GET", AWKWARD_KEYS[5], tuple(PARAMS.items())))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def signed() -> dict[Case, str]:
    """Every case's URL, as its SDK signed it (ali-oss in one Node run)."""
    urls = {case: _sign_oss2(case) for case in CASES if case.sdk == "oss2"}
    urls |= {case: _sign_oss_v2(case) for case in CASES if case.sdk == "oss-v2"}
    node_cases = [case for case in CASES if case.sdk == "ali-oss"]
    urls |= dict(zip(node_cases, _sign_ali_oss(node_cases), strict=True))
    return urls


def _parts(url: str) -> tuple[str, str, str]:
    """(bucket, decoded key, raw query) of a virtual-hosted or path-style URL."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host.endswith(".aliyuncs.com"):
        bucket, raw_key = host.partition(".")[0], parts.path.removeprefix("/")
    else:
        bucket, _, raw_key = parts.path.removeprefix("/").partition("/")
    return bucket, unquote(raw_key, errors="strict"), parts.query


def check(
    url: str,
    method: str = "GET",
    *,
    key: str | None = None,
    region: str | None = REGION,
    now: float | None = None,
    credentials: dict[str, Credential] = CREDENTIALS,
) -> Verified:
    bucket, url_key, query = _parts(url)
    return verify(
        method,
        bucket,
        url_key if key is None else key,
        query,
        credentials=credentials,
        region=region,
        now=now,
    )


def _edit(url: str, name: str, change: Callable[[str], str | None]) -> str:
    """``url`` with the raw value of query parameter ``name`` changed (None: removed)."""
    head, _, query = url.partition("?")
    pieces = []
    found = False
    for piece in query.split("&"):
        piece_name, _, value = piece.partition("=")
        if unquote(piece_name) == name:
            found = True
            new = change(value)
            if new is not None:
                pieces.append(f"{piece_name}={new}")
        else:
            pieces.append(piece)
    assert found, f"{name} not in {url}"
    return f"{head}?{'&'.join(pieces)}"


def _add(url: str, name: str, value: str) -> str:
    return f"{url}&{quote(name, safe='')}={quote(value, safe='')}"


def _flip(value: str) -> str:
    """A raw signature value with one character of the signature changed (still well-formed)."""
    signature = unquote(value)
    i = len(signature) // 2
    changed = signature[:i] + ("A" if signature[i] != "A" else "B") + signature[i + 1 :]
    return quote(changed, safe="")


def _signature_param(case: Case) -> str:
    return "x-oss-signature" if case.version == "v4" else "Signature"


def _denied(url: str, method: str = "GET", **kwargs: object) -> Denied:
    with pytest.raises(Denied) as info:
        check(url, method, **kwargs)  # type: ignore[arg-type]
    return info.value


# -- the SDKs' URLs verify ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_sdk_signed_url_verifies(signed: dict[Case, str], case: Case) -> None:
    url = signed[case]
    bucket, key, _ = _parts(url)
    assert (bucket, key) == (BUCKET, case.key)
    verified = check(url, case.method)
    assert verified.version == case.version
    assert verified.access_key_id == (STS_ACCESS_KEY_ID if case.sts else ACCESS_KEY_ID)
    for name, value in case.params:
        assert verified.params[name] == value


# -- and every tampered variant does not ----------------------------------------------------------

# One URL per SDK, version and token, with sub-resources: the tampering targets.
TARGETS = [c for c in CASES if c.params]
V4_TARGETS = [c for c in TARGETS if c.version == "v4"]
each_target = pytest.mark.parametrize("case", TARGETS, ids=lambda case: case.id)
each_v4_target = pytest.mark.parametrize("case", V4_TARGETS, ids=lambda case: case.id)
# And one URL per SDK, version and token without sub-resources, to add some to.
PLAIN = [c for c in CASES if c.key == AWKWARD_KEYS[0]]


def _good(signed: dict[Case, str], case: Case) -> str:
    """The case's URL, verified untouched: each refusal below is the tampering's doing."""
    url = signed[case]
    check(url)
    return url


@each_target
def test_tampered_signature_is_refused(signed: dict[Case, str], case: Case) -> None:
    url = _good(signed, case)
    denied = _denied(_edit(url, _signature_param(case), _flip))
    assert denied.code == "SignatureDoesNotMatch"


@each_target
def test_another_key_is_refused(signed: dict[Case, str], case: Case) -> None:
    url = _good(signed, case)
    assert _denied(url, key=case.key + "x").code == "SignatureDoesNotMatch"
    assert _denied(url, key=case.key.upper()).code == "SignatureDoesNotMatch"


@each_target
def test_another_method_is_refused(signed: dict[Case, str], case: Case) -> None:
    url = _good(signed, case)
    assert _denied(url, "HEAD").code == "SignatureDoesNotMatch"


@each_target
def test_edited_expiry_is_refused(signed: dict[Case, str], case: Case) -> None:
    url = _good(signed, case)
    name = "x-oss-expires" if case.version == "v4" else "Expires"
    assert _denied(_edit(url, name, lambda v: str(int(v) + 1))).code == "SignatureDoesNotMatch"


@each_target
def test_another_access_key_is_refused(signed: dict[Case, str], case: Case) -> None:
    url = _good(signed, case)
    akid, secret, token = _keys(case.sts)
    name = "x-oss-credential" if case.version == "v4" else "OSSAccessKeyId"
    swapped = _edit(url, name, lambda v: v.replace(quote(akid, safe=""), "LTAI5tOtherKey"))
    other = {**CREDENTIALS, "LTAI5tOtherKey": Credential("another secret", token)}
    assert _denied(swapped, credentials=other).code == "SignatureDoesNotMatch"
    if case.version == "v4":
        # V4 signs the key ID too (V1 does not): a key with the same secret is still refused.
        twin = {**CREDENTIALS, "LTAI5tOtherKey": Credential(secret, token)}
        assert _denied(swapped, credentials=twin).code == "SignatureDoesNotMatch"
    unknown = _edit(url, name, lambda v: v.replace(quote(akid, safe=""), "LTAI5tUnknown"))
    assert _denied(unknown).code == "InvalidAccessKeyId"


@each_target
def test_wrong_secret_is_refused(signed: dict[Case, str], case: Case) -> None:
    url = _good(signed, case)
    akid, secret, token = _keys(case.sts)
    wrong = {akid: Credential(secret + "x", token)}
    assert _denied(url, credentials=wrong).code == "SignatureDoesNotMatch"


@each_v4_target
def test_v4_region_and_date_are_checked(signed: dict[Case, str], case: Case) -> None:
    url = _good(signed, case)
    # The endpoint's region differs from the signed one.
    assert _denied(url, region="cn-beijing").code == "AccessDenied"
    assert _denied(url, region=None).code == "AccessDenied"
    # The signed region edited to the endpoint's: the signature no longer matches.
    moved = _edit(url, "x-oss-credential", lambda v: v.replace(REGION, "cn-beijing"))
    assert _denied(moved, region="cn-beijing").code == "SignatureDoesNotMatch"
    # The date-time a second later, or the credential's date a day earlier.
    later = _edit(url, "x-oss-date", lambda v: v[:-3] + f"{(int(v[-3:-1]) + 1) % 60:02d}Z")
    assert _denied(later).code == "SignatureDoesNotMatch"
    stamp = dict(p.split("=", 1) for p in url.partition("?")[2].split("&"))["x-oss-date"]
    day = datetime.datetime.strptime(stamp[:8], "%Y%m%d") - datetime.timedelta(days=1)
    earlier = _edit(url, "x-oss-credential", lambda v: v.replace(stamp[:8], day.strftime("%Y%m%d")))
    assert _denied(earlier).code == "AccessDenied"


@pytest.mark.parametrize(
    ("name", "value"),
    [("versionId", "another-version"), ("response-content-disposition", "attachment"), ("acl", "")],
)
@pytest.mark.parametrize("case", PLAIN, ids=lambda case: case.id)
def test_added_sub_resource_is_refused(
    signed: dict[Case, str], case: Case, name: str, value: str
) -> None:
    url = _good(signed, case)
    assert _denied(_add(url, name, value)).code == "SignatureDoesNotMatch"


@pytest.mark.parametrize("name", list(PARAMS))
@each_target
def test_removed_or_edited_sub_resource_is_refused(
    signed: dict[Case, str], case: Case, name: str
) -> None:
    url = _good(signed, case)
    assert _denied(_edit(url, name, lambda v: None)).code == "SignatureDoesNotMatch"
    assert _denied(_edit(url, name, lambda v: v + "x")).code == "SignatureDoesNotMatch"


@each_target
def test_security_token_is_checked(signed: dict[Case, str], case: Case) -> None:
    url = _good(signed, case)
    name = "x-oss-security-token" if case.version == "v4" else "security-token"
    if case.sts:
        assert _denied(_edit(url, name, lambda v: None)).code == "InvalidAccessKeyId"
        assert _denied(_edit(url, name, lambda v: v + "x")).code == "InvalidAccessKeyId"
    else:
        assert _denied(_add(url, name, STS_TOKEN)).code == "InvalidAccessKeyId"


@each_target
def test_expired_url_is_refused(signed: dict[Case, str], case: Case) -> None:
    url = _good(signed, case)
    now = time.time()
    check(url, now=now + case.expires - 60)
    assert _denied(url, now=now + case.expires + 60).message == "Request has expired."


@each_v4_target
def test_v4_date_in_the_future_is_refused(signed: dict[Case, str], case: Case) -> None:
    url = _good(signed, case)
    assert _denied(url, now=time.time() - 3600).code == "RequestTimeTooSkewed"


@each_target
def test_signature_parameters_of_both_versions_are_refused(
    signed: dict[Case, str], case: Case
) -> None:
    url = _good(signed, case)
    extra = ("Signature", "abc") if case.version == "v4" else ("x-oss-signature", "abc")
    assert _denied(_add(url, *extra)).code == "AccessDenied"


@each_target
def test_repeated_parameter_is_refused(signed: dict[Case, str], case: Case) -> None:
    url = _good(signed, case)
    assert _denied(_add(url, "versionId", PARAMS["versionId"])).code == "InvalidArgument"


@pytest.mark.parametrize("missing", ["OSSAccessKeyId", "Expires", "Signature"])
def test_v1_url_missing_a_parameter_is_refused(signed: dict[Case, str], missing: str) -> None:
    url = signed[Case("oss2", "v1", False, "GET", AWKWARD_KEYS[0])]
    assert _denied(_edit(url, missing, lambda v: None)).code == "AccessDenied"


@pytest.mark.parametrize("missing", [*V4_PARAMS, "x-oss-signature"])
def test_v4_url_missing_a_parameter_is_refused(signed: dict[Case, str], missing: str) -> None:
    url = signed[Case("oss2", "v4", False, "GET", AWKWARD_KEYS[0])]
    assert _denied(_edit(url, missing, lambda v: None)).code == "AccessDenied"


def test_v4_lifetime_over_seven_days_is_refused() -> None:
    case = Case("oss2", "v4", False, "GET", "a.bin", expires=7 * 24 * 3600)
    url = _sign_oss2(case)
    check(url)
    longer = _sign_oss2(Case("oss2", "v4", False, "GET", "a.bin", expires=7 * 24 * 3600 + 1))
    assert "x-oss-expires is not" in _denied(longer).message


def test_unsigned_url_is_refused() -> None:
    url = f"https://{BUCKET}.oss-{REGION}.aliyuncs.com/plain.mar"
    assert _denied(url).code == "AccessDenied"
    assert _denied(url + "?versionId=v1").code == "AccessDenied"


def test_authorization_header_is_not_taken_for_a_signed_url(signed: dict[Case, str]) -> None:
    url = signed[Case("oss2", "v1", False, "GET", AWKWARD_KEYS[0])]
    bucket, key, query = _parts(url)
    with pytest.raises(Denied):
        verify(
            "GET",
            bucket,
            key,
            query,
            credentials=CREDENTIALS,
            region=REGION,
            headers={"Authorization": "OSS a:b"},
        )


def test_v1_signs_oss_headers_and_content_type(signed: dict[Case, str]) -> None:
    url = signed[Case("oss2", "v1", False, "GET", AWKWARD_KEYS[0])]
    bucket, key, query = _parts(url)
    for headers in ({"x-oss-meta-a": "1"}, {"Content-Type": "text/plain"}):
        with pytest.raises(Denied):
            verify(
                "GET", bucket, key, query, credentials=CREDENTIALS, region=REGION, headers=headers
            )
    # Headers that are not signed do not matter.
    verify(
        "GET",
        bucket,
        key,
        query,
        credentials=CREDENTIALS,
        region=REGION,
        headers={"Range": "bytes=0-1"},
    )
