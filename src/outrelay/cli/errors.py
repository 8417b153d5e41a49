"""One exit-code rule for every ``outrelay`` command, applied in one place.

* **0**: success (a long-running component: stopped by SIGINT/SIGTERM).
* **2, usage**: a bad flag value, a missing or unreadable file (certificate,
  key, CA, database directory), a malformed ``HOST:PORT``, a malformed spec.
* **1, runtime**: the command could not do its job although its input was
  fine: a port cannot be bound, the controller refused or is unreachable,
  the database is corrupt.

Either way the error is **one line on stderr**, ``Error: <message>``, never
a traceback (``LazyGroup.main`` prints click's own usage errors on one line
too). Commands raise our error classes; :func:`exit_codes` turns them into
these click exceptions: :class:`~outrelay.errors.InputError` -> 2, any other
:class:`~outrelay.errors.OutRelayError` -> 1. :func:`fail` stops a command
directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import click

from outrelay.errors import InputError, OutRelayError

#: exit code of a usage error (bad flag value, missing file, malformed spec)
USAGE = 2
#: exit code of a runtime failure
RUNTIME = 1


class UsageFailure(click.ClickException):
    """A user mistake (bad flag value, missing or unreadable file, malformed spec): exit 2."""

    exit_code = USAGE


class RuntimeFailure(click.ClickException):
    """The command could not do its job (cannot bind, server refused, corrupt database): exit 1."""

    exit_code = RUNTIME


def fail(message: str, *, usage: bool = False) -> NoReturn:
    """Stop the command with a one-line error (exit 2 if ``usage`` else 1)."""
    if usage:
        raise UsageFailure(message)
    raise RuntimeFailure(message)


@contextlib.contextmanager
def exit_codes(
    prefix: str = "",
    *,
    usage: tuple[type[BaseException], ...] = (),
    runtime: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Map errors raised inside to one-line click errors with the rule's exit code.

    ``InputError`` and the classes in ``usage`` -> 2; any other
    ``OutRelayError``, the classes in ``runtime`` and ``OSError`` (an I/O
    failure at run time, ``prefix`` before its message) -> 1. ``usage`` and
    ``runtime`` name a component's own error classes that are not
    ``OutRelayError`` s.
    """
    try:
        yield
    except click.ClickException:
        raise
    except (InputError, *usage) as exc:  # type: ignore[misc]
        raise UsageFailure(str(exc)) from None
    except (OutRelayError, *runtime) as exc:  # type: ignore[misc]
        raise RuntimeFailure(str(exc)) from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise RuntimeFailure(f"{prefix}{where}{exc.strerror or exc}") from None


def check_hostport(flag: str, value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) of ``flag``; exit 2 if malformed."""
    from outrelay.controller.config import check_hostport as parse

    try:
        return parse(flag, value)
    except ValueError as exc:
        fail(str(exc), usage=True)


def check_tls_files(
    cert: str | Path | None,
    key: str | Path | None,
    ca: str | Path | None,
    *,
    flags: tuple[str, str, str] = ("--cert", "--key", "--ca"),
) -> None:
    """Exit 2 unless the three files exist, parse, and the key matches the certificate."""
    from outrelay.tlsfiles import read_tls_files

    with exit_codes():
        read_tls_files(cert, key, ca, flags=flags)
