"""Random event sequences: both FSM twins must match a naive model exactly."""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outrelay.orp import _fsm_py
from outrelay.orp.types import StreamEvent, StreamState

pytestmark = pytest.mark.dataplane

NAMES = ["Init", "Opening", "Accepted", "Spliced", "Closing", "Closed"]
EVENTS = ["Open", "Accept", "Splice", "Fin", "Reset"]
# (state, event) -> next state, as plain ints straight from the wire.md 5 table
MODEL = {
    (0, 0): 1, (0, 4): 5,
    (1, 1): 2, (1, 3): 4, (1, 4): 5,
    (2, 2): 3, (2, 3): 4, (2, 4): 5,
    (3, 3): 4, (3, 4): 5,
    (4, 3): 5, (4, 4): 5,
    (5, 4): 5,
}  # fmt: skip


def twins() -> list[Any]:
    mods: list[Any] = [_fsm_py]
    if not os.environ.get("OUTRELAY_NO_EXTENSIONS"):
        try:
            mods.append(importlib.import_module("outrelay._fast._fsm"))
        except ImportError:
            if os.environ.get("OUTRELAY_REQUIRE_EXTENSIONS"):
                raise
    return mods


events = st.one_of(
    st.sampled_from(list(StreamEvent)),
    st.integers(min_value=-3, max_value=8),
    st.sampled_from([2**31, 2**63, -(2**64)]),
)


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # the type and text are what we compare
        return (type(exc).__name__, str(exc))


@settings(max_examples=300, deadline=None)
@given(seq=st.lists(events, max_size=30))
def test_twins_match_model(seq: list[int]) -> None:
    machines = [mod.StreamFSM() for mod in twins()]
    state = 0
    for event in seq:
        nxt = MODEL.get((state, int(event)))
        if nxt is None:
            name = EVENTS[event] if 0 <= event < len(EVENTS) else f"Unknown({int(event)})"
            expected: tuple[str, Any] = (
                "InvalidTransition",
                f"orp: invalid transition {NAMES[state]} --{name}--> ?",
            )
        else:
            state = nxt
            expected = ("ok", StreamState(state))
        for m in machines:
            got = outcome(m.apply, event)
            assert got == expected
            assert got[0] != "ok" or got[1] is StreamState(state)
            assert m.state is StreamState(state)
            assert m.closed == (state == StreamState.CLOSED)
