"""decide(): every rule of what a request may do, as a table; and the properties that make the
cache key, the task ID, the signed URL and the request on the wire one and the same object."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.config import Settings, settings_from_mapping
from shim.decide import (
    Intercept,
    PassThrough,
    Refuse,
    RequestFacts,
    Serve,
    Tunnel,
    decide,
    decide_tunnel,
    passthrough_allows,
    refuse_destination,
)
from shim.identity import filtered_params, identify
from shim.providers.s3 import S3Signer
from shim.s3api.errors import S3Error
from shim.s3api.request import BucketRead

AWS_HOST = "models.s3.us-east-1.amazonaws.com"
PATH_HOST = "s3.us-east-1.amazonaws.com"
CREDENTIALS = {"source": "static", "access_key_id": "AKIDTEST", "secret_access_key": "s3cr3t"}


def make_settings(**extra: Any) -> Settings:
    raw = {
        "buckets": [
            {"provider": "s3", "bucket": "models", "credentials": CREDENTIALS},
            {
                "provider": "s3",
                "bucket": "local",
                "endpoint": "http://127.0.0.1:9000",
                "alias": "m",
                "hosts": ["models.example.com"],
                "credentials": CREDENTIALS,
            },
        ],
        **extra,
    }
    return settings_from_mapping(raw, env={})


DEFAULT = make_settings()


def facts(
    target: str,
    *,
    method: str = "GET",
    host: str = AWS_HOST,
    port: int = 80,
    scheme: str = "http",
    listener: str = "regular",
    host_header: str | None = None,
    has_body: bool = False,
) -> RequestFacts:
    return RequestFacts(
        listener=listener,  # type: ignore[arg-type]
        method=method,
        scheme=scheme,
        host=host,
        port=port,
        target=target,
        host_header=host_header,
        has_body=has_body,
    )


def served_key(decision: object) -> str:
    assert isinstance(decision, Serve), decision
    return decision.ref.key


# -- the table ------------------------------------------------------------------------------

SERVED = [
    ("virtual-hosted", facts("/dir/model.mar"), "dir/model.mar"),
    ("https in a tunnel", facts("/a.mar", scheme="https", port=443), "a.mar"),
    ("path-style", facts("/models/dir/a.mar", host=PATH_HOST), "dir/a.mar"),
    ("custom endpoint", facts("/local/x.bin", host="127.0.0.1", port=9000), "x.bin"),
    ("own host", facts("/x/y.bin", host="models.example.com"), "x/y.bin"),
    ("HEAD", facts("/a.mar", method="HEAD"), "a.mar"),
    ("dots inside a name", facts("/a..b/c.d./..e"), "a..b/c.d./..e"),
    ("percent-decoded once", facts("/a%252e%252e/b"), "a%2e%2e/b"),
    ("matching Host header", facts("/a.mar", host_header=AWS_HOST), "a.mar"),
    ("Host header with port", facts("/a.mar", host_header=f"{AWS_HOST}:80"), "a.mar"),
    ("stale signature dropped", facts("/a.mar?X-Amz-Signature=abc"), "a.mar"),
    ("part number", facts("/a.mar?partNumber=10000"), "a.mar"),
    ("reverse", facts("/m/dir/a.mar", listener="reverse", host="shim"), "dir/a.mar"),
    ("transparent", facts("/a.mar", listener="transparent", host_header="10.0.0.1"), "a.mar"),
]


@pytest.mark.parametrize(("case", "request_facts", "key"), SERVED, ids=[c[0] for c in SERVED])
def test_served(case: str, request_facts: RequestFacts, key: str) -> None:
    assert served_key(decide(request_facts, DEFAULT)) == key


REFUSED = [
    # dot segments, however spelt: the origin or a URL parser would read another key
    ("dot-dot", facts("/models/x/../../prod/resnet.mar"), 400, "request"),
    ("leading dot-dot", facts("/../other/secret.txt"), 400, "request"),
    ("dot", facts("/a/./b"), 400, "request"),
    ("encoded dot-dot", facts("/a/%2e%2e/b"), 400, "request"),
    ("mixed encoding", facts("/a/.%2E/b"), 400, "request"),
    ("upper encoding", facts("/a/%2E./b"), 400, "request"),
    ("encoded slash dot-dot", facts("/a%2f..%2fb"), 400, "request"),
    ("trailing dot-dot", facts("/a/.."), 400, "request"),
    ("path-style dot-dot", facts("/models/../local/x", host=PATH_HOST), 400, "request"),
    ("reverse dot-dot", facts("/m/a/../b", listener="reverse", host="shim"), 400, "request"),
    ("reverse encoded", facts("/m/%2e%2e/b", listener="reverse", host="shim"), 400, "request"),
    ("fragment", facts("/a.mar#x"), 400, "request"),
    ("no key", facts("/"), 400, "request"),
    ("control character", facts("/a%0d%0ab"), 400, "request"),
    ("DEL", facts("/a%7fb"), 400, "request"),
    ("invalid UTF-8", facts("/a%ff"), 400, "request"),
    ("key too long", facts("/" + "k" * 1025), 400, "request"),
    ("unknown parameter", facts("/a.mar?acl"), 400, "request"),
    ("repeated parameter", facts("/a?versionId=1&versionId=2"), 400, "request"),
    ("part number zero", facts("/a?partNumber=0"), 400, "request"),
    ("part number too big", facts("/a?partNumber=10001"), 400, "request"),
    ("part number not a number", facts("/a?partNumber=1e3"), 400, "request"),
    ("part number not ASCII", facts("/a?partNumber=%D9%A3"), 400, "request"),
    # writes and bodies
    ("PUT", facts("/a.mar", method="PUT", has_body=True), 403, "method"),
    ("POST", facts("/a.mar", method="POST"), 403, "method"),
    ("DELETE", facts("/a.mar", method="DELETE"), 403, "method"),
    ("GET with a body", facts("/a.mar", has_body=True), 400, "request"),
    ("reverse PUT", facts("/m/a", method="PUT", listener="reverse", host="s"), 405, "method"),
    (
        "reverse GET body",
        facts("/m/a", listener="reverse", host="s", has_body=True),
        400,
        "request",
    ),
    # where it goes
    ("other Host header", facts("/a.mar", host_header="169.254.169.254"), 400, "request"),
    ("Host header other port", facts("/a.mar", host_header=f"{AWS_HOST}:81"), 400, "request"),
    ("bare IPv6 Host header", facts("/a.mar", host_header="::1"), 400, "request"),
    ("other host", facts("/latest/meta-data/", host="169.254.169.254"), 403, "passthrough"),
    ("other bucket", facts("/other/a.mar", host=PATH_HOST), 403, "passthrough"),
    ("admin port", facts("/metrics", host="127.0.0.1", port=8791), 403, "passthrough"),
    ("unknown alias", facts("/nope/a", listener="reverse", host="shim"), 404, "request"),
]


@pytest.mark.parametrize(
    ("case", "request_facts", "status", "kind"), REFUSED, ids=[c[0] for c in REFUSED]
)
def test_refused(case: str, request_facts: RequestFacts, status: int, kind: str) -> None:
    decision = decide(request_facts, DEFAULT)
    assert isinstance(decision, Refuse), decision
    assert (decision.status, decision.kind) == (status, kind)


def test_reverse_405_names_the_allowed_methods_and_404_names_no_alias() -> None:
    refusal = decide(facts("/m/a", method="PUT", listener="reverse", host="s"), DEFAULT)
    assert isinstance(refusal, Refuse)
    assert dict(refusal.headers) == {"Allow": "GET, HEAD"}
    missing = decide(facts("/nope/a", listener="reverse", host="s"), DEFAULT)
    assert isinstance(missing, Refuse)
    assert "m" not in missing.message.split() and "local" not in missing.message


def test_the_s3_api_serves_objects_as_the_reverse_listener_and_refuses_in_s3_terms() -> None:
    s3 = make_settings(s3_api={"listen": "127.0.0.1:8792", "domain": "s3.local"})
    same = decide(facts("/m/dir/a%20b.mar", listener="reverse", host="shim"), s3)
    assert decide(facts("/m/dir/a%20b.mar", listener="s3", host="shim"), s3) == same
    vhost = facts("/dir/a%20b.mar", listener="s3", host="shim", host_header="m.s3.local:8792")
    assert decide(vhost, s3) == same
    for method, target in (("PUT", "/m/a"), ("DELETE", "/m/a"), ("POST", "/m?delete")):
        write = decide(facts(target, method=method, listener="s3", host="shim"), s3)
        assert isinstance(write, S3Error) and (write.status, write.code) == (403, "AccessDenied")
    listing = decide(facts("/m?list-type=2", listener="s3", host="shim"), s3)
    assert isinstance(listing, BucketRead) and listing.operation == "list"


# -- pass-through policy --------------------------------------------------------------------

POLICY = [
    # (policy, host, port, allowed)
    ("none", "example.com", 443, False),
    ("all", "example.com", 443, True),
    ("all", "127.0.0.1", 80, False),
    ("all", "127.9.9.9", 80, False),
    ("all", "localhost", 80, False),
    ("all", "LocalHost.", 80, False),
    ("all", "169.254.169.254", 80, False),
    ("all", "0.0.0.0", 80, False),
    ("all", "::1", 80, False),
    ("all", "::ffff:127.0.0.1", 80, False),
    ("all", "fe80::1", 80, False),
    (("example.com",), "example.com", 8443, True),
    (("example.com",), "EXAMPLE.COM", 80, True),
    (("example.com",), "other.com", 80, False),
    (("example.com",), "sub.example.com", 80, False),
    (("example.com:443",), "example.com", 443, True),
    (("example.com:443",), "example.com", 80, False),
    (("*.example.com",), "a.b.example.com", 80, True),
    (("*.example.com",), "example.com", 80, False),
    (("*.example.com",), "evilexample.com", 80, False),
    (("127.0.0.1:9000",), "127.0.0.1", 9000, True),
    (("127.0.0.1:9000",), "127.0.0.1", 9001, False),
    (("[::1]:9000",), "::1", 9000, True),
    (("169.254.169.254",), "169.254.169.254", 80, True),
]


@pytest.mark.parametrize(("policy", "host", "port", "allowed"), POLICY)
def test_passthrough_policy(policy: Any, host: str, port: int, allowed: bool) -> None:
    assert passthrough_allows(host, port, policy) is allowed


def test_allowed_host_passes_through_with_its_body() -> None:
    permissive = make_settings(passthrough=["example.com"])
    decision = decide(
        facts("/upload", method="POST", host="example.com", has_body=True), permissive
    )
    assert decision == PassThrough()


ADDR = ipaddress.ip_address


@pytest.mark.parametrize(
    ("policy", "host", "addresses", "refused"),
    [
        ("all", "example.com", [ADDR("93.184.216.34")], False),
        ("all", "rebind.example", [ADDR("93.184.216.34"), ADDR("127.0.0.1")], True),
        ("all", "meta.example", [ADDR("169.254.169.254")], True),
        ("all", "v6.example", [ADDR("::ffff:169.254.169.254")], True),
        (["internal.example:80"], "internal.example", [ADDR("127.0.0.1")], False),
        (["*.example"], "internal.example", [ADDR("127.0.0.1")], True),
        ("none", "example.com", [ADDR("93.184.216.34")], True),
    ],
)
def test_destination_gate_checks_resolved_addresses(
    policy: Any, host: str, addresses: list[Any], refused: bool
) -> None:
    refusal = refuse_destination(host, 80, addresses, make_settings(passthrough=policy))
    assert (refusal is not None) is refused


@pytest.mark.parametrize(
    ("host", "port", "policy", "expected"),
    [
        (AWS_HOST, 443, "none", Intercept()),
        (PATH_HOST, 443, "none", Intercept()),
        ("models.example.com", 443, "none", Intercept()),
        ("example.com", 443, "none", None),
        ("example.com", 443, ["example.com:443"], Tunnel()),
        ("169.254.169.254", 443, "all", None),
        (AWS_HOST, 8443, "none", None),
    ],
)
def test_tunnels_intercept_bucket_hosts_only(
    host: str, port: int, policy: Any, expected: object
) -> None:
    decision = decide_tunnel(host, port, make_settings(passthrough=policy))
    if expected is None:
        assert isinstance(decision, Refuse) and decision.status == 403
    else:
        assert decision == expected


# -- one canonical key, end to end ------------------------------------------------------------

SIGNERS = {bucket.bucket: S3Signer(bucket, 3600) for bucket in DEFAULT.buckets}

# Keys of any characters, including the ones each layer treats specially.
KEY_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("./%?#&=+ ;~\\@:$!'()*,[]{}^`|\"<>")),
        st.characters(codec="utf-8", exclude_categories=["Cs"]),
    ),
    min_size=1,
    max_size=40,
)


def wire_key(signed_url: str, bucket: str) -> str:
    """The key the origin is asked for: the signed URL's path, decoded as S3 decodes it."""
    parts = urlsplit(signed_url)
    path = unquote(parts.path)
    path_style = not parts.netloc.startswith(f"{bucket}.")
    return path.removeprefix(f"/{bucket}/") if path_style else path.removeprefix("/")


