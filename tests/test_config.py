"""Settings: defaults, YAML and dragonfly-endpoint sources, validation messages, secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shim._errors import ConfigError
from shim.cache.disk import Watermarks
from shim.config import (
    DEFAULT_ADMIN,
    DEFAULT_LISTEN,
    Settings,
    dragonfly_endpoint_to_mapping,
    load_settings,
    preheat_manager,
    settings_from_mapping,
)

ACCESS_KEY = "AKIDEXAMPLEACCESS"
SECRET_KEY = "wJalrXUtnFEMI-very-secret"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLETOKEN"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def _bucket(**extra: Any) -> dict[str, Any]:
    return {"provider": "s3", "bucket": "models", **extra}


def _config_error(raw: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, env=env or {})
    return str(info.value)


# -- defaults and sources -------------------------------------------------------------------


def test_defaults_listen_on_loopback_8790_and_admin_8791() -> None:
    settings = load_settings(env={})
    assert settings.listen == DEFAULT_LISTEN == "127.0.0.1:8790"
    assert settings.admin == DEFAULT_ADMIN == "127.0.0.1:8791"
    assert settings.listen_address == ("127.0.0.1", 8790)
    assert settings.admin_address == ("127.0.0.1", 8791)
    assert settings.buckets == ()
    assert settings.filter == ()
    assert settings.headers == {}


def test_yaml_file_is_loaded(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "shim.yaml",
        """
listen: 0.0.0.0:9000
clients: [10.0.0.0/8]
presign_expires: 900
cache:
  dir: /var/cache/shim
  max_size: 1GiB
buckets:
  - provider: s3
    bucket: models
    region: eu-west-1
    endpoint: https://obs.example.com
    addressing_style: path
