"""Twin selection and import hygiene, each checked in a fresh interpreter.

The compiled twins must be the default whenever they are built, the pure
ones must be chosen under ``OUTRELAY_NO_EXTENSIONS=1``, and every module of
the package must import on its own (circular imports show up only when a
module is the first one imported).
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import outrelay

#: The directory holding the ``outrelay`` package, for the child's sys.path.
ROOT = str(Path(outrelay.__file__).resolve().parent.parent)

#: accelerated unit -> (compiled module, selector module, selector attribute)
UNITS = {
    "codec": ("outrelay._fast._codec", "outrelay.orp", "IMPLEMENTATION"),
    "fsm": ("outrelay._fast._fsm", "outrelay.orp", "_FSM_IMPLEMENTATION"),
    "ring": ("outrelay._fast._ring", "outrelay.resume", "IMPLEMENTATION"),
    "yamux": ("outrelay._fast._yamux", "outrelay.mux", "IMPLEMENTATION"),
}


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTRELAY_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def run_python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code, *args],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def selected(unit: str, **env: str) -> str:
    _, selector, attr = UNITS[unit]
    proc = run_python(f"import {selector} as m; print(m.{attr})", **env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def is_built(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_compiled_is_default_when_built(unit: str) -> None:
    compiled = UNITS[unit][0]
    if not is_built(compiled):
        if os.environ.get("OUTRELAY_REQUIRE_EXTENSIONS"):
            pytest.fail(f"{compiled} is not built but OUTRELAY_REQUIRE_EXTENSIONS is set")
        pytest.skip(f"{compiled} is not built")
    assert selected(unit) == "compiled"
    assert selected(unit, OUTRELAY_REQUIRE_EXTENSIONS="1") == "compiled"


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_no_extensions_selects_pure(unit: str) -> None:
    assert selected(unit, OUTRELAY_NO_EXTENSIONS="1") == "pure"


def test_public_classes_come_from_the_selected_twin() -> None:
    code = (
        "import outrelay.orp as o, outrelay.resume as r;"
        "print(o.StreamFSM.__module__, r.RingBuffer.__module__)"
    )
    proc = run_python(code, OUTRELAY_NO_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["outrelay.orp._fsm_py", "outrelay.resume._ring_py"]


def walk(path: list[str], prefix: str) -> Iterator[str]:
    """Every module under ``path``, found on disk without importing anything."""
    for info in pkgutil.iter_modules(path, prefix):
        if info.name.endswith(".__main__"):
            continue  # running it is the point of a __main__ module
        yield info.name
        if info.ispkg:
            yield from walk([os.path.join(path[0], info.name.rpartition(".")[2])], info.name + ".")


MODULES = ["outrelay", *sorted(set(walk(list(outrelay.__path__), "outrelay.")))]


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str) -> None:
    proc = run_python("import importlib, sys; importlib.import_module(sys.argv[1])", module)
    assert proc.returncode == 0, proc.stderr
