"""The mini-CA: one P-256 key that signs short-lived leaves (spec §2).

The CA certificate follows the reference field by field (subject
``CN=outrelay-ca``, ten-year validity, path length 0). Leaves carry exactly
one URI SAN and are back-dated one minute, but their profile depends on the
role (the reference gives every leaf serverAuth+clientAuth and DNS
``localhost``; see ``docs/identity.md``):

* agent: clientAuth only, no DNS/IP SAN (``server_auth=True`` opts in to
  serverAuth and the given DNS/IP SANs, for an agent that will serve P2P);
* relay: serverAuth+clientAuth, DNS ``localhost`` plus the given DNS/IP SANs;
* admin: clientAuth only, no DNS/IP SAN;
* controller (:meth:`CA.issue_server`): serverAuth only, no URI SAN, DNS
  :data:`~outrelay.identity.CONTROLLER_NAME` (its role name, which no other
  leaf may carry: names under ``outrelay.invalid`` are refused) plus
  ``localhost`` and the given names.

Unlike the reference, a CA can be saved and loaded (``ca.crt`` 0644,
``ca.key`` PKCS#8 0600), and a leaf never outlives its CA. Revocation is by
short lifetime only.
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

from outrelay.identity import Identity, Role
from outrelay.identity.roles import CONTROLLER_NAME, article, is_reserved_name
from outrelay.pki.csr import key_pem, load_key, make_csr, new_key
from outrelay.pki.errors import (
    CAError,
    CSRKeyError,
    CSRMissingURI,
    CSRParseError,
    CSRSignatureError,
    CSRURIMismatch,
    LeafProfileError,
    ReservedName,
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
    """The DNS names (each once, in order), then the IP addresses.

    Raises:
        ReservedName: a DNS name is under ``outrelay.invalid`` (a role name).
        ValueError: an entry of ``ip_addresses`` is not an IP address.
    """
    names = list(dict.fromkeys(dns_names))
    for name in names:
        if is_reserved_name(name):
            raise ReservedName(
                f"pki: DNS name {name!r} is reserved: names under outrelay.invalid are roles "
                f"({CONTROLLER_NAME} marks the controller's certificate only)"
            )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    return sans


def leaf_profile(
    identity: Identity,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[IPAddress | str] = (),
    *,
    server_auth: bool = False,
) -> tuple[list[x509.GeneralName], list[x509.ObjectIdentifier]]:
    """The SANs after the URI and the extended key usages of a leaf for ``identity``.

    Relay: serverAuth+clientAuth, DNS ``localhost`` then the given names.
    Agent: clientAuth; with ``server_auth`` also serverAuth and the given names.
    Admin: clientAuth, no names.

    Raises:
        ReservedName: a DNS name under ``outrelay.invalid``.
        LeafProfileError: names for a leaf that may not carry them (an agent
            without ``server_auth``, an admin), ``server_auth`` for an admin.
        ValueError: an entry of ``ip_addresses`` is not an IP address.
    """
    dns, ips = list(dns_names), list(ip_addresses)
    client, server = ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH
    if identity.role is Role.RELAY:
        return _host_sans(["localhost", *dns], ips), [server, client]
    if identity.role is Role.AGENT and server_auth:
        return _host_sans(dns, ips), [server, client]
    _host_sans(dns, ips)  # a reserved name is named as such, whatever the role
    if identity.role is Role.ADMIN and server_auth:
        raise LeafProfileError(f"pki: an admin leaf ({identity}) is client-only (no serverAuth)")
    if dns or ips:
        hint = "" if identity.role is Role.ADMIN else " unless issued with --server-auth (P2P)"
        raise LeafProfileError(
            f"pki: {article(identity.role)} leaf ({identity}) is client-only and carries no "
            f"DNS/IP SAN{hint}"
        )
    return [], [client]


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
        server_auth: bool = False,
        now: dt.datetime | None = None,
        backdate: dt.timedelta = BACKDATE,
    ) -> x509.Certificate:
        """Issue a leaf for ``identity`` to the key in ``csr`` (spec §2.2, §2.3).

        The CSR's subject and SANs other than the URI are ignored; the name
        issued is ``identity``, decided by the caller. The usages and host
        SANs follow the role (:func:`leaf_profile`). ``ttl`` None or <= 0
        means one hour; the leaf never outlives the CA. ``backdate`` (one
        minute, against clock skew) moves NotBefore into the past.

        Raises:
            CSRError: see :func:`check_csr`.
            LeafProfileError: names or usages the role may not carry, or a
                reserved name (:class:`ReservedName`).
            ValueError: an entry of ``ip_addresses`` is not an IP address.
        """
        hosts, usages = leaf_profile(identity, dns_names, ip_addresses, server_auth=server_auth)
        parsed = check_csr(csr, identity)
        uri = str(identity)
        sans = [x509.UniformResourceIdentifier(uri), *hosts]
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
        server_auth: bool = False,
        now: dt.datetime | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """Generate a key locally and issue its leaf (tooling: ``pki issue``, dev bundles).

        Raises:
            LeafProfileError: see :meth:`sign`.
        """
        leaf_profile(identity, dns_names, ip_addresses, server_auth=server_auth)  # before keygen
        key, csr = make_csr(identity)
        cert = self.sign(
            csr,
            identity,
            ttl,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            server_auth=server_auth,
            now=now,
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
        """The controller's certificate: serverAuth only, no URI SAN.

        SANs: DNS :data:`~outrelay.identity.CONTROLLER_NAME` (the role name
        every client of the controller checks, whatever address it dials),
        ``localhost``, the given names, then the IP addresses. It carries no
        identity URI, so it cannot act as an agent, relay or operator anywhere.

        Raises:
            ReservedName: another name under ``outrelay.invalid`` is asked for.
            ValueError: an entry of ``ip_addresses`` is not an IP address.
        """
        extra = [d for d in dns_names if d.lower().rstrip(".") != CONTROLLER_NAME]
        sans = [x509.DNSName(CONTROLLER_NAME), *_host_sans(["localhost", *extra], ip_addresses)]
        key = new_key()
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        cert = self._leaf(common_name, key.public_key(), sans, usages, ttl, _now(now), BACKDATE)
        return key, cert
