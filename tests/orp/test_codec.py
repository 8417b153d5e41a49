"""ORP frame codec (wire.md 2-3), run against both twins via the ``codec`` fixture."""

from __future__ import annotations

import array
import importlib
import subprocess
import sys
from types import ModuleType

import pytest

from conftest import compiled_twin, load_twin
from outrelay.orp.errors import (
    InvalidFlags,
    InvalidType,
    InvalidVersion,
    OrpError,
    PayloadTooLarge,
    ShortHeader,
    TruncatedFrame,
)
from outrelay.orp.types import HEADER_SIZE, MAX_PAYLOAD, MAX_TYPE, FrameType

pytestmark = pytest.mark.dataplane

API = ["Frame", "FrameDecoder", "decode_header", "encode_frame", "encode_header"]


def golden_header(ftype: int, flags: int, length: int, version: int = 1) -> bytes:
    """The header as the reference writes it, built independently of the codec."""
    word0 = (version << 13) | ftype
    return word0.to_bytes(2, "big") + flags.to_bytes(2, "big") + length.to_bytes(4, "big")


def both_twins() -> tuple[ModuleType, ModuleType]:
    """(compiled, pure); skipped when the compiled one is not built."""
    pure = load_twin("codec", "pure")
    compiled = compiled_twin("codec")
    if compiled is None:
        pytest.skip("compiled codec not built")
    return compiled, pure


def feed_all(decoder: object, chunks: list[bytes]) -> list[object]:
    frames: list[object] = []
    for chunk in chunks:
        frames += decoder.feed(chunk)  # type: ignore[attr-defined]
    return frames


# -- API shape ------------------------------------------------------------------


def test_exports(codec: ModuleType) -> None:
    assert sorted(codec.__all__) == API
    for name in API:
        assert getattr(codec, name)


def test_compiled_twin_is_default_when_built() -> None:
    import outrelay.orp as orp

    try:
        compiled = importlib.import_module("outrelay._fast._codec")
    except ImportError:
        pytest.skip("compiled codec not built")
    from outrelay._compat import NO_EXTENSIONS

    if NO_EXTENSIONS:
        assert orp.IMPLEMENTATION == "pure"
    else:
        assert orp.IMPLEMENTATION == "compiled"
        assert orp.encode_frame is compiled.encode_frame
        assert orp.Frame is compiled.Frame


@pytest.mark.parametrize(
    "module", ["outrelay._fast._codec", "outrelay.orp._codec_py", "outrelay.orp.messages"]
)
def test_imports_first_in_fresh_interpreter(module: str) -> None:
    # The compiled codec imports outrelay.orp, whose __init__ imports it back.
    code = f"import {module}; import outrelay.orp as o; o.encode_frame(1, b'')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if "No module named 'outrelay._fast._codec'" in result.stderr:
        pytest.skip("compiled codec not built")
    assert result.returncode == 0, result.stderr


# -- golden vectors ---------------------------------------------------------------


def test_worked_example(codec: ModuleType) -> None:
    wire = bytes.fromhex("2001ABCD0000000268 69")
    assert codec.encode_frame(FrameType.HELLO, b"hi", 0xABCD) == wire
    assert codec.decode_header(wire) == (1, 0x001, 0xABCD, 2)
    assert codec.FrameDecoder().feed(wire) == [codec.Frame(FrameType.HELLO, b"hi", 0xABCD)]


@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda t: t.name)
def test_golden_header_every_type(codec: ModuleType, ftype: FrameType) -> None:
    payload = b"\x0a\x03abc"
    header = golden_header(ftype, 0, len(payload))
    assert codec.encode_header(ftype, len(payload)) == header
    assert codec.encode_frame(ftype, payload) == header + payload
    assert codec.decode_header(header) == (1, ftype, 0, len(payload))
    (frame,) = codec.FrameDecoder().feed(header + payload)
    assert frame.type == ftype
    assert frame.payload == payload
    assert (frame.flags, frame.version) == (0, 1)
    assert ftype.name in repr(frame)


