"""Load shim into a plain mitmproxy: ``mitmdump -s addons/shim_addon.py [--set shim_config=FILE]``.

Not named shim.py: mitmproxy puts this folder on sys.path, and the file would hide the package.
"""

from shim.addon import ShimAddon
from shim.lifecycle import GracefulShutdown

shim = ShimAddon()
addons = [shim, GracefulShutdown(shim)]
