"""Operator commands: ``policy``, ``audit``, ``registry`` and ``relays``.

Each talks to the controller over mTLS as an operator (an ``admin`` leaf):
``--controller HOST:PORT`` and ``--cert/--key/--ca`` (or ``OUTRELAY_CONTROLLER``,
``OUTRELAY_CERT``, ``OUTRELAY_KEY``, ``OUTRELAY_CA``); ``--insecure`` talks
plaintext to a controller started with ``--insecure``. ``--output`` picks a
table (default) or JSON. An RPC error prints ``Error: CODE: details`` and
exits 1; a usage error exits 2.

``--tenant`` may be left out: the controller then uses the tenant of the
operator certificate (an operator may only name its own tenant anyway). A
controller run with ``--insecure`` has no certificate to read it from and
needs ``--tenant``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from outrelay.cli import F, exit_codes, fail
from outrelay.cli.errors import check_hostport
from outrelay.cli.types import DURATION

if TYPE_CHECKING:
    import grpc

RPC_TIMEOUT = 10.0

TENANT_HELP = "Tenant (default: the tenant of the operator certificate)."


@dataclass(frozen=True)
class ClientConfig:
    """How to reach the controller."""

    controller: str = "127.0.0.1:7444"
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    insecure: bool = False
    output: str = "table"


def client_options(fn: F) -> F:
    """Add the connection and output options shared by every operator command."""
    options = [
        click.option(
            "--controller",
            envvar="OUTRELAY_CONTROLLER",
            default="127.0.0.1:7444",
            show_default=True,
            help="Controller gRPC address.",
        ),
        click.option("--cert", envvar="OUTRELAY_CERT", help="Operator certificate (PEM)."),
        click.option("--key", envvar="OUTRELAY_KEY", help="Operator private key (PEM)."),
        click.option("--ca", envvar="OUTRELAY_CA", help="CA certificate (PEM)."),
        click.option(
            "--insecure",
            envvar="OUTRELAY_INSECURE",
            is_flag=True,
            help="Plaintext, for a controller run with --insecure.",
        ),
        click.option(
            "--output",
            "-o",
            type=click.Choice(["table", "json"]),
            default="table",
            show_default=True,
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _client(kwargs: dict[str, Any]) -> ClientConfig:
    keys = ("controller", "cert", "key", "ca", "insecure", "output")
    return ClientConfig(**{k: kwargs.pop(k) for k in keys})


def open_channel(cfg: ClientConfig) -> grpc.Channel:
    """A channel to the controller; exits 2 for a malformed --controller or bad TLS files."""
    import grpc  # here, not at the top: ``outrelay --help`` needs none of it

    from outrelay.tlsfiles import read_tls_files

    check_hostport("--controller", cfg.controller)
    if cfg.insecure:
        return grpc.insecure_channel(cfg.controller)
    missing = [f"--{n}" for n in ("cert", "key", "ca") if not getattr(cfg, n)]
    if missing:
        fail(f"{', '.join(missing)} required (or --insecure)", usage=True)
    with exit_codes():
        tls = read_tls_files(cfg.cert, cfg.key, cfg.ca)
    from outrelay.identity.roles import CONTROLLER_NAME_OPTION

    # The controller's role name is the TLS name checked, whatever address is
    # dialled: a relay's or agent's certificate cannot pass for the controller.
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
    return grpc.secure_channel(cfg.controller, credentials, options=[CONTROLLER_NAME_OPTION])


def rpc_errors(fn: F) -> F:
    """Turn gRPC errors into one line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import grpc

        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            from outrelay.identity.roles import explain_controller_refusal

            fail(f"{exc.code().name}: {explain_controller_refusal(exc.details() or '')}")

    return wrapper  # type: ignore[return-value]


