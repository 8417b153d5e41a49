"""Shared fixtures: every data-plane test runs against both twins."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from outrelay.pki.devbundle import DevBundleConfig, write_dev_bundle

#: (compiled module, pure module) for every accelerated unit.
TWINS: dict[str, tuple[str, str]] = {
    "codec": ("outrelay._fast._codec", "outrelay.orp._codec_py"),
    "fsm": ("outrelay._fast._fsm", "outrelay.orp._fsm_py"),
    "ring": ("outrelay._fast._ring", "outrelay.resume._ring_py"),
}

IMPLS = ["compiled", "pure"]


def compiled_twin(unit: str) -> ModuleType | None:
    """The compiled twin, or None if it is not built (an error when extensions are required).

    Ignores ``OUTRELAY_NO_EXTENSIONS``: for tests that compare the twins directly.
    """
    try:
        return importlib.import_module(TWINS[unit][0])
    except ImportError:
        if os.environ.get("OUTRELAY_REQUIRE_EXTENSIONS"):
            raise
        return None


def load_twin(unit: str, impl: str) -> ModuleType:
    """Import one twin; skip (or fail when extensions are required) if not built."""
    compiled, pure = TWINS[unit]
    if impl == "pure":
        return importlib.import_module(pure)
    if os.environ.get("OUTRELAY_NO_EXTENSIONS"):
        pytest.skip("OUTRELAY_NO_EXTENSIONS is set: compiled twin not tested")
    module = compiled_twin(unit)
    if module is None:
        pytest.skip(f"{compiled} is not built")
    return module


def twins(unit: str) -> list[ModuleType]:
    """The pure twin, then the compiled one unless OUTRELAY_NO_EXTENSIONS is set or not built."""
    mods = [load_twin(unit, "pure")]
    if not os.environ.get("OUTRELAY_NO_EXTENSIONS"):
        module = compiled_twin(unit)
        if module is not None:
            mods.append(module)
    return mods


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    """``("ok", fn(*args))``, or the name and text of what it raised."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # the type and text are what we compare
        return (type(exc).__name__, str(exc))


@pytest.fixture(scope="session")
def dev_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dev PKI bundle (``outrelay pki dev`` defaults) for the session; read it, never write."""
    out = tmp_path_factory.mktemp("devpki") / "pki"
    write_dev_bundle(DevBundleConfig(out=out))
    return out


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
