"""yamux session: compiled vs pure on the same inputs (see bench/run.py).

The compiled twin (``outrelay._fast._yamux``) is skipped while it is not
built; ``run.py`` then shows its rows as missing.
"""

from __future__ import annotations

import importlib
import struct
from types import ModuleType
from typing import Any

import pytest

#: Round length for nanosecond-scale calls, so a round is thousands of calls.
TINY = 0.0002
MiB = 1024 * 1024

TWIN = {"compiled": "outrelay._fast._yamux", "pure": "outrelay.mux._session_py"}


@pytest.fixture(params=["compiled", "pure"])
def yamux(request: pytest.FixtureRequest) -> ModuleType:
    try:
        return importlib.import_module(TWIN[request.param])
    except ImportError:
        pytest.skip(f"{TWIN[request.param]} is not built")


def _pump(mod: ModuleType, total: int, chunk: int) -> int:
    """Send ``total`` bytes client -> server in ``chunk`` writes, the server
    granting all it receives; return the bytes the server got."""
    client = mod.YamuxSession(client=True)
    server = mod.YamuxSession(client=False)
    sid = client.open_stream()
    payload = bytes(chunk)
    sent = got = 0
    while got < total:
        while sent < total and not client.send_buffered(sid):
            client.send(sid, payload)
            sent += chunk
        wire = client.data_to_send()
        while client.next_event() is not None:
            pass
        server.receive_data(wire)
        while (event := server.next_event()) is not None:
            n = len(event.data)
            got += n
            server.grant(sid, n)
        back = server.data_to_send()
        if back:
            client.receive_data(back)
    return got


def _small_frames(count: int, size: int) -> bytes:
    """``count`` Data frames of ``size`` bytes on stream 1 (SYN on the first)."""
    body = bytes(size)
    first = struct.pack(">BBHII", 0, 0, 1, 1, size) + body
    rest = struct.pack(">BBHII", 0, 0, 0, 1, size) + body
    return first + rest * (count - 1)


def _receive(mod: ModuleType, wire: bytes) -> int:
    server = mod.YamuxSession(client=False)
    server.receive_data(wire)
    n = 0
    while (event := server.next_event()) is not None:
        n += server.grant(1, len(event.data))
    return n


@pytest.mark.benchmark(group="yamux-header-encode", min_time=TINY)
def bench_yamux_header_encode(benchmark: Any, yamux: ModuleType) -> None:
    # a Data frame opening stream 1 with 5 bytes
    header = benchmark(yamux.encode_header, 0, 1, 1, 5)
    assert header == bytes.fromhex("00000001 00000001 00000005")


@pytest.mark.benchmark(group="yamux-header-decode", min_time=TINY)
def bench_yamux_header_decode(benchmark: Any, yamux: ModuleType) -> None:
    header = bytes.fromhex("00010000 00000003 00040000")
    assert benchmark(yamux.decode_header, header) == (1, 0, 3, 262144)


@pytest.mark.benchmark(group="yamux-pump-1mib-64k")
def bench_yamux_pump_1mib_64k(benchmark: Any, yamux: ModuleType) -> None:
    # bulk transfer (iperf3-like): 1 MiB in 64 KiB writes through a pair
    assert benchmark(_pump, yamux, MiB, 64 * 1024) == MiB


@pytest.mark.benchmark(group="yamux-pump-1mib-1k")
def bench_yamux_pump_1mib_1k(benchmark: Any, yamux: ModuleType) -> None:
    # many small writes (request/response-like): 1 MiB in 1 KiB writes
    assert benchmark(_pump, yamux, MiB, 1024) == MiB


@pytest.mark.benchmark(group="yamux-receive-small")
def bench_yamux_receive_small(benchmark: Any, yamux: ModuleType) -> None:
    # 64 KiB of 100-byte Data frames in one read (redis-like traffic)
    wire = _small_frames(583, 100)
    assert benchmark(_receive, yamux, wire) == 58300
