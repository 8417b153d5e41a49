"""Test helpers: a relay child process and a minimal ORP agent on the transport.

``RelayProcess`` starts ``python -m outrelay relay`` on ephemeral ports and
waits for its ``--ready-file`` (a :class:`~outrelay.childproc.ComponentProcess`);
always ``kill()`` it in a finalizer.
``ProbeAgent`` speaks just enough ORP to drive a relay from a test: HELLO,
control frames, OPEN_STREAM, and answering INCOMING_STREAM; every wait has a
deadline. Not part of the public API.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from outrelay.childproc import ComponentProcess
from outrelay.orp import (
    HEADER_SIZE,
    Frame,
    FrameDecoder,
    FrameType,
    decode_header,
    encode_frame,
    encode_message,
)
from outrelay.proto import orp_pb2
from outrelay.transport import (
    ConnectionClosed,
    Event,
    Link,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
    TransportConfig,
    connect,
)


class RelayProcess(ComponentProcess):
    """``outrelay relay`` as a child process (``<workdir>/<name>.log``)."""

    def __init__(
        self,
        workdir: Path,
        *,
        cert: Path,
        key: Path,
        ca: Path,
        controller: str,
        args: Sequence[str] = (),
        name: str = "relay",
    ) -> None:
        super().__init__(
            name,
            [
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--debug-listen",
                "127.0.0.1:0",
                "--cert",
                str(cert),
                "--key",
                str(key),
                "--ca",
                str(ca),
                "--controller",
                controller,
                *args,
            ],
            workdir,
        )

    @property
    def quic(self) -> tuple[str, int]:
        """(host, port) of the QUIC listener."""
        host, _, port = self.addresses["quic"].rpartition(":")
        return host, int(port)

    @property
    def tcp(self) -> tuple[str, int]:
        """(host, port) of the TCP listener (``--listen-tcp``)."""
        host, _, port = self.addresses["tcp"].rpartition(":")
        return host, int(port)


class _Rx:
    __slots__ = ("buf", "eof", "reset", "wake")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.reset: int | None = None
        self.wake = asyncio.Event()


class ProbeStream:
    """One bidirectional stream of a :class:`ProbeAgent`."""

    def __init__(self, agent: ProbeAgent, stream_id: int) -> None:
        self.agent = agent
        self.id = stream_id

    @property
    def _rx(self) -> _Rx:
        return self.agent._rx(self.id)

    def write(self, data: bytes, fin: bool = False) -> None:
        """Send bytes (and optionally FIN)."""
        self.agent.link.send(self.id, data, fin)

    def send_frame(self, ftype: int, msg: Message | None = None) -> None:
        """Send one frame (empty payload when ``msg`` is None)."""
        self.write(encode_frame(ftype) if msg is None else encode_message(ftype, msg))

    async def _wait(self, ok: Any, timeout: float) -> None:
        rx = self._rx
        async with asyncio.timeout(timeout):
            while not ok(rx):
                if rx.eof or rx.reset is not None:
                    raise EOFError(f"stream {self.id} ended (reset={rx.reset})")
                rx.wake.clear()
                await rx.wake.wait()

    async def read_exactly(self, n: int, timeout: float = 5.0) -> bytes:
        """The next ``n`` bytes. Raises EOFError if the stream ends first, TimeoutError."""
        await self._wait(lambda rx: len(rx.buf) >= n, timeout)
        rx = self._rx
        out = bytes(rx.buf[:n])
        del rx.buf[:n]
        return out

    async def read_frame(self, timeout: float = 5.0) -> Frame:
        """The next whole frame. Raises EOFError, TimeoutError."""
        header = await self.read_exactly(HEADER_SIZE, timeout)
        _, ftype, flags, length = decode_header(header)
        payload = await self.read_exactly(length, timeout) if length else b""
        return Frame(ftype, payload, flags)

    async def read_to_eof(self, timeout: float = 5.0) -> bytes:
        """Everything until FIN. Raises EOFError on reset, TimeoutError."""
        rx = self._rx
        async with asyncio.timeout(timeout):
            while not rx.eof:
                if rx.reset is not None:
                    raise EOFError(f"stream {self.id} reset ({rx.reset})")
                rx.wake.clear()
                await rx.wake.wait()
        out = bytes(rx.buf)
        rx.buf.clear()
        return out

    async def ended(self, timeout: float = 5.0) -> bool:
        """Wait until the stream ends (FIN or reset) with no unread bytes left."""
        rx = self._rx
        async with asyncio.timeout(timeout):
            while not (rx.eof or rx.reset is not None):
                rx.wake.clear()
                await rx.wake.wait()
        return not rx.buf


class ProbeAgent:
    """A bare ORP agent over ``outrelay.transport`` for tests."""

    #: Agents not yet closed with :meth:`aclose` (see :func:`close_all`).
    live: set[ProbeAgent] = set()

    def __init__(self, link: Link) -> None:
        self.link = link
        #: Grant received bytes at once (False: the test grants, a slow reader).
        self.auto_grant = True
        ProbeAgent.live.add(self)
        self._streams: dict[int, _Rx] = {}
        self.incoming: asyncio.Queue[ProbeStream] = asyncio.Queue()
        self.closed: asyncio.Future[ConnectionClosed] = asyncio.get_running_loop().create_future()
        self.control = ProbeStream(self, 0)
        self._control_decoder = FrameDecoder()
        self._control_frames: list[Frame] = []
        self._next_stream = 4
        link.on_event = self._on_event

    @classmethod
    async def dial(
        cls, addr: tuple[str, int], cert: Path | None, key: Path | None, ca: Path, **kw: Any
    ) -> ProbeAgent:
        """Connect to a relay. Raises HandshakeError, TimeoutError."""
        config = TransportConfig(cert=cert, key=key, ca=ca, **kw)
        link = await connect(addr[0], addr[1], config, timeout=5.0)
        return cls(link)

    def _rx(self, stream_id: int) -> _Rx:
        rx = self._streams.get(stream_id)
        if rx is None:
            rx = self._streams[stream_id] = _Rx()
        return rx

    def _on_event(self, link: Link, event: Event) -> None:
        if isinstance(event, StreamDataReceived):
            new = event.stream_id not in self._streams
            rx = self._rx(event.stream_id)
            rx.buf += event.data
            if event.data and self.auto_grant:
                link.grant(event.stream_id, len(event.data))
            rx.eof |= event.end_stream
            rx.wake.set()
            if new and event.stream_id % 4 == 1:
                self.incoming.put_nowait(ProbeStream(self, event.stream_id))
        elif isinstance(event, StreamReset | StopSendingReceived):
            rx = self._rx(event.stream_id)
            if isinstance(event, StreamReset):
                rx.reset = event.error_code
            rx.wake.set()
        elif isinstance(event, ConnectionClosed):
            for rx in self._streams.values():
                rx.eof = True
                rx.wake.set()
            if not self.closed.done():
                self.closed.set_result(event)

    @property
    def uri(self) -> str:
        """Our certificate URI as the transport read it (our own cert)."""
        from outrelay.identity import peer_uri

        assert self.link.conn.config.cert is not None
        return peer_uri(Path(self.link.conn.config.cert).read_bytes())

    async def hello(self, uri: str | None = None, timeout: float = 5.0) -> Frame:
        """HELLO on a fresh control stream; return the relay's answer frame."""
        stream = self.link.open_stream()
        assert stream == 0
        self.control.send_frame(
            FrameType.HELLO, orp_pb2.Hello(protocol_version="orp/1", agent_uri=uri or self.uri)
        )
        return await self.control.read_frame(timeout)

    async def control_frame(self, timeout: float = 5.0, skip: Sequence[int] = ()) -> Frame:
        """The next control frame whose type is not in ``skip``."""
        while True:
            frame = await self.control.read_frame(timeout)
            if frame.type not in skip:
                return frame

    async def register(self, service: str, timeout: float = 5.0) -> Frame:
        """REGISTER and return the answer (REGISTER_ACK or STREAM_REJECT)."""
        self.control.send_frame(FrameType.REGISTER, orp_pb2.Register(service_name=service))
        return await self.control_frame(timeout, skip=(FrameType.STREAM_READY,))

    async def register_bound(self, service: str, within: float = 10.0) -> Frame:
        """REGISTER until acknowledged while the relay still answers 403 (its
        policy watch has not brought the bind rule just added yet); the last answer.

        Anything else (an ACK, another code) is returned at once.
        """
        deadline = asyncio.get_running_loop().time() + within
        while True:
            answer = await self.register(service)
            if answer.type != FrameType.STREAM_REJECT:
                return answer
            code = orp_pb2.StreamReject.FromString(answer.payload).code
            if code != 403 or asyncio.get_running_loop().time() >= deadline:
                return answer
            await asyncio.sleep(0.02)  # poll interval of a condition with a deadline

    def open(self, service: str, stream_id: int = 0, method: str = "") -> ProbeStream:
        """Open a data stream and write OPEN_STREAM on it."""
        sid = self.link.open_stream()
        stream = ProbeStream(self, sid)
        self._rx(sid)
        msg = orp_pb2.OpenStream(target_service=service, method=method, stream_id=stream_id)
        stream.send_frame(FrameType.OPEN_STREAM, msg)
        return stream

    def stream(self) -> ProbeStream:
        """Open a data stream and write nothing yet."""
        sid = self.link.open_stream()
        self._rx(sid)
        return ProbeStream(self, sid)

    def resume(self, stream_id: int, my_position: int, peer_ack_position: int) -> ProbeStream:
        """Open a data stream whose first frame is STREAM_RESUME."""
        stream = self.stream()
        msg = orp_pb2.StreamResume(
            stream_id=stream_id, my_position=my_position, peer_ack_position=peer_ack_position
        )
        stream.send_frame(FrameType.STREAM_RESUME, msg)
        return stream

    async def wait_closed(self, timeout: float = 5.0) -> ConnectionClosed:
        """Wait for the connection to end."""
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self.closed)

    def close(self) -> None:
        """Close the connection (the socket goes with :meth:`aclose`)."""
        if not self.link.closed:
            self.link.close(0, "")

    async def aclose(self) -> None:
        """Close the connection and its UDP socket now, without the draining period."""
        ProbeAgent.live.discard(self)
        self.close()
        driver = self.link._driver
        driver.flush()
        if driver.transport is not None and not driver.transport.is_closing():
            driver.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(driver._lost), 1.0)


async def close_all() -> None:
    """``aclose`` every probe agent still open (call at the end of each test)."""
    for agent in list(ProbeAgent.live):
        await agent.aclose()


async def echo_provider(agent: ProbeAgent, *, reject: bool = False) -> None:
    """Answer every INCOMING_STREAM: accept and echo bytes back (or reject 502)."""

    async def serve(stream: ProbeStream) -> None:
        frame = await stream.read_frame(10.0)
        if frame.type != FrameType.INCOMING_STREAM:
            stream.write(b"", True)
            return
        if reject:
            stream.send_frame(
                FrameType.STREAM_REJECT, orp_pb2.StreamReject(code=502, reason="no backend")
            )
            stream.write(b"", True)
            return
        stream.send_frame(FrameType.STREAM_ACCEPT)
        rx = stream._rx
        while True:
            if rx.buf:
                data = bytes(rx.buf)
                rx.buf.clear()
                stream.write(data)
            if rx.eof or rx.reset is not None:
                stream.write(b"", True)
                return
            rx.wake.clear()
            await rx.wake.wait()

    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            stream = await agent.incoming.get()
            task = asyncio.create_task(serve(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
