"""Address validation for a QUIC server: Retry tokens and the half-open cap (sans-IO).

A client Initial costs a server a connection, a TLS handshake (a signature)
and tens of kilobytes until its idle timeout, before the server knows
whether the source address is real. RFC 9000 §8.1 lets the server answer
with a Retry packet instead: no state, just a token the client must echo in
a second Initial sent to a connection id the server chose. Only a client
that receives packets at its address can do that, so a spoofed flood costs
the server one small stateless reply per packet.

This module decides, for every Initial that matches no connection, what the
endpoint does with it (:meth:`Admission.initial`), and mints and checks the
tokens (:class:`RetryTokens`). It never touches a socket or a clock: the
endpoint (``endpoint.py``) passes the address, connection ids, token and
time in and acts on the :class:`Decision`.

Policy (``mode``):

* ``never``: no Retry. Accept while fewer than ``max_half_open``
  handshakes are in progress, drop beyond.
* ``auto`` (default): accept while fewer than ``retry_threshold``
  handshakes are in progress; beyond, answer Retry. A client back with a
  valid token is accepted while fewer than ``max_half_open`` are in
  progress, dropped beyond (it retransmits later with the same token).
* ``always``: answer every token-less Initial with Retry.

A token that fails its check (wrong address, expired, altered, minted by
another process) cannot be fixed with a second Retry (a client accepts only
one, RFC 9000 §17.2.5.2), so the endpoint closes the attempt with
INVALID_TOKEN (§8.1.3); under load (``retry_threshold`` reached) it just
drops the packet, so junk tokens cost nothing but the check.

Tokens (stateless, bound to one attempt)::

    0x01 | issued_ms (8) | len(odcid) (1) | odcid | mac (16)
    mac = HMAC-SHA256(key, "outrelay-retry" | version | address | port
                           | odcid | retry_scid | issued_ms)[:16]

``key`` is 32 random bytes drawn when the endpoint starts (a restart voids
every token, which is harmless: they live ``lifetime`` seconds, 10 by
default). ``retry_scid`` is the connection id the Retry told the client to
use, so a token is good for that one second Initial only.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: Token format version (first byte).
TOKEN_VERSION = 1
#: Bytes of the truncated HMAC-SHA256 tag.
MAC_SIZE = 16
#: Bytes of the connection id we give a client in a Retry.
RETRY_CID_SIZE = 8
#: Seconds a token may be "from the future" (same process, monotonic clock:
#: only rounding).
_SKEW = 1.0
_DOMAIN = b"outrelay-retry"
_FIXED = 1 + 8 + 1  # version, issued_ms, odcid length


class RetryMode(enum.StrEnum):
    """When a server answers an Initial with Retry."""

    NEVER = "never"
    AUTO = "auto"
    ALWAYS = "always"


class InvalidToken(ValueError):
    """A Retry token failed its check; ``reason`` says which part."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _address_bytes(addr: Any) -> bytes:
    """Packed IP and 2-byte port of a socket address (IPv4 or IPv6 tuple)."""
    host = addr[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        packed = socket.inet_pton(family, host)
    except OSError:
        packed = ipaddress.ip_address(host).packed  # scoped IPv6 ("fe80::1%eth0") and the like
    return packed + struct.pack("!H", int(addr[1]))


class RetryTokens:
    """Mints and checks Retry tokens with one process-local HMAC key."""

    def __init__(self, key: bytes | None = None, *, lifetime: float = 10.0) -> None:
        if lifetime <= 0:
            raise ValueError("retry token lifetime must be positive")
        if key is not None and len(key) < 16:
            raise ValueError("retry token key must have at least 16 bytes")
        self._key = key if key is not None else os.urandom(32)
        self.lifetime = lifetime

    def _mac(
        self, version: int, addr: Any, odcid: bytes, retry_scid: bytes, issued_ms: int
    ) -> bytes:
        msg = b"".join(
            (
                _DOMAIN,
                struct.pack("!I", version),
                _address_bytes(addr),
                bytes((len(odcid),)),
                odcid,
                bytes((len(retry_scid),)),
                retry_scid,
                struct.pack("!Q", issued_ms),
            )
        )
        return hmac.digest(self._key, msg, hashlib.sha256)[:MAC_SIZE]

    def mint(
        self, *, version: int, addr: Any, odcid: bytes, retry_scid: bytes, now: float
    ) -> bytes:
        """A token for the client at ``addr`` whose first Initial went to ``odcid``."""
        issued_ms = int(now * 1000)
        mac = self._mac(version, addr, odcid, retry_scid, issued_ms)
        head = struct.pack("!BQB", TOKEN_VERSION, issued_ms, len(odcid))
        return head + odcid + mac

    def check(self, token: bytes, *, version: int, addr: Any, dcid: bytes, now: float) -> bytes:
        """The original destination connection id ``token`` vouches for.

        ``dcid`` is the destination connection id of the Initial carrying the
        token (the Retry's source connection id if the client is honest).

        Raises:
            InvalidToken: malformed, not ours, altered, for another address,
                port or attempt, or older than :attr:`lifetime`.
        """
        if len(token) < _FIXED + MAC_SIZE:
            raise InvalidToken("token too short")
        tv, issued_ms, odcid_len = struct.unpack_from("!BQB", token)
        if tv != TOKEN_VERSION:
            raise InvalidToken("unknown token format")
        if len(token) != _FIXED + odcid_len + MAC_SIZE:
            raise InvalidToken("token length mismatch")
        odcid = token[_FIXED : _FIXED + odcid_len]
        expected = self._mac(version, addr, odcid, dcid, issued_ms)
        if not hmac.compare_digest(expected, token[_FIXED + odcid_len :]):
            raise InvalidToken("token does not match this address and attempt")
        age = now - issued_ms / 1000
        if age > self.lifetime:
            raise InvalidToken(f"token expired ({age:.1f}s old)")
        if age < -_SKEW:
            raise InvalidToken("token issued in the future")
        return odcid


class Verdict(enum.Enum):
    """What the endpoint does with an Initial that matches no connection."""

    #: Create the connection.
    ACCEPT = "accept"
    #: Send a Retry (``Decision.retry_scid`` and ``Decision.token``), keep nothing.
    RETRY = "retry"
    #: Close the attempt with INVALID_TOKEN (a stateless Initial), keep nothing.
    INVALID_TOKEN = "invalid_token"
    #: Ignore the datagram.
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one Initial and what the endpoint needs to carry it out."""

    verdict: Verdict
    #: ACCEPT: the client's original destination connection id (transport parameter).
    original_dcid: bytes = b""
    #: ACCEPT after a Retry: the Retry's source connection id (transport
    #: parameter); RETRY: the connection id the Retry gives the client.
    retry_scid: bytes | None = None
    #: RETRY: the token to send.
    token: bytes = b""
    #: DROP / INVALID_TOKEN: why (for logs and tests).
    reason: str = ""


class Counter(Protocol):
    """What :class:`AdmissionMeters` needs of a counter."""

    def inc(self) -> None: ...


class Gauge(Protocol):
    """What :class:`AdmissionMeters` needs of a gauge."""

    def set(self, value: int) -> None: ...


class _Null:
    def inc(self) -> None:
        pass

    def set(self, value: int) -> None:
        pass


_NULL = _Null()


@dataclass
class AdmissionMeters:
    """Where the admission counts go (the relay passes its metrics registry's)."""

    #: Handshakes in progress (connections created, peer not yet verified).
    half_open: Gauge = _NULL
    #: Retry packets sent.
    retries: Counter = _NULL
    #: Initials whose token failed its check.
    invalid_tokens: Counter = _NULL
    #: Initials dropped because ``max_half_open`` handshakes were in progress.
    dropped_full: Counter = _NULL
    #: Connections created for an Initial.
    accepted: Counter = _NULL
    #: Connections the endpoint holds (half-open or established).
    connections: Gauge = _NULL

    @classmethod
    def from_registry(cls, registry: Any) -> AdmissionMeters:
        """Meters named ``quic_*`` in a metrics registry (``counter(name)``/``gauge(name)``)."""
        return cls(
            half_open=registry.gauge("quic_half_open"),
            retries=registry.counter("quic_retries_sent"),
            invalid_tokens=registry.counter("quic_invalid_tokens"),
            dropped_full=registry.counter("quic_initials_dropped"),
            accepted=registry.counter("quic_handshakes_started"),
            connections=registry.gauge("quic_connections"),
        )


def check_settings(mode: str, retry_threshold: int, max_half_open: int) -> RetryMode:
    """Validate the three settings; the mode as :class:`RetryMode`.

    Raises:
        ValueError: an unknown mode, a non-positive number, or a threshold above the cap.
    """
    try:
        retry_mode = RetryMode(mode)
    except ValueError:
        raise ValueError(f"retry mode must be auto, always or never, not {mode!r}") from None
    if max_half_open < 1:
        raise ValueError("max_half_open must be at least 1")
    if retry_threshold < 0:
        raise ValueError("retry_threshold must not be negative")
    if retry_threshold > max_half_open:
        raise ValueError("retry_threshold must not exceed max_half_open")
    return retry_mode


class Admission:
    """Counts half-open handshakes and decides each new Initial's fate (module doc)."""

    def __init__(
        self,
        mode: RetryMode | str = RetryMode.AUTO,
        *,
        retry_threshold: int = 64,
        max_half_open: int = 512,
        tokens: RetryTokens | None = None,
        new_cid: Callable[[], bytes] | None = None,
        meters: AdmissionMeters | None = None,
    ) -> None:
        self.mode = check_settings(str(mode), retry_threshold, max_half_open)
        self.retry_threshold = retry_threshold
        self.max_half_open = max_half_open
        self.tokens = tokens if tokens is not None else RetryTokens()
        self._new_cid = new_cid or (lambda: os.urandom(RETRY_CID_SIZE))
        self.meters = meters or AdmissionMeters()
        self._half_open = 0

    @property
    def half_open(self) -> int:
        """Handshakes in progress."""
        return self._half_open

    @property
    def under_load(self) -> bool:
        """True once ``retry_threshold`` handshakes are in progress."""
        return self._half_open >= self.retry_threshold

    def opened(self) -> None:
        """The endpoint created a connection for an accepted Initial."""
        self._half_open += 1
        self.meters.half_open.set(self._half_open)
        self.meters.accepted.inc()

    def settled(self) -> None:
        """A connection counted by :meth:`opened` was verified or closed (call once)."""
        if self._half_open > 0:
            self._half_open -= 1
        self.meters.half_open.set(self._half_open)

    def initial(
        self, *, version: int, addr: Any, dcid: bytes, token: bytes, now: float
    ) -> Decision:
        """The fate of a client Initial from ``addr`` that matches no connection.

        The caller has already dropped what is cheap to drop (datagrams under
        1,200 bytes, unsupported versions, other packet types). An ACCEPT is
        a promise to call :meth:`opened`, then :meth:`settled` once.
        """
        if token:
            try:
                odcid = self.tokens.check(token, version=version, addr=addr, dcid=dcid, now=now)
            except InvalidToken as exc:
                self.meters.invalid_tokens.inc()
                if self.under_load:
                    return Decision(Verdict.DROP, reason=exc.reason)
                return Decision(Verdict.INVALID_TOKEN, reason=exc.reason)
            if self._half_open >= self.max_half_open:
                self.meters.dropped_full.inc()
                return Decision(Verdict.DROP, reason="half-open cap reached")
            return Decision(Verdict.ACCEPT, original_dcid=odcid, retry_scid=dcid)
        if self.mode is RetryMode.ALWAYS or (self.mode is RetryMode.AUTO and self.under_load):
            retry_scid = self._new_cid()
            self.meters.retries.inc()
            return Decision(
                Verdict.RETRY,
                retry_scid=retry_scid,
                token=self.tokens.mint(
                    version=version, addr=addr, odcid=dcid, retry_scid=retry_scid, now=now
                ),
            )
        if self._half_open >= self.max_half_open:
            self.meters.dropped_full.inc()
            return Decision(Verdict.DROP, reason="half-open cap reached")
        return Decision(Verdict.ACCEPT, original_dcid=dcid)
