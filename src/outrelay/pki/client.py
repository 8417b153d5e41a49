"""Client of the Enrollment service: enroll, renew, mint tokens.

Each call opens its own channel, so a renewal always presents the client
certificate that is current at that moment (see :func:`grpc_renewer`).

The server must be the controller: whatever address is dialled, the TLS name
checked is the controller's role name
(:data:`~outrelay.identity.CONTROLLER_NAME`), which only controller
certificates carry. A relay's or agent's certificate is refused in the
handshake, before any request is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from outrelay.identity.roles import CONTROLLER_NAME_OPTION, explain_controller_refusal
from outrelay.pki.errors import EnrollmentRPCError
from outrelay.proto import enrollment_pb2 as pb
from outrelay.proto import enrollment_pb2_grpc as pb_grpc

#: ``(cert_pem, key_pem)`` of the caller, or None for server-authenticated TLS.
ClientCert = tuple[bytes, bytes] | None


@dataclass(frozen=True)
class Enrolled:
    """What Enroll returns."""

    #: The new leaf, PEM.
    cert_pem: bytes
    #: The CA certificate, PEM.
    ca_pem: bytes
    #: The identity issued (canonical URI).
    agent_uri: str


@dataclass(frozen=True)
class MintedToken:
    """What IssueToken returns."""

    #: The compact JWS.
    token: str
    #: Its id.
    jti: str
    #: Expiry, Unix seconds.
    expires_unix: int


class EnrollmentClient:
    """Calls ``outrelay.control.v1.Enrollment`` at ``target`` (``host:port``).

    ``ca_pem`` is the trust root for the server certificate; ``client_cert``
    (cert, key) is presented for Renew and IssueToken. The server certificate
    must carry the controller's role name, whatever ``target`` is.
    """

    def __init__(
        self,
        target: str,
        ca_pem: bytes,
        *,
        client_cert: ClientCert = None,
        timeout: float = 10.0,
    ) -> None:
        self._target = target
        self._ca_pem = ca_pem
        self._client_cert = client_cert
        self._timeout = timeout

    def _channel(self) -> grpc.aio.Channel:
        cert, key = self._client_cert if self._client_cert else (None, None)
        creds = grpc.ssl_channel_credentials(self._ca_pem, key, cert)
        return grpc.aio.secure_channel(self._target, creds, options=[CONTROLLER_NAME_OPTION])

    async def enroll(self, token: str, csr_pem: bytes) -> Enrolled:
        """Trade a token and a CSR for a certificate.

        Raises:
            EnrollmentRPCError: the server refused (``status`` tells why).
        """
        async with self._channel() as channel:
            try:
                resp = await pb_grpc.EnrollmentStub(channel).Enroll(
                    pb.EnrollRequest(token=token, csr_pem=csr_pem.decode()), timeout=self._timeout
                )
            except grpc.aio.AioRpcError as exc:
                raise _rpc_error(exc) from None
        return Enrolled(resp.cert_pem.encode(), resp.ca_pem.encode(), resp.agent_uri)

    async def renew(self, csr_pem: bytes) -> tuple[bytes, bytes]:
        """Renew the client certificate: returns ``(cert_pem, ca_pem)``.

        Raises:
            EnrollmentRPCError: the server refused (``status`` tells why).
        """
        async with self._channel() as channel:
            try:
                resp = await pb_grpc.EnrollmentStub(channel).Renew(
                    pb.RenewRequest(csr_pem=csr_pem.decode()), timeout=self._timeout
                )
            except grpc.aio.AioRpcError as exc:
                raise _rpc_error(exc) from None
        return resp.cert_pem.encode(), resp.ca_pem.encode()

    async def issue_token(
        self, tenant: str, agent_id: str = "", ttl_seconds: int = 0
    ) -> MintedToken:
        """Mint an enrollment token (the client certificate must be an admin's).

        Raises:
            EnrollmentRPCError: the server refused (``status`` tells why).
        """
        async with self._channel() as channel:
            try:
                resp = await pb_grpc.EnrollmentStub(channel).IssueToken(
                    pb.IssueTokenRequest(tenant=tenant, agent_id=agent_id, ttl_seconds=ttl_seconds),
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as exc:
                raise _rpc_error(exc) from None
        return MintedToken(resp.token, resp.jti, resp.expires_unix)


def _rpc_error(exc: grpc.aio.AioRpcError) -> EnrollmentRPCError:
    return EnrollmentRPCError(exc.code().name, explain_controller_refusal(exc.details() or ""))


def grpc_renewer(
    target: str,
    credentials: Callable[[], tuple[bytes, bytes, bytes]],
    *,
    timeout: float = 10.0,
) -> Callable[[bytes], Awaitable[tuple[bytes, bytes]]]:
    """A ``renew(csr_pem) -> (cert_pem, ca_pem)`` callable for the Rotator.

    ``credentials()`` returns ``(cert_pem, key_pem, ca_pem)`` to present at
    call time, typically the rotator's current certificate.
    """

    async def renew(csr_pem: bytes) -> tuple[bytes, bytes]:
        cert, key, ca = credentials()
        client = EnrollmentClient(target, ca, client_cert=(cert, key), timeout=timeout)
        return await client.renew(csr_pem)

    return renew
