"""The standalone service: clients with no proxy settings ask for http://SHIM/ALIAS/KEY."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.http import direct
from tests.support.procs import free_port
from tests.support.servers import S3Server, put_object, s3_client
from tests.support.shim_process import s3_bucket_config, start_shim

pytestmark = pytest.mark.slow


def test_alias_paths_are_signed_cached_and_unknown_aliases_refused(
    tmp_path: Path, s3rver: S3Server
) -> None:
    body = os.urandom(250_000)
    put_object(s3_client(s3rver), "reverse-bucket", "dir/model v1+.mar", body)
    port = free_port()
    config = {
        "reverse": f"127.0.0.1:{port}",
        "buckets": [{**s3_bucket_config("reverse-bucket", s3rver.endpoint), "alias": "models"}],
    }
    with start_shim(tmp_path, config) as shim:
        url = f"http://127.0.0.1:{port}/models/{quote('dir/model v1+.mar')}"
        first, second = direct(url), direct(url)
        assert (first.status, first.headers["X-Shim-Cache"], first.body) == (200, "MISS", body)
        assert (second.status, second.headers["X-Shim-Cache"], second.body) == (200, "HIT", body)
        unknown = direct(f"http://127.0.0.1:{port}/reverse-bucket/dir/x.mar")
        assert unknown.status == 404
        # The aliases are not listed to whoever asks.
        assert b"models" not in unknown.body
        upload = direct(f"http://127.0.0.1:{port}/models/new.mar", method="PUT")
        assert (upload.status, upload.headers["X-Shim-Error"]) == (405, "method")
        assert upload.headers["Allow"] == "GET, HEAD"
        missing = direct(f"http://127.0.0.1:{port}/models/absent.mar")
        assert missing.status == 404
        assert b"NoSuchKey" in missing.body
        assert shim.metrics()["shim_origin_fetches_total"] == 2
