"""Benchmarks run every accelerated unit compiled and pure, side by side.

Name benchmarks ``bench_*`` in ``bench_*.py``, give each a group with
``@pytest.mark.benchmark(group=...)`` and take the ``codec``/``fsm``/``ring``
fixture: ``bench/run.py`` pairs the two implementations of each group and
prints the speedup.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

TWINS: dict[str, tuple[str, str]] = {
    "codec": ("outrelay._fast._codec", "outrelay.orp._codec_py"),
    "fsm": ("outrelay._fast._fsm", "outrelay.orp._fsm_py"),
    "ring": ("outrelay._fast._ring", "outrelay.resume._ring_py"),
}


def _load(unit: str, impl: str) -> ModuleType:
    compiled, pure = TWINS[unit]
    return importlib.import_module(compiled if impl == "compiled" else pure)


@pytest.fixture(params=["compiled", "pure"])
def impl(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def codec(impl: str) -> ModuleType:
    return _load("codec", impl)


@pytest.fixture
def fsm(impl: str) -> ModuleType:
    return _load("fsm", impl)


@pytest.fixture
def ring(impl: str) -> ModuleType:
    return _load("ring", impl)
