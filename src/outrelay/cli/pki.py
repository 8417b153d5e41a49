"""``outrelay pki ...`` and ``outrelay enroll``: the CA, leaves, tokens, dev bundles.

Thin over :mod:`outrelay.pki`. Files: certificates 0644, private keys 0600,
directories created 0700, all written atomically. Paths and identities go to
stderr; the only thing on stdout is a minted token (so scripts can capture
it). A user mistake is a one-line error with exit code 2; a refused or failed
server call exits 1.

Where the keys live: ``<ca-dir>/ca.key`` is the CA key;
``<ca-dir>/enrollment.db`` (SQLite, 0600) holds the token-signing Ed25519 key
and the used token ids for ``pki token --ca-dir``; a controller verifying
those tokens must use the same database.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from outrelay import __version__
from outrelay.cli import fail
from outrelay.cli.errors import check_hostport

# The identity and pki packages (cryptography, jwt, apsw) and asyncio are
# imported inside the commands: ``outrelay --help`` needs none of them.
if TYPE_CHECKING:
    from outrelay.pki.ca import CA

TOKEN_DB = "enrollment.db"
SERVER_NAME_HELP = (
    "Deprecated, ignored: the controller's certificate is checked for its role "
    "name controller.outrelay.invalid whatever address is dialled."
)
_DURATION = re.compile(r"(\d+)(s|m|h|d)?")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> dt.timedelta:
    """``90``, ``90s``, ``15m``, ``1h``, ``30d`` -> timedelta.

    Raises:
        ValueError: anything else.
    """
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"invalid duration {text!r} (want e.g. 90s, 15m, 1h, 30d)")
    return dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


class Duration(click.ParamType):
    """A click parameter type for :func:`parse_duration`."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.timedelta:
        if isinstance(value, dt.timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


def _echo(message: str) -> None:
    click.echo(message, err=True)


def _load_ca(ca_dir: Path) -> CA:
    from outrelay.pki.ca import CA
    from outrelay.pki.errors import CAError

    try:
        return CA.load(ca_dir)
    except CAError as exc:
        fail(str(exc), usage=True)


def _write_leaf(out: Path, cert: bytes, key: bytes, ca: bytes) -> None:
    """``tls.crt``, ``tls.key`` (0600) and ``ca.crt`` in ``out`` (0700 if created)."""
    from outrelay.pki.files import ensure_dir, write_private, write_public

    directory = ensure_dir(out)
    for path in (
        write_private(directory / "tls.key", key),
        write_public(directory / "tls.crt", cert),
        write_public(directory / "ca.crt", ca),
    ):
        _echo(f"wrote {path}")


def _ignored_server_name(server_name: str | None) -> None:
    """Warn that ``--server-name`` no longer changes anything."""
    from outrelay.identity.roles import CONTROLLER_NAME

    if server_name and server_name != CONTROLLER_NAME:
        _echo(
            f"warning: --server-name is ignored: the controller is checked by its role "
            f"name {CONTROLLER_NAME}"
        )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror}", usage=True)


@click.group()
def pki() -> None:
    """Manage the certificate authority, leaves and enrollment tokens."""


@pki.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory for ca.crt and ca.key (created 0700).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing CA.")
def init(directory: Path, force: bool) -> None:
    """Create a new CA (ECDSA P-256, ten years)."""
    from outrelay.pki.ca import CA

    try:
        CA.create().save(directory, overwrite=force)
    except FileExistsError as exc:
        fail(
            f"{exc}; use --force to replace the CA (every issued leaf becomes invalid)", usage=True
        )
    except OSError as exc:
        fail(f"cannot write {directory}: {exc.strerror}")
    _echo(f"wrote {directory / 'ca.crt'}")
    _echo(f"wrote {directory / 'ca.key'}")


