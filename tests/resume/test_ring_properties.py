"""Random operation sequences: both ring twins must match a naive model exactly."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import outcome, twins
from outrelay.resume.errors import PositionEvicted

pytestmark = pytest.mark.dataplane


class Model:
    """wire.md 6.2 written as plainly as possible: the whole history is kept."""

    def __init__(self, cap: int, lo: int, hi: int) -> None:
        self.history = bytearray()
        self.tail = 0
        self.capacity, self.min_capacity, self.max_capacity = cap, lo, hi

    @property
    def head(self) -> int:
        return len(self.history)

    def __len__(self) -> int:
        return self.head - self.tail

    def write(self, p: bytes) -> int:
        length, n = len(self), len(p)
        self.history += p
        if self.max_capacity > self.capacity and length + n > self.capacity:
            self.capacity = min(max(2 * self.capacity, length + n), self.max_capacity)
        self.tail = self.head - min(length + n, self.capacity)
        return n

    def bytes_from(self, pos: int) -> bytes:
        if pos < self.tail:
            raise PositionEvicted(f"resume: position {pos} evicted from ring (tail {self.tail})")
        return bytes(self.history[pos:]) if pos < self.head else b""

    def discard(self, before: int) -> None:
        if before <= self.tail:
            return
        self.tail = min(before, self.head)
        cap = self.capacity
        if cap > self.min_capacity and 4 * len(self) < cap:
            new_cap = max(cap // 2, self.min_capacity, len(self))
            if new_cap < cap:
                self.capacity = new_cap


capacities = st.integers(min_value=-2, max_value=80)
anchors = st.sampled_from(["head", "tail", "zero"])
deltas = st.one_of(
    st.integers(min_value=-70, max_value=70),
    st.sampled_from([2**63, -(2**63), 2**64, -(2**70), 2**63 - 1]),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 200), st.integers(0, 255)),
        st.tuples(st.just("bytes_from"), anchors, deltas),
        st.tuples(st.just("discard"), anchors, deltas),
    ),
    max_size=60,
)
constructors = st.one_of(
    st.tuples(st.just("fixed"), st.integers(1, 80), st.just(0)),
    st.tuples(st.just("adaptive"), capacities, capacities),
)


def build(mod: Any, kind: str, a: int, b: int) -> Any:
    return mod.RingBuffer(a) if kind == "fixed" else mod.RingBuffer.adaptive(a, b)


def build_model(kind: str, a: int, b: int) -> Model:
    # small bounds only (the defaults would make the model's arithmetic the same anyway)
    if kind == "fixed":
        return Model(a, a, a)
    lo = a if a > 0 else 64 * 1024
    hi = b if b > 0 else 16 * 1024 * 1024
    lo = min(lo, hi)
    return Model(lo, lo, hi)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ctor=constructors, ops=operations)
def test_twins_match_model(ctor: tuple[str, int, int], ops: list[tuple[str, Any, Any]]) -> None:
    model = build_model(*ctor)
    rings = [build(mod, *ctor) for mod in twins("ring")]
    for op, x, y in ops:
        if op == "write":
            payload = bytes((y + i) & 0xFF for i in range(x))
            expected = outcome(model.write, payload)
            results = [outcome(r.write, payload) for r in rings]
        else:
            base = {"head": model.head, "tail": model.tail, "zero": 0}[x]
            expected = outcome(getattr(model, op), base + y)
            results = [outcome(getattr(r, op), base + y) for r in rings]
        assert results == [expected] * len(rings), (op, x, y)
        state = (model.head, model.tail, len(model), model.capacity)
        for r in rings:
            assert (r.head, r.tail, len(r), r.capacity) == state
            assert (r.min_capacity, r.max_capacity) == (model.min_capacity, model.max_capacity)
            storage = getattr(r, "_buf", None)  # pure twin only: C fields are hidden
            if storage is not None:
                assert len(r) <= len(storage) <= r.capacity
    for r in rings:
        assert r.bytes_from(r.tail) == bytes(model.history[model.tail :])
