"""Typed errors. Each carries a message that tells the user what to fix, never a secret."""


class ShimError(Exception):
    """Base class of every error shim raises on purpose."""


class ConfigError(ShimError):
    """The configuration is broken; the message names the key and what is wrong."""


class RequestError(ShimError):
    """The client's request cannot be served as asked (malformed key, unsupported query)."""


class SigningError(ShimError):
    """A URL for a configured bucket could not be signed (missing or unusable credentials)."""


class UpstreamError(ShimError):
    """The origin (or dfdaemon) failed: unreachable, timed out, or cut the body short.

    ``status`` is what a client gets when the failure happens before any byte was sent.
    """

    def __init__(self, message: str, *, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class UnansweredError(UpstreamError):
    """The connection failed before any byte of a response (refused, reset, closed): nothing
    was passed on, so an idempotent request may be sent again."""
