"""Coverage-guided fuzz target for request recognition and decision (atheris / libFuzzer).

    make fuzz                                  # 200 000 cases
    python -m fuzz.fuzz_decide -runs=N [CORPUS_DIR]

Each input becomes a request as a hostile client could send it (any target bytes, any Host
header, any listener and method). The properties, which abort the run when broken:
- ``decide`` never raises;
- it serves only GET and HEAD without a body, and only keys without dot segments or control
  characters, of at most 1024 bytes;
- for every served key, the signed URL names that key and its task identity keeps the signed
  path byte for byte (what is cached is what is fetched);
- it passes through nothing to loopback or link-local hosts unless named;
- on the S3 API listener, every method but GET and HEAD is AccessDenied.
"""

from __future__ import annotations

import collections
import sys
from urllib.parse import unquote, urlsplit

import atheris

with atheris.instrument_imports():
    from shim.decide import PassThrough, RequestFacts, Serve, decide
    from shim.identity import filtered_params, identify
    from shim.providers.s3 import S3Signer
    from shim.s3api.errors import S3Error
    from tests.test_decide import make_settings

# The buckets of the decision table (tests/test_decide.py), with an allow-list to pass through.
SETTINGS = make_settings(
    passthrough=["example.com", "*.example.org:8080"],
    s3_api={"listen": "127.0.0.1:8792", "domain": "s3.example.com"},
)
SIGNERS = {bucket.bucket: S3Signer(bucket, 3600) for bucket in SETTINGS.buckets}
HOSTS = [
    "models.s3.us-east-1.amazonaws.com",
    "s3.us-east-1.amazonaws.com",
    "s3.amazonaws.com",
    "127.0.0.1",
    "models.example.com",
    "example.com",
    "a.example.org",
    "169.254.169.254",
    "localhost",
    "::1",
    "m.s3.example.com",
]
LISTENERS = ("regular", "transparent", "reverse", "s3")
METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "get")
INTERNAL = {"127.0.0.1", "169.254.169.254", "localhost", "::1"}
OUTCOMES: collections.Counter[str] = collections.Counter()


def check(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    listener = LISTENERS[fdp.ConsumeIntInRange(0, len(LISTENERS) - 1)]
    method = METHODS[fdp.ConsumeIntInRange(0, len(METHODS) - 1)]
    host = HOSTS[fdp.ConsumeIntInRange(0, len(HOSTS) - 1)]
    port = (80, 443, 9000, 8080)[fdp.ConsumeIntInRange(0, 3)]
    has_body = fdp.ConsumeBool()
    # Mostly well-formed, so that many inputs get as far as signing.
    host_header = fdp.ConsumeUnicodeNoSurrogates(40) if fdp.ConsumeIntInRange(0, 7) == 0 else None
    if listener == "s3" and host_header is None:
        # The S3 API reads the bucket from Host when it ends in its domain (virtual-hosted).
        host_header = f"{host}:{port}"
    prefix = ("", "models/", "local/", "m/")[fdp.ConsumeIntInRange(0, 3)]
    target = "/" + prefix + fdp.ConsumeUnicodeNoSurrogates(200)
    facts = RequestFacts(
        listener=listener,  # type: ignore[arg-type]
        method=method,
        scheme="https" if port == 443 else "http",
        host=host,
        port=port,
        target=target,
        host_header=host_header,
        has_body=has_body,
    )
    decision = decide(facts, SETTINGS)
    OUTCOMES[type(decision).__name__] += 1
    if OUTCOMES.total() % 50_000 == 0:  # libFuzzer exits without running atexit hooks
        print(f"fuzz_decide: {OUTCOMES.total()} cases, {dict(OUTCOMES)}", file=sys.stderr)
    if isinstance(decision, PassThrough):
        assert host not in INTERNAL, facts
    if listener == "s3" and method not in ("GET", "HEAD"):
        assert isinstance(decision, S3Error) and decision.code == "AccessDenied", facts
    if not isinstance(decision, Serve):
        return
    key = decision.ref.key
    assert method in ("GET", "HEAD") and not has_body, facts
    assert not any(segment in (".", "..") for segment in key.split("/")), facts
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in key), facts
    assert len(key.encode()) <= 1024, facts
    signed = SIGNERS[decision.ref.bucket.bucket].sign(decision.ref, method)
    parts = urlsplit(signed)
    bucket = decision.ref.bucket.bucket
    path = unquote(parts.path)
    wire = (
        path.removeprefix("/")
        if parts.netloc.startswith(f"{bucket}.")
        else path.removeprefix(f"/{bucket}/")
    )
    assert wire == key, (facts, signed)
    identity = identify(signed, filtered_params("s3"))
    assert urlsplit(identity.url).path == parts.path, (facts, signed, identity.url)


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
