"""Who is who: identity URIs, peer identities and certificate rotation.

``outrelay://<tenant>/agent/<uuid>``, ``outrelay://<region>/relay/<id>`` and
``outrelay://<tenant>/admin/<name>``; the controller's reserved TLS name
(:data:`CONTROLLER_NAME`) and the role checks every peer goes through; see
``docs/identity.md``.
"""

from outrelay.identity.errors import (
    IdentityError,
    InvalidAdminName,
    InvalidPath,
    InvalidRelayID,
    InvalidScheme,
    InvalidTenant,
    InvalidURI,
    InvalidUUID,
    NoPeerIdentity,
    RotatorError,
)
from outrelay.identity.peer import load_certificate, peer_identity, peer_uri
from outrelay.identity.roles import (
    CONTROLLER_NAME,
    CONTROLLER_NAME_OPTION,
    RESERVED_DOMAIN,
    RoleRefused,
    explain_controller_refusal,
    is_reserved_name,
    require_role,
)
from outrelay.identity.rotator import Credentials, Rotator
from outrelay.identity.uri import Identity, Role, parse, parse_uuid, valid_label

__all__ = [
    "CONTROLLER_NAME",
    "CONTROLLER_NAME_OPTION",
    "RESERVED_DOMAIN",
    "RoleRefused",
    "explain_controller_refusal",
    "is_reserved_name",
    "require_role",
    "Credentials",
    "Rotator",
    "Identity",
    "IdentityError",
    "InvalidAdminName",
    "InvalidPath",
    "InvalidRelayID",
    "InvalidScheme",
    "InvalidTenant",
    "InvalidURI",
    "InvalidUUID",
    "NoPeerIdentity",
    "Role",
    "RotatorError",
    "load_certificate",
    "parse",
    "parse_uuid",
    "peer_identity",
    "peer_uri",
    "valid_label",
]
