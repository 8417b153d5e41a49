"""``outrelay relay``: run a relay (thin over ``RelayConfig`` and ``relay.server.run``)."""

from __future__ import annotations

import click

from outrelay.cli import exit_codes, log_options, loop_option
from outrelay.cli.errors import check_tls_files
from outrelay.cli.types import DURATION, SIZE


@click.command()
@click.option("--listen", default="127.0.0.1:7443", show_default=True, help="QUIC (UDP) address.")
@click.option(
    "--listen-tcp",
    default="",
    metavar="HOST:PORT",
    help="Also accept agents over TCP + TLS 1.3 + yamux here (the fast path, and for "
    "networks that block UDP); same certificates, role checks and services as QUIC "
    "['' = disabled].",
)
@click.option("--cert", default="", help="Relay certificate (PEM). Required.")
@click.option("--key", default="", help="Relay private key (PEM). Required.")
@click.option("--ca", default="", help="CA bundle client certificates must chain to. Required.")
@click.option(
    "--controller", default="127.0.0.1:7444", show_default=True, help="Controller gRPC address."
)
@click.option("--controller-ca", default="", help="CA of the controller's certificate [--ca].")
@click.option(
    "--controller-server-name",
    default="",
    help="Ignored (a warning says so): the controller's certificate is checked for its "
    "role name controller.outrelay.invalid.",
)
@click.option(
    "--insecure-controller", is_flag=True, help="Plaintext gRPC to the controller (local only)."
)
@click.option(
    "--relay-id",
    default="",
    help="Relay id for the controller [the id in --cert's relay URI SAN; "
    "a different value is refused].",
)
@click.option("--region", default="local", show_default=True, help="Region sent to the controller.")
@click.option("--advertise", default="", help="Endpoint announced in UpsertRelay [bound --listen].")
@click.option(
    "--tenant",
    default="",
    help="Comma-separated tenants whose policies are enforced (closed world: "
    "no rule, no stream). Required unless --no-policy.",
)
@click.option(
    "--no-policy",
    is_flag=True,
    help="Run without policy and audit: every agent the CA signed may open every "
    "service. Logged as a WARNING and shown as outrelay_relay_policy_enforced 0.",
)
@click.option(
    "--debug-listen", default="127.0.0.1:9100", show_default=True, help="Debug HTTP ('' disables)."
)
@click.option("--metrics-dump", default="", help="Append metrics snapshots (JSONL) to this file.")
@click.option("--metrics-interval", type=DURATION, default="10s", show_default=True)
@log_options
@loop_option
@click.option(
    "--window", type=SIZE, default="1MiB", show_default=True, help="Bytes held per stream."
)
@click.option(
    "--connection-window",
    type=SIZE,
    default="16MiB",
    show_default=True,
    help="Bytes held per connection.",
)
@click.option(
    "--heartbeat", type=DURATION, default="10s", show_default=True, help="UpsertRelay period."
)
@click.option(
    "--resume-window",
    type=DURATION,
    default="30s",
    show_default=True,
    help="How long a STREAM_RESUME half waits for its partner.",
)
@click.option(
    "--resolve-cache-ttl",
    type=DURATION,
    default="30s",
    show_default=True,
    help="Age up to which a Resolve answer is used while the controller is unreachable.",
)
@click.option(
    "--max-streams-per-caller",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Concurrent streams one caller identity may have to one provider identity "
    "(all its connections together); more are refused at once with 503.",
)
@click.option(
    "--retry",
    type=click.Choice(["auto", "always", "never"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="QUIC Retry (address validation) for new connections: 'auto' once "
    "--retry-threshold handshakes are in progress, 'always', or 'never'.",
)
@click.option(
    "--retry-threshold",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="Handshakes in progress from which --retry auto answers new Initials with Retry.",
)
@click.option(
    "--max-half-open",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Most QUIC handshakes in progress; new Initials beyond are dropped (no state kept).",
)
@click.option(
    "--ready-file",
    default="",
    help='Write {"quic": "HOST:PORT", "tcp": …, "debug": …, "relay_id": …} here once serving '
    '("tcp" only with --listen-tcp).',
)
def relay(**options: object) -> None:
    """Run a relay: accept agents over mTLS QUIC (and TCP) and splice their streams.

    Needs --cert, --key, --ca and --tenant (or an explicit --no-policy); talks
    to the controller at --controller over mTLS with the same certificate.
    May start before the controller: it retries UpsertRelay with backoff (a
    WARN line per attempt) and serves no agent until the controller answered
    and every tenant's policy snapshot arrived. Stops gracefully on
    SIGINT/SIGTERM. Exit 2: usage (missing flag, unreadable credentials,
    --relay-id differing from the certificate); 1: runtime failure.
    """
    from outrelay.observe import setup_logging
    from outrelay.relay.config import ConfigError, RelayConfig
    from outrelay.relay.server import StartError, run
    from outrelay.tlsfiles import read_file

    loop = str(options.pop("loop"))
    config = RelayConfig(**options)  # type: ignore[arg-type]
    with exit_codes(usage=(ConfigError,), runtime=(StartError,)):
        config.check()
        check_tls_files(config.cert, config.key, config.ca)
        if config.controller_ca:
            read_file(config.controller_ca, "--controller-ca")
        setup_logging(config.log_level, config.log_format)
        run(config, loop=loop)
