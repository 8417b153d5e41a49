"""The ``outrelay`` command line: a thin click layer over each component.

Subcommands live in their own modules and are imported only when used, so
``outrelay --help`` stays fast and one component's dependencies never slow
another's start-up. Every option also reads an ``OUTRELAY_<CMD>_<OPTION>``
environment variable (click's ``auto_envvar_prefix``).

Exit codes (one rule, applied by ``outrelay.cli.errors``): 0 success; 2 a
usage error (bad flag value, missing or unreadable file, malformed
HOST:PORT or spec); 1 a runtime failure (cannot bind, controller refused,
corrupt database). Errors are one line on stderr (``Error: …``), never a
traceback for a user mistake. gRPC's own C-core log lines are silenced
unless ``--log-level debug``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from outrelay import __version__
from outrelay import loop as loops
from outrelay.cli.errors import RuntimeFailure, UsageFailure, exit_codes, fail
from outrelay.observe.log import grpc_core_logging

__all__ = [
    "COMMANDS",
    "RuntimeFailure",
    "UsageFailure",
    "cli",
    "exit_codes",
    "fail",
    "log_options",
    "loop_option",
    "main",
]

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


def log_options(fn: F) -> F:
    """Add ``--log-format`` and ``--log-level``, shared by the long-running commands."""
    fn = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warn", "error"], case_sensitive=False),
        default="info",
        show_default=True,
        callback=_grpc_logging,
        help="debug also shows gRPC's C-core log lines (GRPC_VERBOSITY, GRPC_TRACE).",
    )(fn)
    return click.option(
        "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
    )(fn)


def loop_option(fn: F) -> F:
    """Add ``--loop auto|asyncio|uvloop`` (``outrelay.loop``); the value is the loop to use."""
    return click.option(
        "--loop",
        type=click.Choice(loops.CHOICES, case_sensitive=False),
        default=loops.DEFAULT,
        show_default=True,
        callback=_resolve_loop,
        help="Event loop: asyncio (the standard loop), uvloop (pip install "
        "'outrelay[fast]'; 1 ms timers, slower on QUIC: docs/performance.md), or auto: "
        "uvloop when installed, else asyncio.",
    )(fn)


def _resolve_loop(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return loops.resolve(value)
    except loops.LoopError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _grpc_logging(ctx: click.Context, param: click.Parameter, value: str) -> str:
    # runs while parsing, before the command imports grpc
    grpc_core_logging(debug=value.lower() == "debug")
    return value


def _one_line(exc: click.ClickException) -> str:
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use; errors on one line.

    In standalone mode (the ``outrelay`` script, CliRunner) every click
    error is printed as one line ``Error: …`` on stderr with its exit code
    (2 usage, 1 runtime; see ``outrelay.cli.errors``) instead of click's
    usage block. gRPC's C-core logging is silenced before any command runs
    (``--log-level debug`` turns it back on).
    """

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        grpc_core_logging(debug=False)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            click.echo(f"Error: {_one_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

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

    \b
    Exit codes (every command):
      0  success
      2  usage: bad flag value, missing or unreadable file, malformed
         HOST:PORT or spec
      1  runtime: cannot bind, controller refused or unreachable, corrupt
         database
    Errors are one line on stderr: "Error: ...".
    """


def main(argv: list[str] | None = None, **kwargs: Any) -> Any:
    """Entry point of the ``outrelay`` script."""
    return cli.main(args=argv, prog_name="outrelay", **kwargs)
