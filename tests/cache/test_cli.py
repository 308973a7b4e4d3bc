"""``shim cache ls|rm|stats|verify`` on the cache directory of a config, as users run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shim.cache.store import CacheStore
from shim.cli import main
from tests.cache.entries import commit_entry

KEY_A = "a" * 64
KEY_B = "b" * 64
ENDPOINT = "http://127.0.0.1:9000"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose cache holds two objects of bucket 'models'; A served once."""
    store = CacheStore(tmp_path / "cache", 1 << 20)
    store.open()
    commit_entry(store, KEY_A, b"a" * 2048, url=f"{ENDPOINT}/models/a.bin")
    commit_entry(store, KEY_B, b"b" * 10, url=f"{ENDPOINT}/models/b.bin")
    store.record_hit(KEY_A)
    store.save_usage()
    credentials = {"source": "static", "access_key_id": "a", "secret_access_key": "b"}
    bucket = {"provider": "s3", "bucket": "models", "endpoint": ENDPOINT}
    path = tmp_path / "shim.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "cache": {"dir": str(tmp_path / "cache"), "high_watermark": "99%"},
                "buckets": [{**bucket, "credentials": credentials}],
            }
        )
    )
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ls_json_is_one_array_of_the_entries(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "cache", "ls", "--config", str(config), "--json", "--sort", "size")
    assert code == 0
    listed = json.loads(out)
    assert [(e["key"], e["url"], e["size"], e["hits"]) for e in listed] == [
        (KEY_A, f"{ENDPOINT}/models/a.bin", 2048, 1),
        (KEY_B, f"{ENDPOINT}/models/b.bin", 10, 0),
    ]
    assert listed[0]["bucket"] == "models" and listed[0]["object"] == "a.bin"
    assert listed[0]["last_used"] >= listed[1]["last_used"] > listed[1]["stored"]
    # Usage not written yet (shim writes it every few seconds): no hits, no time of use.
    (config.parent / "cache" / "usage.json").unlink()
    listed = json.loads(_run(capsys, "cache", "ls", "--config", str(config), "--json")[1])
    assert [(e["hits"], e["last_used"]) for e in listed] == [(0, None), (0, None)]


def test_ls_prints_a_table(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "cache", "ls", "--config", str(config), "--sort", "key")
    header, first, second = out.splitlines()
    assert code == 0
    assert header.split()[:4] == ["KEY", "BUCKET", "OBJECT", "SIZE"]
    assert first.split()[:5] == [KEY_A[:16], "models", "a.bin", "2.0", "KiB"]
    assert first.split()[5:7] == ["2023-11-14", "22:13:20"]  # stored (UTC)
    assert first.split()[-1] == "1" and second.split()[-1] == "0"


def test_rm_by_prefix_or_url_and_an_unknown_one(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "cache", "rm", "--config", str(config), KEY_A[:12])
    assert code == 0 and out == f"removed {KEY_A} {ENDPOINT}/models/a.bin\n"
    code, out, _ = _run(capsys, "cache", "rm", "--config", str(config), f"{ENDPOINT}/models/b.bin")
    assert code == 0 and KEY_B in out
    code, _, err = _run(capsys, "cache", "rm", "--config", str(config), KEY_A)
    assert code == 1 and err == f"shim: no cache entry for {KEY_A}\n"
    assert json.loads(_run(capsys, "cache", "ls", "--config", str(config), "--json")[1]) == []


def test_verify_names_a_bad_entry_and_exits_1(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = config.parent / "cache" / "objects" / "bb" / KEY_B
    data.write_bytes(b"B" + data.read_bytes()[1:])
    code, out, _ = _run(capsys, "cache", "verify", "--config", str(config), "--dry-run")
    assert code == 1
    assert f"bad: {KEY_B} {ENDPOINT}/models/b.bin" in out and "kept (--dry-run)" in out
    assert out.splitlines()[-1].startswith("2 entries: 1 ok, 1 bad")
    code, out, _ = _run(capsys, "cache", "verify", "--config", str(config))
    assert code == 1 and "removed" in out and not data.exists()
    code, out, _ = _run(capsys, "cache", "verify", "--config", str(config))
    assert code == 0 and out.startswith("1 entries: 1 ok, 0 bad")


def test_stats_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "cache", "stats", "--config", str(config), "--json")
    stats = json.loads(out)
    assert code == 0
    assert (stats["entries"], stats["bytes"], stats["hits"]) == (2, 2058, 1)
    assert (stats["high_watermark"], stats["low_watermark"]) == (0.99, 0.8)
    assert stats["keep_free"] >= stats["disk_size"] // 100
    code, out, _ = _run(capsys, "cache", "stats", "--config", str(config))
    assert "entries:    2" in out and "evicts past 99% used, down to 80%" in out


def test_a_broken_config_is_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "shim.yaml"
    path.write_text(yaml.safe_dump({"cache": {"high_watermark": 0.5, "low_watermark": 0.7}}))
    code, out, err = _run(capsys, "cache", "ls", "--config", str(path))
    assert (code, out) == (2, "")
    assert err.startswith("shim: ") and "low_watermark < high_watermark" in err


def test_a_cache_that_cannot_be_read_is_an_error_not_an_empty_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cache").write_text("a file where the cache should be")
    path = tmp_path / "shim.yaml"
    path.write_text(yaml.safe_dump({"cache": {"dir": str(tmp_path / "cache")}}))
    for command in ("ls", "verify", "stats"):
        code, out, err = _run(capsys, "cache", command, "--config", str(path))
        assert (code, out) == (2, "")
        assert err == f"shim: cannot read {tmp_path / 'cache' / 'objects'}: Not a directory\n"


# And shim's other commands that read a config: main says it for every one.
@pytest.mark.parametrize(
    "command", [["cache", "ls"], ["cache", "stats"], ["ca", "--out", "ca-out"], ["env"]]
)
def test_a_broken_config_is_one_line_and_exit_2(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("cache: [\n")
    assert main([*command, "--config", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"shim: {broken}: not valid YAML") and err.count("\n") == 1
