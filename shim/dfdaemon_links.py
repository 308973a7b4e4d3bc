"""A directory where the node's Rust dfdaemon hard-links the tasks shim asks for, so that a
local hit is sent from the dfdaemon's own file instead of streamed through its proxy and then
through shim (two more copies of every byte, on the same cores as the client).

shim names a fresh path per request in ``X-Dragonfly-Output-Path`` with
``X-Dragonfly-Force-Hard-Link: true``; the dfdaemon links its task file there before it
answers (or answers 500 when it cannot, e.g. another filesystem). When the answer says the
task was already complete (``X-Dragonfly-Task-Download-Finished: true``), shim opens the link
and unlinks it at once: the descriptor is the body. Otherwise the link goes unused, and is
removed as soon as the headers arrive. Either way no link outlives its request, but a crash
can leave some: they are removed when shim starts (only ours, by their prefix).

The directory must be on the dfdaemon's storage filesystem and have the same path for shim and
the dfdaemon (one node; in Kubernetes, one hostPath mounted at the same place in both pods).
It holds links to model files, so it may not be open to other users.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shim._errors import ConfigError

log = logging.getLogger("shim.dfdaemon")

OUTPUT_PATH_HEADER = "X-Dragonfly-Output-Path"
FORCE_HARD_LINK_HEADER = "X-Dragonfly-Force-Hard-Link"
FINISHED_HEADER = "X-Dragonfly-Task-Download-Finished"
# Our links' names begin with it, so that start-up removes leftovers of ours and nothing else.
_PREFIX = "shim-link-"


def link_headers(path: Path) -> dict[str, str]:
    """Request headers asking a Rust dfdaemon to hard-link its task file to ``path``."""
    return {OUTPUT_PATH_HEADER: str(path), FORCE_HARD_LINK_HEADER: "true"}


def was_complete(headers: Mapping[str, str]) -> bool:
    """Whether the dfdaemon had the whole task before this request (a local hit)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    return lowered.get(FINISHED_HEADER.lower(), "").strip().lower() == "true"


@dataclass(frozen=True, slots=True)
class LinkDir:
    path: Path

    @classmethod
    def prepare(cls, path: Path) -> LinkDir:
        """The link directory at ``path``: created (mode 0700) when missing, refused when other
        users may enter it, emptied of the links a crashed shim left."""
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = path.stat()
        except OSError as error:
            raise ConfigError(f"dfdaemon.link_dir {path}: {error.strerror}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"dfdaemon.link_dir {path} is not a directory")
        if info.st_mode & 0o007:
            raise ConfigError(
                f"dfdaemon.link_dir {path} is open to other users (mode "
                f"{stat.S_IMODE(info.st_mode):o}): it holds links to model files; "
                "chmod o-rwx it"
            )
        left = [entry for entry in path.iterdir() if entry.name.startswith(_PREFIX)]
        for entry in left:
            try:
                entry.unlink(missing_ok=True)
            except OSError as error:
                raise ConfigError(f"dfdaemon.link_dir: {entry}: {error.strerror}") from None
        if left:
            log.info("removed %d links left in %s by an earlier run", len(left), path)
        return cls(path)

    def new_path(self) -> Path:
        return self.path / f"{_PREFIX}{secrets.token_hex(16)}"

    @staticmethod
    def take(path: Path, size: int | None) -> int | None:
        """A descriptor of the file linked at ``path`` when it holds ``size`` bytes; the link
        is gone either way (the descriptor keeps the file for as long as it is open)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        finally:
            path.unlink(missing_ok=True)
        if size is None or os.fstat(fd).st_size != size:
            os.close(fd)
            return None
        return fd
