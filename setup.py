"""Builds the optional C fast path of hpcray.collective; everything else is in pyproject.toml.

Without a C compiler the build goes on without it and hpcray uses its Python path.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("hpcray.collective._fastpath", ["hpcray/collective/_fastpath.c"],
                             extra_compile_args=["-O2", "-std=gnu11"], optional=True)])
