"""Build the Cython data-plane core (multidict style).

Extensions are built by default. ``OUTRELAY_NO_EXTENSIONS=1`` at build time
gives a pure-Python build; ``OUTRELAY_DEBUG_BUILD=1`` compiles with
``-O0 -g`` and Cython line tracing off. Unless the build is pure, a compile
failure fails the build: a wheel never ships pure Python by accident.
"""

import os
import sys

from setuptools import Extension, setup

NO_EXTENSIONS = bool(os.environ.get("OUTRELAY_NO_EXTENSIONS"))
DEBUG_BUILD = bool(os.environ.get("OUTRELAY_DEBUG_BUILD"))

if sys.implementation.name != "cpython":
    NO_EXTENSIONS = True

MODULES = ("_codec", "_fsm", "_ring", "_yamux")

if NO_EXTENSIONS:
    print("*********************\n* Pure Python build *\n*********************")
    ext_modules = []
else:
    from Cython.Build import cythonize

    cflags = ["-O0", "-g3"] if DEBUG_BUILD else ["-O3"]
    ext_modules = cythonize(
        [
            Extension(
                f"outrelay._fast.{name}",
                [f"src/outrelay/_fast/{name}.pyx"],
                extra_compile_args=cflags,
            )
            for name in MODULES
        ],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    )

setup(ext_modules=ext_modules)
