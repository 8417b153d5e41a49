"""A non-blocking UDP socket on the event loop, read in bursts and written in batches.

Why not ``loop.create_datagram_endpoint``: asyncio's datagram transport reads
one datagram per wake-up and calls the protocol for it, so whoever flushes
after "what arrived" flushes after every single datagram. Here one wake-up
reads everything pending (up to :data:`MAX_BURST` datagrams), hands each to
``datagram_received``, and only then calls ``burst_done`` once: the
endpoint flushes every connection that has something to say once per burst,
so ACKs and forwarded data that a burst causes share packets and calls.

Writes go straight to the socket (``sendto`` / ``sendmsg``); a run of
same-size datagrams to one address goes out as one ``sendmsg`` with Linux's
``UDP_SEGMENT`` (GSO: the kernel cuts it into datagrams, the receiver sees
ordinary datagrams). If the kernel refuses GSO once, plain ``sendto`` is used
from then on. When the socket buffer is full, datagrams wait in a bounded
backlog (drained when the socket is writable); beyond it they are dropped,
which QUIC's loss recovery repairs like any other loss.

Works on any asyncio loop that has ``add_reader`` (the default loop, uvloop).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import sys
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

log = logging.getLogger("outrelay.transport")

#: Datagrams read per wake-up before yielding to the loop.
MAX_BURST = 64
#: Largest datagram we accept (QUIC's max_udp_payload_size ceiling).
MAX_DATAGRAM = 65527
#: Datagrams kept while the socket buffer is full; more are dropped.
MAX_BACKLOG = 4096
#: ``UDP_SEGMENT`` (linux/udp.h); the socket module does not name it.
UDP_SEGMENT = 103
#: Most segments the kernel takes in one GSO send (UDP_MAX_SEGMENTS).
GSO_MAX_SEGMENTS = 64
#: Most bytes in one GSO send.
GSO_MAX_BYTES = 65000

Address = Any


class DatagramSink(Protocol):
    """What :class:`UdpTransport` calls."""

    def datagram_received(self, data: bytes, addr: Address) -> None: ...

    def burst_done(self) -> None: ...

    def error_received(self, exc: Exception) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class UdpTransport:
    """One UDP socket; ``sink`` gets datagrams, then ``burst_done`` once per wake-up."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, sink: DatagramSink
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._sink = sink
        self._connected = False
        try:
            sock.getpeername()
            self._connected = True
        except OSError:
            pass
        self._closing = False
        self._backlog: deque[tuple[bytes, Address]] = deque()
        self._gso = sys.platform == "linux"
        self._buf = bytearray(MAX_DATAGRAM)
        self._view = memoryview(self._buf)
        loop.add_reader(self._fd, self._read_ready)

    # -- the asyncio.DatagramTransport subset the rest of the code uses ----

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``sockname``, ``peername`` (connected sockets) or ``socket``."""
        try:
            if name == "sockname":
                return self._sock.getsockname()
            if name == "peername":
                return self._sock.getpeername() if self._connected else default
        except OSError:
            return default
        if name == "socket":
            return self._sock
        return default

    def is_closing(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closing

    def close(self) -> None:
        """Stop reading; the socket closes and ``connection_lost`` runs on the next pass."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if self._backlog:
            self._loop.remove_writer(self._fd)
            self._backlog.clear()
        self._loop.call_soon(self._finish)

    def _finish(self) -> None:
        self._sock.close()
        self._sink.connection_lost(None)

    # -- sending -----------------------------------------------------------

    def sendto(self, data: bytes, addr: Address = None) -> None:
        """Send one datagram (``addr`` ignored on a connected socket)."""
        if self._closing:
            return
        if self._backlog:
            self._queue(data, addr)
            return
        try:
            if self._connected:
                self._sock.send(data)
            else:
                self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._queue(data, addr)
        except OSError as exc:
            self._sink.error_received(exc)

    def send_all(self, datagrams: Iterable[tuple[bytes, Address]]) -> None:
        """Send datagrams in order; runs of equal size to one address go out as one GSO send."""
        if not self._gso or self._backlog:
            for data, addr in datagrams:
                self.sendto(data, addr)
            return
        run: list[bytes] = []
        run_addr: Address = None
        size = 0
        for data, addr in datagrams:
            if run and (
                addr != run_addr
                or len(run[-1]) != size  # only the last segment may be shorter
                or len(data) > size
                or len(run) >= GSO_MAX_SEGMENTS
                or (len(run) + 1) * size > GSO_MAX_BYTES
            ):
                self._send_run(run, run_addr, size)
                run = []
            if not run:
                run_addr, size = addr, len(data)
            run.append(data)
        if run:
            self._send_run(run, run_addr, size)

    def _send_run(self, run: list[bytes], addr: Address, size: int) -> None:
        if len(run) == 1 or not self._gso or self._closing or self._backlog:
            for data in run:
                self.sendto(data, addr)
            return
        payload = b"".join(run)
        ancillary = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        try:
            if self._connected:
                self._sock.sendmsg([payload], ancillary)
            else:
                self._sock.sendmsg([payload], ancillary, 0, addr)
        except (BlockingIOError, InterruptedError):
            for data in run:
                self._queue(data, addr)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                log.debug("transport: UDP GSO unavailable (%s); sending one by one", exc)
                self._gso = False
                for data in run:
                    self.sendto(data, addr)
            else:
                self._sink.error_received(exc)

    def _queue(self, data: bytes, addr: Address) -> None:
        if not self._backlog:
            self._loop.add_writer(self._fd, self._write_ready)
        if len(self._backlog) < MAX_BACKLOG:
            self._backlog.append((data, addr))

    def _write_ready(self) -> None:
        backlog = self._backlog
        while backlog:
            data, addr = backlog[0]
            try:
                if self._connected:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._sink.error_received(exc)
            backlog.popleft()
        self._loop.remove_writer(self._fd)

    # -- receiving ---------------------------------------------------------

    def _read_ready(self) -> None:
        recv_into = self._sock.recvfrom_into
        buf, view = self._buf, self._view
        sink = self._sink
        try:
            for _ in range(MAX_BURST):
                if self._closing:
                    break
                try:
                    n, addr = recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. ICMP port unreachable on a connected socket
                    sink.error_received(exc)
                    break
                sink.datagram_received(bytes(view[:n]), addr)
        finally:
            sink.burst_done()


async def open_udp(
    sink: DatagramSink,
    *,
    local_addr: tuple[str, int] | None = None,
    remote_addr: tuple[str, int] | None = None,
    family: int = 0,
) -> UdpTransport:
    """Bind (``local_addr``) or connect (``remote_addr``) a non-blocking UDP socket.

    Raises:
        OSError: the address cannot be resolved, bound or connected.
    """
    loop = asyncio.get_running_loop()
    host, port = local_addr or remote_addr or ("0.0.0.0", 0)
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"transport: {host!r} does not resolve")
    last: OSError | None = None
    for fam, kind, proto, _, addr in infos:
        sock = socket.socket(fam, kind, proto)
        try:
            sock.setblocking(False)
            if local_addr is not None:
                sock.bind(addr)
            else:
                sock.connect(addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return UdpTransport(loop, sock, sink)
    assert last is not None
    raise last
