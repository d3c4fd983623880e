"""Entry point of worker ranks spawned by a plain (launcher-less) ``hpcray.init()``."""

from .bootstrap import start

start({}, None)
