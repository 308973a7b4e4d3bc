"""Freshness: when a cached object must be checked against its origin again, what the
origin's answer to that check means, and the versioned Dragonfly tag. Pure: no I/O.

Policy per bucket (``revalidate``): ``always`` checks before every hit, ``never`` trusts an
entry until it is evicted, a duration (``60s``, ``5m``, ``1h``, or seconds; also
``{after: DURATION}``) checks a hit that many seconds after the last check. A URL that names
an object version (S3/OSS/OBS ``versionId``, GCS ``generation``, Azure ``versionid`` or
``snapshot``) names immutable bytes and is never checked.

The check is a conditional request signed like the client's own; what its answer means is
``judge``'s table. An origin that fails (5xx, 429, unreachable) does not make a stored object
unservable: it is served stale, with a log line and a metric, as RFC 9111 section 4.2.4 allows
and RFC 5861's ``stale-if-error`` asks for; a model server restarting during a store outage
still loads the model it had. Any other answer (403, a redirect) is the client's answer.

Dragonfly names a task by its URL, so an object overwritten in place would keep its task and
its pieces on every peer. Unless the URL names a version, shim puts the ETag it last validated
into the task's tag: ``X-Dragonfly-Tag: TAG;etag=ETAG`` (``TAG`` the configured tag, possibly
empty; ``ETAG`` exactly as the origin sent it, quotes and any ``W/`` included), so a new
version is a new task on every node. Preheating must send the same tag.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

from pydantic import BeforeValidator

ALWAYS = 0.0
NEVER = math.inf
DEFAULT_AFTER = 60.0
# Query parameters that name one immutable version of an object, in any store.
VERSION_PARAMS = frozenset({"versionId", "generation", "versionid", "snapshot"})
# Cache-Control directives of an origin's answer that forbid a shared cache to keep it.
UNCACHEABLE_DIRECTIVES = frozenset({"no-store", "private"})
TAG_ETAG_SEPARATOR = ";etag="

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from ``60``, ``60s``, ``1.5m``, ``2h``, ``500ms`` or ``1d``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 60s or 5m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    else:
        raise ValueError(f"expected a duration such as 60s, 5m or 3600, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration is a finite number of seconds >= 0, got {value!r}")
    return seconds


def parse_revalidate(value: object) -> float:
    """``always`` (0), ``never`` (infinity), ``DURATION`` or ``{after: DURATION}``: the
    seconds after a check that an entry may be served without another."""
    if isinstance(value, float) and value == NEVER:
        return NEVER
    if value == "always":
        return ALWAYS
    if value == "never":
        return NEVER
    if isinstance(value, Mapping):
        if set(value) != {"after"}:
            raise ValueError("expected always, never, a duration, or {after: DURATION}")
        return parse_duration(value["after"])
    return parse_duration(value)


# The ``revalidate`` field of a bucket's config.
RevalidateAfter = Annotated[float, BeforeValidator(parse_revalidate)]


@dataclass(frozen=True, slots=True)
class FreshnessPolicy:
    after: float = DEFAULT_AFTER  # seconds; ALWAYS or NEVER
    keep_uncacheable: bool = False  # keep answers marked no-store / private anyway


DEFAULT_POLICY = FreshnessPolicy()


def names_version(url: str) -> bool:
    """Whether ``url`` names one version of its object (immutable bytes)."""
    query = urlsplit(url).query
    return any(name in VERSION_PARAMS for name, _ in parse_qsl(query, keep_blank_values=True))


def needs_revalidation(
    policy: FreshnessPolicy, validated_at: float, now: float, *, versioned: bool
) -> bool:
    """Whether an entry last validated at ``validated_at`` must be checked before serving."""
    if versioned or policy.after == NEVER:
        return False
    return policy.after == ALWAYS or not 0 <= now - validated_at < policy.after


def cache_control_directives(value: str | None) -> frozenset[str]:
    """The directive names of a Cache-Control value, lower-case, arguments dropped."""
    if not value:
        return frozenset()
    names = (part.split("=", 1)[0].strip().lower() for part in value.split(","))
    return frozenset(name for name in names if name)


def storable(cache_control: str | None, policy: FreshnessPolicy) -> bool:
    """Whether an origin answer with this Cache-Control may become an entry."""
    forbidden = cache_control_directives(cache_control) & UNCACHEABLE_DIRECTIVES
    return policy.keep_uncacheable or not forbidden


def conditional_headers(etag: str | None, last_modified: str | None) -> dict[str, str]:
    """The validators to send: the ETag when there is one, else Last-Modified."""
    if etag:
        return {"If-None-Match": etag}
    if last_modified:
        return {"If-Modified-Since": last_modified}
    return {}


class Verdict(Enum):
    FRESH = "fresh"  # unchanged: serve the entry, refresh its validation time
    CHANGED = "changed"  # another version: replace the entry
    GONE = "gone"  # deleted: remove the entry, the client gets the origin's answer
    UNAVAILABLE = "unavailable"  # the origin failed: serve the entry stale
    REFUSED = "refused"  # another answer (403, a redirect): the client's, the entry stays

    @property
    def result(self) -> str:
        """The ``result`` label of shim_revalidations_total."""
        return "error" if self in (Verdict.UNAVAILABLE, Verdict.REFUSED) else self.value


def judge(status: int | None, stored_etag: str | None, etag: str | None) -> Verdict:
    """What a conditional request's answer means (``status`` None: no answer at all). A 200 or
    206 with the stored ETag is unchanged too: an origin may ignore the condition."""
    if status is None or status == 429 or status >= 500:
        return Verdict.UNAVAILABLE
    if status == 304:
        return Verdict.FRESH
    if status in (200, 206):
        same = (
            stored_etag is not None and etag is not None and _strong(stored_etag) == _strong(etag)
        )
        return Verdict.FRESH if same else Verdict.CHANGED
    if status in (404, 410):
        return Verdict.GONE
    return Verdict.REFUSED


def _strong(etag: str) -> str:
    # Weak comparison (RFC 9110 section 8.8.3.2): a W/ prefix does not make another version.
    return etag.strip().removeprefix("W/")


def versioned_tag(tag: str, etag: str | None) -> str:
    """The Dragonfly tag for the object version ``etag`` under the configured ``tag``."""
    return f"{tag}{TAG_ETAG_SEPARATOR}{etag}" if etag else tag
