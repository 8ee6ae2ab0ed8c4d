"""Builds the Cython extensions and installs the Python packages.

The Rust crate in native/ is built separately by maturin (see ./dev setup).
"""

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

extensions = [
    Extension("gateway.listener", ["gateway/listener.pyx"], extra_compile_args=["-O2"]),
]

setup(
    packages=find_packages(include=["gateway*", "routing*", "dedup*", "bot_bridge*"]),
    package_data={"gateway": ["static/*", "*.pyx"]},
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}, quiet=True),
)
