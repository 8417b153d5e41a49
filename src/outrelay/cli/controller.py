"""``outrelay controller``: run the control plane (thin over ``ControllerConfig``)."""

from __future__ import annotations

import click

from outrelay.cli import fail, log_options
from outrelay.cli.types import DURATION
from outrelay.controller.config import ControllerConfig


@click.command()
@click.option("--listen", default="127.0.0.1:7444", show_default=True, help="gRPC address (mTLS).")
@click.option("--db", default="outrelay-controller.db", show_default=True, help="SQLite file.")
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
def controller(**options: object) -> None:
    """Run the controller: Registry, Policy, Audit and Enrollment over gRPC.

    Serves mTLS by default: give --cert, --key and --ca. Stops gracefully on
    SIGINT/SIGTERM.
    """
    from outrelay.controller.server import run
    from outrelay.controller.store import StoreError
    from outrelay.errors import OutRelayError
    from outrelay.observe import setup_logging

    config = ControllerConfig(**options)  # type: ignore[arg-type]
    if not config.insecure:
        missing = [f"--{n}" for n in ("cert", "key", "ca") if not getattr(config, n)]
        if missing:
            fail(f"{', '.join(missing)} required (or --insecure for plaintext)", usage=True)
    setup_logging(config.log_level, config.log_format)
    try:
        run(config)
    except StoreError as exc:
        fail(f"open store: {exc}")
    except OutRelayError as exc:
        fail(str(exc))
