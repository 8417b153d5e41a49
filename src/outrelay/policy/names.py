"""The service-name rule and the shape of policy patterns (OutRelay extension).

One rule, one function, used by the controller (RegisterService, AddPolicy),
the relay (REGISTER) and the agent (``--expose``, ``--consume``, the SDK):

* a **service name** is a DNS label: 1..63 characters of ``a-z``, ``0-9``
  and ``-``, starting and ending with a letter or digit (``web``, ``svc-echo``,
  ``db2``). Upper case, ``.``, ``/``, ``*``, NUL, spaces and any other
  character are refused, so a name can never be read as a path, a glob or a
  tenant-qualified id (``<tenant>/<name>``);
* a **caller pattern** is ``*`` or a glob over identity URIs that starts with
  ``outrelay://`` and uses only the characters an identity URI can contain
  (letters, digits, ``-._~:/``) plus ``*``;
* a **target pattern** of a bind rule is a service name or a glob over them
  (the name alphabet plus ``*``); a dial rule's target may also be an
  identity glob (callee-side rules name the consumer).

The reference validates none of these (relay.md §5: "service names are
passed through unvalidated"; control.md §4 stores any pattern).

Errors carry their wire meaning: ``InvalidServiceName`` is a 400
STREAM_REJECT at the relay and INVALID_ARGUMENT at the controller;
``InvalidPattern`` is INVALID_ARGUMENT. Both are ``ValueError`` too, so
configuration code can treat them as bad values.
"""

from __future__ import annotations

import re

from outrelay.errors import OutRelayError

#: Longest service name (one DNS label).
MAX_SERVICE_NAME = 63
#: Longest caller or target pattern.
MAX_PATTERN = 1024

#: The rule, stated once for messages.
SERVICE_NAME_RULE = (
    "1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
)
CALLER_PATTERN_RULE = "'*' or a glob starting 'outrelay://' over letters, digits, '-._~:/' and '*'"
BIND_TARGET_RULE = "a service name or a glob over service names (a-z, 0-9, '-', '*')"

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NAME_GLOB = re.compile(r"[a-z0-9*-]+")
_URI_GLOB = re.compile(r"outrelay://[A-Za-z0-9._~:/*-]*")
_PREFIX = "outrelay://"


class InvalidServiceName(OutRelayError, ValueError):
    """A service name breaks the rule: STREAM_REJECT 400 / INVALID_ARGUMENT."""

    code = 400


class InvalidPattern(OutRelayError, ValueError):
    """A policy pattern is malformed: INVALID_ARGUMENT (exit 2 in the CLI)."""


def valid_service_name(name: str) -> bool:
    """True if ``name`` follows the service-name rule."""
    return _NAME.fullmatch(name) is not None


def check_service_name(name: str) -> str:
    """Return ``name`` if it follows the rule.

    Raises:
        InvalidServiceName: the message quotes (a prefix of) the name and the rule.
    """
    if valid_service_name(name):
        return name
    shown = name if len(name) <= 80 else f"{name[:40]}...({len(name)} characters)"
    raise InvalidServiceName(f"invalid service name {shown!r}: must be {SERVICE_NAME_RULE}")


def _check_length(pattern: str, field: str) -> None:
    if not pattern:
        raise InvalidPattern(f"{field}: required")
    if len(pattern) > MAX_PATTERN:
        raise InvalidPattern(f"{field}: longer than {MAX_PATTERN} characters")


def check_caller_pattern(pattern: str, field: str = "caller pattern") -> str:
    """Return ``pattern`` if it is ``*`` or a well-formed ``outrelay://`` glob.

    Raises:
        InvalidPattern: naming ``field`` and the rule.
    """
    _check_length(pattern, field)
    if pattern == "*" or _URI_GLOB.fullmatch(pattern):
        return pattern
    raise InvalidPattern(f"{field}: {pattern!r} is not {CALLER_PATTERN_RULE}")


def check_target_pattern(pattern: str, *, bind: bool, field: str = "target pattern") -> str:
    """Return ``pattern`` if it is a valid target for a bind (or dial) rule.

    A bind target is a service name or a glob over names. A dial target is
    that or, for callee-side rules, an identity glob (as a caller pattern).

    Raises:
        InvalidPattern: naming ``field`` and the rule.
    """
    _check_length(pattern, field)
    if "*" not in pattern and len(pattern) <= MAX_SERVICE_NAME and valid_service_name(pattern):
        return pattern
    if "*" in pattern and _NAME_GLOB.fullmatch(pattern):
        return pattern
    if bind:
        raise InvalidPattern(f"{field}: {pattern!r} is not {BIND_TARGET_RULE}")
    if pattern.startswith(_PREFIX) and _URI_GLOB.fullmatch(pattern):
        return pattern
    raise InvalidPattern(
        f"{field}: {pattern!r} is not {BIND_TARGET_RULE}, nor an 'outrelay://' identity glob"
    )
