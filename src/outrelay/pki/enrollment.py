"""The ``outrelay.control.v1.Enrollment`` gRPC service (an OutRelay addition).

* ``Enroll(token, csr_pem)``: an agent without a certificate trades a one-shot
  token and a CSR for a leaf. Server-authenticated TLS is enough.
* ``Renew(csr_pem)``: a peer presenting its current certificate over mTLS gets
  a new leaf for the same URI (any role), with its role's profile: a relay
  keeps its DNS/IP SANs; an agent keeps serverAuth and its names only if it
  names a host besides ``localhost`` (an agent leaf of the old blanket profile,
  serverAuth + ``DNS:localhost``, renews to the narrow client-only one); an
  admin gets clientAuth only.
* ``IssueToken(tenant, agent_id, ttl_seconds)``: an operator
  (``outrelay://<tenant>/admin/<name>`` over mTLS) mints a token for its tenant.

Hosting: grpc's Python server either *requires* a client certificate or never
asks for one (``require_client_auth``); there is no "optional". So the
controller serves this one servicer on two ports of the same server: a TLS
port (no client certificate; Enroll) and its mTLS port (Renew, IssueToken).
Renew and IssueToken on the TLS port fail with UNAUTHENTICATED.

Status codes: UNAUTHENTICATED for a bad, expired or replayed token or a
missing client certificate; INVALID_ARGUMENT for a malformed CSR or field;
PERMISSION_DENIED for a URI, role or tenant mismatch. The logic is in plain
synchronous methods (``enroll``, ``renew``, ``issue_token``) that raise
:class:`~outrelay.pki.errors.PKIError`; the gRPC methods run them in a worker
thread (SQLite and signing block) and turn errors into statuses in one place.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from outrelay.identity import Identity, IdentityError, Role, parse, peer_identity
from outrelay.identity.peer import load_certificate
from outrelay.identity.roles import is_reserved_name
from outrelay.pki.ca import CA, DEFAULT_LEAF_TTL, cert_pem, check_csr, required_uris
from outrelay.pki.errors import (
    CSRURIMismatch,
    InvalidRequest,
    NotAuthenticated,
    NotConfigured,
    PermissionDenied,
    PKIError,
)
from outrelay.pki.tokens import IssuedToken, TokenIssuer, TokenVerifier
from outrelay.proto import enrollment_pb2 as pb
from outrelay.proto import enrollment_pb2_grpc as pb_grpc

#: Longest token lifetime an operator may ask for over IssueToken.
MAX_TOKEN_TTL = dt.timedelta(days=7)

T = TypeVar("T")


@dataclass(frozen=True)
class Issued:
    """A certificate handed out by Enroll or Renew."""

    #: The new leaf, PEM.
    cert_pem: bytes
    #: The CA certificate, PEM (the trust root to use from now on).
    ca_pem: bytes
    #: Identity the leaf was issued to.
    identity: Identity


class EnrollmentService(pb_grpc.EnrollmentServicer):
    """Servicer of ``outrelay.control.v1.Enrollment``.

    ``issuer`` None disables IssueToken (FAILED_PRECONDITION). ``leaf_ttl`` is
    the lifetime of issued leaves.
    """

    def __init__(
        self,
        ca: CA,
        verifier: TokenVerifier,
        issuer: TokenIssuer | None = None,
        *,
        leaf_ttl: dt.timedelta = DEFAULT_LEAF_TTL,
        max_token_ttl: dt.timedelta = MAX_TOKEN_TTL,
    ) -> None:
        self._ca = ca
        self._verifier = verifier
        self._issuer = issuer
        self._leaf_ttl = leaf_ttl
        self._max_token_ttl = max_token_ttl

    # -- logic, synchronous, raises PKIError -------------------------------

    def enroll(self, token: str, csr_pem: bytes | str) -> Issued:
        """Check the token and CSR, consume the token, issue an agent leaf.

        The token is consumed only once the CSR has passed every check, so a
        malformed CSR does not burn it (the reference consumed it first).

        Raises:
            TokenInvalid / TokenReplay: bad, expired or used token.
            CSRError: malformed CSR, bad proof of possession, no URI SAN.
            PermissionDenied: the CSR asks for an identity the token does not allow.
        """
        claims = self._verifier.check(token)
        csr = check_csr(csr_pem)
        uris = required_uris(csr)
        if claims.agent_id is not None:
            identity = Identity.agent(claims.tenant, claims.agent_id)
            if str(identity) not in uris:
                raise CSRURIMismatch(
                    f"pki: token is bound to {str(identity)!r}, csr asks for {uris!r}"
                )
        else:
            identity = self._agent_of_tenant(uris, claims.tenant)
        self._verifier.consume(claims)
        cert = self._ca.sign(csr, identity, self._leaf_ttl)
        return Issued(cert_pem(cert), self._ca.cert_pem, identity)

    @staticmethod
    def _agent_of_tenant(uris: list[str], tenant: str) -> Identity:
        """The first canonical agent URI of ``tenant`` among ``uris``."""
        for uri in uris:
            try:
                identity = parse(uri)
            except IdentityError:
                continue
            if identity.role is Role.AGENT and identity.tenant == tenant and str(identity) == uri:
                return identity
        raise CSRURIMismatch(
            f"pki: csr asks for {uris!r}; the token allows canonical agent URIs of "
            f"tenant {tenant!r} only"
        )

    def renew(
        self, peer_cert: x509.Certificate | bytes | str | None, csr_pem: bytes | str
    ) -> Issued:
        """Re-issue the caller's own identity to the key in ``csr_pem``.

        ``peer_cert`` is the client certificate the TLS layer verified.

        Raises:
            NotAuthenticated: no client certificate, no identity in it, or expired.
            CSRError: malformed CSR; CSRURIMismatch if it names another URI.
        """
        identity, cert = self._caller(peer_cert)
        dns, ips, server_auth = renewed_profile(identity, cert)
        # sign() applies check_csr(csr_pem, identity) first
        new = self._ca.sign(
            csr_pem,
            identity,
            self._leaf_ttl,
            dns_names=dns,
            ip_addresses=ips,
            server_auth=server_auth,
        )
        return Issued(cert_pem(new), self._ca.cert_pem, identity)

    def issue_token(
        self,
        peer_cert: x509.Certificate | bytes | str | None,
        tenant: str,
        agent_id: str = "",
        ttl: dt.timedelta | None = None,
    ) -> IssuedToken:
        """Mint a token for an operator of ``tenant`` (empty: the caller's tenant).

        Raises:
            NotAuthenticated: no client certificate.
            PermissionDenied: the caller is not an admin of ``tenant``.
            InvalidRequest: bad tenant, agent id or TTL.
            NotConfigured: this service has no token issuer.
        """
        caller, _ = self._caller(peer_cert)
        tenant = tenant or caller.tenant
        if caller.role is not Role.ADMIN:
            raise PermissionDenied(f"pki: {str(caller)!r} is not an operator (admin role)")
        if caller.tenant != tenant:
            raise PermissionDenied(
                f"pki: {str(caller)!r} may not issue tokens for tenant {tenant!r}"
            )
        if self._issuer is None:
            raise NotConfigured("pki: this controller does not issue tokens")
        if ttl is not None and ttl > self._max_token_ttl:
            raise InvalidRequest(f"pki: token ttl {ttl} exceeds the maximum {self._max_token_ttl}")
        try:
            return self._issuer.issue(tenant, ttl=ttl, agent_id=agent_id or None)
        except IdentityError as exc:
            raise InvalidRequest(str(exc)) from None

    def _caller(
        self, peer_cert: x509.Certificate | bytes | str | None
    ) -> tuple[Identity, x509.Certificate]:
        if not peer_cert:
            raise NotAuthenticated("pki: this call needs a client certificate (mTLS)")
        try:
            cert = load_certificate(peer_cert)
            identity = peer_identity(cert)
        except IdentityError as exc:
            raise NotAuthenticated(f"pki: client certificate: {exc}") from None
        # The TLS layer already verified chain and dates; checking the issuer
        # and expiry again is cheap and keeps this method safe to call directly.
        if cert.issuer != self._ca.cert.subject:
            raise NotAuthenticated("pki: client certificate not issued by this CA")
        if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
            raise NotAuthenticated("pki: client certificate has expired")
        return identity, cert

    # -- gRPC --------------------------------------------------------------

    async def _run(self, context: grpc.aio.ServicerContext, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except PKIError as exc:
            await context.abort(grpc.StatusCode[exc.grpc_status], str(exc))
            raise AssertionError("unreachable") from None  # abort() always raises

    async def Enroll(  # noqa: N802 - gRPC method name
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> pb.EnrollResponse:
        issued = await self._run(context, self.enroll, request.token, request.csr_pem)
        return pb.EnrollResponse(
            cert_pem=issued.cert_pem.decode(),
            ca_pem=issued.ca_pem.decode(),
            agent_uri=str(issued.identity),
        )

    async def Renew(  # noqa: N802
        self, request: pb.RenewRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenewResponse:
        issued = await self._run(context, self.renew, _peer_pem(context), request.csr_pem)
        return pb.RenewResponse(cert_pem=issued.cert_pem.decode(), ca_pem=issued.ca_pem.decode())

    async def IssueToken(  # noqa: N802
        self, request: pb.IssueTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.IssueTokenResponse:
        ttl = dt.timedelta(seconds=request.ttl_seconds) if request.ttl_seconds > 0 else None
        issued = await self._run(
            context, self.issue_token, _peer_pem(context), request.tenant, request.agent_id, ttl
        )
        return pb.IssueTokenResponse(
            token=issued.token, jti=issued.claims.jti, expires_unix=issued.claims.expires
        )


def renewed_profile(
    identity: Identity, cert: x509.Certificate
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]:
    """``(dns_names, ip_addresses, server_auth)`` to carry from ``cert`` into its renewal.

    ``localhost`` is not carried (a relay leaf gets it anyway; on an agent or
    admin leaf it was the reference's blanket name), nor is any name under
    ``outrelay.invalid``. An agent keeps serverAuth and its names only if it
    had serverAuth and names some host; an admin keeps nothing.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [
            d
            for d in san.get_values_for_type(x509.DNSName)
            if d != "localhost" and not is_reserved_name(d)
        ]
        ips = [
            ip
            for ip in san.get_values_for_type(x509.IPAddress)
            if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
        ]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        had_server_auth = ExtendedKeyUsageOID.SERVER_AUTH in eku
    except x509.ExtensionNotFound:
        had_server_auth = False
    if identity.role is Role.RELAY:
        return dns, ips, True
    if identity.role is Role.AGENT and had_server_auth and (dns or ips):
        return dns, ips, True
    return [], [], False


def _peer_pem(context: grpc.aio.ServicerContext) -> bytes | None:
    """The verified client certificate of the call, PEM, or None without mTLS."""
    certs = context.auth_context().get("x509_pem_cert")
    return certs[0] if certs else None


def add_to_server(servicer: EnrollmentService, server: grpc.aio.Server) -> None:
    """Register ``servicer`` on ``server`` (call once; ports are the caller's)."""
    pb_grpc.add_EnrollmentServicer_to_server(servicer, server)
