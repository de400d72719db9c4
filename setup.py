"""Build the optional C kernels (see store/_decode.c, engine/_kernels.c); everything else is in pyproject.toml.

optional=True: where no C compiler is found the install still succeeds and the numpy code runs
(store/_native.py and engine/_native.py say which is in use).
"""

from setuptools import Extension, setup

FLAGS = ["-O3", "-fno-math-errno"]
ABI = dict(include_dirs=["lodestore"], depends=["lodestore/_abi.h"])  # the status codes and ABI versions both share

setup(ext_modules=[
    Extension("lodestore.store._decode", ["store/_decode.c"], extra_compile_args=FLAGS, optional=True, **ABI),
    Extension("lodestore.engine._kernels", ["engine/_kernels.c"], extra_compile_args=FLAGS, optional=True, **ABI),
])
