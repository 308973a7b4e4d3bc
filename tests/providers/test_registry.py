"""The provider registry: every store keeps the contract the rest of shim relies on."""

from __future__ import annotations

import functools
import typing
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from shim.identity import filtered_params, identify
from shim.providers import (
    ALL_SIGNATURE_PARAMS,
    PROVIDERS,
    PUBLIC_SIGNATURE_PARAMS,
    BucketConfig,
    Provider,
    Signer,
)
from shim.recognize import ObjectRef, recognize
from tests.support.offline_buckets import OFFLINE_BUCKETS, offline_bucket

STORES = sorted(PROVIDERS)


@pytest.mark.parametrize("name", STORES)
def test_the_config_model_is_tagged_with_the_providers_name(name: str) -> None:
    provider = PROVIDERS[name]
    assert provider.name == name
    assert typing.get_args(provider.config.model_fields["provider"].annotation) == (name,)
    members = typing.get_args(typing.get_args(BucketConfig)[0])
    assert provider.config in members


def test_every_config_model_is_registered() -> None:
    members = typing.get_args(typing.get_args(BucketConfig)[0])
    assert sorted(member.model_fields["provider"].annotation.__args__[0] for member in members) == (
        STORES
    )


@pytest.mark.parametrize("name", STORES)
def test_parameters_are_consistent(name: str) -> None:
    provider: Provider = PROVIDERS[name]
    assert provider.public_params <= provider.signature_params
    # A parameter that shapes the object is never dropped as a signature.
    assert not provider.object_params & provider.signature_params
    assert provider.signature_params <= ALL_SIGNATURE_PARAMS


def test_a_value_secret_in_any_store_is_never_treated_as_public() -> None:
    for provider in PROVIDERS.values():
        secret = provider.signature_params - provider.public_params
        assert not secret & PUBLIC_SIGNATURE_PARAMS, provider.name


def test_dragonfly_types_are_unique() -> None:
    types = [provider.dragonfly_type for provider in PROVIDERS.values()]
    assert len(types) == len(set(types))


@pytest.mark.parametrize("name", STORES)
def test_a_bucket_routes_its_own_hosts_first(name: str) -> None:
    adapter: TypeAdapter[BucketConfig] = TypeAdapter(BucketConfig)
    provider = PROVIDERS[name]
    # The offline bucket: a store may validate its names (OSS: 3 to 63 characters).
    bucket = adapter.validate_python({**OFFLINE_BUCKETS[name], "hosts": ["models.example"]})
    routes = provider.routes(bucket)
    assert routes[0].host == "models.example"
    assert routes[0].prefix == "/"
    assert all(route.prefix.startswith("/") and route.prefix.endswith("/") for route in routes)


def test_every_provider_has_an_offline_bucket_for_the_properties_and_the_benchmark() -> None:
    assert sorted(OFFLINE_BUCKETS) == STORES


# Keys of any characters a store allows, but the ones shim refuses (dot segments, control
# characters, '#'), which tests/test_recognize.py covers.
KEYS = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="#"),
    min_size=1,
    max_size=60,
).filter(lambda key: not any(part in (".", "..") for part in key.split("/")))


@functools.cache
def _offline_signer(name: str) -> tuple[BucketConfig, Signer]:
    bucket = offline_bucket(name)
    return bucket, PROVIDERS[name].signer(bucket, 600)


@pytest.mark.parametrize("name", STORES)
@settings(max_examples=60, deadline=None)
@given(key=KEYS)
def test_the_signed_url_names_the_key_the_client_named(name: str, key: str) -> None:
    """Recognising the URL shim signed gives back the key it was asked to sign: the store is
    asked for exactly that object, and the identity hashes exactly that path."""
    # oss2 refuses to sign a key made only of whitespace (shim answers 400 for it).
    assume(name != "oss" or key.strip())
    bucket, signer = _offline_signer(name)
    signed = signer.sign(ObjectRef(bucket, key, (), "https"), "GET")
    again = recognize(signed, [bucket])
    assert again is not None, signed
    assert (again.key, again.params) == (key, ())
    identity = identify(signed, filtered_params(name))
    assert urlsplit(identity.url).path == urlsplit(signed).path
    assert not parse_qsl(urlsplit(identity.url).query)
