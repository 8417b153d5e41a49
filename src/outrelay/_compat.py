"""Choosing between the compiled (Cython) and pure-Python twins.

``OUTRELAY_NO_EXTENSIONS`` (any non-empty value) forces the pure twins, as
does any interpreter other than CPython. ``OUTRELAY_REQUIRE_EXTENSIONS``
turns a missing compiled module into an ImportError instead of a silent
fallback: the test suite and wheel checks set it.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

NO_EXTENSIONS: bool = bool(os.environ.get("OUTRELAY_NO_EXTENSIONS")) or (
    sys.implementation.name != "cpython"
)
REQUIRE_EXTENSIONS: bool = bool(os.environ.get("OUTRELAY_REQUIRE_EXTENSIONS"))


def select(compiled: str, pure: ModuleType) -> tuple[ModuleType, str]:
    """Return ``(module, "compiled" | "pure")`` for one accelerated unit.

    Raises ImportError when the compiled module is required but missing.
    """
    if NO_EXTENSIONS:
        return pure, "pure"
    try:
        return importlib.import_module(compiled), "compiled"
    except ImportError:
        if REQUIRE_EXTENSIONS:
            raise
        return pure, "pure"
