"""``outrelay pki`` and ``outrelay enroll`` through click's CliRunner."""

from __future__ import annotations

import asyncio
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from outrelay.cli import cli
from outrelay.identity import Identity, Role, peer_identity
from outrelay.pki import CA, ApswTokenStore, TokenIssuer, TokenVerifier, cert_pem, key_pem
from outrelay.pki.enrollment import EnrollmentService, add_to_server

AID = "00000000-0000-0000-0000-0000000000b2"


def mutual_tls13_handshake(bundle_dir: Path, client_stem: str) -> tuple[str, str]:
    """Relay leaf as server (client cert required), ``client_stem`` as client.

    Returns (identity the server read from the client, identity the client
    read from the server).
    """
    ca = str(bundle_dir / "ca.crt")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(bundle_dir / "relay-r1.crt", bundle_dir / "relay-r1.key")
    server_ctx.load_verify_locations(ca)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    client_ctx.load_cert_chain(bundle_dir / f"{client_stem}.crt", bundle_dir / f"{client_stem}.key")
    client_ctx.load_verify_locations(ca)

    seen: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(10)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    seen["version"] = tls.version()
                    seen["peer"] = str(peer_identity(tls.getpeercert(binary_form=True)))
                    tls.sendall(b"ok")
            except Exception as exc:  # reported by the main thread
                seen["error"] = exc

        thread = threading.Thread(target=serve)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.version() == "TLSv1.3"
                server_identity = str(peer_identity(tls.getpeercert(binary_form=True)))
                assert tls.recv(2) == b"ok"
        thread.join(10)
    assert "error" not in seen, seen.get("error")
    assert seen["version"] == "TLSv1.3"
    return str(seen["peer"]), server_identity


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_usage_error(result: Result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert needle in result.stderr
    assert result.stdout == ""


def test_dev_bundle_handshake(tmp_path: Path) -> None:
    out = tmp_path / "dev"
    result = invoke("pki", "dev", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert str(out) in result.stderr
    assert "outrelay://acme/agent/00000000-0000-0000-0000-000000000001" in result.stderr
    assert "kubectl apply -f" in result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    client_seen, server_seen = mutual_tls13_handshake(out, "agent-provider")
    assert client_seen == "outrelay://acme/agent/00000000-0000-0000-0000-000000000001"
    assert server_seen == "outrelay://acme/relay/r1"
    client_seen, _ = mutual_tls13_handshake(out, "agent-consumer")
    assert client_seen == "outrelay://acme/agent/00000000-0000-0000-0000-000000000002"


def test_dev_bad_input(tmp_path: Path) -> None:
    one_line_usage_error(invoke("pki", "dev", "--out", str(tmp_path), "--tenant", "ACME"), "ACME")
    one_line_usage_error(invoke("pki", "dev", "--out", str(tmp_path), "--relay-id", "-x"), "-x")
    one_line_usage_error(invoke("pki", "dev", "--out", str(tmp_path), "--namespace", "A"), "'A'")


def test_init_and_issue(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    result = invoke("pki", "init", "--dir", str(ca_dir))
    assert result.exit_code == 0, result.output
    assert str(ca_dir / "ca.key") in result.stderr
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    first = (ca_dir / "ca.crt").read_bytes()
    one_line_usage_error(invoke("pki", "init", "--dir", str(ca_dir)), "--force")
    assert (ca_dir / "ca.crt").read_bytes() == first
    assert invoke("pki", "init", "--dir", str(ca_dir), "--force").exit_code == 0
    assert (ca_dir / "ca.crt").read_bytes() != first

    leaf = tmp_path / "relay"
    result = invoke(
        "pki", "issue", "--ca-dir", str(ca_dir), "--uri", "outrelay://eu/relay/r1",
        "--out", str(leaf), "--ttl", "2h", "--dns", "r1.example", "--ip", "10.0.0.1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "outrelay://eu/relay/r1" in result.stderr
    assert stat.S_IMODE((leaf / "tls.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((leaf / "tls.crt").read_bytes())
    assert peer_identity(cert) == Identity.relay("eu", "r1")
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() == 7260
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "r1.example"]
    assert (leaf / "ca.crt").read_bytes() == (ca_dir / "ca.crt").read_bytes()

    base = ("pki", "issue", "--ca-dir", str(ca_dir), "--out", str(tmp_path / "x"))
    one_line_usage_error(invoke(*base, "--uri", "outrelay://eu/relay/R1"), "invalid relay id")
    one_line_usage_error(invoke(*base, "--uri", "http://x"), "not an outrelay URI")
    one_line_usage_error(invoke(*base, "--uri", "outrelay://eu/relay/r1", "--ttl", "soon"), "soon")
    one_line_usage_error(invoke(*base, "--uri", "outrelay://eu/relay/r1", "--ip", "nope"), "nope")
    missing = ("pki", "issue", "--ca-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x"))
    one_line_usage_error(invoke(*missing, "--uri", "outrelay://eu/relay/r1"), "No such file")


def test_token_local(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    invoke("pki", "init", "--dir", str(ca_dir))
    result = invoke("pki", "token", "--ca-dir", str(ca_dir), "--tenant", "acme", "--agent-id", AID)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.count(".") == 2 and "acme" in result.stderr
    assert stat.S_IMODE((ca_dir / "enrollment.db").stat().st_mode) == 0o600
    with ApswTokenStore(ca_dir / "enrollment.db") as store:
        claims = TokenVerifier(store).verify(token)
    assert (claims.tenant, claims.agent_id) == ("acme", AID)
    one_line_usage_error(
        invoke("pki", "token", "--ca-dir", str(ca_dir), "--tenant", "Acme"), "invalid tenant"
    )
    one_line_usage_error(invoke("pki", "token", "--tenant", "acme"), "exactly one")
    one_line_usage_error(
        invoke("pki", "token", "--controller", "127.0.0.1:1", "--tenant", "acme"), "--cert"
    )


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[tuple[Path, str, str, TokenIssuer]]:
    """A real Enrollment server on a background loop: (bundle dir, tls addr, mtls addr, issuer)."""
    out = tmp_path / "dev"
    assert invoke("pki", "dev", "--out", str(out)).exit_code == 0
    ca = CA.load(out)
    store = ApswTokenStore(tmp_path / "controller.db")
    issuer = TokenIssuer(store)
    loop = asyncio.new_event_loop()
    pair = [((out / "controller.key").read_bytes(), (out / "controller.crt").read_bytes())]

    async def start() -> tuple[grpc.aio.Server, int, int]:
        server = grpc.aio.server()
        add_to_server(EnrollmentService(ca, TokenVerifier(store), issuer), server)
        tls = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(pair, ca.cert_pem))
        mtls = server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials(pair, ca.cert_pem, True)
        )
        await server.start()
        return server, tls, mtls

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server, tls, mtls = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield out, f"127.0.0.1:{tls}", f"127.0.0.1:{mtls}", issuer
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        store.close()


def test_enroll_and_remote_token(
    controller: tuple[Path, str, str, TokenIssuer], tmp_path: Path
) -> None:
    bundle, tls, mtls, issuer = controller
    ca = str(bundle / "ca.crt")
    admin = ("--cert", str(bundle / "admin-admin.crt"), "--key", str(bundle / "admin-admin.key"))
    # the old --server-name is ignored (with a warning): the controller's role
    # name is what is checked, and the dev bundle's controller certificate has it
    result = invoke(
        "pki", "token", "--controller", mtls, "--tenant", "acme", *admin, "--ca", ca,
        "--server-name", "localhost", "--ttl", "5m",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: --server-name is ignored" in result.stderr
    token = result.stdout.strip()

    out = tmp_path / "agent"
    args = ("enroll", "--controller", tls, "--ca", ca)
    result = invoke(*args, "--token", token, "--tenant", "acme", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "tls.key").stat().st_mode) == 0o600
    identity = peer_identity((out / "tls.crt").read_bytes())
    assert identity.role is Role.AGENT and identity.tenant == "acme"
    assert f"enrolled as {identity}" in result.stderr

    # replay: the server refuses, exit 1, one line
    result = invoke(*args, "--token", token, "--tenant", "acme", "--out", str(tmp_path / "b"))
    assert result.exit_code == 1 and "UNAUTHENTICATED" in result.stderr
    assert "Traceback" not in result.output

    bound = Identity.agent("acme", AID)
    token = issuer.issue("acme", agent_id=AID).token
    result = invoke(*args, "--token", token, "--uri", str(bound), "--out", str(tmp_path / "c"))
    assert result.exit_code == 0, result.output
    assert peer_identity((tmp_path / "c" / "tls.crt").read_bytes()) == bound

    one_line_usage_error(invoke(*args, "--token", "t", "--out", str(tmp_path / "d")), "exactly one")
    one_line_usage_error(
        invoke(*args, "--token", "t", "--uri", "outrelay://x", "--out", str(tmp_path / "d")),
        "invalid path",
    )
    # an agent is not an operator
    agent = ("--cert", str(out / "tls.crt"), "--key", str(out / "tls.key"))
    result = invoke("pki", "token", "--controller", mtls, "--tenant", "acme", *agent, "--ca", ca,
                    "--server-name", "localhost")  # fmt: skip
    assert result.exit_code == 1 and "PERMISSION_DENIED" in result.stderr


def test_unused_helpers_are_importable() -> None:
    assert cert_pem and key_pem


def _profile(leaf: Path) -> tuple[list[str], list[str]]:
    """(extended key usage names, DNS and IP SANs) of ``<leaf>/tls.crt``."""
    cert = x509.load_pem_x509_certificate((leaf / "tls.crt").read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    hosts += [str(n) for n in san.get_values_for_type(x509.IPAddress)]
    return [u._name for u in eku], hosts


def test_issue_agent_leaf_is_client_only(tmp_path: Path) -> None:
    """Finding 1: an issued agent leaf has no serverAuth and no DNS SAN (no localhost)."""
    ca_dir = tmp_path / "ca"
    assert invoke("pki", "init", "--dir", str(ca_dir)).exit_code == 0
    agent = f"outrelay://acme/agent/{AID}"
    base = ("pki", "issue", "--ca-dir", str(ca_dir))
    result = invoke(*base, "--uri", agent, "--out", str(tmp_path / "agent"))
    assert result.exit_code == 0, result.output
    assert _profile(tmp_path / "agent") == (["clientAuth"], [])
    result = invoke(*base, "--uri", "outrelay://acme/admin/ops", "--out", str(tmp_path / "admin"))
    assert result.exit_code == 0, result.output
    assert _profile(tmp_path / "admin") == (["clientAuth"], [])
    # the explicit opt-in for an agent that will serve P2P
    p2p = tmp_path / "p2p"
    result = invoke(*base, "--uri", agent, "--out", str(p2p), "--server-auth", "--dns", "a.example")
    assert result.exit_code == 0, result.output
    assert _profile(p2p) == (["serverAuth", "clientAuth"], ["a.example"])
    out = ("--out", str(tmp_path / "x"))
    one_line_usage_error(invoke(*base, "--uri", agent, *out, "--dns", "a.example"), "--server-auth")
    one_line_usage_error(invoke(*base, "--uri", agent, *out, "--ip", "127.0.0.1"), "client-only")
    admin = ("--uri", "outrelay://acme/admin/ops", *out)
    one_line_usage_error(invoke(*base, *admin, "--server-auth"), "no serverAuth")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "uri", [f"outrelay://acme/agent/{AID}", "outrelay://acme/relay/r1", "outrelay://acme/admin/a"]
)
@pytest.mark.parametrize("name", ["controller.outrelay.invalid", "Controller.Outrelay.Invalid"])
def test_issue_refuses_the_controller_role_name(tmp_path: Path, uri: str, name: str) -> None:
    """Only the controller's certificate may carry controller.outrelay.invalid: exit 2, one line."""
    ca_dir = tmp_path / "ca"
    assert invoke("pki", "init", "--dir", str(ca_dir)).exit_code == 0
    args = ["pki", "issue", "--ca-dir", str(ca_dir), "--uri", uri, "--out", str(tmp_path / "x")]
    result = invoke(*args, "--dns", name, *(["--server-auth"] if "/agent/" in uri else []))
    one_line_usage_error(result, "is reserved: names under outrelay.invalid are roles")
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr  # click's usage header, then one error line
    assert not (tmp_path / "x").exists()


def test_dev_refuses_to_overwrite_an_existing_ca_without_force(tmp_path: Path) -> None:
    out = tmp_path / "dev"
    assert invoke("pki", "dev", "--out", str(out)).exit_code == 0
    key = (out / "ca.key").read_bytes()
    result = invoke("pki", "dev", "--out", str(out))
    one_line_usage_error(result, "--force")
    assert result.stderr.count("\n") == 1 and str(out / "ca.key") in result.stderr
    assert (out / "ca.key").read_bytes() == key, "the CA key was replaced"
    assert invoke("pki", "dev", "--out", str(out), "--force").exit_code == 0
    assert (out / "ca.key").read_bytes() != key
