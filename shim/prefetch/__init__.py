"""Warming objects before clients ask: ``shim prefetch`` through the running proxy, and the
admin port's prefetch jobs inside it."""
