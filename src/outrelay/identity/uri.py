"""Identity URIs: ``outrelay://<tenant>/agent/<uuid>`` and friends.

Three roles exist (spec identity.md §1 plus one extension):

* ``outrelay://<tenant>/agent/<uuid>``   an agent (provider or consumer);
* ``outrelay://<region>/relay/<id>``     a relay;
* ``outrelay://<tenant>/admin/<name>``   an operator (OutRelay extension).

Parsing follows the reference step by step: a generic URL parse (modelled on
Go's ``net/url``, whose quirks the spec pins down: lower-cased scheme, the
port kept in the host, userinfo/query/fragment ignored, percent-decoded
path), then scheme, host, path shape and the role's id rule. Every pattern
is matched against the whole string (``re.fullmatch``), never with ``$``,
which would accept a trailing newline.
"""

from __future__ import annotations

import re
import uuid as _uuid
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import unquote_to_bytes

from outrelay.identity.errors import (
    IdentityError,
    InvalidAdminName,
    InvalidPath,
    InvalidRelayID,
    InvalidScheme,
    InvalidTenant,
    InvalidURI,
    InvalidUUID,
)

SCHEME = "outrelay"

#: Tenant / region / relay id / admin name: 1..63 chars, first not a hyphen.
_LABEL = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_HEX36 = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: Characters Go's URL parser accepts unescaped in a host (``shouldEscape``).
_HOST_OK = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'()*+,;=:[]<>\"%"
)


class Role(IntEnum):
    """What a certificate holder is; the value is the reference's enum."""

    UNKNOWN = 0
    AGENT = 1
    RELAY = 2
    #: OutRelay extension: an operator allowed to call admin RPCs of its tenant.
    ADMIN = 3

    def __str__(self) -> str:
        return self.name.lower()


_ROLE_BY_SEGMENT = {"agent": Role.AGENT, "relay": Role.RELAY, "admin": Role.ADMIN}


def valid_label(value: str) -> bool:
    """True if ``value`` passes the tenant rule (also used for relay ids and admin names)."""
    return _LABEL.fullmatch(value) is not None


def parse_uuid(value: str) -> str:
    """Parse a UUID the way Google's ``uuid.Parse`` does; return it canonical.

    Accepted (hex case-insensitive): 36-char hyphenated, 38-char ``{...}``,
    45-char ``urn:uuid:...`` and 32 bare hex digits; any version or variant.

    Raises:
        InvalidUUID: naming the offending string and why it was refused.
    """
    s = value
    if len(s) == 45:
        if s[:9].lower() != "urn:uuid:":
            raise InvalidUUID(f"identity: invalid agent uuid {value!r}: invalid urn prefix")
        s = s[9:]
    elif len(s) == 38:
        if s[0] != "{" or s[-1] != "}":
            raise InvalidUUID(f"identity: invalid agent uuid {value!r}: invalid braces")
        s = s[1:-1]
    elif len(s) == 32:
        if _HEX32.fullmatch(s) is None:
            raise InvalidUUID(f"identity: invalid agent uuid {value!r}: invalid hex")
        return str(_uuid.UUID(hex=s))
    elif len(s) != 36:
        raise InvalidUUID(f"identity: invalid agent uuid {value!r}: invalid length {len(s)}")
    if _HEX36.fullmatch(s) is None:
        raise InvalidUUID(f"identity: invalid agent uuid {value!r}: invalid UUID format")
    return s.lower()


