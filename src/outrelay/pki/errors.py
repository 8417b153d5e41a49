"""PKI errors: CSR rejections and enrollment-token failures.

Each class names the gRPC status it maps to (``grpc_status``, the name of a
``grpc.StatusCode`` member) so the Enrollment service converts errors in
exactly one place.
"""

from __future__ import annotations

from outrelay.errors import OutRelayError


class PKIError(OutRelayError):
    """Base class of every PKI error."""

    grpc_status: str = "INTERNAL"


class CAError(PKIError):
    """The CA could not be created, loaded or saved (missing files, wrong key)."""


class CSRError(PKIError):
    """The peer sent a certificate signing request we refuse."""

    grpc_status = "INVALID_ARGUMENT"


class CSRParseError(CSRError):
    """The CSR is not a PKCS#10 request (bad PEM/DER, bad extension)."""


class CSRSignatureError(CSRError):
    """The CSR's self-signature does not verify (no proof of possession)."""


class CSRKeyError(CSRError):
    """The CSR's public key is of a type or size we do not certify."""


class CSRMissingURI(CSRError):
    """The CSR carries no URI SAN at all."""


class CSRURIMismatch(CSRError):
    """The CSR carries URI SANs but none is the identity being issued."""

    grpc_status = "PERMISSION_DENIED"


class LeafProfileError(PKIError):
    """A leaf was asked for with names or usages its role may not carry."""

    grpc_status = "INVALID_ARGUMENT"


class ReservedName(LeafProfileError):
    """A DNS name under ``outrelay.invalid`` (a role name) asked for outside its role."""


class TokenError(PKIError):
    """An enrollment token was refused."""

    grpc_status = "UNAUTHENTICATED"


class TokenInvalid(TokenError):
    """Bad signature, algorithm, issuer, audience, time window or claims."""


class TokenReplay(TokenError):
    """The token's id was already used (tokens are one-shot)."""


class NotAuthenticated(PKIError):
    """The caller presented no (valid) client certificate where one is required."""

    grpc_status = "UNAUTHENTICATED"


class PermissionDenied(PKIError):
    """The caller is authenticated but may not do this (wrong URI, role or tenant)."""

    grpc_status = "PERMISSION_DENIED"


class InvalidRequest(PKIError):
    """A request field is malformed (bad agent id, TTL out of range)."""

    grpc_status = "INVALID_ARGUMENT"


class NotConfigured(PKIError):
    """The service was built without the part this call needs (no token issuer)."""

    grpc_status = "FAILED_PRECONDITION"


class EnrollmentRPCError(PKIError):
    """A call to the Enrollment service failed; ``status`` is the gRPC status name."""

    def __init__(self, status: str, details: str) -> None:
        super().__init__(f"{status}: {details}")
        self.status = status
        self.details = details
