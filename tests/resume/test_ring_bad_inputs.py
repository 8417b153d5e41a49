"""The ring twins raise the same exceptions with the same words on bad input (issue 12, 8).

Hypothesis feeds both twins wrong types, negative and huge sizes, bad
positions, None and odd buffers, and compares what each returns or raises:
type *and* message. What stays the interpreter's own (a wrong number of
arguments, setting a read-only attribute) is outside: those name the class
differently (``outrelay._fast._ring.RingBuffer``) and are not argument values.
"""

from __future__ import annotations

import array
import copy
import pickle
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import compiled_twin, load_twin

pytestmark = pytest.mark.dataplane

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PURE = load_twin("ring", "pure")


@pytest.fixture(scope="module")
def compiled() -> ModuleType:
    module = compiled_twin("ring")
    if module is None:
        pytest.skip("compiled ring not built")
    return module


class Index:
    """An integer-like object (``operator.index`` works)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Index({self.value})"


class BadIndex:
    """``__index__`` returns a non-int."""

    def __index__(self) -> Any:
        return "seven"


class FailingIndex:
    """``__index__`` raises."""

    def __index__(self) -> int:
        raise ValueError("index failed")


#: Edges of a C ssize_t and of the ring's defaults.
EDGES = [
    0, -1, 1, sys.maxsize, sys.maxsize + 1, -sys.maxsize - 1, -sys.maxsize - 2,
    2**63, 2**64, -(2**64), 16 * 1024 * 1024, 64 * 1024,
]  # fmt: skip

values = st.one_of(
    st.integers(-80, 80),
    st.sampled_from(EDGES),
    st.integers(-(2**100), 2**100),
    st.integers(-(2**100), 2**100).map(Index),
    st.sampled_from([None, True, False, 1.5, float("nan"), 1j, "7", b"7", [7], (), BadIndex()]),
    st.just(FailingIndex()),
)


def non_contiguous(data: bytes) -> memoryview:
    return memoryview(data + data)[::2]


def two_d(data: bytes) -> memoryview:
    n = len(data) - len(data) % 2
    return memoryview(data[:n]).cast("B", (2, n // 2)) if n else memoryview(b"")


buffers = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=40).map(bytearray),
    st.binary(max_size=40).map(memoryview),
    st.binary(min_size=2, max_size=40).map(non_contiguous),
    st.binary(max_size=40).map(two_d),
    st.lists(st.integers(-(2**31), 2**31 - 1), max_size=5).map(lambda v: array.array("i", v)),
    st.sampled_from([None, 0, 7, "text", [1, 2], object(), 1.5]),
)


def state(ring: Any) -> tuple[int, ...]:
    return (ring.capacity, ring.min_capacity, ring.max_capacity, ring.head, ring.tail, len(ring))


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", a comparable result) or (exception type name, message)."""
    try:
        result = fn()
    except Exception as exc:  # the type and the words are what is compared
        return (type(exc).__name__, str(exc))
    if hasattr(result, "capacity"):
        return ("ok", state(result))
    return ("ok", result)


def both(compiled: ModuleType, op: Callable[[ModuleType], Any]) -> tuple[str, Any]:
    got = outcome(lambda: op(compiled))
    assert got == outcome(lambda: op(PURE))
    return got


def filled(module: ModuleType) -> Any:
    ring = module.RingBuffer(16)
    ring.write(bytes(range(40)))  # tail 24, head 40
    return ring


@SETTINGS
@given(value=values)
def test_constructor_and_adaptive_agree(compiled: ModuleType, value: object) -> None:
    both(compiled, lambda m: m.RingBuffer(value))
    both(compiled, lambda m: m.RingBuffer(capacity=value))
    both(compiled, lambda m: m.RingBuffer.adaptive(value))
    both(compiled, lambda m: m.RingBuffer.adaptive(8, value))
    both(compiled, lambda m: m.RingBuffer.adaptive(max_capacity=value))


@SETTINGS
@given(lo=values, hi=values)
def test_adaptive_pairs_agree(compiled: ModuleType, lo: object, hi: object) -> None:
    both(compiled, lambda m: m.RingBuffer.adaptive(lo, hi))


@SETTINGS
@given(value=values)
def test_positions_agree(compiled: ModuleType, value: object) -> None:
    both(compiled, lambda m: filled(m).bytes_from(value))
    both(compiled, lambda m: m.RingBuffer(16).bytes_from(value))

    def discard(m: ModuleType, ring: Any) -> tuple[int, ...]:
        ring.discard(value)
        return state(ring)

    both(compiled, lambda m: discard(m, filled(m)))
    both(compiled, lambda m: discard(m, m.RingBuffer.adaptive(4, 64)))


@SETTINGS
@given(data=buffers)
def test_writes_agree(compiled: ModuleType, data: object) -> None:
    def write(m: ModuleType) -> tuple[object, ...]:
        ring = m.RingBuffer(16)
        ring.write(b"abc")
        n = ring.write(data)
        return (n, ring.bytes_from(ring.tail), state(ring))

    kind, result = both(compiled, write)
    if kind != "ok":  # a refused write leaves the ring as it was
        for m in (compiled, PURE):
            ring = m.RingBuffer(16)
            ring.write(b"abc")
            with pytest.raises(Exception):  # noqa: B017, PT011 - the kind was compared above
                ring.write(data)
            assert state(ring) == (16, 16, 16, 3, 0, 3)


RANGE = "out of range (-9223372036854775808..9223372036854775807)"
NO_COPY = "ring: a RingBuffer cannot be pickled or copied"
NOT_BYTES = "a bytes-like object is required, not '{}'"
NOT_INT = "'{}' object cannot be interpreted as an integer"
NOT_FLAT = "ring: data must be a C-contiguous buffer"


def ring16(m: ModuleType) -> Any:
    return m.RingBuffer(16)


#: (operation, exception, its exact message) as both twins raise them.
MESSAGES: list[tuple[Callable[[ModuleType], Any], type[Exception], str]] = [
    (lambda m: m.RingBuffer(2**63), OverflowError, f"ring: capacity {2**63} {RANGE}"),
    (lambda m: m.RingBuffer.adaptive(1, -(2**64)),
     OverflowError, f"ring: capacity {-(2**64)} {RANGE}"),
    (lambda m: ring16(m).write(None), TypeError, NOT_BYTES.format("NoneType")),
    (lambda m: ring16(m).write("text"), TypeError, NOT_BYTES.format("str")),
    (lambda m: ring16(m).write(non_contiguous(b"ab")), BufferError, NOT_FLAT),
    (lambda m: m.RingBuffer(1.5), TypeError, NOT_INT.format("float")),
    (lambda m: ring16(m).bytes_from(None), TypeError, NOT_INT.format("NoneType")),
    (lambda m: ring16(m).discard("1"), TypeError, NOT_INT.format("str")),
    (lambda m: pickle.dumps(ring16(m)), TypeError, NO_COPY),
    (lambda m: copy.copy(ring16(m)), TypeError, NO_COPY),
    (lambda m: copy.deepcopy(ring16(m)), TypeError, NO_COPY),
]  # fmt: skip


@pytest.mark.parametrize(("op", "error", "message"), MESSAGES)
def test_ring_messages_are_the_same_words(
    impl: str, op: Callable[[ModuleType], Any], error: type[Exception], message: str
) -> None:
    module = load_twin("ring", impl)
    with pytest.raises(error) as info:
        op(module)
    assert type(info.value) is error and str(info.value) == message