def test_known_codes(codec: ModuleType) -> None:
    assert codec.encode_header(FrameType.ALLOC_GRANTED, 0) == bytes.fromhex("2151000000000000")
    assert codec.encode_header(FrameType.GOAWAY, 0) == bytes.fromhex("20ff000000000000")
    assert codec.encode_header(MAX_TYPE, 0) == bytes.fromhex("27ff000000000000")
    assert codec.encode_header(0, 0) == bytes.fromhex("2000000000000000")


@pytest.mark.parametrize("flags", [0, 1, 0x8000, 0xABCD, 0xFFFF])
def test_flags_round_trip(codec: ModuleType, flags: int) -> None:
    wire = codec.encode_frame(FrameType.PING, b"x", flags)
    assert wire[2:4] == flags.to_bytes(2, "big")
    assert codec.decode_header(wire)[2] == flags
    assert codec.FrameDecoder().feed(wire)[0].flags == flags


@pytest.mark.parametrize("reserved", [1, 2, 3])
def test_reserved_bits_ignored(codec: ModuleType, reserved: int) -> None:
    header = bytearray(golden_header(FrameType.REGISTER, 7, 1))
    header[0] |= reserved << 3
    assert codec.decode_header(header) == (1, FrameType.REGISTER, 7, 1)
    (frame,) = codec.FrameDecoder().feed(bytes(header) + b"z")
    assert frame == codec.Frame(FrameType.REGISTER, b"z", 7)
    # Encoding never sets them.
    assert codec.encode_header(MAX_TYPE, 0)[0] & 0x18 == 0


def test_zero_length_payload(codec: ModuleType) -> None:
    wire = codec.encode_frame(FrameType.STREAM_ACCEPT)
    assert wire == golden_header(FrameType.STREAM_ACCEPT, 0, 0)
    (frame,) = codec.FrameDecoder().feed(wire)
    assert frame.payload == b""
    assert type(frame.payload) is bytes


# -- header errors ------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, 3, 4, 5, 6, 7])
def test_other_versions_rejected(codec: ModuleType, version: int) -> None:
    header = golden_header(FrameType.HELLO, 0, 0, version=version)
    with pytest.raises(InvalidVersion, match=rf"^orp: unsupported version {version} \(want 1\)$"):
        codec.decode_header(header)
    with pytest.raises(InvalidVersion):
        codec.FrameDecoder().feed(header)


def test_max_payload_boundary(codec: ModuleType) -> None:
    assert codec.decode_header(golden_header(1, 0, MAX_PAYLOAD))[3] == MAX_PAYLOAD
    assert codec.encode_header(1, MAX_PAYLOAD) == golden_header(1, 0, MAX_PAYLOAD)
    msg = r"^orp: payload length 16777217 exceeds MAX_PAYLOAD \(16777216\)$"
    too_big = golden_header(1, 0, MAX_PAYLOAD + 1)
    with pytest.raises(PayloadTooLarge, match=msg):
        codec.decode_header(too_big)
    with pytest.raises(PayloadTooLarge, match=msg):
        codec.encode_header(1, MAX_PAYLOAD + 1)
    with pytest.raises(PayloadTooLarge):
        codec.decode_header(golden_header(1, 0, 0xFFFFFFFF))