""",
    )
    settings = load_settings(path, env={})
    assert settings.listen_address == ("0.0.0.0", 9000)
    assert settings.presign_expires == 900
    assert settings.cache.dir == Path("/var/cache/shim")
    assert settings.cache.max_size == 1024**3
    (bucket,) = settings.buckets
    assert (bucket.bucket, bucket.region, bucket.endpoint, bucket.addressing_style) == (
        "models",
        "eu-west-1",
        "https://obs.example.com",
        "path",
    )


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path / "empty.yaml", ""), env={})
    assert settings.listen == DEFAULT_LISTEN


def test_shim_config_env_names_the_yaml_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "shim.yaml", "listen: 127.0.0.1:9100\n")
    settings = load_settings(env={"SHIM_CONFIG": str(path)})
    assert settings.listen_address == ("127.0.0.1", 9100)


def test_explicit_path_wins_over_shim_config_env(tmp_path: Path) -> None:
    explicit = _write(tmp_path / "a.yaml", "listen: 127.0.0.1:9101\n")
    from_env = _write(tmp_path / "b.yaml", "listen: 127.0.0.1:9102\n")
    settings = load_settings(explicit, env={"SHIM_CONFIG": str(from_env)})
    assert settings.listen_address == ("127.0.0.1", 9101)


def test_shim_config_wins_over_dragonfly_endpoint_config(tmp_path: Path) -> None:
    yaml_path = _write(tmp_path / "shim.yaml", "listen: 127.0.0.1:9103\n")
    json_path = _write(
        tmp_path / "config.json",
        json.dumps({"object_storage": {"type": "s3", "bucket_name": "other"}}),
    )
    settings = load_settings(
        env={"SHIM_CONFIG": str(yaml_path), "DRAGONFLY_ENDPOINT_CONFIG": str(json_path)}
    )
    assert settings.listen_address == ("127.0.0.1", 9103)
    assert settings.buckets == ()


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "shim.yaml", "listen: 127.0.0.1:9000\nadmin: 127.0.0.1:9001\n")
    settings = load_settings(path, env={}, overrides={"listen": "127.0.0.1:9999"})
    assert settings.listen == "127.0.0.1:9999"
    assert settings.admin == "127.0.0.1:9001"


def test_overrides_apply_on_top_of_defaults() -> None:
    settings = load_settings(env={}, overrides={"admin": "127.0.0.1:7000"})
    assert settings.admin_address == ("127.0.0.1", 7000)
    assert settings.listen == DEFAULT_LISTEN


def test_overrides_are_validated_too() -> None:
    with pytest.raises(ConfigError, match="listen"):
        load_settings(env={}, overrides={"listen": "nowhere"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1GiB", 1024**3), ("20GiB", 20 * 1024**3), ("512MB", 512 * 1000**2), (4096, 4096)],
)
def test_max_size_parses_human_sizes(text: str | int, expected: int) -> None:
    settings = settings_from_mapping({"cache": {"max_size": text}}, env={})
    assert settings.cache.max_size == expected


@pytest.mark.parametrize("value", [0, "0B", -1])
def test_max_size_must_be_positive(value: str | int) -> None:
    assert "cache.max_size" in _config_error({"cache": {"max_size": value}})


def test_watermarks_default_to_kubelet_s_image_gc_marks_and_take_percents() -> None:
    assert settings_from_mapping({}, env={}).cache.watermarks == Watermarks(0.85, 0.80)
    marks = {"high_watermark": "90%", "low_watermark": 0.7}
    assert settings_from_mapping({"cache": marks}, env={}).cache.watermarks == Watermarks(0.9, 0.7)
    off = {"high_watermark": None, "low_watermark": None}
    assert settings_from_mapping({"cache": off}, env={}).cache.watermarks is None


@pytest.mark.parametrize(
    ("marks", "problem"),
    [
        ({"high_watermark": 0.8, "low_watermark": 0.8}, "low_watermark < high_watermark"),
        ({"high_watermark": "120%"}, "low_watermark < high_watermark <= 1"),
        ({"low_watermark": 0}, "0 < low_watermark"),
        ({"high_watermark": None}, "set both high_watermark and low_watermark, or neither"),
        ({"high_watermark": "ninety%"}, "cache.high_watermark: Value error, expected a fraction"),
    ],
)
def test_watermarks_out_of_order_are_a_config_error(marks: dict[str, Any], problem: str) -> None:
    message = _config_error({"cache": marks})
    assert message.startswith("config: cache") and problem in message


# -- dragonfly-endpoint config.json ---------------------------------------------------------


def _dragonfly_doc(**storage: Any) -> dict[str, Any]:
    return {"object_storage": {"type": "s3", "bucket_name": "models", **storage}}


def test_dragonfly_endpoint_config_is_translated(tmp_path: Path) -> None:
    doc = _dragonfly_doc(
        region="ap-southeast-1",
        endpoint="https://obs.ap-southeast-1.example.com",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    doc["header"] = {"X-Team": "ml"}
    doc["filter"] = "a&b"
    path = _write(tmp_path / "config.json", json.dumps(doc))

    settings = load_settings(env={"DRAGONFLY_ENDPOINT_CONFIG": str(path)})

    (bucket,) = settings.buckets
    assert bucket.provider == "s3"
    assert bucket.bucket == "models"
    assert bucket.region == "ap-southeast-1"
    assert bucket.endpoint == "https://obs.ap-southeast-1.example.com"
    assert bucket.credentials.source == "static"
    assert bucket.credentials.access_key_id is not None
    assert bucket.credentials.secret_access_key is not None
    assert bucket.credentials.access_key_id.get_secret_value() == ACCESS_KEY
    assert bucket.credentials.secret_access_key.get_secret_value() == SECRET_KEY
    assert settings.headers == {"X-Team": "ml"}
    assert settings.filter == ("a", "b")


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("http://minio.local:9000", "http://minio.local:9000"),
        ("https://obs.example.com", "https://obs.example.com"),
        ("obs.example.com", "https://obs.example.com"),
        ("minio.local:9000", "https://minio.local:9000"),
    ],
)
def test_dragonfly_endpoint_with_and_without_scheme(endpoint: str, expected: str) -> None:
    mapping = dragonfly_endpoint_to_mapping(_dragonfly_doc(endpoint=endpoint), "config.json")
    settings = settings_from_mapping(mapping, env={})
    assert settings.buckets[0].endpoint == expected


def test_dragonfly_endpoint_without_keys_uses_default_chain() -> None:
    mapping = dragonfly_endpoint_to_mapping(_dragonfly_doc(), "config.json")
    settings = settings_from_mapping(mapping, env={})
    (bucket,) = settings.buckets
    assert bucket.credentials.source == "default"
    assert bucket.endpoint is None
    assert bucket.region == "us-east-1"


def test_dragonfly_filter_drops_empty_pieces() -> None:
    doc = _dragonfly_doc()
    doc["filter"] = "a&&b&"
    mapping = dragonfly_endpoint_to_mapping(doc, "config.json")
    assert settings_from_mapping(mapping, env={}).filter == ("a", "b")


@pytest.mark.parametrize("kind", ["hdfs", "", None])
def test_dragonfly_unsupported_storage_type_names_the_key(kind: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        dragonfly_endpoint_to_mapping(_dragonfly_doc(type=kind), "config.json")
    message = str(info.value)
    assert "config.json" in message
    assert "object_storage.type" in message
    assert repr(kind) in message


@pytest.mark.parametrize("doc", [[], "s3", {}, {"object_storage": "s3"}])
def test_dragonfly_malformed_documents_are_config_errors(doc: Any) -> None:
    with pytest.raises(ConfigError, match=r"^config\.json: "):
        dragonfly_endpoint_to_mapping(doc, "config.json")


def test_dragonfly_access_key_without_secret_is_an_error_without_the_key(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "config.json", json.dumps(_dragonfly_doc(access_key=ACCESS_KEY)))
    with pytest.raises(ConfigError) as info:
        load_settings(env={"DRAGONFLY_ENDPOINT_CONFIG": str(path)})
    message = str(info.value)
    assert "buckets[0].credentials" in message
    assert "secret_access_key" in message
    assert ACCESS_KEY not in message


def test_dragonfly_missing_bucket_name_names_the_key() -> None:
    mapping = dragonfly_endpoint_to_mapping({"object_storage": {"type": "s3"}}, "config.json")
    assert "buckets[0].bucket" in _config_error(mapping)


def test_dragonfly_invalid_json_is_one_message(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.json", "{not json")
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        load_settings(env={"DRAGONFLY_ENDPOINT_CONFIG": str(path)})
    assert str(path) in str(info.value)


def test_dragonfly_missing_file_is_one_message(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigError, match="cannot read the config file") as info:
        load_settings(env={"DRAGONFLY_ENDPOINT_CONFIG": str(path)})
    assert str(path) in str(info.value)


# -- credentials ----------------------------------------------------------------------------


def test_env_credentials_read_the_named_variables() -> None:
    raw = {
        "buckets": [
            _bucket(
                credentials={
                    "source": "env",
                    "access_key_id_env": "MY_KEY",
                    "secret_access_key_env": "MY_SECRET",
                    "session_token_env": "MY_TOKEN",
                }
            )
        ]
    }
    env = {"MY_KEY": ACCESS_KEY, "MY_SECRET": SECRET_KEY, "MY_TOKEN": SESSION_TOKEN}
    creds = settings_from_mapping(raw, env=env).buckets[0].credentials
    assert creds.source == "static"
    assert creds.access_key_id is not None
    assert creds.secret_access_key is not None
    assert creds.session_token is not None
    assert creds.access_key_id.get_secret_value() == ACCESS_KEY
    assert creds.secret_access_key.get_secret_value() == SECRET_KEY
    assert creds.session_token.get_secret_value() == SESSION_TOKEN


def test_env_credentials_default_to_the_aws_variable_names() -> None:
    raw = {"buckets": [_bucket(credentials={"source": "env"})]}
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    creds = settings_from_mapping(raw, env=env).buckets[0].credentials
    assert creds.access_key_id is not None
    assert creds.access_key_id.get_secret_value() == ACCESS_KEY
    assert creds.session_token is None


@pytest.mark.parametrize(
    ("env", "key", "variable"),
    [
        ({"MY_SECRET": SECRET_KEY}, "access_key_id_env", "MY_KEY"),
        ({"MY_KEY": ACCESS_KEY}, "secret_access_key_env", "MY_SECRET"),
        ({"MY_KEY": "", "MY_SECRET": SECRET_KEY}, "access_key_id_env", "MY_KEY"),
    ],
)
def test_env_credentials_unset_variable_names_the_env_key(
    env: dict[str, str], key: str, variable: str
) -> None:
    raw = {
        "buckets": [
            _bucket(),
            _bucket(
                credentials={
                    "source": "env",
                    "access_key_id_env": "MY_KEY",
                    "secret_access_key_env": "MY_SECRET",
                }
            ),
        ]
    }
    message = _config_error(raw, env)
    assert f"buckets[1].credentials.{key}" in message
    assert variable in message
    assert "not set" in message
    assert SECRET_KEY not in message
    assert ACCESS_KEY not in message


def test_env_credentials_misspelt_env_key_is_rejected() -> None:
    raw = {"buckets": [_bucket(credentials={"source": "env", "acess_key_id_env": "MY_KEY"})]}
    env = {"MY_KEY": "a", "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    assert "buckets[0].credentials.acess_key_id_env" in _config_error(raw, env)


@pytest.mark.parametrize(
    "creds",
    [
        {"source": "static", "access_key_id": ACCESS_KEY},
        {"source": "static", "secret_access_key": SECRET_KEY},
        {"source": "static"},
    ],
)
def test_static_credentials_need_both_keys(creds: dict[str, str]) -> None:
    message = _config_error({"buckets": [_bucket(credentials=creds)]})
    assert "buckets[0].credentials" in message
    assert "access_key_id and secret_access_key" in message
    assert ACCESS_KEY not in message
    assert SECRET_KEY not in message


# -- validation messages --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "location", "problem"),
    [
        ({"buckets": [_bucket(bucket="")]}, "buckets[0].bucket", "at least 1 character"),
        ({"buckets": [_bucket(bucket="a/b")]}, "buckets[0].bucket", "no '/'"),
        ({"buckets": [_bucket(bucket=" a")]}, "buckets[0].bucket", "surrounding spaces"),
        ({"buckets": [{"bucket": "models"}]}, "buckets[0].provider", "required"),
        ({"buckets": [_bucket(provider="ftp")]}, "buckets[0].provider", "'s3'"),
        ({"buckets": [_bucket(), _bucket(endpoint="ftp://x")]}, "buckets[1].endpoint", "http"),
        ({"buckets": [_bucket(addressing_style="dns")]}, "buckets[0].addressing_style", "path"),
        ({"presign_expires": 10}, "presign_expires", "greater than or equal to 60"),
        ({"presign_expires": 604801}, "presign_expires", "less than or equal to 604800"),
        ({"origin_timeout": 0}, "origin_timeout", "greater than 0"),
        ({"cache": {"max_size": "lots"}}, "cache.max_size", "size"),
    ],
)
def test_errors_name_the_key_path_and_the_problem(
    raw: dict[str, Any], location: str, problem: str
) -> None:
    message = _config_error(raw)
    assert message.startswith("config: ")
    assert f"{location}: " in message
    assert problem in message


@pytest.mark.parametrize(
    ("raw", "location"),
    [
        ({"lisen": "127.0.0.1:1"}, "lisen"),
        ({"cache": {"max_sise": "1GiB"}}, "cache.max_sise"),
        ({"buckets": [_bucket(regoin="eu-west-1")]}, "buckets[0].regoin"),
        ({"buckets": [_bucket(credentials={"source": "default", "prfile": "x"})]}, "prfile"),
    ],
)
def test_unknown_keys_are_rejected(raw: dict[str, Any], location: str) -> None:
    message = _config_error(raw)
    assert location in message
    assert "Extra inputs are not permitted" in message


def test_every_problem_is_reported_in_one_message() -> None:
    message = _config_error({"listen": "x", "buckets": [_bucket(bucket="")]})
    assert "listen: " in message
    assert "buckets[0].bucket: " in message


@pytest.mark.parametrize("raw", [["listen"], "listen: x", 42])
def test_top_level_must_be_a_mapping(raw: Any) -> None:
    assert "expected a mapping" in _config_error(raw)


def test_yaml_list_at_top_level_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "shim.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping") as info:
        load_settings(path, env={})
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1", "127.0.0.1:", ":8790", "127.0.0.1:http", "127.0.0.1:65536", "host:-1", ""],
)
def test_bad_listen_is_rejected(listen: str) -> None:
    message = _config_error({"listen": listen})
    assert "listen: " in message
    assert "HOST:PORT" in message


@pytest.mark.parametrize("listen", ["::8790", "127.0.0.1:\uff18\uff17\uff19\uff10"])
def test_bad_listen_is_rejected_known_gaps(listen: str) -> None:
    with pytest.raises(ConfigError, match="listen"):
        settings_from_mapping({"listen": listen}, env={})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:8790", ("::1", 8790)), ("h:0", ("h", 0))],
)
def test_good_listen_is_split(value: str, expected: tuple[str, int]) -> None:
    settings = settings_from_mapping({"listen": value, "clients": ["10.0.0.0/8"]}, env={})
    assert settings.listen_address == expected


def test_invalid_yaml_is_one_message_naming_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "shim.yaml", "listen: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML")


def test_missing_file_is_one_message_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == f"{path}: cannot read the config file: No such file or directory"


def test_missing_file_named_by_shim_config_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(env={"SHIM_CONFIG": str(path)})


def test_endpoint_is_normalised_to_scheme_and_host() -> None:
    raw = {"buckets": [_bucket(endpoint="https://obs.example.com:8443/some/path")]}
    assert settings_from_mapping(raw, env={}).buckets[0].endpoint == "https://obs.example.com:8443"


# -- secrets --------------------------------------------------------------------------------


def _settings_with_secrets() -> Settings:
    raw = {
        "buckets": [
            _bucket(
                credentials={
                    "source": "static",
                    "access_key_id": ACCESS_KEY,
                    "secret_access_key": SECRET_KEY,
                    "session_token": SESSION_TOKEN,
                }
            )
        ]
    }
    return settings_from_mapping(raw, env={})


@pytest.mark.parametrize("render", [str, repr])
def test_secrets_never_appear_in_settings_text(render: Any) -> None:
    settings = _settings_with_secrets()
    for obj in (settings, settings.buckets[0], settings.buckets[0].credentials):
        text = render(obj)
        assert SECRET_KEY not in text
        assert ACCESS_KEY not in text
        assert SESSION_TOKEN not in text
        assert "**********" in text


def test_secrets_from_env_never_appear_in_settings_text() -> None:
    raw = {"buckets": [_bucket(credentials={"source": "env"})]}
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    text = repr(settings_from_mapping(raw, env=env))
    assert SECRET_KEY not in text
    assert ACCESS_KEY not in text


def test_secrets_never_appear_in_validation_errors() -> None:
    raw = {
        "buckets": [
            _bucket(
                endpoint="ftp://nope",
                credentials={
                    "source": "bogus",
                    "access_key_id": ACCESS_KEY,
                    "secret_access_key": SECRET_KEY,
                    "session_token": SESSION_TOKEN,
                    "extra": SECRET_KEY,
                },
            )
        ]
    }
    message = _config_error(raw)
    assert "buckets[0].credentials.source" in message
    assert "buckets[0].credentials.extra" in message
    for secret in (ACCESS_KEY, SECRET_KEY, SESSION_TOKEN):
        assert secret not in message


def test_secrets_never_appear_in_yaml_syntax_errors(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "shim.yaml",
        "buckets:\n"
        "  - provider: s3\n"
        "    bucket: models\n"
        "    credentials:\n"
        "      source: static\n"
        f"      access_key_id: {ACCESS_KEY}\n"
        f"      secret_access_key: {SECRET_KEY}: oops\n",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert "not valid YAML" in str(info.value)
    assert SECRET_KEY not in str(info.value)


def test_a_dfdaemon_link_dir_is_an_absolute_path() -> None:
    url = "http://127.0.0.1:4001"
    dfdaemon = {"url": url, "link_dir": "/var/lib/df/shim"}
    settings = settings_from_mapping({"dfdaemon": dfdaemon}, env={})
    assert settings.dfdaemon is not None
    assert settings.dfdaemon.link_dir == Path("/var/lib/df/shim")
    with pytest.raises(ConfigError, match=r"dfdaemon\.link_dir.*absolute path"):
        settings_from_mapping({"dfdaemon": {"url": url, "link_dir": "links"}}, env={})


def test_a_dfdaemon_link_dir_and_keep_copy_exclude_each_other() -> None:
    dfdaemon = {"url": "http://127.0.0.1:4001", "link_dir": "/l", "keep_copy": True}
    with pytest.raises(ConfigError, match="choose one"):
        settings_from_mapping({"dfdaemon": dfdaemon}, env={})


def test_log_format_and_top_objects_default_and_are_checked() -> None:
    settings = settings_from_mapping({}, env={})
    assert (settings.log_format, settings.metrics.top_objects) == ("text", 20)
    assert settings_from_mapping({"log_format": "json"}, env={}).log_format == "json"
    assert "log_format: Input should be 'text' or 'json'" in _config_error({"log_format": "xml"})
    too_many = _config_error({"metrics": {"top_objects": 1000}})
    assert "metrics.top_objects: Input should be less than or equal to 200" in too_many


# -- the Dragonfly manager (shim preheat) ------------------------------------------------------

PAT = "dfpat-0123456789abcdef"
MANAGER_URL = "http://dragonfly-manager:8080"


def _manager(**fields: Any) -> Settings:
    return settings_from_mapping({"manager": {"url": MANAGER_URL, **fields}}, env={})


def test_the_manager_token_comes_from_an_env_var_or_a_file(tmp_path: Path) -> None:
    env = {"DRAGONFLY_PAT": PAT}
    raw = {"manager": {"url": MANAGER_URL + "/", "token_env": "DRAGONFLY_PAT"}}
    manager = settings_from_mapping(raw, env=env).manager
    assert manager is not None
    assert manager.url == MANAGER_URL
    assert manager.token is not None and manager.token.get_secret_value() == PAT
    token_file = _write(tmp_path / "pat", f"  {PAT}\n")  # a mounted Secret may end in a newline
    raw = {"manager": {"url": MANAGER_URL, "token_file": str(token_file)}}
    manager = settings_from_mapping(raw, env={}).manager
    assert manager is not None and manager.token is not None
    assert manager.token.get_secret_value() == PAT
    assert manager.scope == "all_peers"
    assert (manager.scheduler_cluster_ids, manager.timeout) == ((), 3600)
    assert PAT not in repr(manager) and PAT not in str(manager)


def test_manager_settings_are_validated(tmp_path: Path) -> None:
    timed = _manager(scope="single_seed_peer", scheduler_cluster_ids=[1, 2], timeout="30m")
    assert timed.manager is not None
    assert timed.manager.scope == "single_seed_peer"
    assert timed.manager.scheduler_cluster_ids == (1, 2)
    assert timed.manager.timeout == 1800
    assert "manager.url: Value error, expected http://HOST" in _config_error(
        {"manager": {"url": "dragonfly-manager:8080"}}
    )
    assert "manager.scope" in _config_error({"manager": {"url": MANAGER_URL, "scope": "peers"}})
    assert "manager.scheduler_cluster_ids[0]: Input should be greater than 0" in _config_error(
        {"manager": {"url": MANAGER_URL, "scheduler_cluster_ids": [0]}}
    )
    both = {"url": MANAGER_URL, "token": PAT, "token_env": "DRAGONFLY_PAT"}
    message = _config_error({"manager": both}, env={"DRAGONFLY_PAT": PAT})
    assert "at most one of token, token_env and token_file" in message
    assert PAT not in message


def test_a_missing_manager_token_source_is_named_and_the_token_never_shown(
    tmp_path: Path,
) -> None:
    unset = {"manager": {"url": MANAGER_URL, "token_env": "DRAGONFLY_PAT"}}
    assert "environment variable 'DRAGONFLY_PAT' is not set" in _config_error(unset)
    absent = tmp_path / "absent"
    message = _config_error({"manager": {"url": MANAGER_URL, "token_file": str(absent)}})
    assert f"manager.token_file {absent}: cannot read it" in message
    empty = _write(tmp_path / "empty", "\n")
    message = _config_error({"manager": {"url": MANAGER_URL, "token_file": str(empty)}})
    assert "is empty" in message
    shared = _write(tmp_path / "shared", PAT)
    shared.chmod(0o644)
    message = _config_error({"manager": {"url": MANAGER_URL, "token_file": str(shared)}})
    assert f"manager.token_file {shared} is readable by every user (mode 644)" in message
    # A token that cannot be a header value: refused without being quoted.
    spaced = _write(tmp_path / "spaced", f"{PAT} {PAT}\r\nX-Injected: 1")
    message = _config_error({"manager": {"url": MANAGER_URL, "token_file": str(spaced)}})
    assert "printable ASCII without spaces" in message
    assert PAT not in message


def test_the_command_line_overrides_the_configured_manager(tmp_path: Path) -> None:
    token_file = _write(tmp_path / "pat", PAT)
    configured = _manager(token="configured-token", scope="all_seed_peers")
    manager = preheat_manager(
        configured, url="https://other:8443", token_file=token_file, scope="all_peers"
    )
    assert manager.url == "https://other:8443"
    assert manager.token is not None and manager.token.get_secret_value() == PAT
    assert manager.scope == "all_peers"
    kept = preheat_manager(configured)
    assert (kept.url, kept.scope) == (MANAGER_URL, "all_seed_peers")
    assert kept.token is not None and kept.token.get_secret_value() == "configured-token"
    # Without a manager in the config, the command line names it.
    bare = settings_from_mapping({}, env={})
    alone = preheat_manager(bare, url=MANAGER_URL, token_file=token_file)
    assert alone.url == MANAGER_URL


def test_a_preheat_without_manager_or_token_says_what_to_set() -> None:
    with pytest.raises(ConfigError, match=r"set manager\.url in the config or give --manager"):
        preheat_manager(settings_from_mapping({}, env={}))
    with pytest.raises(ConfigError, match=r"manager\.token_file or manager\.token_env"):
        preheat_manager(_manager())
    with pytest.raises(ConfigError, match=r"manager: url: Value error"):
        preheat_manager(_manager(token=PAT), url="ftp://manager")


def test_the_s3_api_listener_is_a_host_port_or_a_mapping_and_guarded() -> None:
    short = settings_from_mapping({"s3_api": "127.0.0.1:8792"}, env={})
    assert short.s3_api is not None and (short.s3_api.listen, short.s3_api.domain) == (
        "127.0.0.1:8792",
        None,
    )
    full = settings_from_mapping(
        {"s3_api": {"listen": "127.0.0.1:8792", "domain": "S3.Shim.Local."}}, env={}
    )
    assert full.s3_api is not None and full.s3_api.domain == "s3.shim.local"
    # Its own reverse mode, told apart from the reverse listener by its (never contacted) target.
    assert full.mitmproxy_modes()[-1] == "reverse:http://127.0.0.1:10@127.0.0.1:8792"
    with pytest.raises(ConfigError, match=r"s3_api 0\.0\.0\.0:8792 is reachable from other hosts"):
        settings_from_mapping({"s3_api": "0.0.0.0:8792"}, env={})
    open_with_clients = {"s3_api": "0.0.0.0:8792", "clients": ["10.0.0.0/8"]}
    assert settings_from_mapping(open_with_clients, env={}).s3_api is not None
    for bad in ({"s3_api": "8792"}, {"s3_api": {"listen": "h:1", "domain": "a_b.test"}}):
        with pytest.raises(ConfigError, match="s3_api"):
            settings_from_mapping(bad, env={})