@pki.command()
@click.option(
    "--ca-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory holding ca.crt and ca.key.",
)
@click.option("--uri", required=True, help="Identity to issue, e.g. outrelay://acme/relay/r1.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory to write tls.crt, tls.key and ca.crt into.",
)
@click.option("--ttl", type=DURATION, default="1h", show_default=True, help="Leaf lifetime.")
@click.option(
    "--dns",
    multiple=True,
    help="DNS SAN (repeatable): relay leaves (localhost is always in) and --server-auth "
    "agent leaves only; names under outrelay.invalid are refused.",
)
@click.option("--ip", multiple=True, help="IP SAN (repeatable), like --dns.")
@click.option(
    "--server-auth",
    is_flag=True,
    help="Agent leaves only: add serverAuth (and the --dns/--ip names), for an agent "
    "that will accept peer-to-peer connections. Agents are client-only by default.",
)
def issue(
    ca_dir: Path,
    uri: str,
    out: Path,
    ttl: dt.timedelta,
    dns: tuple[str, ...],
    ip: tuple[str, ...],
    server_auth: bool,
) -> None:
    """Issue a leaf for an identity, generating its key locally.

    The profile follows the role: a relay gets serverAuth+clientAuth and DNS
    localhost plus --dns/--ip; an agent clientAuth only (unless
    --server-auth); an admin clientAuth only. See docs/identity.md.
    """
    import ipaddress

    from outrelay.identity import IdentityError, parse
    from outrelay.pki.ca import cert_pem, leaf_profile
    from outrelay.pki.csr import key_pem
    from outrelay.pki.errors import LeafProfileError

    try:
        identity = parse(uri)
    except IdentityError as exc:
        fail(str(exc), usage=True)
    try:
        ips = [ipaddress.ip_address(a) for a in ip]
    except ValueError as exc:
        fail(str(exc), usage=True)
    try:
        leaf_profile(identity, dns, ips, server_auth=server_auth)
    except LeafProfileError as exc:
        fail(str(exc), usage=True)
    ca = _load_ca(ca_dir)
    key, cert = ca.issue(identity, ttl, dns_names=dns, ip_addresses=ips, server_auth=server_auth)
    _write_leaf(out, cert_pem(cert), key_pem(key), ca.cert_pem)
    _echo(f"identity {identity} valid until {cert.not_valid_after_utc.isoformat()}")


@pki.command()
@click.option(
    "--ca-dir",
    type=click.Path(path_type=Path),
    help=f"Sign locally with the key in <ca-dir>/{TOKEN_DB}.",
)
@click.option("--controller", help="Ask a controller (host:port) over mTLS instead.")
@click.option("--tenant", required=True, help="Tenant the agent will join.")
@click.option("--agent-id", default="", help="Bind the token to this agent UUID.")
@click.option("--ttl", type=DURATION, default="10m", show_default=True, help="Token lifetime.")
@click.option(
    "--cert", type=click.Path(path_type=Path), help="Operator certificate (--controller)."
)
@click.option("--key", type=click.Path(path_type=Path), help="Operator key (--controller).")
@click.option("--ca", type=click.Path(path_type=Path), help="CA certificate (--controller).")
@click.option("--server-name", help=SERVER_NAME_HELP)
def token(
    ca_dir: Path | None,
    controller: str | None,
    tenant: str,
    agent_id: str,
    ttl: dt.timedelta,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    server_name: str | None,
) -> None:
    """Mint a one-shot enrollment token (printed on stdout)."""
    from outrelay.identity import IdentityError

    if (ca_dir is None) == (controller is None):
        fail("give exactly one of --ca-dir and --controller", usage=True)
    _ignored_server_name(server_name)
    if controller is not None:
        check_hostport("--controller", controller)
        if cert is None or key is None or ca is None:
            fail("--controller needs --cert, --key and --ca (an admin identity)", usage=True)
        import asyncio

        from outrelay.pki.client import EnrollmentClient
        from outrelay.pki.errors import PKIError

        client = EnrollmentClient(
            controller,
            _read(ca, "CA certificate"),
            client_cert=(_read(cert, "certificate"), _read(key, "key")),
        )
        try:
            minted = asyncio.run(client.issue_token(tenant, agent_id, int(ttl.total_seconds())))
        except PKIError as exc:
            fail(f"controller {controller}: {exc}")
        jwt_text, jti, expires = minted.token, minted.jti, minted.expires_unix
    else:
        assert ca_dir is not None
        from outrelay.pki.store import ApswTokenStore
        from outrelay.pki.tokens import TokenIssuer

        _load_ca(ca_dir)  # the token store belongs next to a real CA
        try:
            with ApswTokenStore(ca_dir / TOKEN_DB) as store:
                issued = TokenIssuer(store).issue(tenant, ttl=ttl, agent_id=agent_id or None)
        except IdentityError as exc:
            fail(str(exc), usage=True)
        jwt_text, jti, expires = issued.token, issued.claims.jti, issued.claims.expires
    when = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat()
    bound = f" for agent {agent_id}" if agent_id else ""
    _echo(f"token {jti} for tenant {tenant}{bound}, expires {when}")
    click.echo(jwt_text)


