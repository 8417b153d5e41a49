"""A bare two-leg QUIC forwarder on aioquic: the baseline for relay benchmarks.

No policy, no ORP, no mutual TLS, no flow control beyond aioquic's own. A
connection whose stream 0 starts with the byte ``P`` is a *provider*; every
other connection is a *consumer*. Each new stream a consumer opens is paired
with a new stream the forwarder opens on the next provider (round robin), and
bytes, FIN and resets are copied both ways between the two, exactly the shape
of OutRelay's splice (consumer stream <-> relay-opened provider stream). It is
what "a relay in Python on aioquic" costs at the least, so OutRelay's relay
numbers can be read against it (``bench/relay_bench.py``).

    python bench/quic_forwarder.py --port 0            # prints "port <n>"
    python bench/quic_forwarder.py --self-check        # forwards 8 MiB, prints MB/s

Like aioquic's own examples it drives ``QuicConnectionProtocol._quic``
directly (``send_stream_data``, ``get_next_available_stream_id``). Without
``--cert``/``--key`` a throw-away self-signed certificate is used (clients
must not verify it).
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
from aioquic.quic.events import (
    ConnectionTerminated,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)

ALPN = "orp/1"
#: First byte a provider writes on its stream 0.
PROVIDER_MARK = b"P"


class Forwarder:
    """The providers, for round-robin choice, and a byte counter."""

    def __init__(self) -> None:
        self.providers: list[Leg] = []
        self.next = 0
        self.forwarded = 0

    def pick(self) -> Leg | None:
        if not self.providers:
            return None
        self.next = (self.next + 1) % len(self.providers)
        return self.providers[self.next]


class Route:
    """One consumer stream paired with one provider stream."""

    __slots__ = ("a", "a_stream", "b", "b_stream", "fins")

    def __init__(self, a: Leg, a_stream: int, b: Leg, b_stream: int) -> None:
        self.a, self.a_stream, self.b, self.b_stream = a, a_stream, b, b_stream
        self.fins = 0

    def other(self, leg: Leg) -> tuple[Leg, int]:
        return (self.b, self.b_stream) if leg is self.a else (self.a, self.a_stream)

    def drop(self) -> None:
        self.a.routes.pop(self.a_stream, None)
        self.b.routes.pop(self.b_stream, None)


class Leg(QuicConnectionProtocol):
    forwarder: Forwarder

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.routes: dict[int, Route] = {}
        self.provider = False

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            route = self.routes.get(event.stream_id)
            if route is None:
                route = self._new_route(event)
                if route is None:
                    return
            other, other_stream = route.other(self)
            other._quic.send_stream_data(other_stream, event.data, event.end_stream)
            other.transmit()
            self.forwarder.forwarded += len(event.data)
            if event.end_stream:
                route.fins += 1
                if route.fins == 2:
                    route.drop()
        elif isinstance(event, StreamReset):
            route = self.routes.get(event.stream_id)
            if route is not None:
                other, other_stream = route.other(self)
                other._quic.reset_stream(other_stream, event.error_code)
                other.transmit()
                route.drop()
        elif isinstance(event, ConnectionTerminated):
            if self in self.forwarder.providers:
                self.forwarder.providers.remove(self)
            for route in list(self.routes.values()):
                other, other_stream = route.other(self)
                try:
                    other._quic.reset_stream(other_stream, 0x101)
                    other.transmit()
                except Exception:
                    pass
                route.drop()

    def _new_route(self, event: StreamDataReceived) -> Route | None:
        stream_id = event.stream_id
        if not self.provider and stream_id == 0 and event.data.startswith(PROVIDER_MARK):
            self.provider = True
            self.forwarder.providers.append(self)
            return None
        if self.provider or stream_id % 4 != 0:
            return None  # a provider's own streams, or streams of the wrong kind
        provider = self.forwarder.pick()
        if provider is None:
            self._quic.reset_stream(stream_id, 0x101)
            self.transmit()
            return None
        provider_stream = provider._quic.get_next_available_stream_id()
        route = Route(self, stream_id, provider, provider_stream)
        self.routes[stream_id] = route
        provider.routes[provider_stream] = route
        return route


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
    """Forward ``size`` bytes consumer -> provider through a local forwarder; return bytes/s."""
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed(Path(tmp))
        forwarder, server, port = await start("127.0.0.1", 0, cert, key)
        client_config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
        client_config.verify_mode = ssl.CERT_NONE
        got = 0
        done = asyncio.get_running_loop().create_future()

        class Provider(QuicConnectionProtocol):
            def quic_event_received(self, event: QuicEvent) -> None:
                nonlocal got
                if isinstance(event, StreamDataReceived) and event.stream_id % 4 == 1:
                    got += len(event.data)
                    if event.end_stream and not done.done():
                        done.set_result(None)

        class Consumer(QuicConnectionProtocol):
            # The default protocol wraps each incoming stream in an asyncio
            # StreamWriter whose __del__ closes it, i.e. sends FIN on our stream.
            def quic_event_received(self, event: QuicEvent) -> None:
                pass

        async with (
            connect("127.0.0.1", port, configuration=client_config, create_protocol=Provider) as b,
            connect("127.0.0.1", port, configuration=client_config, create_protocol=Consumer) as a,
        ):
            b._quic.send_stream_data(0, PROVIDER_MARK)
            b.transmit()
            while not forwarder.providers:
                await asyncio.sleep(0.01)
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