@settings(max_examples=400, deadline=None)
@given(key=KEY_TEXT, encode=st.booleans(), host=st.sampled_from([AWS_HOST, PATH_HOST, "local"]))
def test_accepted_key_is_the_key_signed_cached_and_fetched(
    key: str, encode: bool, host: str
) -> None:
    raw = quote(key, safe="/") if encode else key
    if host == "local":
        request = facts(f"/local/{raw}", host="127.0.0.1", port=9000)
    elif host == PATH_HOST:
        request = facts(f"/models/{raw}", host=PATH_HOST)
    else:
        request = facts(f"/{raw}")
    decision = decide(request, DEFAULT)
    if not isinstance(decision, Serve):
        return  # refused: nothing is fetched or cached
    ref = decision.ref
    signed = SIGNERS[ref.bucket.bucket].sign(ref, "GET")
    identity = identify(signed, filtered_params("s3"))
    # The origin is asked for the key decided on...
    assert wire_key(signed, ref.bucket.bucket) == ref.key
    # ...and the cache key and task ID come from that same URL, byte for byte.
    assert urlsplit(identity.url).path == urlsplit(signed).path
    assert urlsplit(identity.url).netloc == urlsplit(signed).netloc


@settings(max_examples=300, deadline=None)
@given(key=KEY_TEXT)
def test_reverse_and_proxy_name_the_same_object(key: str) -> None:
    raw = quote(key, safe="/")
    proxied = decide(facts(f"/local/{raw}", host="127.0.0.1", port=9000), DEFAULT)
    reverse = decide(facts(f"/m/{raw}", listener="reverse", host="shim"), DEFAULT)
    assert type(proxied) is type(reverse)
    if isinstance(proxied, Serve) and isinstance(reverse, Serve):
        assert proxied.ref.key == reverse.ref.key
        assert proxied.ref.bucket == reverse.ref.bucket


