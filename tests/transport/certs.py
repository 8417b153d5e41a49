"""Throw-away PKI for transport tests.

Good leaves (and expired ones) come from the project's own mini-CA,
:class:`outrelay.pki.CA`, so the transport is tested against exactly what the
controller issues (P-256; an agent leaf: URI SAN
``outrelay://<tenant>/agent/<uuid>``, clientAuth only, no DNS SAN; a relay
leaf: serverAuth+clientAuth, DNS SAN ``localhost``). Leaves the CA refuses to
make (no clientAuth, no URI SAN, self-signed, or the reference's blanket
profile on any role: serverAuth+clientAuth and ``localhost``) are built here
with cryptography by :meth:`TestCA.build`, each breaking exactly one rule.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from outrelay.identity import parse
from outrelay.pki import CA

_HOUR = dt.timedelta(hours=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Leaf:
    """A certificate and key, written as PEM files."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path
    uri: str | None


class TestCA:
    """An :class:`outrelay.pki.CA` that writes the leaves it issues into ``directory``.

    Two instances share the subject ``CN=outrelay-ca`` but not the key, like
    two deployments would.
    """

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "outrelay-ca") -> None:
        self.directory = directory
        self.name = name
        self.ca = CA.create()
        self.cert = self.ca.cert
        self.key = self.ca.key
        self.cert_path = directory / f"{name}.crt"
        self.cert_path.write_bytes(self.ca.cert_pem)

    def _write(
        self, label: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, uri: str | None
    ) -> Leaf:
        cert_path = self.directory / f"{label}.crt"
        key_path = self.directory / f"{label}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        return Leaf(cert=cert, key=key, cert_path=cert_path, key_path=key_path, uri=uri)

    def issue(self, label: str, *, uri: str | None = "default", **kw: object) -> Leaf:
        """A leaf from the project's CA; ``uri="default"`` picks a fresh agent URI.

        ``uri=None`` or extra keywords (``eku``, ``self_signed``) build a
        non-conforming leaf with :meth:`build` instead.
        """
        if uri == "default":
            uri = f"outrelay://acme/agent/{uuid.uuid4()}"
        if uri is None or kw:
            return self.build(label, uri=uri, **kw)  # type: ignore[arg-type]
        key, cert = self.ca.issue(parse(uri))
        return self._write(label, key, cert, uri)

    def expired(self, label: str) -> Leaf:
        uri = f"outrelay://acme/agent/{uuid.uuid4()}"
        now = dt.datetime.now(dt.UTC)
        key, cert = self.ca.issue(parse(uri), _HOUR, now=now - 3 * _HOUR)
        return self._write(label, key, cert, uri)

    def without_client_auth(self, label: str) -> Leaf:
        return self.build(label, eku=[ExtendedKeyUsageOID.SERVER_AUTH])

    def self_signed(self, label: str) -> Leaf:
        return self.build(label, self_signed=True)

    def build(
        self,
        label: str,
        *,
        uri: str | None = "default",
        eku: list[x509.ObjectIdentifier] | None = None,
        self_signed: bool = False,
    ) -> Leaf:
        """A leaf built by hand, like the CA's but with the given deviation."""
        if uri == "default":
            uri = f"outrelay://acme/agent/{uuid.uuid4()}"
        if eku is None:
            eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
        if uri is not None:
            sans.insert(0, x509.UniformResourceIdentifier(uri))
        issuer_name = _name(label) if self_signed else self.cert.subject
        signing_key = key if self_signed else self.key
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(label))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _HOUR)
            .not_valid_after(now + _HOUR)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
                critical=False,
            )
        )
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        return self._write(label, key, builder.sign(signing_key, hashes.SHA256()), uri)
