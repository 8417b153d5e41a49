"""The ``yamux`` fixture: each session test runs on the pure twin and on the compiled one."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

from conftest import IMPLS

COMPILED = "outrelay._fast._yamux"
PURE = "outrelay.mux._session_py"


def _has_source() -> bool:
    fast = Path(importlib.import_module("outrelay._fast").__file__ or "").parent
    return any(p.name.startswith("_yamux.") for p in fast.iterdir())


def compiled_yamux() -> ModuleType | None:
    """The compiled session, or None if it is not built.

    Missing is an error when extensions are required and the tree has the
    compiled twin's source; ignores ``OUTRELAY_NO_EXTENSIONS`` (for tests
    that compare the twins directly).
    """
    try:
        return importlib.import_module(COMPILED)
    except ImportError:
        if os.environ.get("OUTRELAY_REQUIRE_EXTENSIONS") and _has_source():
            raise
        return None


def load_yamux(impl: str) -> ModuleType:
    """One twin; skips the compiled one when it is not built or not wanted."""
    if impl == "pure":
        return importlib.import_module(PURE)
    if os.environ.get("OUTRELAY_NO_EXTENSIONS"):
        pytest.skip("OUTRELAY_NO_EXTENSIONS is set: compiled twin not tested")
    module = compiled_yamux()
    if module is None:
        pytest.skip(f"{COMPILED} is not built")
    return module


@pytest.fixture(params=IMPLS)
def yamux(request: pytest.FixtureRequest) -> ModuleType:
    """The session module under test (``YamuxSession``, ``encode_header``, ``decode_header``)."""
    return load_yamux(request.param)
