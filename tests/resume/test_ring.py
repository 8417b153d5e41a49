"""The resume ring buffer against wire.md 6.2, both twins."""

from __future__ import annotations

import array
import tracemalloc
from types import ModuleType

import pytest

from outrelay.resume.errors import PositionEvicted, ResumeError

pytestmark = pytest.mark.dataplane

KIB = 1024
MIB = 1024 * KIB


def data(n: int, seed: int = 0) -> bytes:
    """n distinct-looking bytes, so misplaced bytes show up."""
    return bytes((seed + i * 7) & 0xFF for i in range(n))


def test_defaults(ring: ModuleType) -> None:
    fixed = ring.RingBuffer()
    assert (fixed.capacity, fixed.min_capacity, fixed.max_capacity) == (16 * MIB,) * 3
    assert ring.RingBuffer(-5).capacity == 16 * MIB
    adaptive = ring.RingBuffer.adaptive()
    assert (adaptive.capacity, adaptive.min_capacity, adaptive.max_capacity) == (
        64 * KIB,
        64 * KIB,
        16 * MIB,
    )
    assert ring.RingBuffer.adaptive(0, 100).max_capacity == 100
    assert ring.RingBuffer.adaptive(-1, -1).min_capacity == 64 * KIB
    empty = ring.RingBuffer(8)
    assert (empty.head, empty.tail, len(empty)) == (0, 0, 0)
    assert empty.bytes_from(0) == b""


def test_min_greater_than_max_is_clamped(ring: ModuleType) -> None:
    r = ring.RingBuffer.adaptive(1000, 100)
    assert (r.capacity, r.min_capacity, r.max_capacity) == (100, 100, 100)
    r.write(data(150))
    assert (r.capacity, len(r), r.tail) == (100, 100, 50)


def test_exact_fill(ring: ModuleType) -> None:
    r = ring.RingBuffer(16)
    assert r.write(data(10)) == 10
    assert r.write(data(6, 10)) == 6
    assert (r.head, r.tail, len(r)) == (16, 0, 16)
    assert r.bytes_from(0) == data(10) + data(6, 10)


def test_overflow_drops_oldest(ring: ModuleType) -> None:
    r = ring.RingBuffer(16)
    stream = data(40)
    r.write(stream[:12])
    r.write(stream[12:20])
    assert (r.head, r.tail, len(r)) == (20, 4, 16)
    assert r.bytes_from(4) == stream[4:20]


def test_write_larger_than_capacity(ring: ModuleType) -> None:
    r = ring.RingBuffer(16)
    r.write(b"x" * 5)
    stream = data(50)
    assert r.write(stream) == 50
    assert (r.head, r.tail, len(r)) == (55, 39, 16)
    assert r.bytes_from(39) == stream[-16:]


def test_write_equal_to_capacity(ring: ModuleType) -> None:
    r = ring.RingBuffer(16)
    r.write(b"abc")
    r.write(data(16))
    assert (r.head, r.tail, len(r)) == (19, 3, 16)
    assert r.bytes_from(3) == data(16)


def test_wrap_around_many_times(ring: ModuleType) -> None:
    r = ring.RingBuffer(64)
    stream = data(64 * 50 + 13)
    pos = 0
    for size in [1, 7, 13, 29, 63, 5, 64, 2, 31] * 30:
        chunk = stream[pos : pos + size]
        if not chunk:
            break
        r.write(chunk)
        pos += len(chunk)
        assert r.head == pos
        assert len(r) == min(pos, 64)
        assert r.bytes_from(r.tail) == stream[r.tail : pos]
        mid = (r.tail + pos) // 2
        assert r.bytes_from(mid) == stream[mid:pos]


def test_empty_write(ring: ModuleType) -> None:
    r = ring.RingBuffer(4)
    assert r.write(b"") == 0
    assert (r.head, len(r)) == (0, 0)
    r.write(b"abcd")
    assert r.write(bytearray()) == 0
    assert r.bytes_from(0) == b"abcd"


def test_bytes_from_edges(ring: ModuleType) -> None:
    r = ring.RingBuffer(8)
    r.write(b"0123456789")  # head 10, tail 2
    assert r.bytes_from(2) == b"23456789"
    assert r.bytes_from(9) == b"9"
    assert r.bytes_from(10) == b""
    assert r.bytes_from(11) == b""
    assert r.bytes_from(2**70) == b""
    for pos in (1, 0, -1, -(2**70)):
        with pytest.raises(PositionEvicted) as info:
            r.bytes_from(pos)
        assert str(info.value) == f"resume: position {pos} evicted from ring (tail 2)"
        assert isinstance(info.value, ResumeError)
    assert type(r.bytes_from(2)) is bytes


