"""Shared fixtures: every data-plane test runs against both twins."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

#: (compiled module, pure module) for every accelerated unit.
TWINS: dict[str, tuple[str, str]] = {
    "codec": ("outrelay._fast._codec", "outrelay.orp._codec_py"),
    "fsm": ("outrelay._fast._fsm", "outrelay.orp._fsm_py"),
    "ring": ("outrelay._fast._ring", "outrelay.resume._ring_py"),
}

IMPLS = ["compiled", "pure"]


def load_twin(unit: str, impl: str) -> ModuleType:
    """Import one twin; skip (or fail when extensions are required) if not built."""
    compiled, pure = TWINS[unit]
    if impl == "pure":
        return importlib.import_module(pure)
    if os.environ.get("OUTRELAY_NO_EXTENSIONS"):
        pytest.skip("OUTRELAY_NO_EXTENSIONS is set: compiled twin not tested")
    try:
        return importlib.import_module(compiled)
    except ImportError:
        if os.environ.get("OUTRELAY_REQUIRE_EXTENSIONS"):
            raise
        pytest.skip(f"{compiled} is not built")


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    """The name of the implementation under test."""
    return request.param


@pytest.fixture
def codec(impl: str) -> ModuleType:
    return load_twin("codec", impl)


@pytest.fixture
def fsm(impl: str) -> ModuleType:
    return load_twin("fsm", impl)


@pytest.fixture
def ring(impl: str) -> ModuleType:
    return load_twin("ring", impl)