@dataclass(frozen=True)
class Identity:
    """A validated OutRelay identity; ``str()`` gives the canonical URI.

    Construct through :func:`parse` or the ``agent``/``new_agent``/``relay``/
    ``admin`` class methods; the constructor validates too, and normalises an
    agent id to the lowercase hyphenated UUID form.
    """

    #: Host slot: the tenant (agents, admins) or the region label (relays).
    tenant: str
    #: The role segment of the path.
    role: Role
    #: Agent UUID (canonical), relay id or admin name.
    id: str

    def __post_init__(self) -> None:
        if not valid_label(self.tenant):
            raise InvalidTenant(f"identity: invalid tenant {self.tenant!r}")
        if self.role is Role.AGENT:
            object.__setattr__(self, "id", parse_uuid(self.id))
        elif self.role is Role.RELAY:
            if not valid_label(self.id):
                raise InvalidRelayID(f"identity: invalid relay id {self.id!r}")
        elif self.role is Role.ADMIN and not valid_label(self.id):
            raise InvalidAdminName(f"identity: invalid admin name {self.id!r}")

    @classmethod
    def agent(cls, tenant: str, agent_id: str | _uuid.UUID) -> Identity:
        """The identity of agent ``agent_id`` in ``tenant`` (raises InvalidTenant/InvalidUUID)."""
        return cls(tenant, Role.AGENT, str(agent_id))

    @classmethod
    def new_agent(cls, tenant: str) -> Identity:
        """A fresh agent identity in ``tenant`` with a random (v4) UUID."""
        return cls(tenant, Role.AGENT, str(_uuid.uuid4()))

    @classmethod
    def relay(cls, region: str, relay_id: str) -> Identity:
        """The identity of a relay (raises InvalidTenant/InvalidRelayID)."""
        return cls(region, Role.RELAY, relay_id)

    @classmethod
    def admin(cls, tenant: str, name: str) -> Identity:
        """The identity of an operator of ``tenant`` (raises InvalidTenant/InvalidAdminName)."""
        return cls(tenant, Role.ADMIN, name)

    @property
    def region(self) -> str:
        """The host slot read as a region (relays)."""
        return self.tenant

    def __str__(self) -> str:
        if self.role is Role.UNKNOWN:
            return ""
        return f"{SCHEME}://{self.tenant}/{self.role}/{self.id}"

    @property
    def uri(self) -> str:
        """The canonical URI (same as ``str(self)``)."""
        return str(self)


def _split_url(uri: str) -> tuple[str, str | None, str]:
    """Generic URL parse: (lower-cased scheme, host incl. port or None, decoded path)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        raise InvalidURI(f"identity: parse {uri!r}: invalid control character in URL")
    rest = uri.partition("#")[0]
    m = _SCHEME.match(rest)
    if m is not None:
        scheme, rest = m.group(1).lower(), rest[m.end() :]
    elif rest.startswith(":"):
        raise InvalidURI(f"identity: parse {uri!r}: missing protocol scheme")
    else:
        scheme = ""
    rest = rest.partition("?")[0]
    host: str | None = None
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        path = slash + path
        host = authority.rpartition("@")[2]
        bad = next((c for c in host if ord(c) < 0x80 and c not in _HOST_OK), None)
        if bad is not None:
            raise InvalidURI(f"identity: parse {uri!r}: invalid character {bad!r} in host name")
        if not host.startswith("["):
            port = host.partition(":")[2]
            if ":" in host and not port.isdigit() and port != "":
                raise InvalidURI(f"identity: parse {uri!r}: invalid port {':' + port!r}")
    elif scheme and not rest.startswith("/"):
        path = ""  # opaque URI ("outrelay:acme/..."): no host, no path
    else:
        path = rest
    if _BAD_ESCAPE.search(path):
        raise InvalidURI(f"identity: parse {uri!r}: invalid URL escape in path")
    return scheme, host, unquote_to_bytes(path).decode("utf-8", errors="replace")


def parse(uri: str) -> Identity:
    """Parse an identity URI; the result renders back in canonical form.

    Raises (all subclasses of :class:`IdentityError`, message naming the bad part):
        InvalidURI: the generic URL parse failed (control character, bad host
            character, bad port, bad percent escape).
        InvalidScheme: the scheme is not ``outrelay`` (also for ``""``).
        InvalidTenant: the host (port included) breaks the tenant rule.
        InvalidPath: the path is not exactly ``/<role>/<non-empty id>`` with a
            known role.
        InvalidUUID / InvalidRelayID / InvalidAdminName: the id breaks its rule.
    """
    if not isinstance(uri, str):
        raise IdentityError(f"identity: expected a string, got {type(uri).__name__}")
    scheme, host, path = _split_url(uri)
    if scheme != SCHEME:
        raise InvalidScheme(f"identity: not an outrelay URI: scheme {scheme!r} in {uri!r}")
    if host is None or not valid_label(host):
        raise InvalidTenant(f"identity: invalid tenant {host or ''!r} in {uri!r}")
    parts = path.removeprefix("/").split("/")
    if len(parts) != 2 or parts[1] == "":
        raise InvalidPath(f"identity: invalid path component {path!r} in {uri!r}")
    role = _ROLE_BY_SEGMENT.get(parts[0])
    if role is None:
        raise InvalidPath(f"identity: invalid path component: unknown role {parts[0]!r} in {uri!r}")
    try:
        return Identity(host, role, parts[1])
    except IdentityError as exc:
        raise type(exc)(f"{exc} in {uri!r}") from None
