"""Random event sequences: both FSM twins must match a naive model exactly."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import outcome, twins
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


events = st.one_of(
    st.sampled_from(list(StreamEvent)),
    st.integers(min_value=-3, max_value=8),
    st.sampled_from([2**31, 2**63, -(2**64)]),
)


@settings(max_examples=300, deadline=None)
@given(seq=st.lists(events, max_size=30))
def test_twins_match_model(seq: list[int]) -> None:
    machines = [mod.StreamFSM() for mod in twins("fsm")]
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
