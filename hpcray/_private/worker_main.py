"""Entry point of worker ranks spawned by a plain (launcher-less) ``hpcray.init()``."""

from hpcray._private.bootstrap import start

start({}, None)
