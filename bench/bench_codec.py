"""ORP frame codec: compiled vs pure on the same inputs (see bench/run.py)."""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

import pytest

CHUNK = 16 * 1024
#: Round length for nanosecond-scale calls, so a round is thousands of calls.
TINY = 0.0002


def _stream(codec: ModuleType, size: int, max_payload: int, seed: int) -> bytes:
    """``size``-odd bytes of whole frames, payload sizes skewed towards tiny."""
    rng = random.Random(seed)
    parts: list[bytes] = []
    total = 0
    while total < size:
        n = min(int(rng.expovariate(1 / 48)), max_payload)
        frame = codec.encode_frame(rng.choice((0x010, 0x101, 0x110, 0x122)), rng.randbytes(n))
        parts.append(frame)
        total += len(frame)
    return b"".join(parts)


def _decode_chunks(codec: ModuleType, chunks: list[bytes]) -> int:
    decoder = codec.FrameDecoder()
    count = 0
    for chunk in chunks:
        count += len(decoder.feed(chunk))
    decoder.close()
    return count


@pytest.mark.benchmark(group="header-encode", min_time=TINY)
def bench_header_encode(benchmark: Any, codec: ModuleType) -> None:
    # One call per iteration, no wrapper: the benchmark loop calls it directly.
    # A typical ORP header: a control frame (OPEN_STREAM), flags 0 (no flag is
    # defined), a short protobuf payload.
    header = benchmark(codec.encode_header, 0x010, 45, 0)
    assert header == bytes.fromhex("20100000 0000002d")


@pytest.mark.benchmark(group="header-decode", min_time=TINY)
def bench_header_decode(benchmark: Any, codec: ModuleType) -> None:
    header = bytes.fromhex("20100000 0000002d")
    assert benchmark(codec.decode_header, header) == (1, 0x010, 0, 45)


@pytest.mark.benchmark(group="decode-small-frames")
def bench_decode_small_frames(benchmark: Any, codec: ModuleType) -> None:
    # ~64 KiB of frames with 0..64-byte payloads, fed as one buffer.
    data = _stream(codec, 64 * 1024, 64, seed=1)
    expected = _decode_chunks(codec, [data])
    assert benchmark(_decode_chunks, codec, [data]) == expected > 1000


@pytest.mark.benchmark(group="decode-1mib-mixed")
def bench_decode_1mib_mixed(benchmark: Any, codec: ModuleType) -> None:
    # 1 MiB of frames with 0..4 KiB payloads (most tiny) fed in 16 KiB chunks,
    # so many frames straddle a chunk boundary.
    data = _stream(codec, 1 << 20, 4096, seed=2)
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    expected = _decode_chunks(codec, chunks)
    assert benchmark(_decode_chunks, codec, chunks) == expected > 10000


@pytest.mark.benchmark(group="encode-frame-small", min_time=TINY)
def bench_encode_frame_small(benchmark: Any, codec: ModuleType) -> None:
    payload = bytes(range(48))
    frame = benchmark(codec.encode_frame, 0x110, payload, 0)
    assert len(frame) == 56


@pytest.mark.benchmark(group="call-overhead", min_time=TINY)
def bench_call_overhead(benchmark: Any, codec: ModuleType) -> None:
    # The harness's own cost for one call of a C function with one argument:
    # run.py subtracts it to show the per-call groups' net speedup too.
    assert benchmark(len, b"12345678") == 8
