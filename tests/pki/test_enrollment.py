"""Enrollment service over a real grpc.aio server with TLS on 127.0.0.1.

One server, two ports, as the controller hosts it: a TLS port without client
certificates (Enroll) and an mTLS port (Renew, IssueToken).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from outrelay.identity import CONTROLLER_NAME, Identity, Role, peer_identity
from outrelay.pki import (
    CA,
    ApswTokenStore,
    MemoryTokenStore,
    TokenIssuer,
    TokenVerifier,
    cert_pem,
    key_pem,
    make_csr,
)
from outrelay.pki.client import EnrollmentClient, grpc_renewer
from outrelay.pki.enrollment import EnrollmentService, add_to_server
from outrelay.pki.errors import EnrollmentRPCError

AID = "00000000-0000-0000-0000-0000000000a1"


@dataclass
class Env:
    ca: CA
    issuer: TokenIssuer
    tls: str
    mtls: str

    def client(self, target: str, cert: tuple[bytes, bytes] | None = None) -> EnrollmentClient:
        # no server name given: the client checks the controller's role name
        return EnrollmentClient(target, self.ca.cert_pem, client_cert=cert)

    def leaf(self, identity: Identity, ttl: dt.timedelta | None = None) -> tuple[bytes, bytes]:
        key, cert = self.ca.issue(identity, ttl)
        return cert_pem(cert), key_pem(key)


ServerCert = Callable[[CA], tuple[ec.EllipticCurvePrivateKey, x509.Certificate]]


def run(
    tmp_path: Path,
    body: Callable[[Env], Awaitable[None]],
    server_cert: ServerCert = lambda ca: ca.issue_server(),
) -> None:
    async def main() -> None:
        ca = CA.create()
        store = ApswTokenStore(tmp_path / "controller.db")
        issuer = TokenIssuer(store)
        service = EnrollmentService(ca, TokenVerifier(store), issuer)
        server_key, server_cert_ = server_cert(ca)
        pair = [(key_pem(server_key), cert_pem(server_cert_))]
        server = grpc.aio.server()
        add_to_server(service, server)
        tls_port = server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials(pair, ca.cert_pem, False)
        )
        mtls_port = server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials(pair, ca.cert_pem, True)
        )
        await server.start()
        try:
            await body(Env(ca, issuer, f"127.0.0.1:{tls_port}", f"127.0.0.1:{mtls_port}"))
        finally:
            await server.stop(None)
            store.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def profile(cert: x509.Certificate) -> tuple[list[x509.ObjectIdentifier], list[str]]:
    """(extended key usages, DNS and IP SANs) of a leaf."""
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(n) for n in san.get_values_for_type(x509.IPAddress)]
    return list(eku), names


def old_profile_leaf(
    ca: CA, identity: Identity, key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf of the reference's blanket profile (serverAuth+clientAuth, DNS localhost),
    which our CA no longer issues to agents: built here with cryptography."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(identity))]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(str(identity)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return key, cert


async def expect(status: str, call: Awaitable[object]) -> str:
    with pytest.raises(EnrollmentRPCError) as info:
        await call
    assert info.value.status == status, info.value
    return info.value.details


def test_enroll_then_renew_round_trip(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        identity = Identity.new_agent("acme")
        token = env.issuer.issue("acme").token
        key, csr = make_csr(identity)
        enrolled = await env.client(env.tls).enroll(token, csr)
        assert enrolled.agent_uri == str(identity)
        assert enrolled.ca_pem == env.ca.cert_pem
        cert = x509.load_pem_x509_certificate(enrolled.cert_pem)
        cert.verify_directly_issued_by(env.ca.cert)
        assert peer_identity(cert) == identity and cert.public_key() == key.public_key()
        assert profile(cert) == ([ExtendedKeyUsageOID.CLIENT_AUTH], [])  # an agent: client-only
        # replay of the same token
        details = await expect("UNAUTHENTICATED", env.client(env.tls).enroll(token, csr))
        assert "already used" in details
        # renew over mTLS with the certificate just obtained, to a fresh key
        new_key, new_csr = make_csr(identity)
        me = (enrolled.cert_pem, key_pem(key))
        renewed_pem, ca_pem = await env.client(env.mtls, me).renew(new_csr)
        renewed = x509.load_pem_x509_certificate(renewed_pem)
        assert ca_pem == env.ca.cert_pem
        assert peer_identity(renewed) == identity
        assert renewed.public_key() == new_key.public_key()
        assert renewed.serial_number != cert.serial_number
        assert profile(renewed) == ([ExtendedKeyUsageOID.CLIENT_AUTH], [])
        # and the renewed one can renew again
        renewer = grpc_renewer(env.mtls, lambda: (renewed_pem, key_pem(new_key), env.ca.cert_pem))
        third, _ = await renewer(make_csr(identity)[1])
        assert peer_identity(third) == identity

    run(tmp_path, body)


def test_enroll_bound_token(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        bound = Identity.agent("acme", AID)
        token = env.issuer.issue("acme", agent_id=AID).token
        # another agent id: refused, and the token is not burned
        details = await expect(
            "PERMISSION_DENIED",
            env.client(env.tls).enroll(token, make_csr(Identity.new_agent("acme"))[1]),
        )
        assert str(bound) in details
        enrolled = await env.client(env.tls).enroll(token, make_csr(bound)[1])
        assert enrolled.agent_uri == str(bound)

    run(tmp_path, body)


def test_enroll_rejections(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        client = env.client(env.tls)
        csr = make_csr(Identity.new_agent("acme"))[1]
        await expect("UNAUTHENTICATED", client.enroll("garbage", csr))
        expired = env.issuer.issue("acme", ttl=dt.timedelta(seconds=60), now=0).token
        assert "expired" in await expect("UNAUTHENTICATED", client.enroll(expired, csr))
        forged = TokenIssuer(MemoryTokenStore()).issue("acme").token
        await expect("UNAUTHENTICATED", client.enroll(forged, csr))
        token = env.issuer.issue("acme").token
        # bad CSRs: INVALID_ARGUMENT, and the token survives them
        await expect("INVALID_ARGUMENT", client.enroll(token, b"not a csr"))
        tampered = csr.replace(csr.splitlines()[3], csr.splitlines()[3][:-4] + b"AAAA")
        await expect("INVALID_ARGUMENT", client.enroll(token, tampered))
        # wrong tenant or wrong role in the CSR
        other = make_csr(Identity.new_agent("globex"))[1]
        assert "globex" in await expect("PERMISSION_DENIED", client.enroll(token, other))
        relay = make_csr(Identity.relay("acme", "r9"))[1]
        await expect("PERMISSION_DENIED", client.enroll(token, relay))
        enrolled = await client.enroll(token, csr)
        assert Identity.agent("acme", enrolled.agent_uri.rsplit("/", 1)[1]).role is Role.AGENT

    run(tmp_path, body)


def test_renew_rejections(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        me = Identity.new_agent("acme")
        mine = env.leaf(me)
        csr_me = make_csr(me)[1]
        # no client certificate: the TLS port never asks for one
        await expect("UNAUTHENTICATED", env.client(env.tls).renew(csr_me))
        await expect("UNAUTHENTICATED", env.client(env.tls, mine).renew(csr_me))
        # someone else's URI
        other = make_csr(Identity.new_agent("acme"))[1]
        await expect("PERMISSION_DENIED", env.client(env.mtls, mine).renew(other))
        await expect("INVALID_ARGUMENT", env.client(env.mtls, mine).renew(b"junk"))
        # relays renew too, keeping their extra SANs
        relay = Identity.relay("eu", "r1")
        key, cert = env.ca.issue(relay, dns_names=["r1.example"], ip_addresses=["10.0.0.1"])
        renewed, _ = await env.client(env.mtls, (cert_pem(cert), key_pem(key))).renew(
            make_csr(relay)[1]
        )
        san = x509.load_pem_x509_certificate(renewed).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        assert san.value.get_values_for_type(x509.DNSName) == ["localhost", "r1.example"]
        assert profile(x509.load_pem_x509_certificate(renewed))[0] == [
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ]
        # an agent leaf of the old blanket profile renews to the narrow one
        old_key, old = old_profile_leaf(env.ca, me)
        narrow, _ = await env.client(env.mtls, (cert_pem(old), key_pem(old_key))).renew(csr_me)
        assert profile(x509.load_pem_x509_certificate(narrow)) == (
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            [],
        )
        # a P2P agent (explicit --server-auth with a host name) keeps its profile
        p2p_key, p2p = env.ca.issue(me, dns_names=["p2p.example"], server_auth=True)
        kept, _ = await env.client(env.mtls, (cert_pem(p2p), key_pem(p2p_key))).renew(csr_me)
        assert profile(x509.load_pem_x509_certificate(kept)) == (
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            ["p2p.example"],
        )
        # a certificate from another CA is refused by the TLS layer itself
        stranger_key, stranger = CA.create().issue(me)
        with pytest.raises(EnrollmentRPCError) as info:
            await env.client(env.mtls, (cert_pem(stranger), key_pem(stranger_key))).renew(csr_me)
        assert info.value.status in ("UNAVAILABLE", "UNAUTHENTICATED")

    run(tmp_path, body)


def test_issue_token_for_operators(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        admin = env.leaf(Identity.admin("acme", "ops"))
        minted = await env.client(env.mtls, admin).issue_token("acme", AID, 120)
        assert len(minted.jti) == 22
        enrolled = await env.client(env.tls).enroll(
            minted.token, make_csr(Identity.agent("acme", AID))[1]
        )
        assert enrolled.agent_uri.endswith(AID)
        # tenant defaults to the operator's own
        assert (await env.client(env.mtls, admin).issue_token("")).jti
        await expect("PERMISSION_DENIED", env.client(env.mtls, admin).issue_token("globex"))
        agent = env.leaf(Identity.new_agent("acme"))
        await expect("PERMISSION_DENIED", env.client(env.mtls, agent).issue_token("acme"))
        await expect("INVALID_ARGUMENT", env.client(env.mtls, admin).issue_token("acme", "x"))
        await expect("INVALID_ARGUMENT", env.client(env.mtls, admin).issue_token("acme", "", 10**9))
        await expect("UNAUTHENTICATED", env.client(env.tls).issue_token("acme"))

    run(tmp_path, body)


@pytest.mark.parametrize("impostor", ["relay", "old-profile agent"])
def test_enrollment_client_refuses_a_server_that_is_not_the_controller(
    tmp_path: Path, impostor: str
) -> None:
    """Finding 1, controller side: a leaf valid for localhost/127.0.0.1 is not the controller."""

    def relay_cert(ca: CA) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if impostor == "relay":
            return ca.issue(Identity.relay("acme", "r1"), ip_addresses=["127.0.0.1"])
        return old_profile_leaf(ca, Identity.agent("acme", AID))

    async def body(env: Env) -> None:
        csr = make_csr(Identity.new_agent("acme"))[1]
        token = env.issuer.issue("acme").token
        details = await expect("UNAVAILABLE", env.client(env.tls).enroll(token, csr))
        assert CONTROLLER_NAME in details

    run(tmp_path, body, relay_cert)