@settings(max_examples=500, deadline=None)
@given(
    target=st.text(max_size=60).map(lambda t: "/" + t),
    method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"]),
    listener=st.sampled_from(["regular", "transparent", "reverse"]),
    host=st.sampled_from([AWS_HOST, PATH_HOST, "127.0.0.1", "169.254.169.254", "example.com"]),
    has_body=st.booleans(),
)
def test_decide_never_raises_and_serves_only_reads_without_bodies(
    target: str, method: str, listener: str, host: str, has_body: bool
) -> None:
    request = facts(target, method=method, listener=listener, host=host, has_body=has_body)
    decision = decide(request, make_settings(passthrough="all"))
    if isinstance(decision, Serve):
        assert method in ("GET", "HEAD") and not has_body
        assert not any(s in (".", "..") for s in decision.ref.key.split("/"))
    if isinstance(decision, PassThrough):
        # Even under `all`, never to this node's own addresses or its metadata service.
        assert host not in ("127.0.0.1", "169.254.169.254")


# -- what a refusal tells the client, and where the policy reads ports and host names ---------


@pytest.mark.parametrize(
    ("case", "request_facts", "status", "kind"), REFUSED, ids=[c[0] for c in REFUSED]
)
def test_every_refusal_says_why(
    case: str, request_facts: RequestFacts, status: int, kind: str
) -> None:
    refusal = decide(request_facts, DEFAULT)
    assert isinstance(refusal, Refuse)
    assert isinstance(refusal.message, str) and len(refusal.message) > 10
    assert "None" not in refusal.message


