"""The mini-CA: one P-256 key that signs short-lived leaves (spec §2).

The CA certificate and leaf profile follow the reference field by field
(subject ``CN=outrelay-ca``, ten-year validity, path length 0; leaves with
serverAuth+clientAuth, exactly one URI SAN and DNS ``localhost``, back-dated
one minute). Unlike the reference, a CA can be saved and loaded
(``ca.crt`` 0644, ``ca.key`` PKCS#8 0600), and a leaf never outlives its CA.
Revocation is by short lifetime only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from outrelay.identity import Identity
from outrelay.pki.csr import key_pem, load_key, make_csr, new_key
from outrelay.pki.errors import (
    CAError,
    CSRKeyError,
    CSRMissingURI,
    CSRParseError,
    CSRSignatureError,
    CSRURIMismatch,
)
from outrelay.pki.files import ensure_dir, write_private, write_public

CA_COMMON_NAME = "outrelay-ca"
CA_VALIDITY = dt.timedelta(hours=87600)
#: Leaf lifetime when the caller gives none (or a non-positive one).
DEFAULT_LEAF_TTL = dt.timedelta(hours=1)
BACKDATE = dt.timedelta(minutes=1)
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"

CsrLike = x509.CertificateSigningRequest | bytes | str
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def random_serial() -> int:
    """A uniform serial in ``[1, 2**128)`` (X.509 wants it positive)."""
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _host_sans(
    dns_names: Iterable[str], ip_addresses: Iterable[IPAddress | str]
) -> list[x509.GeneralName]:
    """DNS ``localhost`` then the other names (each once), then the IP addresses.

    Raises ValueError when an entry of ``ip_addresses`` is not an IP address.
    """
    sans: list[x509.GeneralName] = [
        x509.DNSName(d) for d in dict.fromkeys(["localhost", *dns_names])
    ]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    return sans


def cert_pem(cert: x509.Certificate) -> bytes:
    """A certificate as PEM (block type ``CERTIFICATE``)."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_csr(csr: CsrLike) -> x509.CertificateSigningRequest:
    """Parse a CSR given as PEM (bytes/str) or DER.

    Raises:
        CSRParseError: it is not a PKCS#10 request.
    """
    if isinstance(csr, x509.CertificateSigningRequest):
        return csr
    data = csr.encode() if isinstance(csr, str) else bytes(csr)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except (ValueError, TypeError) as exc:
        raise CSRParseError(f"pki: parse csr: {exc}") from None


def csr_uris(csr: x509.CertificateSigningRequest) -> list[str]:
    """The URI SANs of a CSR, in order (empty if it has none).

    Raises:
        CSRParseError: the SAN extension is malformed.
    """
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except ValueError as exc:
        raise CSRParseError(f"pki: parse csr extensions: {exc}") from None
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def required_uris(csr: x509.CertificateSigningRequest) -> list[str]:
    """The URI SANs of a CSR; CSRMissingURI if it has none (CSRParseError if malformed)."""
    uris = csr_uris(csr)
    if not uris:
        raise CSRMissingURI("pki: csr missing identity URI SAN")
    return uris


def check_csr(csr: CsrLike, identity: Identity | None = None) -> x509.CertificateSigningRequest:
    """Apply the CSR acceptance rules (spec §2.3) and return the parsed CSR.

    With ``identity`` None only parsing, proof of possession and the key type
    are checked (the caller then picks the identity from :func:`csr_uris`).

    Raises:
        CSRParseError: not a PKCS#10 request.
        CSRSignatureError: the self-signature does not verify.
        CSRKeyError: the key is not P-256/P-384, RSA >= 2048 or Ed25519.
        CSRMissingURI: the CSR has no URI SAN.
        CSRURIMismatch: it has URI SANs but none equals ``str(identity)``.
    """
    parsed = load_csr(csr)
    try:
        ok = parsed.is_signature_valid
        public = parsed.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise CSRSignatureError(f"pki: csr signature invalid: {exc}") from None
    if not ok:
        raise CSRSignatureError("pki: csr signature invalid: proof of possession failed")
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in ("secp256r1", "secp384r1"):
            raise CSRKeyError(f"pki: csr key: unsupported curve {public.curve.name}")
    elif isinstance(public, rsa.RSAPublicKey):
        if public.key_size < 2048:
            raise CSRKeyError(f"pki: csr key: RSA key of {public.key_size} bits is too small")
    elif not isinstance(public, ed25519.Ed25519PublicKey):
        raise CSRKeyError(f"pki: csr key: unsupported key type {type(public).__name__}")
    if identity is not None:
        uris = required_uris(parsed)
        want = str(identity)
        if want not in uris:
            raise CSRURIMismatch(
                f"pki: csr URI SAN does not match issued name: want {want!r}, csr has {uris!r}"
            )
    return parsed


