"""The admin token settings: given inline or in a file, exactly one, strong enough, and a file
other users cannot read. No message ever holds the token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shim._errors import ConfigError
from shim.config import settings_from_mapping

TOKEN = "0123456789abcdef-admin"


def _settings(raw: dict[str, Any]) -> Any:
    return settings_from_mapping(raw, env={})


def _token_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_no_token_by_default() -> None:
    assert _settings({}).admin_token is None


def test_an_inline_token_is_kept_secret() -> None:
    settings = _settings({"admin_token": TOKEN})
    assert settings.admin_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_a_token_file_is_read_without_its_newline(tmp_path: Path, mode: int) -> None:
    path = _token_file(tmp_path, TOKEN + "\n", mode)
    settings = _settings({"admin_token_file": str(path)})
    assert settings.admin_token.get_secret_value() == TOKEN
    assert settings.admin_token_file == path  # kept: a reload watches it


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o606])
def test_a_world_readable_token_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = _token_file(tmp_path, TOKEN, mode)
    with pytest.raises(ConfigError) as info:
        _settings({"admin_token_file": str(path)})
    message = str(info.value)
    assert message.startswith(f"admin_token_file {path} is readable by every user (mode {mode:o})")
    assert "chmod o-rwx" in message and TOKEN not in message


def test_a_missing_token_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"admin_token_file .*/absent: cannot read it: No such"):
        _settings({"admin_token_file": str(tmp_path / "absent")})


@pytest.mark.parametrize("weak", ["short", "has a space in it here", "", "tab\tinside-0123456789"])
def test_a_weak_token_is_refused_without_repeating_it(tmp_path: Path, weak: str) -> None:
    for raw in ({"admin_token": weak}, {"admin_token_file": str(_token_file(tmp_path, weak))}):
        with pytest.raises(ConfigError) as info:
            _settings(raw)
        # An empty file is said to be empty; every other weak token is said to be weak.
        expected = "is empty" if weak == "" and "admin_token_file" in raw else "at least 16"
        assert expected in str(info.value)
        assert weak == "" or weak not in str(info.value)


def test_token_and_token_file_exclude_each_other(tmp_path: Path) -> None:
    path = _token_file(tmp_path, TOKEN)
    with pytest.raises(ConfigError, match="give at most one of admin_token and admin_token_file"):
        _settings({"admin_token": TOKEN, "admin_token_file": str(path)})


def test_commands_that_need_no_secret_leave_the_file_unread(tmp_path: Path) -> None:
    path = _token_file(tmp_path, TOKEN, 0o644)  # refused by shim run, not read here
    settings = settings_from_mapping({"admin_token_file": str(path)}, env={}, credentials=False)
    assert (settings.admin_token, settings.admin_token_file) == (None, path)


def test_an_admin_port_on_every_address_is_allowed_without_a_token() -> None:
    """Probes and Prometheus read it; without a token nothing on it changes state."""
    assert _settings({"admin": "0.0.0.0:8791"}).admin_token is None