def test_refusals_name_where_the_request_went_with_ipv6_bracketed() -> None:
    refusal = decide(facts("/x", host="fe80::1", port=8080), DEFAULT)
    assert isinstance(refusal, Refuse) and refusal.message.startswith("[fe80::1]:8080 is not ")
    tunnel = decide_tunnel("2001:db8::7", 443, DEFAULT)
    assert isinstance(tunnel, Refuse) and tunnel.message.startswith("[2001:db8::7]:443 is not ")
    named = decide(facts("/x", host="example.com", port=8080), DEFAULT)
    assert isinstance(named, Refuse) and named.message.startswith("example.com:8080 is not ")


def test_the_destination_gate_refuses_with_403_passthrough_naming_the_host() -> None:
    for policy, host, addresses in [
        ("none", "example.com", [ADDR("93.184.216.34")]),
        ("all", "rebind.example", [ADDR("127.0.0.1")]),
    ]:
        refusal = refuse_destination(host, 81, addresses, make_settings(passthrough=policy))
        assert refusal is not None
        assert (refusal.status, refusal.kind) == (403, "passthrough")
        assert refusal.message.startswith(f"{host}:81 ")


def test_a_port_in_the_passthrough_policy_is_checked_against_the_requests_port() -> None:
    policy = make_settings(passthrough=["example.com:8080"])
    assert decide(facts("/x", host="example.com", port=8080), policy) == PassThrough()
    assert isinstance(decide(facts("/x", host="example.com", port=80), policy), Refuse)


def test_the_reverse_listener_drops_a_stale_signature_as_the_proxy_does() -> None:
    stale = "/m/a.mar?X-Amz-Signature=abc&X-Amz-Credential=AKID%2Fx"
    assert served_key(decide(facts(stale, listener="reverse", host="shim"), DEFAULT)) == "a.mar"


@pytest.mark.parametrize(
    ("policy", "host", "port", "allowed"),
    [
        # one host however it is spelt: IPv6 in full or compressed, a trailing dot
        (("[0:0:0:0:0:0:0:1]:9000",), "::1", 9000, True),
        (("example.com",), "example.com.", 80, True),
        (("example.com.",), "example.com", 80, True),
        # one address is not every address
        (("10.0.0.1",), "10.0.0.2", 80, False),
        (("127.0.0.1:9000",), "127.0.0.2", 9000, False),
        # a bracketed loopback address is still loopback
        ("all", "[::1]", 80, False),
    ],
)
def test_passthrough_compares_canonical_hosts(
    policy: Any, host: str, port: int, allowed: bool
) -> None:
    assert passthrough_allows(host, port, policy) is allowed
