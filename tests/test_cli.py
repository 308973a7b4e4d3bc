"""The ``shim`` command: task-id output, configuration errors of ``run``, busy ports."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from shim.cli import build_parser, main
from shim.identity import filtered_params, identify
from shim.taskid import go_task_id, rust_task_id
from tests.support.procs import free_port
from tests.support.servers import REPO_ROOT, put_object, s3_client, start_s3rver

URL = (
    "https://models.s3.eu-west-1.amazonaws.com/dir/model.bin?versionId=v1"
    "&X-Amz-Signature=deadbeef&X-Amz-Date=20240101T000000Z"
)
HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


@pytest.fixture(autouse=True)
def _no_shim_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHIM_CONFIG", raising=False)
    monkeypatch.delenv("DRAGONFLY_ENDPOINT_CONFIG", raising=False)


def _printed_ids(out: str) -> tuple[str, str, str]:
    rust_line, rust_0_2_line, go_line = out.strip().splitlines()
    assert rust_line.startswith("rust dfdaemon (dragonfly-client 1.5)")
    assert rust_0_2_line.startswith("rust dfdaemon (dragonfly-client 0.2.28)")
    assert go_line.startswith("go dfdaemon")
    (rust,) = HEX64.findall(rust_line)
    (rust_0_2,) = HEX64.findall(rust_0_2_line)
    (go,) = HEX64.findall(go_line)
    return rust, rust_0_2, go


def test_task_id_by_default_filters_what_shim_sends(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["task-id", URL]) == 0
    captured = capsys.readouterr()
    s3 = filtered_params("s3")
    assert _printed_ids(captured.out) == (
        rust_task_id(URL, filtered=s3),
        rust_task_id(URL, filtered=s3, client="0.2.28"),
        go_task_id(URL, filtered=s3),
    )
    assert captured.err == ""
    # Whatever the signature, one ID.
    resigned = URL.replace("deadbeef", "cafe").replace("20240101", "20250101")
    assert main(["task-id", resigned]) == 0
    assert _printed_ids(capsys.readouterr().out) == _printed_ids(captured.out)


def test_task_id_tag_names_another_task(capsys: pytest.CaptureFixture[str]) -> None:
    tag = ';etag="0123456789abcdef0123456789abcdef"'
    assert main(["task-id", URL, "--tag", tag]) == 0
    s3 = filtered_params("s3")
    assert _printed_ids(capsys.readouterr().out) == (
        rust_task_id(URL, filtered=s3, tag=tag),
        rust_task_id(URL, filtered=s3, tag=tag, client="0.2.28"),
        go_task_id(URL, filtered=s3, tag=tag),
    )
    assert rust_task_id(URL, filtered=s3, tag=tag) != rust_task_id(URL, filtered=s3)


def test_task_id_filter_drops_the_named_params(capsys: pytest.CaptureFixture[str]) -> None:
    filtered = ["X-Amz-Signature", "X-Amz-Date"]
    assert main(["task-id", URL, "--filter", ",".join(filtered)]) == 0
    rust, _, go = _printed_ids(capsys.readouterr().out)
    assert rust == rust_task_id(URL, filtered=filtered)
    assert go == go_task_id(URL, filtered=filtered)
    assert rust == rust_task_id(
        "https://models.s3.eu-west-1.amazonaws.com/dir/model.bin?versionId=v1", filtered=["x"]
    )
    assert main(["task-id", URL, "--filter", ""]) == 0
    unfiltered, _, _ = _printed_ids(capsys.readouterr().out)
    assert unfiltered == rust_task_id(URL) != rust


@pytest.mark.parametrize("url", ["not a url", "http://[::1"])
def test_task_id_of_an_unparsable_url_is_one_message(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["task-id", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("shim: ")


def test_run_with_broken_config_returns_2_and_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("buckets:\n  - provider: s3\n    bucket: models\n    regoin: x\n")
    assert main(["run", "--config", str(broken)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"shim: {broken}: ")
    assert "buckets[0].regoin" in lines[0]


def test_run_with_missing_config_returns_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yaml"
    assert main(["run", "--config", str(missing)]) == 2
    assert "cannot read the config file" in capsys.readouterr().err


def test_run_with_broken_shim_config_env_returns_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("presign_expires: 1\n")
    monkeypatch.setenv("SHIM_CONFIG", str(broken))
    assert main(["run"]) == 2
    assert "presign_expires" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--listen", "--admin"])
def test_run_with_bad_listen_flag_returns_2_naming_it(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", flag, "localhost"]) == 2
    err = capsys.readouterr().err
    assert f"{flag.removeprefix('--')}: " in err
    assert "HOST:PORT" in err


@pytest.mark.parametrize("argv", [[], ["bogus"], ["task-id"]])
def test_bad_usage_exits_with_argparse_status_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_parser_knows_run_and_task_id() -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "--config", "x.yaml", "--listen", "0.0.0.0:1"])
    assert (args.command, args.config, args.listen, args.admin) == (
        "run",
        Path("x.yaml"),
        "0.0.0.0:1",
        None,
    )
    assert parser.parse_args(["task-id", "http://h/"]).filter is None  # the S3 signature parameters


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("listener", ["listen", "admin"])
def test_run_on_a_busy_port_says_so_in_one_line(
    listener: str, busy_port: int, tmp_path: Path
) -> None:
    ports = {"listen": free_port(), "admin": free_port(), listener: busy_port}
    config = tmp_path / "shim.yaml"
    config.write_text(
        yaml.safe_dump({"confdir": str(tmp_path / "conf"), "cache": {"dir": str(tmp_path / "c")}})
    )
    result = subprocess.run(
        [sys.executable, "-m", "shim", "run", "--config", str(config)]
        + [f"--{name}=127.0.0.1:{port}" for name, port in ports.items()],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if f"127.0.0.1:{busy_port}" in line]
    assert "address already in use" in line.lower()
    assert "shim ready" not in output


# -- shim sign ------------------------------------------------------------------------------


def _sign_config(tmp_path: Path, endpoint: str, **bucket: object) -> Path:
    config = tmp_path / "shim.yaml"
    raw = {
        "buckets": [
            {
                "provider": "s3",
                "bucket": "models",
                "endpoint": endpoint,
                "credentials": {
                    "source": "static",
                    "access_key_id": "S3RVER",
                    "secret_access_key": "S3RVER",
                },
                **bucket,
            }
        ],
        "dfdaemon": {"url": "http://127.0.0.1:4001", "tag": "t1"},
    }
    config.write_text(yaml.safe_dump(raw))
    return config


def _field(out: str, name: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith(f"{name}:")]
    return line.partition(":")[2].strip()


@pytest.mark.origin
def test_sign_prints_a_url_the_strict_store_serves_and_its_task_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with start_s3rver(tmp_path / "s3") as s3:
        put_object(s3_client(s3), "models", "a b+c.mar", b"model bytes")
        config = _sign_config(tmp_path, s3.endpoint)
        url = f"{s3.endpoint}/models/a%20b%2Bc.mar?X-Amz-Signature=stale"

        assert main(["sign", "--config", str(config), url]) == 0
        out = capsys.readouterr().out
        assert _field(out, "provider") == "s3"
        assert _field(out, "key") == "a b+c.mar"
        redacted = _field(out, "signed URL")
        assert "X-Amz-Signature=REDACTED" in redacted
        assert "X-Amz-Credential=REDACTED" in redacted

        assert main(["sign", "--config", str(config), "--show-signature", url]) == 0
        shown = capsys.readouterr().out
        signed = _field(shown, "signed URL")
        assert "REDACTED" not in signed
        with urllib.request.urlopen(signed, timeout=10) as response:
            assert response.read() == b"model bytes"
        identity = identify(signed, filtered_params("s3"))
        assert _field(shown, "cache key") == identity.task_id
        task_line = next(line for line in shown.splitlines() if line.startswith("dfdaemon"))
        # The dfdaemon's task is tagged with the object's current version (its ETag, as the
        # origin sends it: s3rver's is the quoted MD5).
        etag = f'"{hashlib.md5(b"model bytes").hexdigest()}"'
        assert task_line.endswith(rust_task_id(identity.url, tag=f"t1;etag={etag}"))
        # Signed again later: another signature, the same identity.
        assert _field(shown, "identity") == _field(out, "identity")
        # An object the origin does not have has no version, hence no task ID yet.
        assert main(["sign", "--config", str(config), f"{s3.endpoint}/models/absent.mar"]) == 0
        assert "dfdaemon task ID: unknown" in capsys.readouterr().out


def test_sign_of_a_url_of_no_bucket_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _sign_config(tmp_path, "http://127.0.0.1:9")
    assert main(["sign", "--config", str(config), "https://example.com/models/k"]) == 1
    assert "names no object of a configured bucket" in capsys.readouterr().err


def test_sign_of_a_bad_key_is_the_request_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _sign_config(tmp_path, "http://127.0.0.1:9")
    assert main(["sign", "--config", str(config), "http://127.0.0.1:9/models/a/../b"]) == 1
    assert "'..'" in capsys.readouterr().err


def test_sign_without_credentials_names_the_bucket_and_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "shim.yaml"
    config.write_text(yaml.safe_dump({"buckets": [{"provider": "obs", "bucket": "models"}]}))
    url = "https://models.obs.cn-north-4.myhuaweicloud.com/k"
    assert main(["sign", "--config", str(config), url]) == 2
    err = capsys.readouterr().err
    assert "buckets[0].credentials.access_key_id_env" in err
    assert "'OBS_ACCESS_KEY_ID' is not set" in err
