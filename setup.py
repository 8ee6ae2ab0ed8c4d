"""Builds the Cython extensions and installs the Python packages.

The Rust crate in native/ is built separately by maturin (see ./dev setup).
"""

from Cython.Build import cythonize
from setuptools import Extension, find_namespace_packages, setup

extensions = [
    Extension("gateway.listener", ["gateway/listener.pyx"], extra_compile_args=["-O2"]),
    Extension("gateway.subscriptions", ["gateway/subscriptions.pyx"], extra_compile_args=["-O2"]),
]

setup(
    # Namespace discovery, so data folders (demo pages, the FAQ) are packages with their files.
    packages=find_namespace_packages(include=["gateway*", "routing*", "dedup*", "bot_bridge*", "native"]),
    package_data={"gateway": ["*.pyx", "*.pxd"], "gateway.static": ["*"], "gateway.coordinator.redis.scripts": ["*.lua"],
                  "bot_bridge.data": ["*"]},
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}, quiet=True),
)
