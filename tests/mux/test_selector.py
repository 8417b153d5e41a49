"""The yamux selector: compiled by default when built, pure on request or when absent."""

from __future__ import annotations

import pytest

from test_selection import is_built, run_python

from .conftest import COMPILED, _has_source

CODE = (
    "import outrelay.mux as m;"
    "print(m.IMPLEMENTATION, m.YamuxSession.__module__, m.decode_header.__module__)"
)


def test_compiled_yamux_is_the_default_when_built() -> None:
    if not is_built(COMPILED):
        pytest.skip(f"{COMPILED} is not built")
    for env in ({}, {"OUTRELAY_REQUIRE_EXTENSIONS": "1"}):
        proc = run_python(CODE, **env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["compiled", COMPILED, COMPILED]


def test_no_extensions_selects_the_pure_yamux() -> None:
    proc = run_python(CODE, OUTRELAY_NO_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stderr
    pure = "outrelay.mux._session_py"
    assert proc.stdout.split() == ["pure", pure, pure]


def test_a_tree_without_the_compiled_source_falls_back_to_pure_even_when_required() -> None:
    if _has_source():
        pytest.skip("the tree has the compiled twin's source: a missing build must fail")
    proc = run_python(CODE, OUTRELAY_REQUIRE_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "pure"
