"""Role checks on a verified peer, and the controller's reserved role name.

A peer's role comes only from its verified certificate: the first URI SAN
of the leaf (``outrelay://<region>/relay/<id>`` is a relay, and so on). The
controller is the exception: gRPC's Python client cannot read the server
certificate, so the controller proves its role inside the TLS handshake with
a reserved DNS SAN, :data:`CONTROLLER_NAME`, which every gRPC client of the
controller checks as the server name whatever address it dials. ``.invalid``
never resolves (RFC 6761): the name is a role, not a host. The CA puts it
only into controller certificates and refuses every name under
:data:`RESERVED_DOMAIN` anywhere else.
"""

from __future__ import annotations

from collections.abc import Iterable

from outrelay.identity.errors import IdentityError
from outrelay.identity.uri import Identity, Role, parse

#: Suffix of names that denote a role, never a host.
RESERVED_DOMAIN = "outrelay.invalid"
#: The DNS SAN that marks a controller certificate (and the name its clients check).
CONTROLLER_NAME = f"controller.{RESERVED_DOMAIN}"
#: The gRPC channel option that makes the TLS name check the controller role check.
CONTROLLER_NAME_OPTION = ("grpc.ssl_target_name_override", CONTROLLER_NAME)

#: The shape of each role's URI, for error messages.
ROLE_SHAPES = {
    Role.AGENT: "outrelay://<tenant>/agent/<uuid>",
    Role.RELAY: "outrelay://<region>/relay/<id>",
    Role.ADMIN: "outrelay://<tenant>/admin/<name>",
}


class RoleRefused(IdentityError):
    """A verified peer does not have the role (or pinned URI) this side accepts."""


def is_reserved_name(name: str) -> bool:
    """True if ``name`` is :data:`RESERVED_DOMAIN` or any name under it (any case)."""
    lowered = name.lower().rstrip(".")
    return lowered == RESERVED_DOMAIN or lowered.endswith("." + RESERVED_DOMAIN)


def explain_controller_refusal(details: str) -> str:
    """``details`` of a failed gRPC call, with the reason spelled out if the
    server failed the controller role check (gRPC only says "Hostname
    Verification Check failed")."""
    if "Hostname Verification" in details or f"name: {CONTROLLER_NAME}" in details:
        return (
            f"the server is not the controller: its certificate lacks the controller "
            f"role name DNS:{CONTROLLER_NAME} (a controller certificate issued before "
            f"roles were checked must be re-issued) [{details}]"
        )
    return details


def _expected(roles: Iterable[Role]) -> str:
    return " or ".join(
        f"{article(role)} identity ({ROLE_SHAPES.get(role, role)})" for role in roles
    )


def article(role: Role) -> str:
    """``"an agent"``, ``"a relay"``, ``"an admin"``: a role with its article."""
    return f"an {role}" if str(role)[:1] in "aeiou" else f"a {role}"


def require_role(
    uri: str | None,
    roles: Iterable[Role],
    *,
    pinned: str | None = None,
    peer: str = "peer",
) -> Identity:
    """The identity in ``uri`` (a verified leaf's first URI SAN) if its role is accepted.

    ``roles`` are the accepted roles; ``pinned``, when given, is the one URI
    accepted (compared exactly). ``peer`` names the other side in messages
    ("server", "client").

    Raises:
        RoleRefused: no URI, not an identity URI, a role not in ``roles``, or
            not the pinned URI; the message names what was expected and what
            was presented.
    """
    accepted = sorted(set(roles))
    want = f"the pinned URI {pinned}" if pinned is not None else _expected(accepted)
    if uri is None:
        raise RoleRefused(f"expected {want}; the {peer} certificate has no URI SAN")
    try:
        identity = parse(uri)
    except IdentityError as exc:
        raise RoleRefused(
            f"expected {want}; the {peer} presented {uri!r}, not an identity ({exc})"
        ) from None
    if identity.role not in accepted:
        raise RoleRefused(
            f"expected {_expected(accepted)}; the {peer} presented {uri} ({identity.role} role)"
        )
    if pinned is not None and uri != pinned:
        raise RoleRefused(f"expected {want}; the {peer} presented {uri}")
    return identity