def test_decoder_rejects_large_length_from_header_alone(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder()
    assert decoder.feed(golden_header(1, 0, MAX_PAYLOAD + 1)[:7]) == []
    with pytest.raises(PayloadTooLarge):
        decoder.feed(golden_header(1, 0, MAX_PAYLOAD + 1)[7:])


def test_decoder_accepts_max_payload(codec: ModuleType) -> None:
    payload = bytes(range(256)) * (MAX_PAYLOAD // 256)
    wire = codec.encode_frame(FrameType.STREAM_DATA, payload)
    decoder = codec.FrameDecoder()
    assert decoder.feed(wire[:100]) == []
    assert decoder.pending == 100
    (frame,) = decoder.feed(memoryview(wire)[100:])
    assert frame.payload == payload
    assert decoder.pending == 0


@pytest.mark.parametrize("ftype", [MAX_TYPE + 1, 0x800, 0xFFFF, -1, 2**70])
def test_encode_invalid_type(codec: ModuleType, ftype: int) -> None:
    with pytest.raises(InvalidType, match=rf"^orp: frame type {ftype} out of range \(0..0x7ff\)$"):
        codec.encode_header(ftype, 0)
    with pytest.raises(InvalidType):
        codec.encode_frame(ftype, b"")
    with pytest.raises(InvalidType):
        codec.Frame(ftype)


@pytest.mark.parametrize("flags", [-1, 0x10000, 2**64])
def test_encode_invalid_flags(codec: ModuleType, flags: int) -> None:
    with pytest.raises(InvalidFlags, match=rf"^orp: flags {flags} out of range \(0..0xffff\)$"):
        codec.encode_header(1, 0, flags)
    with pytest.raises(InvalidFlags):
        codec.encode_frame(1, b"", flags)
    with pytest.raises(InvalidFlags):
        codec.Frame(1, b"", flags)


@pytest.mark.parametrize("length", [-1, -(2**70)])
def test_encode_negative_length(codec: ModuleType, length: int) -> None:
    with pytest.raises(ValueError, match=rf"^orp: payload length {length} is negative$"):
        codec.encode_header(1, length)


def test_encode_payload_too_large(codec: ModuleType) -> None:
    with pytest.raises(PayloadTooLarge):
        codec.encode_frame(1, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(PayloadTooLarge):
        codec.Frame(1, bytes(MAX_PAYLOAD + 1))


@pytest.mark.parametrize("bad", [1.0, "1", None])
def test_non_integer_arguments(codec: ModuleType, bad: object) -> None:
    with pytest.raises(TypeError):
        codec.encode_header(bad, 0)
    with pytest.raises(TypeError):
        codec.encode_header(1, bad)
    with pytest.raises(TypeError):
        codec.encode_header(1, 0, bad)
    with pytest.raises(TypeError):
        codec.Frame(bad)


def test_integer_like_arguments(codec: ModuleType) -> None:
    assert codec.encode_header(FrameType.PONG, True, False) == golden_header(0x21, 0, 1)


@pytest.mark.parametrize("size", range(HEADER_SIZE))
def test_short_header(codec: ModuleType, size: int) -> None:
    with pytest.raises(ShortHeader, match=rf"^orp: short header: {size} bytes, need 8$"):
        codec.decode_header(golden_header(1, 0, 0)[:size])


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_header_bytes_like(codec: ModuleType, kind: type) -> None:
    wire = golden_header(FrameType.HELLO, 0xABCD, 2) + b"hi and more"
    assert codec.decode_header(kind(wire)) == (1, 1, 0xABCD, 2)
    assert codec.decode_header(memoryview(b"xx" + wire)[2:]) == (1, 1, 0xABCD, 2)


@pytest.mark.parametrize(
    "kind",
    [bytes, bytearray, memoryview, lambda b: memoryview(bytes(x for c in b for x in (c, 0)))[::2]],
    ids=range(4),
)
def test_encode_frame_bytes_like(codec: ModuleType, kind: object) -> None:
    wire = codec.encode_frame(FrameType.HELLO, kind(b"hi"), 0xABCD)  # type: ignore[operator]
    assert type(wire) is bytes
    assert wire == bytes.fromhex("2001ABCD000000026869")
    assert codec.encode_frame(3, array.array("H", [1, 2]))[8:] == array.array("H", [1, 2]).tobytes()


def test_not_bytes_like(codec: ModuleType) -> None:
    with pytest.raises(TypeError):
        codec.decode_header("20010000")
    with pytest.raises(TypeError):
        codec.encode_frame(1, "hi")
    with pytest.raises(TypeError):
        codec.FrameDecoder().feed("hi")
    with pytest.raises(TypeError):
        codec.Frame(1, "hi")


# -- Frame ---------------------------------------------------------------------------


def test_frame_fields_and_defaults(codec: ModuleType) -> None:
    frame = codec.Frame(FrameType.OPEN_STREAM)
    assert (frame.type, frame.payload, frame.flags, frame.version) == (0x10, b"", 0, 1)
    assert frame.type == FrameType.OPEN_STREAM
    frame = codec.Frame(type=2, payload=bytearray(b"ab"), flags=3, version=0)
    assert (frame.type, frame.payload, frame.flags, frame.version) == (2, b"ab", 3, 0)
    assert type(frame.payload) is bytes
    with pytest.raises(InvalidVersion, match=r"^orp: version 8 out of range \(0..7\)$"):
        codec.Frame(1, version=8)


def test_frame_is_immutable_and_hashable(codec: ModuleType) -> None:
    frame = codec.Frame(1, b"a")
    with pytest.raises(AttributeError):
        frame.type = 2
    with pytest.raises(AttributeError):
        frame.payload = b"b"
    assert len({frame, codec.Frame(1, b"a"), codec.Frame(1, b"b")}) == 2


def test_frame_equality(codec: ModuleType) -> None:
    frame = codec.Frame(1, b"a", 2)
    assert frame == codec.Frame(1, b"a", 2)
    assert not frame != codec.Frame(1, b"a", 2)
    for other in (codec.Frame(2, b"a", 2), codec.Frame(1, b"b", 2), codec.Frame(1, b"a", 3)):
        assert frame != other
    assert frame != codec.Frame(1, b"a", 2, version=0)
    assert frame != (1, b"a", 2, 1)
    assert frame != "frame"


def test_frames_equal_across_twins() -> None:
    compiled, pure = both_twins()
    for args in [(1,), (1, b"a", 2), (0x7FF, b"xyz" * 100, 0xFFFF, 7)]:
        c, p = compiled.Frame(*args), pure.Frame(*args)
        assert c == p and p == c
        assert not (c != p) and not (p != c)
        assert hash(c) == hash(p)
        assert repr(c) == repr(p)
    assert compiled.Frame(1, b"a") != pure.Frame(1, b"b")
    assert pure.Frame(1, b"a") != compiled.Frame(2, b"a")


def test_frame_repr(codec: ModuleType) -> None:
    assert repr(codec.Frame(FrameType.HELLO, b"hi", 0xABCD)) == (
        "Frame(type=HELLO (0x001), payload=b'hi', flags=0xabcd, version=1)"
    )
    assert repr(codec.Frame(0x7FE, bytes(40))) == (
        f"Frame(type=0x7fe, payload={bytes(32)!r}...(40 bytes), flags=0x0000, version=1)"
    )


# -- stream decoder ----------------------------------------------------------------

FRAMES = [
    (FrameType.HELLO, b"hello", 0),
    (FrameType.HELLO_ACK, b"", 0),
    (FrameType.STREAM_REJECT, bytes(range(200)), 0x1234),
    (0x7FF, b"\x00", 0xFFFF),
    (FrameType.PONG, b"", 0),
]


def wire_of(codec: ModuleType) -> tuple[bytes, list[object]]:
    wire = b"".join(codec.encode_frame(*f) for f in FRAMES)
    return wire, [codec.Frame(*f) for f in FRAMES]


def test_decoder_many_frames_at_once(codec: ModuleType) -> None:
    wire, expected = wire_of(codec)
    decoder = codec.FrameDecoder()
    assert decoder.feed(wire) == expected
    assert decoder.pending == 0
    assert decoder.close() is None


def test_decoder_one_byte_at_a_time(codec: ModuleType) -> None:
    wire, expected = wire_of(codec)
    decoder = codec.FrameDecoder()
    frames = []
    for i in range(len(wire)):
        frames += decoder.feed(wire[i : i + 1])
        done = sum(HEADER_SIZE + len(f.payload) for f in frames)
        assert decoder.pending == i + 1 - done
    assert frames == expected
    assert decoder.close() is None


@pytest.mark.parametrize("chunk", [2, 3, 7, 8, 9, 13, 64, 205])
def test_decoder_every_split(codec: ModuleType, chunk: int) -> None:
    wire, expected = wire_of(codec)
    decoder = codec.FrameDecoder()
    assert feed_all(decoder, [wire[i : i + chunk] for i in range(0, len(wire), chunk)]) == expected
    assert decoder.close() is None


@pytest.mark.parametrize(
    "kind",
    [
        bytes,
        bytearray,
        memoryview,
        lambda b: memoryview(bytearray(b)),
        lambda b: array.array("B", b),
    ],
    ids=["bytes", "bytearray", "memoryview", "memoryview-bytearray", "array"],
)
def test_decoder_bytes_like(codec: ModuleType, kind: object) -> None:
    wire, expected = wire_of(codec)
    decoder = codec.FrameDecoder()
    chunks = [kind(wire[i : i + 11]) for i in range(0, len(wire), 11)]  # type: ignore[operator]
    assert feed_all(decoder, chunks) == expected
    assert all(type(f.payload) is bytes for f in expected)


def test_decoder_does_not_alias_input(codec: ModuleType) -> None:
    data = bytearray(codec.encode_frame(1, b"abc") + codec.encode_frame(2, b"de")[:9])
    decoder = codec.FrameDecoder()
    (frame,) = decoder.feed(data)
    data[:] = bytes(len(data))
    assert frame.payload == b"abc"
    assert decoder.feed(b"") == []
    assert decoder.feed(codec.encode_frame(2, b"de")[9:]) == [codec.Frame(2, b"de")]


def test_decoder_non_contiguous_memoryview(codec: ModuleType) -> None:
    wire = codec.encode_frame(1, b"abc")
    spread = bytes(b for c in wire for b in (c, 0))
    assert codec.FrameDecoder().feed(memoryview(spread)[::2]) == [codec.Frame(1, b"abc")]


def test_decoder_empty_feed(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.pending == 0
    assert decoder.close() is None


def test_decoder_keeps_at_most_one_partial_frame(codec: ModuleType) -> None:
    wire, _ = wire_of(codec)
    decoder = codec.FrameDecoder()
    assert len(decoder.feed(wire + wire[:12])) == len(FRAMES)
    assert decoder.pending == 12  # a part of the first frame, "hello" is 13 bytes


@pytest.mark.parametrize("cut", range(1, HEADER_SIZE))
def test_close_inside_header(codec: ModuleType, cut: int) -> None:
    decoder = codec.FrameDecoder()
    decoder.feed(codec.encode_frame(1, b"ok") + golden_header(2, 0, 5)[:cut])
    assert decoder.pending == cut
    msg = rf"^orp: truncated frame: stream ended after {cut} of 8 header bytes$"
    with pytest.raises(TruncatedFrame, match=msg):
        decoder.close()


@pytest.mark.parametrize("got", [0, 1, 4])
def test_close_inside_payload(codec: ModuleType, got: int) -> None:
    decoder = codec.FrameDecoder()
    assert decoder.feed(golden_header(FrameType.STREAM_REJECT, 0, 5) + b"abcd"[:got]) == []
    assert decoder.pending == HEADER_SIZE + got
    msg = rf"^orp: truncated frame: stream ended after {got} of 5 payload bytes \(STREAM_REJECT"
    with pytest.raises(TruncatedFrame, match=msg):
        decoder.close()


def test_poisoned_decoder(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder()
    bad = codec.encode_frame(1, b"ok") + golden_header(1, 0, 0, version=2)
    with pytest.raises(InvalidVersion) as first:
        decoder.feed(bad)
    assert decoder.pending == 0
    for _ in range(2):
        with pytest.raises(InvalidVersion) as again:
            decoder.feed(codec.encode_frame(1, b"ok"))
        assert str(again.value) == str(first.value)
    with pytest.raises(InvalidVersion):
        decoder.close()


def test_poisoned_by_truncation(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder()
    decoder.feed(b"\x20")
    with pytest.raises(TruncatedFrame):
        decoder.close()
    with pytest.raises(TruncatedFrame):
        decoder.feed(codec.encode_frame(1))
    with pytest.raises(TruncatedFrame):
        decoder.close()


def test_errors_are_orp_errors() -> None:
    for cls in (InvalidVersion, InvalidType, InvalidFlags, PayloadTooLarge, ShortHeader):
        assert issubclass(cls, OrpError)