def emit(cfg: ClientConfig, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print rows as an aligned table or a JSON array."""
    if cfg.output == "json":
        click.echo(json.dumps(list(rows), indent=2))
        return
    if not rows:
        return
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _ms_to_text(ms: int) -> str:
    if ms <= 0:
        return "-"
    return (
        dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


# -- policy -----------------------------------------------------------------

_P2P = {"allowed": 0, "forbidden": 1, "required": 2}
_RELAY = {"splice": 0, "forward": 1}
_ACTION = {"dial": 0, "bind": 1}


@click.group()
def policy() -> None:
    """Add, list and remove policy rules.

    \b
    Two kinds of rule, closed world each (no matching ALLOW: refused):
      dial  who may open a stream to a service (caller -> service name),
            and callee-side which consumers a provider accepts
      bind  who may provide (register) a service (provider -> service name)
    A dial rule never allows a registration and a bind rule never a stream.
    """


def _rule_row(rule: Any) -> dict[str, Any]:
    from outrelay.policy.convert import action_of, p2p_of, relay_mode_of
    from outrelay.proto import policy_pb2 as pb

    return {
        "id": rule.id,
        "caller": rule.caller_pattern,
        "target": rule.target_pattern,
        "action": action_of(rule.action).name.lower(),
        "method": rule.method_pattern or "*",
        "decision": "deny" if rule.decision == pb.DECISION_DENY else "allow",
        "p2p": p2p_of(rule.p2p_mode).name.lower(),
        "relay": relay_mode_of(rule.relay_mode).name.lower(),
        "expires": _ms_to_text(rule.expires_unix_ms),
        "created": _ms_to_text(rule.created_at_unix_ms),
    }


@policy.command("add")
@click.option("--tenant", default="", help=TENANT_HELP)
@click.option(
    "--action",
    type=click.Choice(sorted(_ACTION), case_sensitive=False),
    default="dial",
    show_default=True,
    help="dial: who may open streams to the target; bind: who may provide (register) it.",
)
@click.option(
    "--caller",
    required=True,
    help="Caller identity glob: '*' or 'outrelay://...' ('*' matches any run). "
    "For --action bind, the provider agent's identity.",
)
@click.option(
    "--target",
    required=True,
    help="Service name glob (a-z, 0-9, '-', '*'); a dial rule may also name a "
    "consumer identity glob (callee side).",
)
@click.option("--method", default="", help="Method glob; empty matches any (dial rules only).")
@click.option(
    "--decision", required=True, type=click.Choice(["allow", "deny"], case_sensitive=False)
)
@click.option("--expires", type=DURATION, default=0.0, help="Lifetime (e.g. 24h); 0 never expires.")
@click.option(
    "--p2p-mode", type=click.Choice(sorted(_P2P), case_sensitive=False), default="allowed"
)
@click.option(
    "--relay-mode", type=click.Choice(sorted(_RELAY), case_sensitive=False), default="splice"
)
@click.option("--id", "rule_id", default="", help="Rule id (default: the controller picks a UUID).")
@client_options
@rpc_errors
def policy_add(**kw: Any) -> None:
    """Add a rule; prints its id.

    \b
    outrelay policy add --caller '*' --target web --decision allow
    outrelay policy add --action bind --decision allow \\
        --caller 'outrelay://acme/agent/<uuid>' --target web
    """
    from outrelay.policy.names import InvalidPattern, check_caller_pattern, check_target_pattern
    from outrelay.proto import policy_pb2 as pb
    from outrelay.proto import policy_pb2_grpc as pb_grpc

    action = _ACTION[kw["action"].lower()]
    try:
        check_caller_pattern(kw["caller"], "--caller")
        check_target_pattern(kw["target"], bind=action == _ACTION["bind"], field="--target")
    except InvalidPattern as exc:
        fail(str(exc), usage=True)
    if action == _ACTION["bind"] and kw["method"]:
        fail("--method: bind rules have no method", usage=True)
    cfg = _client(kw)
    expires = int((time.time() + kw["expires"]) * 1000) if kw["expires"] > 0 else 0
    rule = pb.PolicyRule(
        id=kw["rule_id"],
        tenant=kw["tenant"],
        caller_pattern=kw["caller"],
        target_pattern=kw["target"],
        method_pattern=kw["method"],
        decision=pb.DECISION_DENY if kw["decision"].lower() == "deny" else pb.DECISION_ALLOW,
        expires_unix_ms=expires,
        p2p_mode=_P2P[kw["p2p_mode"].lower()],  # type: ignore[arg-type]
        relay_mode=_RELAY[kw["relay_mode"].lower()],  # type: ignore[arg-type]
        action=action,  # type: ignore[arg-type]
    )
    with open_channel(cfg) as ch:
        resp = pb_grpc.PolicyStub(ch).AddPolicy(pb.AddPolicyRequest(rule=rule), timeout=RPC_TIMEOUT)
    if cfg.output == "json":
        click.echo(json.dumps({"id": resp.id}))
    else:
        click.echo(resp.id)


@policy.command("list")
@click.option("--tenant", default="", help=TENANT_HELP)
@client_options
@rpc_errors
def policy_list(**kw: Any) -> None:
    """List the tenant's rules, oldest first."""
    from outrelay.proto import policy_pb2 as pb
    from outrelay.proto import policy_pb2_grpc as pb_grpc

    cfg = _client(kw)
    with open_channel(cfg) as ch:
        resp = pb_grpc.PolicyStub(ch).ListPolicies(
            pb.ListPoliciesRequest(tenant=kw["tenant"]), timeout=RPC_TIMEOUT
        )
    columns = ("id", "caller", "target", "action", "method", "decision", "p2p", "relay", "expires")
    emit(cfg, [_rule_row(r) for r in resp.rules], columns)


@policy.command("remove")
@click.option("--tenant", default="", help=TENANT_HELP)
@click.option("--id", "rule_id", required=True)
@client_options
@rpc_errors
def policy_remove(**kw: Any) -> None:
    """Remove a rule; exit 1 if there is no such rule."""
    from outrelay.proto import policy_pb2 as pb
    from outrelay.proto import policy_pb2_grpc as pb_grpc

    cfg = _client(kw)
    with open_channel(cfg) as ch:
        resp = pb_grpc.PolicyStub(ch).RemovePolicy(
            pb.RemovePolicyRequest(tenant=kw["tenant"], id=kw["rule_id"]), timeout=RPC_TIMEOUT
        )
    if not resp.removed:
        where = f"tenant {kw['tenant']!r}" if kw["tenant"] else "your tenant"
        fail(f"no such policy {kw['rule_id']!r} in {where}")
    click.echo(json.dumps({"removed": True}) if cfg.output == "json" else "removed")


# -- audit ------------------------------------------------------------------


@click.group()
def audit() -> None:
    """Query the audit log."""


def _event_row(ev: Any) -> dict[str, Any]:
    from outrelay.proto import policy_pb2 as pb

    return {
        "time": _ms_to_text(ev.ts_unix_ms),
        "ts_unix_ms": ev.ts_unix_ms,
        "decision": "deny" if ev.decision == pb.DECISION_DENY else "allow",
        "caller": ev.caller,
        "target": ev.target,
        "method": ev.method,
        "reason": ev.reason,
        "stream_id": ev.stream_id,
    }


def follow_events(
    query: Callable[[int], list[Any]], interval_s: float, since_ms: int
) -> Iterator[Any]:
    """Poll ``query(since_ms)`` (newest first) and yield each new event once, oldest first.

    Events at the boundary millisecond are de-duplicated by content, so two
    identical events in the same millisecond show once.
    """
    seen_at_edge: set[bytes] = set()
    edge = since_ms
    while True:
        fresh = []
        for ev in reversed(query(edge)):
            key = ev.SerializeToString(deterministic=True)
            if ev.ts_unix_ms == edge and key in seen_at_edge:
                continue
            fresh.append((ev, key))
        for ev, key in fresh:
            if ev.ts_unix_ms > edge:
                edge, seen_at_edge = ev.ts_unix_ms, set()
            seen_at_edge.add(key)
            yield ev
        time.sleep(interval_s)


@audit.command("query")
@click.option("--tenant", default="", help=TENANT_HELP)
@click.option("--caller", default="", help="Exact caller filter.")
@click.option("--target", default="", help="Exact target filter.")
@click.option("--since", type=DURATION, default=0.0, help="Only events newer than this (e.g. 1h).")
@click.option("--limit", type=click.IntRange(0, 2**31 - 1), default=100, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they arrive.")
@click.option("--interval", type=DURATION, default=1.0, help="Poll interval with --follow.")
@client_options
@rpc_errors
def audit_query(**kw: Any) -> None:
    """Print audit events, newest first (or tail them with --follow)."""
    from outrelay.proto import audit_pb2 as pb
    from outrelay.proto import audit_pb2_grpc as pb_grpc

    cfg = _client(kw)
    since = int((time.time() - kw["since"]) * 1000) if kw["since"] > 0 else 0
    columns = ("time", "decision", "caller", "target", "method", "reason")
    with open_channel(cfg) as ch:
        stub = pb_grpc.AuditStub(ch)

        def query(since_ms: int, limit: int) -> list[Any]:
            req = pb.QueryAuditRequest(
                tenant=kw["tenant"],
                caller=kw["caller"],
                target=kw["target"],
                since_unix_ms=since_ms,
                limit=limit,
            )
            return list(stub.Query(req, timeout=RPC_TIMEOUT))

        events = query(since, kw["limit"])
        if not kw["follow"]:
            emit(cfg, [_event_row(e) for e in events], columns)
            return
        # tail: print the backlog oldest first, then one line per new event
        start = max((e.ts_unix_ms for e in events), default=int(time.time() * 1000))
        backlog = list(reversed(events))
        for ev in backlog:
            _print_line(cfg, _event_row(ev), columns)
        skip = {e.SerializeToString(deterministic=True) for e in events if e.ts_unix_ms == start}
        for ev in follow_events(lambda s: query(s, 0), kw["interval"], start):
            if skip:
                key = ev.SerializeToString(deterministic=True)
                if key in skip:
                    skip.discard(key)
                    continue
            _print_line(cfg, _event_row(ev), columns)


def _print_line(cfg: ClientConfig, row: dict[str, Any], columns: Sequence[str]) -> None:
    if cfg.output == "json":
        click.echo(json.dumps(row))
    else:
        click.echo("\t".join(str(row[c]) for c in columns))


# -- registry / relays --------------------------------------------------------


@click.group()
def registry() -> None:
    """Inspect services and their providers."""


def _provider_rows(service: Any) -> list[dict[str, Any]]:
    base = {"service": service.service_name, "service_id": service.service_id}
    if not service.providers:
        return [
            {
                **base,
                "agent_uri": "-",
                "relay_id": "-",
                "relay_region": "-",
                "relay_endpoint": "-",
                "local_addr": "",
                "status": "-",
                "live": False,
                "updated": "-",
                "updated_at_unix_ms": 0,
            }
        ]
    return [
        {
            **base,
            "agent_uri": s.provider.agent_uri,
            "relay_id": s.provider.relay_id,
            "relay_region": s.relay_region or "-",
            "relay_endpoint": s.provider.relay_endpoint or "-",
            "local_addr": s.provider.local_addr,
            "status": "live" if s.live else "stale",
            "live": s.live,
            "updated": _ms_to_text(s.provider.updated_at_unix_ms),
            "updated_at_unix_ms": s.provider.updated_at_unix_ms,
        }
        for s in service.providers
    ]


@registry.command("list")
@click.option("--tenant", default="", help=TENANT_HELP)
@click.option("--service", default="", help="Only this service.")
@client_options
@rpc_errors
def registry_list(**kw: Any) -> None:
    """List the tenant's services, one line per provider (stale ones included)."""
    from outrelay.proto import registry_pb2 as pb
    from outrelay.proto import registry_pb2_grpc as pb_grpc

    cfg = _client(kw)
    with open_channel(cfg) as ch:
        resp = pb_grpc.RegistryStub(ch).ListServices(
            pb.ListServicesRequest(tenant=kw["tenant"]), timeout=RPC_TIMEOUT
        )
    services = [s for s in resp.services if not kw["service"] or s.service_name == kw["service"]]
    rows = [row for s in services for row in _provider_rows(s)]
    columns = ("service", "agent_uri", "relay_id", "relay_region", "status", "updated")
    emit(cfg, rows, columns)


@click.group()
def relays() -> None:
    """Inspect relay instances."""


@relays.command("list")
@client_options
@rpc_errors
def relays_list(**kw: Any) -> None:
    """List every relay with its last heartbeat and whether it is live or stale."""
    from outrelay.proto import registry_pb2 as pb
    from outrelay.proto import registry_pb2_grpc as pb_grpc

    cfg = _client(kw)
    with open_channel(cfg) as ch:
        resp = pb_grpc.RegistryStub(ch).ListRelays(pb.ListRelaysRequest(), timeout=RPC_TIMEOUT)
    rows = [
        {
            "id": r.id,
            "region": r.region or "-",
            "endpoint": r.endpoint,
            "status": "live" if r.live else "stale",
            "live": r.live,
            "last_heartbeat": _ms_to_text(r.last_heartbeat_unix_ms),
            "last_heartbeat_unix_ms": r.last_heartbeat_unix_ms,
        }
        for r in resp.relays
    ]
    emit(cfg, rows, ("id", "region", "endpoint", "status", "last_heartbeat"))
