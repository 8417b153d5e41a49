"""Which asyncio event loop a component runs on: the standard one or uvloop (``--loop``).

``outrelay relay``, ``agent`` and ``controller`` take ``--loop
auto|asyncio|uvloop`` (``OUTRELAY_<CMD>_LOOP``). ``auto`` is uvloop when it
is installed (``pip install 'outrelay[fast]'``) and the standard loop
otherwise; ``uvloop`` when it is not installed is a usage error.

The default is ``asyncio``: on the QUIC transport uvloop measured slower,
on TCP + TLS + yamux faster (docs/performance.md has the figures). Its clock
(``loop.time()``) and its timers have libuv's 1 ms resolution, while aioquic
paces packets and measures RTT in microseconds: pacing timers below 1 ms
fire at once and are re-armed until the clock ticks.

:func:`run` replaces ``asyncio.run`` at each component's entry point; it logs
the loop it runs on at debug level (``event loop`` with ``loop=uvloop|asyncio``),
so a start-up error stays the only line on stderr.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from outrelay.observe.log import kv

__all__ = ["CHOICES", "DEFAULT", "LoopError", "available", "resolve", "run", "running"]

T = TypeVar("T")

#: The values of ``--loop``.
CHOICES = ("auto", "asyncio", "uvloop")
#: ``--loop`` when not given (see the module docstring for why not ``auto``).
DEFAULT = "asyncio"
#: How to get uvloop, in the error for ``--loop uvloop`` without it.
INSTALL_HINT = "pip install 'outrelay[fast]' (or uvloop)"

log = logging.getLogger("outrelay.loop")


class LoopError(ValueError):
    """A loop that cannot be used here (unknown name, or uvloop not installed)."""


def available() -> bool:
    """Whether uvloop can be imported (looked up, not imported)."""
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """``auto``/``asyncio``/``uvloop`` -> the loop to use, ``"asyncio"`` or ``"uvloop"``.

    Raises:
        LoopError: an unknown choice, or ``uvloop`` while it is not installed.
    """
    name = choice.strip().lower()
    if name not in CHOICES:
        raise LoopError(f"unknown event loop {choice!r} (want one of {', '.join(CHOICES)})")
    if name == "auto":
        return "uvloop" if available() else "asyncio"
    if name == "uvloop" and not available():
        raise LoopError(f"uvloop is not installed: {INSTALL_HINT}, or use --loop asyncio")
    return name


def _factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None  # asyncio.Runner's own: exactly what asyncio.run does


def running() -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop running the calling coroutine."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], choice: str = DEFAULT) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names (see :func:`resolve`).

    Raises LoopError (``main`` is closed, never awaited) when the loop
    cannot be used.
    """
    try:
        name = resolve(choice)
        factory = _factory(name)
    except BaseException:
        main.close()
        raise

    async def logged() -> T:
        log.debug("event loop", extra=kv(loop=running()))
        return await main

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(logged())
