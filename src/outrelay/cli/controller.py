"""``outrelay controller``: run the control plane; ``controller backup``: copy its database.

Thin over ``ControllerConfig``/``controller.server.run`` and
``controller.dbfile.backup``; errors map to exit codes in ``cli.errors``.
"""

from __future__ import annotations

from pathlib import Path

import click

from outrelay.cli import exit_codes, log_options, loop_option
from outrelay.cli.types import DURATION
from outrelay.controller.config import ControllerConfig


@click.group(invoke_without_command=True)
@click.option("--listen", default="127.0.0.1:7444", show_default=True, help="gRPC address (mTLS).")
@click.option(
    "--db",
    default="outrelay-controller.db",
    show_default=True,
    help="SQLite file (checked with PRAGMA quick_check at start; a corrupt file is refused).",
)
@click.option("--cert", type=click.Path(dir_okay=False), help="Controller certificate (PEM).")
@click.option("--key", type=click.Path(dir_okay=False), help="Controller private key (PEM).")
@click.option("--ca", type=click.Path(dir_okay=False), help="CA certificate clients must chain to.")
@click.option(
    "--ca-key",
    type=click.Path(dir_okay=False),
    help="CA private key; enables the Enrollment service.",
)
@click.option(
    "--enroll-listen",
    default="127.0.0.1:7446",
    show_default=True,
    help="TLS-only address for Enrollment.Enroll ('' disables).",
)
@click.option(
    "--insecure", is_flag=True, help="Plaintext gRPC without authentication (local only)."
)
@click.option(
    "--debug-listen", default="127.0.0.1:9101", show_default=True, help="Debug HTTP ('' disables)."
)
@log_options
@loop_option
@click.option("--metrics-dump", default="", help="Append metrics snapshots (JSONL) to this file.")
@click.option("--metrics-interval", type=DURATION, default="10s", show_default=True)
@click.option(
    "--audit-retention",
    type=DURATION,
    default="30d",
    show_default=True,
    help="Delete audit events older than this (0 keeps all).",
)
@click.option(
    "--relay-heartbeat",
    type=DURATION,
    default="10s",
    show_default=True,
    help="Expected UpsertRelay interval; 3 missed makes a relay stale.",
)
@click.option("--watch-queue", type=click.IntRange(1, 1_000_000), default=64, show_default=True)
@click.option("--shutdown-grace", type=DURATION, default="5s", show_default=True)
@click.option(
    "--ready-file",
    default="",
    help='Write {"grpc": "HOST:PORT", "debug": …, "enroll": …} here once serving.',
)
@click.pass_context
def controller(ctx: click.Context, **options: object) -> None:
    """Run the controller: Registry, Policy, Audit and Enrollment over gRPC.

    Serves mTLS by default: give --cert, --key and --ca. Every flag is
    checked (addresses, TLS files, the database's directory) before the
    database is opened or created; a database that fails PRAGMA quick_check
    is refused (exit 1). Stops gracefully on SIGINT/SIGTERM.

    `outrelay controller backup --db FILE --to FILE` copies the database
    while the controller runs.
    """
    if ctx.invoked_subcommand is not None:
        return
    from outrelay.controller.server import check, run
    from outrelay.observe import setup_logging

    loop = str(options.pop("loop"))
    config = ControllerConfig(**options)  # type: ignore[arg-type]
    with exit_codes():
        check(config)  # every flag, before any log line or file
        setup_logging(config.log_level, config.log_format)
        run(config, loop=loop)


@controller.command()
@click.option(
    "--db",
    envvar=["OUTRELAY_CONTROLLER_BACKUP_DB", "OUTRELAY_CONTROLLER_DB"],
    default="outrelay-controller.db",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The controller's SQLite file (it may be running).",
)
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(path_type=Path),
    help="Backup file to write (a single self-contained SQLite file).",
)
@click.option("--force", is_flag=True, help="Replace an existing --to file.")
def backup(db: Path, target: Path, force: bool) -> None:
    """Copy the database consistently, even while the controller runs.

    SQLite's online backup API copies a snapshot to a temporary file next
    to --to, which is checked (PRAGMA quick_check) and renamed into place.
    Restore: stop the controller, replace --db with the copy (remove the old
    file's -wal and -shm), start it; or start a controller with --db on the
    copy. See docs/controller.md.
    """
    from outrelay.controller.dbfile import backup as copy

    with exit_codes():
        size = copy(db, target, force=force)
    click.echo(f"backed up {db} to {target} ({size} bytes, quick_check ok)", err=True)
