"""A bare two-leg QUIC forwarder on aioquic's public API: the baseline for relay benchmarks.

No policy, no ORP, no flow control beyond aioquic's own: the first two
connections become legs A and B, and bytes arriving on stream ``s`` of one leg
are written to stream ``s`` of the other (held until the other leg has opened
``s`` too, since a server cannot write to a client stream the client has not
opened). It is what "a relay in Python on aioquic" costs at the least, so
OutRelay's relay numbers can be read against it.

    python bench/quic_forwarder.py --port 0            # prints "port <n>"
    python bench/quic_forwarder.py --self-check        # forwards 8 MiB, prints MB/s

Without ``--cert``/``--key`` a throw-away self-signed certificate is used
(clients must not verify it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ssl
import sys
import tempfile
import time
from pathlib import Path

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived

ALPN = "orp/1"


class Forwarder:
    """Pairs the first two connections and copies stream data between them."""

    def __init__(self) -> None:
        self.legs: list[Leg] = []
        self.forwarded = 0

    def other(self, leg: Leg) -> Leg | None:
        if len(self.legs) < 2:
            return None
        return self.legs[1] if leg is self.legs[0] else self.legs[0]


class Leg(QuicConnectionProtocol):
    forwarder: Forwarder

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.opened: set[int] = set()
        self.held: dict[int, list[tuple[bytes, bool]]] = {}
        self.forwarder.legs.append(self)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.opened.add(event.stream_id)
            other = self.forwarder.other(self)
            if other is None or event.stream_id not in other.opened:
                self.held.setdefault(event.stream_id, []).append((event.data, event.end_stream))
            else:
                other.write(event.stream_id, event.data, event.end_stream)
            # Release what the other leg held for this stream, now that it exists here.
            if other is not None:
                for data, fin in other.held.pop(event.stream_id, []):
                    self.write(event.stream_id, data, fin)
        elif isinstance(event, ConnectionTerminated) and self in self.forwarder.legs:
            self.forwarder.legs.remove(self)

    def write(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self._quic.send_stream_data(stream_id, data, end_stream)
        self.forwarder.forwarded += len(data)
        self.transmit()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """Write a throw-away P-256 certificate for ``localhost``; return (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "forwarder.crt", directory / "forwarder.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def start(host: str, port: int, cert: Path, key: Path) -> tuple[Forwarder, object, int]:
    forwarder = Forwarder()
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], idle_timeout=10.0)
    configuration.load_cert_chain(cert, key)
    leg_class = type("BoundLeg", (Leg,), {"forwarder": forwarder})
    server = await serve(host, port, configuration=configuration, create_protocol=leg_class)
    bound = server._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    return forwarder, server, bound


async def self_check(size: int) -> float:
    """Forward ``size`` bytes A -> B through a local forwarder; return bytes/s."""
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed(Path(tmp))
        forwarder, server, port = await start("127.0.0.1", 0, cert, key)
        client_config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
        client_config.verify_mode = ssl.CERT_NONE
        got = 0
        done = asyncio.get_running_loop().create_future()

        class Receiver(QuicConnectionProtocol):
            def quic_event_received(self, event: QuicEvent) -> None:
                nonlocal got
                if isinstance(event, StreamDataReceived):
                    got += len(event.data)
                    if event.end_stream and not done.done():
                        done.set_result(None)

        class Sink(QuicConnectionProtocol):
            # The default protocol wraps each incoming stream in an asyncio
            # StreamWriter whose __del__ closes it, i.e. sends FIN on our stream.
            def quic_event_received(self, event: QuicEvent) -> None:
                pass

        async with (
            connect("127.0.0.1", port, configuration=client_config, create_protocol=Receiver) as b,
            connect("127.0.0.1", port, configuration=client_config, create_protocol=Sink) as a,
        ):
            # B opens stream 0 (one byte, which A receives) so the forwarder may write to it.
            b._quic.send_stream_data(0, b"h")
            b.transmit()
            chunk = b"x" * 65536
            start_time = time.perf_counter()
            sent = 0
            while sent < size:
                a._quic.send_stream_data(0, chunk, end_stream=sent + len(chunk) >= size)
                sent += len(chunk)
                a.transmit()
                await asyncio.sleep(0)
            await asyncio.wait_for(done, 120)
            elapsed = time.perf_counter() - start_time
        server.close()  # type: ignore[attr-defined]
        assert got == sent, (got, sent)
        return got / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="UDP port (0: ephemeral)")
    parser.add_argument("--cert", type=Path, help="PEM certificate (default: throw-away)")
    parser.add_argument("--key", type=Path, help="PEM key of --cert")
    parser.add_argument(
        "--self-check", action="store_true", help="forward 8 MiB A->B locally, print MB/s, exit"
    )
    parser.add_argument("--size-mib", type=int, default=8, help="bytes for --self-check (MiB)")
    args = parser.parse_args(argv)

    if args.self_check:
        rate = asyncio.run(self_check(args.size_mib * 1024 * 1024))
        print(f"self-check ok: {args.size_mib} MiB forwarded at {rate / 1e6:.1f} MB/s")
        return 0

    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = (args.cert, args.key) if args.cert else self_signed(Path(tmp))
            _, _, port = await start(args.host, args.port, cert, key)
            print(f"port {port}", flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
