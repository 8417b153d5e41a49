"""Identity errors: one class per way an identity URI can be wrong.

They mirror the reference's sentinels (``ErrInvalidScheme`` ...) so a caller
can tell which part of a URI was bad; each message names that part.
"""

from __future__ import annotations

from outrelay.errors import OutRelayError


class IdentityError(OutRelayError):
    """Base class of every identity error."""


class InvalidURI(IdentityError):
    """The string is not a URI at all (the generic URL parse failed)."""


class InvalidScheme(IdentityError):
    """The scheme is not ``outrelay``."""


class InvalidTenant(IdentityError):
    """The host slot (tenant or region) breaks the tenant rule."""


class InvalidPath(IdentityError):
    """The path is not ``/<role>/<id>`` with a known role and a non-empty id."""


class InvalidUUID(IdentityError):
    """The last segment of an agent URI is not a UUID."""


class InvalidRelayID(IdentityError):
    """The last segment of a relay URI breaks the relay-id rule."""


class InvalidAdminName(IdentityError):
    """The last segment of an admin URI breaks the name rule (same as relay ids)."""


class NoPeerIdentity(IdentityError):
    """A peer presented no certificate, or one without a URI SAN."""


class RotatorError(IdentityError):
    """The certificate rotator was misconfigured or used before bootstrap."""
