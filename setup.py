"""Builds the C extension fraiseshm._native (native/_native.c); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fraiseshm._native",
            sources=["native/_native.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Werror", "-O2", "-std=gnu11"],
            libraries=["pthread"],
        )
    ],
)
