"""Stream ids (wire.md 6.1): unique, non-zero, 16 lowercase hex digits."""

from __future__ import annotations

import threading

import pytest

from outrelay.resume import (
    InvalidStreamId,
    ResumeError,
    format_stream_id,
    new_stream_id,
    parse_stream_id,
)


def test_consecutive_ids_distinct_and_non_zero() -> None:
    ids = [new_stream_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(0 < i < 2**64 for i in ids)
    assert all(type(i) is int for i in ids)


def test_ids_use_the_whole_width() -> None:
    ids = [new_stream_id() for _ in range(200)]
    assert any(i >= 2**63 for i in ids)
    assert any(i < 2**63 for i in ids)


def test_ids_distinct_across_threads() -> None:
    results: list[list[int]] = [[] for _ in range(4)]

    def work(out: list[int]) -> None:
        out.extend(new_stream_id() for _ in range(500))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = [i for out in results for i in out]
    assert len(set(merged)) == 2000


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0000000000000000"), (0xFF, "00000000000000ff"), (2**64 - 1, "ffffffffffffffff"),
     (0x0123456789ABCDEF, "0123456789abcdef")],
)  # fmt: skip
def test_format_parse(value: int, text: str) -> None:
    assert format_stream_id(value) == text
    assert parse_stream_id(text) == value


def test_round_trip_generated() -> None:
    for _ in range(1000):
        i = new_stream_id()
        text = format_stream_id(i)
        assert len(text) == 16
        assert text == text.lower()
        assert parse_stream_id(text) == i


@pytest.mark.parametrize(
    "text",
    ["", "ff", "00000000000000ff0", "000000000000000", "00000000000000FF", "0x000000000000ff",
     " 00000000000000f", "00000000000000f ", "+000000000000000", "-000000000000001",
     "0000_00000000000", "000000000000000g", "０００００００００００００００ff"],
)  # fmt: skip
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidStreamId) as info:
        parse_stream_id(text)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ResumeError)
    assert repr(text) in str(info.value)


def test_parse_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        parse_stream_id(b"00000000000000ff")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, 2**64, 2**70])
def test_format_rejects_out_of_range(value: int) -> None:
    with pytest.raises(InvalidStreamId):
        format_stream_id(value)


def test_format_rejects_non_int() -> None:
    with pytest.raises(TypeError):
        format_stream_id(1.0)  # type: ignore[arg-type]
