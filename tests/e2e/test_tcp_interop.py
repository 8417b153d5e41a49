"""Interop: the relay's TCP listener driven by a minimal yamux client written here.

The client knows only the public yamux v0 description (hashicorp/yamux
spec.md): a 12-byte big-endian header (version 0, type, flags, stream id,
length); types Data 0, WindowUpdate 1, Ping 2, GoAway 3; flags SYN 1,
ACK 2, FIN 4, RST 8; the dialler opens odd stream ids; 256 KiB initial
window. It does not use the project's yamux codec or transport, only a
plain ``ssl`` socket, so it stands in for the reference's Go agent. ORP
frames inside the stream use the project's ORP codec (the ORP wire is
checked elsewhere).
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from outrelay.identity import peer_uri
from outrelay.orp import FrameDecoder, FrameType, decode_message, encode_message
from outrelay.proto import orp_pb2

from .conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

HEADER = struct.Struct(">BBHII")  # version, type, flags, stream id, length
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("interop"))
    try:
        yield s.start(relay_args=["--listen-tcp", "127.0.0.1:0"])
    finally:
        s.close()


class MiniYamux:
    """Just enough of a yamux client to open stream 1 and read what comes back."""

    def __init__(self, addr: tuple[str, int], cert: Path, key: Path, ca: Path) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
        ctx.set_alpn_protocols(["orp/1"])
        raw = socket.create_connection(addr, timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "orp/1"
        self.buf = b""
        self.streams: dict[int, bytearray] = {}
        self.flags_seen: dict[int, int] = {}
        self.goaway: int | None = None

    def frame(self, ftype: int, flags: int, stream: int, length: int, body: bytes = b"") -> None:
        self.sock.sendall(HEADER.pack(0, ftype, flags, stream, length) + body)

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def pump(self) -> None:
        """Read one yamux frame and account for it."""
        version, ftype, flags, stream, length = HEADER.unpack(self._read(HEADER.size))
        assert version == 0
        if ftype == DATA:
            self.streams.setdefault(stream, bytearray()).extend(self._read(length))
            self.flags_seen[stream] = self.flags_seen.get(stream, 0) | flags
        elif ftype == WINDOW_UPDATE:
            self.flags_seen[stream] = self.flags_seen.get(stream, 0) | flags
        elif ftype == PING:
            if flags & SYN:
                self.frame(PING, ACK, 0, length)
        elif ftype == GO_AWAY:
            self.goaway = length
            raise EOFError(f"GoAway {length}")

    def close(self) -> None:
        self.sock.close()


def hello(uri: str) -> bytes:
    return encode_message(FrameType.HELLO, orp_pb2.Hello(protocol_version="orp/1", agent_uri=uri))


def first_orp_frame(client: MiniYamux, stream: int) -> object:
    decoder = FrameDecoder()
    while True:
        data = client.streams.get(stream, bytearray())
        frames = decoder.feed(bytes(data)) if data else []
        if data:
            data.clear()
        if frames:
            return frames[0]
        client.pump()


def test_interop_minimal_yamux_client_gets_hello_ack(stack: Stack) -> None:
    assert stack.relay is not None
    cert, key = stack.leaf("interop")
    client = MiniYamux(stack.relay.tcp, cert, key, stack.ca)
    try:
        body = hello(peer_uri(cert.read_bytes()))
        # open stream 1 (the dialler's first id) with SYN on its first Data frame
        client.frame(DATA, SYN, 1, len(body), body)
        frame = first_orp_frame(client, 1)
        assert frame.type == FrameType.HELLO_ACK  # type: ignore[attr-defined]
        decode_message(frame, FrameType.HELLO_ACK, orp_pb2.HelloAck)  # type: ignore[arg-type]
        assert client.flags_seen[1] & ACK  # the relay acknowledged our stream
    finally:
        client.close()


def test_interop_window_update_syn_then_data(stack: Stack) -> None:
    """Go's yamux opens a stream with a WindowUpdate carrying SYN, then sends Data."""
    assert stack.relay is not None
    cert, key = stack.leaf("interop-wu")
    client = MiniYamux(stack.relay.tcp, cert, key, stack.ca)
    try:
        client.frame(WINDOW_UPDATE, SYN, 1, 0)
        body = hello(peer_uri(cert.read_bytes()))
        client.frame(DATA, 0, 1, len(body), body)
        frame = first_orp_frame(client, 1)
        assert frame.type == FrameType.HELLO_ACK  # type: ignore[attr-defined]
    finally:
        client.close()


def test_tcp_hello_uri_mismatch_is_refused_without_hello_ack(stack: Stack) -> None:
    """A HELLO naming another identity than the certificate's: no HELLO_ACK, connection ends."""
    assert stack.relay is not None
    cert, key = stack.leaf("liar")
    other, _ = stack.leaf("victim")
    client = MiniYamux(stack.relay.tcp, cert, key, stack.ca)
    try:
        body = hello(peer_uri(other.read_bytes()))
        client.frame(DATA, SYN, 1, len(body), body)
        frames = []
        decoder = FrameDecoder()
        with pytest.raises((EOFError, ConnectionError, ssl.SSLError, TimeoutError)):
            for _ in range(100):
                client.pump()
                data = client.streams.get(1)
                if data:
                    frames += decoder.feed(bytes(data))
                    data.clear()
        assert all(f.type != FrameType.HELLO_ACK for f in frames), frames
    finally:
        client.close()


def _refused(client_ctx: ssl.SSLContext, addr: tuple[str, int]) -> None:
    """Connect and send a HELLO; expect no yamux frame at all, only the end."""
    raw = socket.create_connection(addr, timeout=10)
    try:
        sock = client_ctx.wrap_socket(raw, server_hostname="localhost")
    except (ssl.SSLError, ConnectionError):
        raw.close()
        return  # refused in the handshake itself
    with sock:
        body = hello("outrelay://acme/agent/00000000-0000-4000-8000-000000000000")
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
            sock.sendall(HEADER.pack(0, DATA, SYN, 1, len(body)) + body)
            if not sock.recv(65536):
                raise EOFError("closed without a frame")


def _ctx(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.set_alpn_protocols(["orp/1"])
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def test_tcp_listener_refuses_admin_role_and_missing_certificate(stack: Stack) -> None:
    assert stack.relay is not None
    admin_cert, admin_key = stack.ctl.leaf("admin")
    _refused(_ctx(stack.ca, admin_cert, admin_key), stack.relay.tcp)
    _refused(_ctx(stack.ca), stack.relay.tcp)
    stack.relay.wait_log("TCP peer refused", timeout=10)
    assert "admin role" in stack.relay.log()