@dataclass(frozen=True)
class CA:
    """A certificate authority: its self-signed certificate and P-256 key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, *, now: dt.datetime | None = None) -> CA:
        """A brand-new CA with the reference profile (spec §2.1)."""
        now = _now(now)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(random_serial())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem_data: bytes | str, key_pem_data: bytes | str) -> CA:
        """Load a CA from PEM text.

        Raises:
            CAError: unparsable PEM, not a CA certificate, or a key that does
                not belong to the certificate.
        """

        def as_bytes(v: bytes | str) -> bytes:
            return v.encode() if isinstance(v, str) else v

        try:
            cert = x509.load_pem_x509_certificate(as_bytes(cert_pem_data))
            key = load_key(as_bytes(key_pem_data))
        except ValueError as exc:
            raise CAError(f"pki: load CA: {exc}") from None
        if cert.public_key() != key.public_key():
            raise CAError("pki: load CA: the key does not match the certificate")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CAError("pki: load CA: the certificate is not a CA certificate")
        return cls(cert, key)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CA:
        """Load ``ca.crt`` and ``ca.key`` from ``directory``.

        Raises:
            CAError: a file is missing or unreadable, or the pair is invalid.
        """
        base = Path(directory)
        try:
            cert_data = (base / CA_CERT_FILE).read_bytes()
            key_data = (base / CA_KEY_FILE).read_bytes()
        except OSError as exc:
            raise CAError(f"pki: load CA from {base}: {exc.strerror}: {exc.filename}") from None
        return cls.from_pem(cert_data, key_data)

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``ca.crt`` (0644) and ``ca.key`` (0600) into ``directory`` (0700 if created).

        Raises:
            FileExistsError: a file exists and ``overwrite`` is false.
        """
        base = ensure_dir(directory)
        if not overwrite:
            for name in (CA_CERT_FILE, CA_KEY_FILE):
                if (base / name).exists():
                    raise FileExistsError(f"{base / name} already exists")
        write_private(base / CA_KEY_FILE, self.key_pem)
        write_public(base / CA_CERT_FILE, self.cert_pem)
        return base

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate as PEM."""
        return cert_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        """The CA key as PKCS#8 PEM."""
        return key_pem(self.key)

    def sign(
        self,
        csr: CsrLike,
        identity: Identity,
        ttl: dt.timedelta | None = None,
        *,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[IPAddress | str] = (),
        now: dt.datetime | None = None,
        backdate: dt.timedelta = BACKDATE,
    ) -> x509.Certificate:
        """Issue a leaf for ``identity`` to the key in ``csr`` (spec §2.2, §2.3).

        The CSR's subject and SANs other than the URI are ignored; the name
        issued is ``identity``, decided by the caller. ``dns_names`` and
        ``ip_addresses`` are added after ``localhost``. ``ttl`` None or <= 0
        means one hour; the leaf never outlives the CA. ``backdate`` (one
        minute, against clock skew) moves NotBefore into the past.

        Raises:
            CSRError: see :func:`check_csr`.
            ValueError: an entry of ``ip_addresses`` is not an IP address.
        """
        parsed = check_csr(csr, identity)
        uri = str(identity)
        sans = [x509.UniformResourceIdentifier(uri), *_host_sans(dns_names, ip_addresses)]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        return self._leaf(uri, parsed.public_key(), sans, usages, ttl, _now(now), backdate)

    def _leaf(
        self,
        common_name: str,
        public_key: CertificatePublicKeyTypes,
        sans: list[x509.GeneralName],
        usages: list[x509.ObjectIdentifier],
        ttl: dt.timedelta | None,
        now: dt.datetime,
        backdate: dt.timedelta,
    ) -> x509.Certificate:
        """Sign the leaf profile (spec §2.2): ``ttl`` None or <= 0 is one hour, capped by the CA."""
        if ttl is None or ttl <= dt.timedelta(0):
            ttl = DEFAULT_LEAF_TTL
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(random_serial())
            .not_valid_before(now - backdate)
            .not_valid_after(min(now + ttl, self.cert.not_valid_after_utc))
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        identity: Identity,
        ttl: dt.timedelta | None = None,
        *,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[IPAddress | str] = (),
        now: dt.datetime | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """Generate a key locally and issue its leaf (tooling: ``pki issue``, dev bundles)."""
        key, csr = make_csr(identity)
        cert = self.sign(
            csr, identity, ttl, dns_names=dns_names, ip_addresses=ip_addresses, now=now
        )
        return key, cert

    def issue_server(
        self,
        common_name: str = "outrelay-controller",
        ttl: dt.timedelta | None = None,
        *,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[IPAddress | str] = (),
        now: dt.datetime | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A server-only certificate (serverAuth, DNS ``localhost`` + extras, no URI SAN).

        For the controller's gRPC listener: it carries no identity URI, so it
        cannot act as an agent, relay or operator anywhere (no URI SAN means
        :func:`~outrelay.identity.peer_identity` refuses it).
        """
        key = new_key()
        sans = _host_sans(dns_names, ip_addresses)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        cert = self._leaf(common_name, key.public_key(), sans, usages, ttl, _now(now), BACKDATE)
        return key, cert
