"""Read and check a component's TLS files (certificate, key, CA) before using them.

Every long-running component and the operator commands take ``--cert``,
``--key`` and ``--ca`` (PEM). :func:`read_tls_files` reads all three and
checks that each parses and that the key belongs to the certificate, so a
mistake is reported at start as one line naming the flag and the file
(an :class:`~outrelay.errors.InputError`, exit code 2 in the CLI) instead
of surfacing later as a TLS handshake failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from outrelay.errors import InputError

if TYPE_CHECKING:  # cryptography is imported when used: ``--help`` needs none of it
    from cryptography import x509


@dataclass(frozen=True)
class TlsFiles:
    """The PEM bytes of a certificate (chain), its private key and a CA bundle."""

    cert: bytes
    key: bytes
    ca: bytes


def read_file(path: str | Path | None, flag: str) -> bytes:
    """The bytes of ``path``; InputError naming ``flag`` if it is unset, missing or unreadable."""
    if not path:
        raise InputError(f"{flag} is required")
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise InputError(f"{flag} {path}: is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"{flag} {path}: {exc.strerror or exc}") from None


def read_tls_files(
    cert: str | Path | None,
    key: str | Path | None,
    ca: str | Path | None,
    *,
    flags: tuple[str, str, str] = ("--cert", "--key", "--ca"),
) -> TlsFiles:
    """Read ``cert``, ``key`` and ``ca``; check they parse and the key matches the certificate.

    Raises:
        InputError: the first problem, naming the flag and the file.
    """
    from cryptography.hazmat.primitives import serialization

    cert_flag, key_flag, ca_flag = flags
    files = TlsFiles(read_file(cert, cert_flag), read_file(key, key_flag), read_file(ca, ca_flag))
    leaf = _certificates(files.cert, f"{cert_flag} {cert}")[0]
    _certificates(files.ca, f"{ca_flag} {ca}")
    try:
        private = serialization.load_pem_private_key(files.key, password=None)
    except (ValueError, TypeError):  # not a key, or encrypted
        raise InputError(f"{key_flag} {key}: not an unencrypted PEM private key") from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*raw) != leaf.public_key().public_bytes(*raw):
        raise InputError(f"{key_flag} {key}: does not belong to the certificate {cert_flag} {cert}")
    return files


def _certificates(data: bytes, what: str) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise InputError(f"{what}: no PEM certificate in the file")
    return list(certs)
