"""The mini-CA, CSRs, enrollment tokens and their store (see ``docs/identity.md``).

The gRPC Enrollment service lives in :mod:`outrelay.pki.enrollment` and is
not imported here, so using the CA does not pull in grpc.
"""

from outrelay.pki.ca import (
    CA,
    DEFAULT_LEAF_TTL,
    cert_pem,
    check_csr,
    csr_uris,
    load_csr,
)
from outrelay.pki.csr import key_pem, load_key, make_csr, new_key
from outrelay.pki.errors import (
    CAError,
    CSRError,
    CSRKeyError,
    CSRMissingURI,
    CSRParseError,
    CSRSignatureError,
    CSRURIMismatch,
    InvalidRequest,
    LeafProfileError,
    NotAuthenticated,
    NotConfigured,
    PermissionDenied,
    PKIError,
    ReservedName,
    TokenError,
    TokenInvalid,
    TokenReplay,
)
from outrelay.pki.store import ApswTokenStore, MemoryTokenStore, TokenStore
from outrelay.pki.tokens import (
    DEFAULT_TOKEN_TTL,
    IssuedToken,
    TokenClaims,
    TokenIssuer,
    TokenVerifier,
)

__all__ = [
    "CA",
    "DEFAULT_LEAF_TTL",
    "DEFAULT_TOKEN_TTL",
    "ApswTokenStore",
    "CAError",
    "CSRError",
    "CSRKeyError",
    "CSRMissingURI",
    "CSRParseError",
    "CSRSignatureError",
    "CSRURIMismatch",
    "InvalidRequest",
    "IssuedToken",
    "LeafProfileError",
    "MemoryTokenStore",
    "NotAuthenticated",
    "NotConfigured",
    "PKIError",
    "PermissionDenied",
    "ReservedName",
    "TokenClaims",
    "TokenError",
    "TokenInvalid",
    "TokenIssuer",
    "TokenReplay",
    "TokenStore",
    "TokenVerifier",
    "cert_pem",
    "check_csr",
    "csr_uris",
    "key_pem",
    "load_csr",
    "load_key",
    "make_csr",
    "new_key",
]