@pki.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path(".dev-pki"),
    show_default=True,
    help="Output directory (created 0700).",
)
@click.option("--tenant", default="acme", show_default=True, help="Tenant / relay region.")
@click.option("--relay-id", default="r1", show_default=True, help="Relay id.")
@click.option(
    "--namespace",
    default="outrelay",
    show_default=True,
    help="Namespace of the Secrets in secrets.yaml.",
)
@click.option("--force", is_flag=True, help="Replace an existing CA (ca.key) in --out.")
def dev(out: Path, tenant: str, relay_id: str, namespace: str, force: bool) -> None:
    """Write a development bundle: CA, controller, relay, agents, admin, secrets.yaml.

    Refuses to replace an existing --out/ca.key unless --force is given.
    """
    from outrelay.identity import IdentityError
    from outrelay.pki.devbundle import DevBundleConfig, write_dev_bundle

    if (out / "ca.key").exists() and not force:
        fail(
            f"{out / 'ca.key'} exists; use --force to replace the CA "
            "(every leaf it issued becomes invalid)",
            usage=True,
        )

    try:
        bundle = write_dev_bundle(DevBundleConfig(out, tenant, relay_id, namespace))
    except (IdentityError, ValueError) as exc:
        fail(str(exc), usage=True)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    _echo(f"outrelay pki dev ({__version__}): wrote {len(bundle.files)} files to {bundle.out}")
    for name, identity in bundle.identities.items():
        _echo(f"  {name:<9} {identity}")
    _echo(f"kubectl apply -f {bundle.out / 'secrets.yaml'}")


@click.command()
@click.option("--controller", required=True, help="Controller enrollment address (host:port).")
@click.option("--token", "token_text", required=True, help="One-shot enrollment token.")
@click.option("--uri", help="Identity to request (an agent URI).")
@click.option("--tenant", help="Request a fresh agent identity in this tenant.")
@click.option(
    "--ca",
    type=click.Path(path_type=Path),
    required=True,
    help="CA certificate that signed the controller's certificate.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory to write tls.key, tls.crt and ca.crt into.",
)
@click.option("--server-name", help=SERVER_NAME_HELP)
def enroll(
    controller: str,
    token_text: str,
    uri: str | None,
    tenant: str | None,
    ca: Path,
    out: Path,
    server_name: str | None,
) -> None:
    """Enroll this machine as an agent: key generated here, certificate from the controller."""
    from outrelay.identity import Identity, IdentityError, parse

    if (uri is None) == (tenant is None):
        fail("give exactly one of --uri and --tenant", usage=True)
    try:
        identity: Identity = parse(uri) if uri is not None else Identity.new_agent(tenant or "")
    except IdentityError as exc:
        fail(str(exc), usage=True)
    import asyncio

    from outrelay.pki.client import EnrollmentClient
    from outrelay.pki.csr import key_pem, make_csr
    from outrelay.pki.errors import PKIError

    check_hostport("--controller", controller)
    key, csr = make_csr(identity)
    _ignored_server_name(server_name)
    client = EnrollmentClient(controller, _read(ca, "CA certificate"))
    try:
        enrolled = asyncio.run(client.enroll(token_text, csr))
    except PKIError as exc:
        fail(f"controller {controller}: {exc}")
    _write_leaf(out, enrolled.cert_pem, key_pem(key), enrolled.ca_pem)
    _echo(f"enrolled as {enrolled.agent_uri}")
