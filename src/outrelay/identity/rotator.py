"""Certificate rotation: renew at 70 % of the validity, swap atomically.

How this works: :class:`Rotator` holds the active :class:`Credentials` in
one attribute; a swap is a single reference assignment, so a reader sees the
old or the new credentials, never a mix. ``run()`` sleeps until
``NotBefore + rotate_at * (NotAfter - NotBefore)``, makes a fresh key and CSR,
calls the ``renew(csr_pem) -> (cert_pem, ca_pem)`` coroutine (in production
the Enrollment service's Renew over mTLS, see
:func:`outrelay.pki.client.grpc_renewer`), checks the answer, swaps, and
calls the subscribers. A failure is retried every ``retry_interval`` (one
minute); the rotator never checks expiry itself, so if renewal keeps failing
the old certificate simply expires (spec identity.md §4).

TLS: :meth:`Rotator.server_context` is one long-lived ``SSLContext`` whose
SNI callback hands each *new* handshake the current credentials' context;
established connections keep the certificate they were set up with.
Clients call :meth:`Rotator.client_context` per connection.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from outrelay.identity.errors import IdentityError, RotatorError
from outrelay.identity.peer import peer_identity
from outrelay.identity.uri import Identity

log = logging.getLogger(__name__)

#: ``renew(csr_pem) -> (cert_pem, ca_pem)``.
Renew = Callable[[bytes], Awaitable[tuple[bytes, bytes]]]
Subscriber = Callable[["Credentials"], None]

DEFAULT_ROTATE_AT = 0.7
DEFAULT_RETRY_INTERVAL = 60.0


@dataclass(frozen=True, eq=False)
class Credentials:
    """A leaf certificate, its key and the CA, with TLS contexts built on demand."""

    #: The leaf, PEM.
    cert_pem: bytes
    #: Its private key, PKCS#8 PEM.
    key_pem: bytes
    #: The trust root, PEM.
    ca_pem: bytes
    #: The parsed leaf.
    cert: x509.Certificate = field(repr=False)
    #: The identity in the leaf's first URI SAN.
    identity: Identity

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> Credentials:
        """Parse and cross-check a leaf, its key and the CA.

        Raises:
            RotatorError: unparsable, or the key does not belong to the leaf.
            IdentityError: the leaf carries no valid identity.
        """
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as exc:
            raise RotatorError(f"identity: credentials do not parse: {exc}") from None
        if cert.public_key() != key.public_key():
            raise RotatorError("identity: the key does not belong to the certificate")
        return cls(cert_pem, key_pem, ca_pem, cert, peer_identity(cert))

    @property
    def not_before(self) -> dt.datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    def renew_at(self, rotate_at: float) -> float:
        """Unix time of the renewal point."""
        start, end = self.not_before.timestamp(), self.not_after.timestamp()
        return start + rotate_at * (end - start)

    def _context(self, purpose: int) -> ssl.SSLContext:
        side = ssl.PROTOCOL_TLS_SERVER if purpose == 0 else ssl.PROTOCOL_TLS_CLIENT
        ctx = ssl.SSLContext(side)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.ca_pem.decode())
        # ssl loads key material only from files: a private temporary directory
        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            for path, data in ((cert_file, self.cert_pem), (key_file, self.key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            ctx.load_cert_chain(cert_file, key_file)
        return ctx

    @cached_property
    def server_context(self) -> ssl.SSLContext:
        """A TLS 1.3 server context presenting this leaf and requiring a client certificate."""
        return self._context(0)

    @cached_property
    def client_context(self) -> ssl.SSLContext:
        """A TLS 1.3 client context presenting this leaf, verifying against the CA."""
        return self._context(1)


class Rotator:
    """Keeps a leaf certificate fresh by renewing it before it expires.

    Raises:
        RotatorError: ``rotate_at`` not strictly between 0 and 1.
    """

    def __init__(
        self,
        renew: Renew,
        initial: Credentials | None = None,
        *,
        rotate_at: float = DEFAULT_ROTATE_AT,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < rotate_at < 1:
            raise RotatorError("identity: rotateAt must be in (0, 1)")
        self._renew = renew
        self._current = initial
        self._rotate_at = rotate_at
        self._retry_interval = retry_interval
        self._clock = clock
        self._subscribers: list[Subscriber] = []

    def current(self) -> Credentials | None:
        """The active credentials (lock-free read); None before bootstrap."""
        return self._current

    def _bootstrapped(self) -> Credentials:
        """The active credentials; raises RotatorError before bootstrap."""
        creds = self._current
        if creds is None:
            raise RotatorError("identity: rotator not bootstrapped")
        return creds

    async def bootstrap(self, obtain: Callable[[], Awaitable[Credentials]]) -> Credentials:
        """Obtain the first credentials (e.g. enroll) and make them active.

        Raises:
            RotatorError: ``obtain`` failed (the cause is chained).
        """
        try:
            creds = await obtain()
        except Exception as exc:
            raise RotatorError(f"identity: bootstrap: {exc}") from exc
        self._current = creds
        return creds

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(new_credentials)`` after each swap; returns an unsubscribe."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def next_renewal(self) -> float:
        """Unix time of the next renewal attempt.

        Raises:
            RotatorError: not bootstrapped.
        """
        return self._bootstrapped().renew_at(self._rotate_at)

    async def rotate_once(self) -> Credentials:
        """Renew now: fresh key, CSR for the current identity, renew, check, swap, notify.

        Raises:
            RotatorError: not bootstrapped, or the answer is not a leaf for our
                identity and new key.
            Exception: whatever ``renew`` raised.
        """
        from outrelay.pki.csr import key_pem, make_csr, new_key

        old = self._bootstrapped()
        key: ec.EllipticCurvePrivateKey = new_key()
        _, csr = make_csr(old.identity, key)
        cert_pem, ca_pem = await self._renew(csr)
        try:
            new = Credentials.from_pem(cert_pem, key_pem(key), ca_pem)
        except IdentityError as exc:
            raise RotatorError(f"identity: renewed certificate refused: {exc}") from exc
        if new.identity != old.identity:
            raise RotatorError(
                f"identity: renewed certificate is for {new.identity}, not {old.identity}"
            )
        self._current = new  # the atomic swap
        for callback in list(self._subscribers):
            try:
                callback(new)
            except Exception:
                log.exception("rotator subscriber failed")
        return new

    async def run(self) -> None:
        """Renew forever (until cancelled).

        Raises:
            RotatorError: not bootstrapped.
            asyncio.CancelledError: when cancelled.
        """
        self._bootstrapped()  # fail fast
        while True:
            await asyncio.sleep(max(0.0, self.next_renewal() - self._clock()))
            try:
                new = await self.rotate_once()
            except Exception as exc:
                log.warning(
                    "certificate renewal failed, retrying in %ss: %s", self._retry_interval, exc
                )
                await asyncio.sleep(self._retry_interval)
                continue
            log.info("certificate renewed for %s until %s", new.identity, new.not_after)
            if self.next_renewal() <= self._clock():
                # A leaf already due for renewal (tiny lifetime, skewed clock):
                # pace ourselves rather than spin against the controller.
                log.warning("renewed certificate is already due for renewal")
                await asyncio.sleep(self._retry_interval)

    def server_context(self) -> ssl.SSLContext:
        """A server ``SSLContext`` whose new handshakes always use the current leaf.

        Raises:
            RotatorError: not bootstrapped.
        """
        outer = self._bootstrapped()._context(0)

        def pick(
            sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext
        ) -> None:
            active = self._current
            if active is not None:
                sslobj.context = active.server_context

        outer.sni_callback = pick
        return outer

    def client_context(self) -> ssl.SSLContext:
        """A client ``SSLContext`` with the current leaf (call once per connection).

        Raises:
            RotatorError: not bootstrapped.
        """
        return self._bootstrapped().client_context
