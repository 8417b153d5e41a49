"""``outrelay agent``: run an agent (thin over :class:`outrelay.agent.RunConfig`).

Exit codes (``outrelay.cli.errors``): 0 after SIGINT/SIGTERM, 1 when a
listener cannot be bound or, with --exit-on-failure, when no relay answers
(or a REGISTER is not acknowledged) at the first attempt, 2 for usage errors
(missing or unreadable --cert/--key/--ca, a bad NAME=HOST:PORT, a bad --uri,
--relay or --relay-uri).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import click

from outrelay import loop as loops
from outrelay.cli import exit_codes, fail, log_options, loop_option
from outrelay.cli.errors import check_tls_files
from outrelay.cli.types import DURATION, SIZE

if TYPE_CHECKING:
    from outrelay.agent.config import Mapping


def _mappings(values: tuple[str, ...], flag: str) -> tuple[Mapping, ...]:
    # Imported here: the agent package is heavy and ``agent --help`` needs none of it.
    from outrelay.agent.config import Mapping

    out = []
    seen: set[str] = set()
    for value in values:
        try:
            mapping = Mapping.parse(value)
        except ValueError as exc:
            fail(f"{flag}: {exc}", usage=True)
        if mapping.name in seen:
            fail(f"{flag}: service {mapping.name!r} given twice", usage=True)
        seen.add(mapping.name)
        out.append(mapping)
    return tuple(out)


@click.command()
@click.option(
    "--relay",
    "relays",
    multiple=True,
    envvar=["OUTRELAY_AGENT_RELAY", "OUTRELAY_AGENT_RELAYS"],
    default=("127.0.0.1:7443",),
    show_default=True,
    help="Relay QUIC HOST:PORT; comma-separated and/or repeated, tried in order.",
)
@click.option(
    "--relay-tcp",
    "relays_tcp",
    multiple=True,
    envvar=["OUTRELAY_AGENT_RELAY_TCP", "OUTRELAY_AGENT_RELAYS_TCP"],
    metavar="HOST:PORT",
    help="Relay TCP+TLS HOST:PORT (the relays' --listen-tcp), paired by position with "
    "--relay; comma-separated and/or repeated.",
)
@click.option(
    "--transport",
    type=click.Choice(["auto", "quic", "tcp"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="auto: happy eyeballs, QUIC first and TCP 250 ms later (at once if QUIC fails), "
    "the first up wins; quic or tcp: that transport only.",
)
@click.option("--cert", type=click.Path(dir_okay=False), help="Agent certificate (PEM). Required.")
@click.option("--key", type=click.Path(dir_okay=False), help="Agent private key (PEM). Required.")
@click.option("--ca", type=click.Path(dir_okay=False), help="CA bundle (PEM). Required.")
@click.option("--uri", default="", help="Agent URI (default: the certificate's first URI SAN).")
@click.option(
    "--server-name",
    default="localhost",
    show_default=True,
    help="Name checked in the relay's certificate, in addition to its relay role.",
)
@click.option(
    "--relay-uri",
    default="",
    metavar="URI",
    help="Pin: accept only the relay whose certificate URI is exactly URI "
    "(outrelay://<region>/relay/<id>) [any relay of the CA].",
)
@click.option(
    "--expose",
    multiple=True,
    metavar="NAME=HOST:PORT",
    help="Provide NAME by dialling the TCP backend HOST:PORT per stream (repeatable).",
)
@click.option(
    "--consume",
    multiple=True,
    metavar="NAME=HOST:PORT",
    help="Listen on HOST:PORT (port 0: any) and send each connection to NAME (repeatable).",
)
@click.option(
    "--window",
    type=click.IntRange(16 * 1024, 1 << 30),
    default=1024 * 1024,
    show_default=True,
    help="Per-stream window in bytes (QUIC receive window and send high-water mark).",
)
@click.option(
    "--resume-window",
    type=DURATION,
    default="30s",
    show_default=True,
    help="How long a stream whose relay was lost may take to resume (0: never resume). "
    "Use the relays' --resume-window.",
)
@click.option(
    "--ring-min",
    type=SIZE,
    default="64KiB",
    show_default=True,
    help="Smallest per-stream ring of unacknowledged bytes.",
)
@click.option(
    "--ring-max",
    type=SIZE,
    default="16MiB",
    show_default=True,
    help="Largest per-stream ring (more unacknowledged bytes: the stream cannot resume).",
)
@click.option(
    "--max-streams-per-caller",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Concurrent incoming streams one caller identity may have here; more get 503.",
)
@click.option(
    "--exit-on-failure",
    is_flag=True,
    help="Exit 1 when no relay answers at start, instead of waiting for one with the "
    "reconnect backoff (later session losses are always retried).",
)
@click.option("--debug-listen", default="", help="Debug HTTP HOST:PORT ('' disables).")
@click.option("--metrics-dump", default="", help="Append metrics snapshots (JSONL) to this file.")
@log_options
@loop_option
@click.option(
    "--ready-file",
    default="",
    help="Write JSON (relay, consumer listener addresses, pid) here once the session is up.",
)
def agent(
    relays: tuple[str, ...],
    relays_tcp: tuple[str, ...],
    transport: str,
    cert: str | None,
    key: str | None,
    ca: str | None,
    uri: str,
    server_name: str,
    relay_uri: str,
    expose: tuple[str, ...],
    consume: tuple[str, ...],
    window: int,
    resume_window: float,
    ring_min: int,
    ring_max: int,
    max_streams_per_caller: int,
    exit_on_failure: bool,
    debug_listen: str,
    metrics_dump: str,
    log_format: str,
    log_level: str,
    loop: str,
    ready_file: str,
) -> None:
    """Run an agent: one mTLS session (QUIC or TCP+TLS) to the first relay that answers.

    With --relay-tcp and --transport auto, each relay is raced: QUIC first,
    TCP after a 250 ms head start (at once when QUIC fails), the first link
    up carries the session and the log says which transport won.

    Exposed services are registered with the relay and each incoming stream
    is bridged to its local backend (404 for an unknown service, 502 when the
    backend refuses). Each connection accepted on a --consume listener is
    opened as a stream to the named service and its bytes follow the open at
    once (early data, no wait for the relay's answer); a rejected stream
    closes the local connection, and so does a connection accepted while no
    relay session is up (at once, never left hanging). The agent may start
    before its relay: it retries with the reconnect backoff (0, 1, 2, 4 ... 30
    s), a WARN line per attempt (--exit-on-failure: exit 1 instead). A lost
    session is re-established with the same backoff, the registrations
    replayed and live streams resumed (their applications see a pause; a
    stream that cannot resume within --resume-window is reset).

    The relay must prove it is one: its certificate's first URI SAN must be a
    relay identity (and exactly --relay-uri if given), else the connection is
    closed before HELLO and the reason logged.
    """
    from outrelay.agent.config import (
        AgentConfig,
        RunConfig,
        check_relay_uri,
        parse_hostport,
        split_relays,
    )
    from outrelay.identity import IdentityError, parse

    missing = [flag for flag, v in (("--cert", cert), ("--key", key), ("--ca", ca)) if not v]
    if missing:
        fail(f"{', '.join(missing)} required", usage=True)
    assert cert and key and ca
    transport = transport.lower()
    relay_list = split_relays(relays)
    tcp_list = split_relays(relays_tcp)
    if transport == "tcp" and not tcp_list:
        fail("--transport tcp needs --relay-tcp", usage=True)
    if transport != "tcp" and not relay_list:
        fail("--relay: no relay address given", usage=True)
    for flag, values in (("--relay", relay_list), ("--relay-tcp", tcp_list)):
        for relay in values:
            try:
                parse_hostport(relay)
            except ValueError as exc:
                fail(f"{flag}: {exc}", usage=True)
    if uri:
        try:
            parse(uri)
        except IdentityError as exc:
            fail(f"--uri: {exc}", usage=True)
    if relay_uri:
        try:
            check_relay_uri(relay_uri)
        except ValueError as exc:
            fail(f"--relay-uri: {exc}", usage=True)
    if debug_listen:
        try:
            parse_hostport(debug_listen)
        except ValueError as exc:
            fail(f"--debug-listen: {exc}", usage=True)
    if ring_min > ring_max:
        fail("--ring-min must not exceed --ring-max", usage=True)
    expose_maps = _mappings(expose, "--expose")
    consume_maps = _mappings(consume, "--consume")
    check_tls_files(cert, key, ca)
    config = RunConfig(
        agent=AgentConfig(
            relays=tuple(relay_list) if transport != "tcp" else (),
            relays_tcp=tuple(tcp_list),
            transport=transport,
            cert=cert,
            key=key,
            ca=ca,
            uri=uri or None,
            server_name=server_name,
            relay_uri=relay_uri or None,
            window=window,
            resume_window=resume_window,
            ring_min=ring_min,
            ring_max=ring_max,
            max_streams_per_caller=max_streams_per_caller,
            exit_on_failure=exit_on_failure,
        ),
        expose=expose_maps,
        consume=consume_maps,
        debug_listen=debug_listen,
        metrics_dump=metrics_dump,
        ready_file=ready_file,
        log_format=log_format,
        log_level=log_level.lower(),
    )
    from outrelay.agent.runner import run
    from outrelay.observe import setup_logging

    setup_logging(config.log_level, config.log_format)
    with exit_codes("agent: ", runtime=(ValueError,)), contextlib.suppress(KeyboardInterrupt):
        loops.run(run(config), loop)
