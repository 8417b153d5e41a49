"""verify_client / verify_server on the project's own leaves and on broken ones."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from outrelay.transport import (
    CertificateRequired,
    PeerVerificationError,
    load_ca_bundle,
    verify_client,
    verify_server,
)

from .conftest import PKI


def test_project_leaf_verifies_as_client_and_server(pki: PKI) -> None:
    peer = verify_client(pki.client.cert, [], [pki.ca.cert])
    assert peer.uri == pki.client.uri
    assert peer.chain == (pki.client.cert, pki.ca.cert)
    assert verify_server(pki.server.cert, [], [pki.ca.cert], "localhost").uri == pki.server.uri


def test_server_name_must_match(pki: PKI) -> None:
    with pytest.raises(PeerVerificationError):
        verify_server(pki.server.cert, [], [pki.ca.cert], "relay.example.com")


def test_missing_eku_extension_is_refused(pki: PKI) -> None:
    # cryptography's verifier accepts a leaf without any EKU extension; we do not.
    leaf = pki.ca.build("no-eku-at-all", eku=[])
    with pytest.raises(PeerVerificationError, match="not valid for client authentication"):
        verify_client(leaf.cert, [], [pki.ca.cert])


def test_no_certificate(pki: PKI) -> None:
    with pytest.raises(CertificateRequired):
        verify_client(None, [], [pki.ca.cert])


def test_not_yet_valid(pki: PKI) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    with pytest.raises(PeerVerificationError, match="not valid now") as info:
        verify_client(pki.client.cert, [], [pki.ca.cert], now=past)
    assert info.value.tls_alert == 45


def test_ca_bundle_loading(pki: PKI, tmp_path: Path) -> None:
    bundle = pki.ca.cert_path.read_bytes() + pki.other_ca.cert_path.read_bytes()
    certs = load_ca_bundle(bundle)
    sha = hashes.SHA256()
    assert [c.fingerprint(sha) for c in certs] == [
        c.fingerprint(sha) for c in (pki.ca.cert, pki.other_ca.cert)
    ]
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    with pytest.raises(PeerVerificationError):
        load_ca_bundle(empty)
