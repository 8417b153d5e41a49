"""Bounded control frames (issue 12, finding 7), against both twins via ``codec``.

A control-stream decoder (``FrameDecoder(MAX_CONTROL_PAYLOAD)``) refuses a
header declaring more than 64 KiB from its 8 bytes alone, with FrameTooLarge
(wire meaning: close the connection). No decoder reserves a declared length
before the bytes arrive: what it holds grows with what it has been fed,
measured with tracemalloc (both twins allocate through Python's allocator).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from types import ModuleType

import pytest

from outrelay.orp.errors import FrameTooLarge, OrpError, PayloadTooLarge
from outrelay.orp.types import HEADER_SIZE, MAX_CONTROL_PAYLOAD, MAX_PAYLOAD, FrameType

pytestmark = pytest.mark.dataplane

#: What an attacker's 16 MiB control-frame header says.
HUGE = 16 * 1024 * 1024
#: Slack for the interpreter's own allocations while a measurement runs.
SLACK = 64 * 1024
TOO_LARGE = r"^orp: frame header declares {n} payload bytes, over the limit of 65536$"


def header(length: int, ftype: int = FrameType.REGISTER) -> bytes:
    """A version-1 header built independently of the codec."""
    return ((1 << 13) | ftype).to_bytes(2, "big") + b"\x00\x00" + length.to_bytes(4, "big")


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def held_by(fn: object) -> int:
    """Bytes still allocated (traced) after ``fn()`` returns, its result kept alive."""
    before = tracemalloc.get_traced_memory()[0]
    keep = fn()  # type: ignore[operator]
    held = tracemalloc.get_traced_memory()[0] - before
    del keep
    return held


def test_control_limit_is_64_kib() -> None:
    assert MAX_CONTROL_PAYLOAD == 64 * 1024
    assert issubclass(FrameTooLarge, PayloadTooLarge)
    assert FrameTooLarge.closes_connection and not OrpError.closes_connection
    assert not PayloadTooLarge.closes_connection


def test_oversized_control_header_refused_from_header_alone(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder(MAX_CONTROL_PAYLOAD)
    assert decoder.feed(header(HUGE)[:5]) == []
    with pytest.raises(FrameTooLarge, match=TOO_LARGE.format(n=HUGE)):
        decoder.feed(header(HUGE)[5:])  # the last 3 header bytes, no payload
    assert decoder.pending == 0


def test_oversized_control_header_after_whole_frames_poisons(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder(MAX_CONTROL_PAYLOAD)
    ping = codec.encode_frame(FrameType.PING)
    with pytest.raises(FrameTooLarge):
        decoder.feed(ping + header(MAX_CONTROL_PAYLOAD + 1) + b"x" * 100)
    for later in (lambda: decoder.feed(ping), decoder.close):
        with pytest.raises(FrameTooLarge, match=TOO_LARGE.format(n=MAX_CONTROL_PAYLOAD + 1)):
            later()


def test_control_frame_at_the_limit_is_accepted(codec: ModuleType) -> None:
    payload = bytes(range(256)) * (MAX_CONTROL_PAYLOAD // 256)
    wire = codec.encode_frame(FrameType.REGISTER, payload)
    decoder = codec.FrameDecoder(MAX_CONTROL_PAYLOAD)
    frames = [f for i in range(0, len(wire), 1000) for f in decoder.feed(wire[i : i + 1000])]
    assert [f.payload for f in frames] == [payload]
    assert decoder.close() is None


def test_limit_above_max_payload_still_raises_frame_too_large(codec: ModuleType) -> None:
    with pytest.raises(FrameTooLarge, match=TOO_LARGE.format(n=2**32 - 1)):
        codec.FrameDecoder(MAX_CONTROL_PAYLOAD).feed(header(2**32 - 1))


def test_default_decoder_keeps_max_payload(codec: ModuleType) -> None:
    # Not a control decoder: the wire limit, and the old error (no connection close).
    with pytest.raises(PayloadTooLarge) as info:
        codec.FrameDecoder().feed(header(MAX_PAYLOAD + 1))
    assert type(info.value) is PayloadTooLarge
    assert codec.FrameDecoder().feed(header(MAX_PAYLOAD)) == []


def test_zero_limit_allows_only_empty_frames(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder(0)
    assert [f.payload for f in decoder.feed(header(0) + header(0))] == [b"", b""]
    with pytest.raises(FrameTooLarge):
        decoder.feed(header(1))


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (-1, ValueError, "orp: max_payload -1 out of range (0..16777216)"),
        (MAX_PAYLOAD + 1, ValueError, "orp: max_payload 16777217 out of range (0..16777216)"),
        (2**70, ValueError, f"orp: max_payload {2**70} out of range (0..16777216)"),
        (1.5, TypeError, "'float' object cannot be interpreted as an integer"),
        (None, TypeError, "'NoneType' object cannot be interpreted as an integer"),
        ("64", TypeError, "'str' object cannot be interpreted as an integer"),
    ],
)
def test_bad_limit_argument(
    codec: ModuleType, bad: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        codec.FrameDecoder(bad)
    assert str(info.value) == message


def test_decoder_does_not_reserve_a_declared_length(codec: ModuleType, traced: None) -> None:
    decoder = codec.FrameDecoder()
    assert held_by(lambda: decoder.feed(header(HUGE) + b"x" * 100)) < SLACK
    assert decoder.pending == HEADER_SIZE + 100


def test_decoder_memory_grows_with_what_arrives(codec: ModuleType, traced: None) -> None:
    payload = bytes(range(256)) * (HUGE // 256)
    wire = codec.encode_frame(FrameType.STREAM_DATA, payload)
    decoder = codec.FrameDecoder()
    chunk = 16 * 1024
    fed = 0
    before = tracemalloc.get_traced_memory()[0]
    while fed + chunk < 1024 * 1024:
        assert decoder.feed(wire[fed : fed + chunk]) == []
        fed += chunk
        # at most twice what arrived (doubling growth), never the declared 16 MiB
        assert tracemalloc.get_traced_memory()[0] - before <= 2 * fed + SLACK
    (frame,) = decoder.feed(wire[fed:])
    assert frame.payload == payload


def test_control_decoder_holds_little_for_a_huge_header(codec: ModuleType, traced: None) -> None:
    def attack() -> None:
        decoder = codec.FrameDecoder(MAX_CONTROL_PAYLOAD)
        with pytest.raises(FrameTooLarge):
            decoder.feed(header(HUGE) + b"x" * 1000)
        return decoder

    assert held_by(attack) < SLACK
