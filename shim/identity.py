"""Task identity: what makes every re-signed URL of one object the same cache entry and the
same Dragonfly task. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from shim._errors import RequestError
from shim.providers import PROVIDERS
from shim.taskid import rust_filter_query, rust_task_id


def filtered_params(provider: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The full filter list for one provider's URLs: its signature parameters plus ``extra``."""
    return tuple(sorted(PROVIDERS[provider].signature_params | set(extra)))


@dataclass(frozen=True, slots=True)
class TaskIdentity:
    url: str  # the signed URL without its signature parameters
    task_id: str  # the Rust dfdaemon's task ID for it: the cache key and the header value


def identify(signed_url: str, filtered: Iterable[str]) -> TaskIdentity:
    """The identity of ``signed_url``. Raises RequestError if the dfdaemon's URL parser would
    read another path than the one signed: the entry would then hold another object."""
    url = rust_filter_query(signed_url, filtered)
    if urlsplit(url)[:3] != urlsplit(signed_url)[:3]:
        raise RequestError("the URL does not keep its form through URL parsing; not served")
    # The canonical URL is hashed as it stands (nothing left to filter): one parse, not two.
    return TaskIdentity(url=url, task_id=rust_task_id(url))
