"""The ``outrelay`` command line: a thin click layer over each component.

Subcommands live in their own modules and are imported only when used, so
``outrelay --help`` stays fast and one component's dependencies never slow
another's start-up. Every option also reads an ``OUTRELAY_<CMD>_<OPTION>``
environment variable (click's ``auto_envvar_prefix``).

Exit codes: 0 success, 1 a server or runtime error, 2 a usage error. Errors
are one line on stderr, never a traceback for a user mistake.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from outrelay import __version__

F = TypeVar("F", bound=Callable[..., Any])

#: command name -> "module:attribute"; a module not written yet is left out.
COMMANDS: dict[str, str] = {
    "controller": "outrelay.cli.controller:controller",
    "relay": "outrelay.cli.relay:relay",
    "agent": "outrelay.cli.agent:agent",
    "pki": "outrelay.cli.pki:pki",
    "enroll": "outrelay.cli.pki:enroll",
    "policy": "outrelay.cli.ops:policy",
    "audit": "outrelay.cli.ops:audit",
    "registry": "outrelay.cli.ops:registry",
    "relays": "outrelay.cli.ops:relays",
}


class UsageFailure(click.UsageError):
    """A user mistake found after parsing (bad file, bad value): exit code 2."""


class RuntimeFailure(click.ClickException):
    """The command could not do its job (server error, I/O): exit code 1."""

    exit_code = 1


def fail(message: str, *, usage: bool = False) -> NoReturn:
    """Stop the command with a one-line error (exit 2 if ``usage`` else 1)."""
    if usage:
        raise UsageFailure(message)
    raise RuntimeFailure(message)


def log_options(fn: F) -> F:
    """Add ``--log-format`` and ``--log-level``, shared by the long-running commands."""
    fn = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warn", "error"], case_sensitive=False),
        default="info",
        show_default=True,
    )(fn)
    return click.option(
        "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
    )(fn)


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"auto_envvar_prefix": "OUTRELAY", "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="outrelay")
def cli() -> None:
    """OutRelay: an outbound-only service relay.

    Agents dial out to a relay over mTLS QUIC; the relay splices consumer and
    provider streams after the controller's policy allows them. Run each
    component, manage policy, query audit and issue identities from here.
    """


def main(argv: list[str] | None = None, **kwargs: Any) -> Any:
    """Entry point of the ``outrelay`` script."""
    return cli.main(args=argv, prog_name="outrelay", **kwargs)
