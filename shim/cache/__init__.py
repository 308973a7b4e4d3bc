"""The embedded disk cache: a store of complete objects and the fills that feed it."""
