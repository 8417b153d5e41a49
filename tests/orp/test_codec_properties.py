"""Property tests: the compiled and pure codec twins agree on every input."""

from __future__ import annotations

import tracemalloc
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import compiled_twin, load_twin
from outrelay.orp.errors import FrameTooLarge, PayloadTooLarge
from outrelay.orp.types import HEADER_SIZE, MAX_CONTROL_PAYLOAD, MAX_PAYLOAD, MAX_TYPE

pytestmark = pytest.mark.dataplane

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PURE = load_twin("codec", "pure")


@pytest.fixture(scope="module")
def compiled() -> ModuleType:
    module = compiled_twin("codec")
    if module is None:
        pytest.skip("compiled codec not built")
    return module


frames_st = st.lists(
    st.tuples(
        st.integers(0, MAX_TYPE),
        st.binary(max_size=300),
        st.integers(0, 0xFFFF),
    ),
    max_size=20,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def run(
    codec: ModuleType, chunks: list[bytes], kinds: list[int], limit: int = MAX_PAYLOAD
) -> list[object]:
    """Feed ``chunks`` (as bytes / bytearray / memoryview) and record everything."""
    decoder = codec.FrameDecoder(limit)
    log: list[object] = []
    for i, chunk in enumerate(chunks):
        kind = kinds[i % len(kinds)] if kinds else 0
        data = (chunk, bytearray(chunk), memoryview(chunk))[kind]
        try:
            frames = decoder.feed(data)
        except Exception as exc:  # noqa: BLE001 - compared between twins
            log.append(("error", type(exc), str(exc), decoder.pending))
            continue
        log.append([(f.type, f.payload, f.flags, f.version) for f in frames])
        log.append(decoder.pending)
    try:
        log.append(("close", decoder.close()))
    except Exception as exc:  # noqa: BLE001
        log.append(("close-error", type(exc), str(exc)))
    return log


kinds_st = st.lists(st.integers(0, 2), max_size=5)
cuts_st = st.lists(st.integers(0, 10_000), max_size=30)


@SETTINGS
@given(frames=frames_st, cuts=cuts_st, kinds=kinds_st)
def test_split_stream_round_trips(
    compiled: ModuleType, frames: list[tuple[int, bytes, int]], cuts: list[int], kinds: list[int]
) -> None:
    wire = b"".join(PURE.encode_frame(*f) for f in frames)
    assert wire == b"".join(compiled.encode_frame(*f) for f in frames)
    chunks = split(wire, cuts)
    expected = [(t, p, fl, 1) for t, p, fl in frames]
    for codec in (compiled, PURE):
        log = run(codec, chunks, kinds)
        decoded = [f for entry in log if isinstance(entry, list) for f in entry]
        assert decoded == expected
        assert log[-1] == ("close", None)
    assert run(compiled, chunks, kinds) == run(PURE, chunks, kinds)


def header_st() -> st.SearchStrategy[bytes]:
    """Headers that are often valid and sometimes not (version, huge length)."""
    return st.builds(
        lambda version, reserved, ftype, flags, length, payload: (
            ((version << 13) | (reserved << 11) | ftype).to_bytes(2, "big")
            + flags.to_bytes(2, "big")
            + length.to_bytes(4, "big")
            + payload[:length]
        ),
        st.sampled_from([1, 1, 1, 1, 1, 1, 0, 2, 7]),
        st.integers(0, 3),
        st.integers(0, MAX_TYPE),
        st.integers(0, 0xFFFF),
        st.one_of(st.integers(0, 40), st.sampled_from([2**24, 2**24 + 1, 2**32 - 1])),
        st.binary(max_size=40),
    )


raw_st = st.one_of(
    st.binary(max_size=400),
    st.lists(st.one_of(header_st(), st.binary(max_size=12)), max_size=12).map(b"".join),
)


@SETTINGS
@given(data=raw_st, cuts=cuts_st, kinds=kinds_st)
def test_random_streams_agree(
    compiled: ModuleType, data: bytes, cuts: list[int], kinds: list[int]
) -> None:
    chunks = split(data, cuts) + [b"\x20\x01\x00"]  # and feed after any error
    assert run(compiled, chunks, kinds) == run(PURE, chunks, kinds)


def outcome(fn: object, *args: object) -> tuple[object, ...]:
    try:
        return ("ok", fn(*args))  # type: ignore[operator]
    except Exception as exc:  # noqa: BLE001
        return ("error", type(exc), str(exc))


@SETTINGS
@given(data=st.one_of(st.binary(max_size=12), header_st()))
def test_decode_header_agrees(compiled: ModuleType, data: bytes) -> None:
    expected = outcome(PURE.decode_header, data)
    assert outcome(compiled.decode_header, data) == expected
    assert outcome(compiled.decode_header, bytearray(data)) == expected
    assert outcome(compiled.decode_header, memoryview(data)) == expected
    if len(data) >= HEADER_SIZE and expected[0] == "ok":
        version, ftype, flags, length = expected[1]  # type: ignore[misc]
        assert compiled.encode_header(ftype, length, flags) == bytes([data[0] & 0xE7]) + data[1:8]


ints_st = st.one_of(
    st.integers(-3, 0x10003),
    st.integers(2**24 - 2, 2**24 + 2),
    st.integers(-(2**80), 2**80),
    st.sampled_from([True, 1.0, None]),
)


@SETTINGS
@given(ftype=ints_st, length=ints_st, flags=ints_st)
def test_encode_header_agrees(
    compiled: ModuleType, ftype: object, length: object, flags: object
) -> None:
    assert outcome(compiled.encode_header, ftype, length, flags) == outcome(
        PURE.encode_header, ftype, length, flags
    )


@SETTINGS
@given(ftype=ints_st, payload=st.binary(max_size=20), flags=ints_st, version=ints_st)
def test_frame_constructor_agrees(
    compiled: ModuleType, ftype: object, payload: bytes, flags: object, version: object
) -> None:
    c = outcome(compiled.Frame, ftype, payload, flags, version)
    p = outcome(PURE.Frame, ftype, payload, flags, version)
    if c[0] == "ok":
        assert p[0] == "ok" and c[1] == p[1] and repr(c[1]) == repr(p[1])
    else:
        assert c == p
    assert (
        outcome(compiled.encode_frame, ftype, payload, flags)[1:]
        == outcome(PURE.encode_frame, ftype, payload, flags)[1:]
    )


# -- bounded control frames (issue 12, finding 7) ---------------------------------

limit_st = st.one_of(
    st.integers(0, 64), st.sampled_from([MAX_CONTROL_PAYLOAD, MAX_PAYLOAD - 1, MAX_PAYLOAD])
)


def limited_header_st() -> st.SearchStrategy[bytes]:
    """Valid headers whose declared lengths fall on both sides of small limits."""
    return st.builds(
        lambda ftype, length, payload: (
            ((1 << 13) | ftype).to_bytes(2, "big")
            + b"\x00\x00"
            + length.to_bytes(4, "big")
            + payload[:length]
        ),
        st.integers(0, MAX_TYPE),
        st.one_of(
            st.integers(0, 80),
            st.sampled_from([MAX_CONTROL_PAYLOAD, MAX_CONTROL_PAYLOAD + 1, 2**24, 2**32 - 1]),
        ),
        st.binary(max_size=80),
    )


@SETTINGS
@given(
    parts=st.lists(limited_header_st(), max_size=8),
    limit=limit_st,
    cuts=cuts_st,
    kinds=kinds_st,
)
def test_decoder_limit_agrees_and_holds(
    compiled: ModuleType, parts: list[bytes], limit: int, cuts: list[int], kinds: list[int]
) -> None:
    chunks = split(b"".join(parts), cuts)
    log = run(compiled, chunks, kinds, limit)
    assert log == run(PURE, chunks, kinds, limit)
    for entry in log:
        if isinstance(entry, list):
            assert all(len(payload) <= limit for _, payload, _, _ in entry)
        elif isinstance(entry, tuple) and entry[0] == "error":
            # a lower limit than the wire's answers with the connection-closing error
            if issubclass(entry[1], PayloadTooLarge):
                assert (entry[1] is FrameTooLarge) == (limit < MAX_PAYLOAD)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    declared=st.integers(1, MAX_PAYLOAD),
    sizes=st.lists(st.integers(1, 20_000), min_size=1, max_size=12),
)
def test_decoder_never_reserves_what_has_not_arrived(
    compiled: ModuleType, declared: int, sizes: list[int]
) -> None:
    wire_header = ((1 << 13) | 0x101).to_bytes(2, "big") + b"\x00\x00" + declared.to_bytes(4, "big")
    for codec in (compiled, PURE):
        decoder = codec.FrameDecoder()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            assert decoder.feed(wire_header) == []
            fed = 0
            for size in sizes:
                size = min(size, declared - 1 - fed)
                if size <= 0:
                    break
                assert decoder.feed(b"x" * size) == []
                fed += size
                held = tracemalloc.get_traced_memory()[0] - base
                # what arrived, at most doubled by growth, plus a small first block
                assert held <= 2 * fed + 4096 + 32 * 1024, (codec.__name__, declared, fed, held)
            assert decoder.pending == HEADER_SIZE + fed
        finally:
            tracemalloc.stop()
