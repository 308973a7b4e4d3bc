"""shim: a caching proxy that signs object-storage downloads for unmodified model servers.

The public API is small: load settings, and the errors shim raises. The proxy itself runs as
``shim run`` or as a mitmproxy addon (``addons/shim_addon.py``).
"""

from shim._errors import ConfigError, RequestError, ShimError, SigningError, UpstreamError
from shim.config import Settings, load_settings

__all__ = [
    "ConfigError",
    "RequestError",
    "Settings",
    "ShimError",
    "SigningError",
    "UpstreamError",
    "load_settings",
]
__version__ = "0.1.0"