def test_bytes_from_returns_a_copy(ring: ModuleType) -> None:
    r = ring.RingBuffer(8)
    r.write(b"abcd")
    got = r.bytes_from(0)
    r.write(b"efghijkl")
    assert got == b"abcd"


def test_discard(ring: ModuleType) -> None:
    r = ring.RingBuffer(16)
    r.write(b"0123456789")
    r.discard(4)
    assert (r.head, r.tail, len(r)) == (10, 4, 6)
    assert r.bytes_from(4) == b"456789"
    with pytest.raises(PositionEvicted):
        r.bytes_from(3)
    r.discard(2)  # below tail: no-op
    assert (r.tail, len(r)) == (4, 6)
    r.discard(10**30)  # past head: emptied, head unchanged
    assert (r.head, r.tail, len(r)) == (10, 10, 0)
    assert r.bytes_from(10) == b""
    r.write(b"ab")
    assert r.bytes_from(10) == b"ab"
    r.discard(-(2**80))
    assert (r.tail, len(r)) == (10, 2)


def test_discard_with_wrapped_storage(ring: ModuleType) -> None:
    r = ring.RingBuffer(10)
    stream = data(100)
    for i in range(0, 100, 7):
        r.write(stream[i : i + 7])
        r.discard(r.tail + 3)
        assert r.bytes_from(r.tail) == stream[r.tail : r.head]


def test_fixed_ring_never_adapts(ring: ModuleType) -> None:
    r = ring.RingBuffer(1000)
    r.write(data(5000))
    assert r.capacity == 1000
    r.discard(r.head - 1)
    assert r.capacity == 1000
    assert r.bytes_from(r.head - 1) == data(5000)[-1:]


def test_adaptive_grow(ring: ModuleType) -> None:
    r = ring.RingBuffer.adaptive(100, 1000)
    r.write(data(80))
    assert r.capacity == 100
    r.write(data(30, 80))  # 110 > 100: cap = min(max(200, 110), 1000)
    assert (r.capacity, len(r), r.tail) == (200, 110, 0)
    r.write(data(500, 110))  # 610 > 200: cap = max(400, 610) = 610
    assert (r.capacity, len(r), r.tail) == (610, 610, 0)
    r.write(data(600, 610))  # 1210 > 610: cap = min(1220, 1000) = 1000
    assert (r.capacity, len(r), r.tail) == (1000, 1000, 210)
    stream = data(80) + data(30, 80) + data(500, 110) + data(600, 610)
    assert r.bytes_from(210) == stream[210:]
    r.write(data(5000))  # at max: a plain fixed ring now
    assert (r.capacity, len(r), r.head) == (1000, 1000, 6210)


def test_adaptive_grow_with_huge_write(ring: ModuleType) -> None:
    r = ring.RingBuffer.adaptive(100, 1000)
    r.write(data(50))
    r.write(data(3000))
    assert (r.capacity, len(r), r.tail) == (1000, 1000, 2050)
    assert r.bytes_from(2050) == data(3000)[-1000:]


def test_adaptive_shrink_hysteresis(ring: ModuleType) -> None:
    r = ring.RingBuffer.adaptive(100, 6400)
    r.write(data(6400))
    assert r.capacity == 6400
    r.discard(r.head - 1000)  # 4 * 1000 < 6400: one halving
    assert (r.capacity, len(r)) == (3200, 1000)
    r.discard(r.head - 900)  # 3600 < 3200? no: no shrink
    assert r.capacity == 3200
    r.discard(r.head - 10)  # 40 < 3200: one halving only
    assert r.capacity == 1600
    for _ in range(3):
        r.discard(r.tail)  # before <= tail: early return, no shrink
        r.discard(0)
    assert r.capacity == 1600
    caps = []
    while r.capacity > 100:
        r.discard(r.tail + 1)  # effective: one halving each
        caps.append(r.capacity)
    assert caps == [800, 400, 200, 100]
    assert len(r) == 6
    r.discard(r.head)
    assert r.capacity == 100  # at min: stays
    assert r.bytes_from(r.head) == b""


