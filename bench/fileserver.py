"""A plain local file server (aiohttp, sendfile): the 'direct' baseline for cache hits."""

import sys

from aiohttp import web

app = web.Application()
app.router.add_static("/", sys.argv[1])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None)
