"""Rotator with 3-second certificates: renewal point, swap, retry, subscribers, TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import time

import pytest

from outrelay.identity import Credentials, Identity, Rotator, RotatorError, peer_identity
from outrelay.pki import CA, cert_pem, key_pem, make_csr

AGENT = Identity.agent("acme", "00000000-0000-0000-0000-000000000001")
LIFE = dt.timedelta(seconds=3)


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.create()


def short_lived(ca: CA, identity: Identity = AGENT) -> Credentials:
    key, csr = make_csr(identity)
    cert = ca.sign(csr, identity, LIFE, backdate=dt.timedelta(0))
    return Credentials.from_pem(cert_pem(cert), key_pem(key), ca.cert_pem)


class FakeRenewer:
    """Issues 3-second leaves; fails the first ``failures`` calls."""

    def __init__(self, ca: CA, failures: int = 0, identity: Identity = AGENT) -> None:
        self.ca, self.failures, self.identity = ca, failures, identity
        self.calls: list[float] = []

    async def __call__(self, csr_pem: bytes) -> tuple[bytes, bytes]:
        self.calls.append(time.time())
        if len(self.calls) <= self.failures:
            raise ConnectionError("controller unreachable")
        cert = self.ca.sign(csr_pem, self.identity, LIFE, backdate=dt.timedelta(0))
        return cert_pem(cert), self.ca.cert_pem


def test_rotate_at_must_be_in_open_interval(ca: CA) -> None:
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(RotatorError, match=r"rotateAt must be in \(0, 1\)"):
            Rotator(FakeRenewer(ca), rotate_at=bad)


def test_not_bootstrapped(ca: CA) -> None:
    rotator = Rotator(FakeRenewer(ca))
    assert rotator.current() is None
    with pytest.raises(RotatorError, match="not bootstrapped"):
        asyncio.run(asyncio.wait_for(rotator.run(), 5))


def test_bootstrap(ca: CA) -> None:
    rotator = Rotator(FakeRenewer(ca))

    async def ok() -> Credentials:
        return short_lived(ca)

    async def broken() -> Credentials:
        raise ConnectionError("nope")

    with pytest.raises(RotatorError, match="identity: bootstrap: nope"):
        asyncio.run(rotator.bootstrap(broken))
    creds = asyncio.run(rotator.bootstrap(ok))
    assert rotator.current() is creds


def test_renews_at_seventy_percent_of_a_3s_certificate(ca: CA) -> None:
    async def main() -> None:
        first = short_lived(ca)
        renewer = FakeRenewer(ca)
        rotator = Rotator(renewer, first)
        swaps: list[Credentials] = []
        two = asyncio.Event()

        def seen(creds: Credentials) -> None:
            swaps.append(creds)
            if len(swaps) == 2:
                two.set()

        rotator.subscribe(seen)
        task = asyncio.create_task(rotator.run())
        try:
            await asyncio.wait_for(two.wait(), 10)
        finally:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # first renewal at NotBefore + 0.7 * 3 s, well before expiry
        due = first.renew_at(0.7)
        assert due == pytest.approx(first.not_before.timestamp() + 2.1)
        assert due - 0.05 <= renewer.calls[0] < first.not_after.timestamp()
        # the second renewal is scheduled from the *new* certificate
        assert renewer.calls[1] >= swaps[0].renew_at(0.7) - 0.05
        assert rotator.current() is swaps[1]
        assert swaps[0].cert.serial_number != first.cert.serial_number
        assert swaps[0].key_pem != first.key_pem  # a fresh key each time
        assert {c.identity for c in swaps} == {AGENT}

    asyncio.run(asyncio.wait_for(main(), 20))


def test_retries_after_failure(ca: CA) -> None:
    async def main() -> None:
        renewer = FakeRenewer(ca, failures=2)
        rotator = Rotator(renewer, short_lived(ca), rotate_at=0.1, retry_interval=0.2)
        done = asyncio.Event()
        rotator.subscribe(lambda creds: done.set())
        task = asyncio.create_task(rotator.run())
        try:
            await asyncio.wait_for(done.wait(), 10)
        finally:
            task.cancel()
        assert len(renewer.calls) >= 3  # two failures, then the swap we waited for
        assert renewer.calls[2] - renewer.calls[1] >= 0.19
        assert renewer.calls[1] - renewer.calls[0] >= 0.19

    asyncio.run(asyncio.wait_for(main(), 20))


def test_refuses_a_certificate_for_someone_else(ca: CA) -> None:
    other = Identity.agent("acme", "00000000-0000-0000-0000-000000000002")

    async def wrong(csr_pem: bytes) -> tuple[bytes, bytes]:
        key, cert = ca.issue(other)
        return cert_pem(cert), ca.cert_pem

    first = short_lived(ca)
    rotator = Rotator(wrong, first)
    with pytest.raises(RotatorError):
        asyncio.run(rotator.rotate_once())
    assert rotator.current() is first


def test_subscriber_errors_do_not_stop_rotation(ca: CA, caplog: pytest.LogCaptureFixture) -> None:
    rotator = Rotator(FakeRenewer(ca), short_lived(ca))
    got: list[Credentials] = []

    def boom(creds: Credentials) -> None:
        raise RuntimeError("subscriber bug")

    rotator.subscribe(boom)
    unsubscribe = rotator.subscribe(got.append)
    new = asyncio.run(rotator.rotate_once())
    assert got == [new] and rotator.current() is new
    assert "subscriber failed" in caplog.text
    unsubscribe()
    asyncio.run(rotator.rotate_once())
    assert got == [new]


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    client = client_ctx.wrap_socket(b, server_hostname="localhost", do_handshake_on_connect=False)
    # drive both ends of the handshake from one thread until both are done
    pending = {server, client}
    deadline = time.monotonic() + 10
    while pending and time.monotonic() < deadline:
        for sock in list(pending):
            sock.setblocking(False)
            try:
                sock.do_handshake()
                pending.discard(sock)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                time.sleep(0.001)
            finally:
                sock.setblocking(True)
    assert not pending, "handshake did not finish"
    return server, client


def test_new_handshakes_use_the_new_certificate(ca: CA) -> None:
    relay = Identity.relay("acme", "r1")
    server_rot = Rotator(FakeRenewer(ca, identity=relay), short_lived(ca, relay))
    client_creds = short_lived(ca)
    listening = server_rot.server_context()  # one long-lived context

    old_server, old_client = _handshake(listening, client_creds.client_context)
    old_serial = server_rot.current().cert.serial_number  # type: ignore[union-attr]
    assert peer_identity(old_client.getpeercert(binary_form=True)) == relay
    assert peer_identity(old_server.getpeercert(binary_form=True)) == AGENT

    new = asyncio.run(server_rot.rotate_once())
    new_server, new_client = _handshake(listening, client_creds.client_context)
    seen = new_client.getpeercert(binary_form=True)
    from cryptography import x509

    assert x509.load_der_x509_certificate(seen).serial_number == new.cert.serial_number
    assert new.cert.serial_number != old_serial
    # the connection set up before the swap still works, with the old certificate
    old_client.sendall(b"ping")
    assert old_server.recv(4) == b"ping"
    old_seen = x509.load_der_x509_certificate(old_client.getpeercert(binary_form=True))
    assert old_seen.serial_number == old_serial
    for sock in (old_server, old_client, new_server, new_client):
        sock.close()
