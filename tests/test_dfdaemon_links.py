"""The link directory: prepared safely, links taken only when whole, never left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shim._errors import ConfigError
from shim.dfdaemon_links import LinkDir, link_headers, was_complete


def test_the_headers_ask_for_a_forced_hard_link_at_the_path() -> None:
    assert link_headers(Path("/l/shim-link-1")) == {
        "X-Dragonfly-Output-Path": "/l/shim-link-1",
        "X-Dragonfly-Force-Hard-Link": "true",
    }


@pytest.mark.parametrize(
    ("headers", "complete"),
    [
        ({"x-dragonfly-task-download-finished": "true"}, True),
        ({"X-Dragonfly-Task-Download-Finished": " True "}, True),
        ({"x-dragonfly-task-download-finished": "false"}, False),
        ({}, False),
    ],
)
def test_a_local_hit_is_what_the_dfdaemon_says(headers: dict[str, str], complete: bool) -> None:
    assert was_complete(headers) is complete


def test_prepare_creates_a_private_directory(tmp_path: Path) -> None:
    links = LinkDir.prepare(tmp_path / "a" / "links")
    assert links.path.is_dir() and links.path.stat().st_mode & 0o777 == 0o700
    first, second = links.new_path(), links.new_path()
    assert first != second and first.parent == links.path
    assert first.name.startswith("shim-link-")


def test_prepare_removes_our_leftovers_and_nothing_else(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    (tmp_path / "shim-link-0123").write_bytes(b"left by a crash")
    (tmp_path / "model.bin").write_bytes(b"not ours")
    LinkDir.prepare(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["model.bin"]


@pytest.mark.parametrize("mode", [0o701, 0o704, 0o777])
def test_prepare_refuses_a_directory_open_to_others(tmp_path: Path, mode: int) -> None:
    tmp_path.chmod(mode)
    with pytest.raises(ConfigError, match="open to other users"):
        LinkDir.prepare(tmp_path)


def test_prepare_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigError, match="link_dir"):
        LinkDir.prepare(tmp_path / "file")


def test_take_opens_a_whole_file_and_unlinks_it(tmp_path: Path) -> None:
    links = LinkDir.prepare(tmp_path / "links")
    path = links.new_path()
    path.write_bytes(b"x" * 100)
    fd = links.take(path, 100)
    assert fd is not None and not path.exists()
    try:
        assert os.pread(fd, 200, 0) == b"x" * 100
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [99, 101, None])
def test_take_refuses_a_file_of_another_size(tmp_path: Path, size: int | None) -> None:
    links = LinkDir.prepare(tmp_path / "links")
    path = links.new_path()
    path.write_bytes(b"x" * 100)
    assert links.take(path, size) is None
    assert not path.exists()


def test_take_follows_no_symlink_and_finds_nothing_missing(tmp_path: Path) -> None:
    links = LinkDir.prepare(tmp_path / "links")
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x" * 10)
    path = links.new_path()
    path.symlink_to(target)
    assert links.take(path, 10) is None
    assert not path.is_symlink() and target.exists()
    assert links.take(links.new_path(), 10) is None


def test_prepare_names_a_leftover_it_cannot_remove(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    (tmp_path / "shim-link-a-directory").mkdir()  # not a link of ours: unlink() refuses it
    with pytest.raises(ConfigError, match="shim-link-a-directory"):
        LinkDir.prepare(tmp_path)