def test_shrink_not_below_resident_bytes(ring: ModuleType) -> None:
    r = ring.RingBuffer.adaptive(10, 1 << 20)
    r.write(data(1000))  # cap 1000
    assert r.capacity == 1000
    r.discard(760)  # 240 resident, 960 < 1000: cap = max(500, 10, 240) = 500
    assert (r.capacity, len(r)) == (500, 240)
    assert r.bytes_from(760) == data(1000)[760:]


def test_shrink_keeps_wrapped_bytes(ring: ModuleType) -> None:
    r = ring.RingBuffer.adaptive(64, 256)
    stream = data(2000)
    pos = 0
    for size in (200, 100, 150, 90, 250, 30):
        r.write(stream[pos : pos + size])
        pos += size
    assert r.capacity == 256
    r.discard(pos - 20)
    assert r.capacity == 128
    assert r.bytes_from(pos - 20) == stream[pos - 20 : pos]
    r.write(stream[pos : pos + 100])
    pos += 100
    assert r.bytes_from(pos - 120) == stream[pos - 120 : pos]


@pytest.mark.parametrize(
    "make",
    [bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b))[2:]],
    ids=["bytes", "bytearray", "memoryview", "memoryview-slice"],
)
def test_bytes_like_input(ring: ModuleType, make: object) -> None:
    r = ring.RingBuffer(64)
    payload = b"\x00\x01hello world\xff"
    source = make(payload)  # type: ignore[operator]
    n = r.write(source)
    assert n == len(bytes(source))
    assert r.bytes_from(0) == bytes(source)


def test_multibyte_items_count_bytes(ring: ModuleType) -> None:
    r = ring.RingBuffer(64)
    items = array.array("i", [1, 2, 3])
    assert r.write(items) == 3 * items.itemsize
    assert r.bytes_from(0) == items.tobytes()


def test_bad_input(ring: ModuleType) -> None:
    r = ring.RingBuffer(64)
    with pytest.raises(TypeError):
        r.write("text")
    with pytest.raises(BufferError):
        r.write(memoryview(b"abcdef")[::2])
    with pytest.raises(TypeError):
        r.bytes_from(1.5)
    with pytest.raises(TypeError):
        r.discard("1")
    with pytest.raises(TypeError):
        ring.RingBuffer(1.5)
    with pytest.raises(OverflowError):
        ring.RingBuffer(2**64)
    assert (r.head, len(r)) == (0, 0)


def test_writer_can_resize_its_buffer(ring: ModuleType) -> None:
    r = ring.RingBuffer(64)
    buf = bytearray(b"abc")
    r.write(buf)
    buf.extend(b"def")  # the ring must not keep an export on the caller's buffer
    assert r.bytes_from(0) == b"abc"


def test_large_positions(ring: ModuleType) -> None:
    r = ring.RingBuffer(32)
    chunk = data(1 << 20)
    for _ in range(64):
        r.write(chunk)
    head = 64 << 20
    assert (r.head, r.tail) == (head, head - 32)
    assert r.bytes_from(head - 32) == chunk[-32:]
    with pytest.raises(PositionEvicted):
        r.bytes_from(head - 33)
    r.discard(head - 8)
    assert r.bytes_from(head - 8) == chunk[-8:]
    assert r.bytes_from(2**63) == b""
    assert r.bytes_from(2**64 + 5) == b""


def test_int_like_positions(ring: ModuleType) -> None:
    import enum

    class Pos(enum.IntEnum):
        THREE = 3

    r = ring.RingBuffer(16)
    r.write(b"0123456789")
    assert r.bytes_from(Pos.THREE) == b"3456789"
    r.discard(Pos.THREE)
    assert r.tail == 3


def test_storage_is_lazy_and_bounded_by_capacity(ring: ModuleType) -> None:
    """Storage follows the resident bytes and the capacity, not the maximum."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]

        def used() -> int:
            return tracemalloc.get_traced_memory()[0] - base

        fixed = ring.RingBuffer()  # 16 MiB capacity
        fixed.write(b"x" * 100)
        assert used() < 64 * KIB
        del fixed

        r = ring.RingBuffer.adaptive(64 * KIB, 4 * MIB)
        block = bytes(4 * MIB)
        r.write(block)
        del block
        assert r.capacity == 4 * MIB
        assert 4 * MIB <= used() < 5 * MIB
        r.discard(r.head)
        assert r.capacity == 2 * MIB
        assert used() < 2 * MIB + 256 * KIB
        while r.capacity > r.min_capacity:
            r.write(b"y")
            r.discard(r.head)
        assert r.capacity == 64 * KIB
        assert used() < 256 * KIB
    finally:
        tracemalloc.stop()
