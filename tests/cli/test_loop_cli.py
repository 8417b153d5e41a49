"""``--loop auto|asyncio|uvloop`` on relay, agent and controller (``outrelay.loop``).

The option is checked while parsing: an unknown loop, or ``uvloop`` where
it is not installed, is a usage error (exit 2, one ``Error:`` line naming
--loop) before the command does anything. "Not installed" is made real for
the test by blocking the import (``sys.modules['uvloop'] = None``).
"""

from __future__ import annotations

import asyncio
import sys

import pytest
from click.testing import CliRunner

from outrelay import loop as loops
from outrelay.cli import cli

pytestmark = pytest.mark.timeout(60)

COMMANDS = ("relay", "agent", "controller")
needs_uvloop = pytest.mark.skipif(not loops.available(), reason="uvloop is not installed")


@pytest.fixture
def no_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import uvloop`` fail as if it were not installed."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_loop_option_is_documented_in_help(command: str) -> None:
    code, out = invoke(command, "--help")
    assert code == 0, out
    text = " ".join(out.split())
    assert "--loop [auto|asyncio|uvloop]" in text
    assert "uvloop when installed" in text
    assert "[default: asyncio]" in text.split("--loop", 1)[1]


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_loop_is_a_one_line_usage_error(command: str) -> None:
    code, out = invoke(command, "--loop", "trio")
    assert code == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith("Error: Invalid value for '--loop'"), out
    assert "Traceback" not in out


@pytest.mark.parametrize("command", COMMANDS)
def test_uvloop_when_not_installed_is_a_one_line_usage_error(command: str, no_uvloop: None) -> None:
    code, out = invoke(command, "--loop", "uvloop")
    assert code == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert "'--loop'" in lines[0] and "uvloop is not installed" in lines[0], out
    assert "--loop asyncio" in lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_uvloop_from_the_env_var_when_not_installed_is_a_usage_error(
    command: str, no_uvloop: None
) -> None:
    code, out = invoke(command, env={f"OUTRELAY_{command.upper()}_LOOP": "uvloop"})
    assert code == 2, out
    assert "uvloop is not installed" in out


def test_resolve_auto_asyncio_uvloop() -> None:
    assert loops.resolve("asyncio") == "asyncio"
    assert loops.resolve(" AsyncIO ") == "asyncio"
    assert loops.resolve("auto") == ("uvloop" if loops.available() else "asyncio")
    with pytest.raises(loops.LoopError, match="unknown event loop"):
        loops.resolve("trio")


def test_resolve_auto_falls_back_to_asyncio_without_uvloop(no_uvloop: None) -> None:
    assert not loops.available()
    assert loops.resolve("auto") == "asyncio"
    with pytest.raises(loops.LoopError, match="uvloop is not installed"):
        loops.resolve("uvloop")


async def _which() -> str:
    await asyncio.sleep(0)
    return loops.running()


def test_run_on_the_standard_loop() -> None:
    assert loops.run(_which(), "asyncio") == "asyncio"
    assert loops.run(_which()) == "asyncio"  # the default


@needs_uvloop
def test_run_on_uvloop() -> None:
    assert loops.run(_which(), "uvloop") == "uvloop"
    assert loops.run(_which(), "auto") == "uvloop"


def test_run_refusing_uvloop_closes_the_coroutine(no_uvloop: None) -> None:
    coro = _which()
    with pytest.raises(loops.LoopError):
        loops.run(coro, "uvloop")
    assert coro.cr_frame is None  # closed, so no "never awaited" warning
