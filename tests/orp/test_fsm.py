"""The stream FSM against the transition matrix of wire.md 5, both twins."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from outrelay.orp.errors import InvalidTransition, OrpError
from outrelay.orp.types import StreamEvent, StreamState

pytestmark = pytest.mark.dataplane

S, E = StreamState, StreamEvent

#: The matrix of wire.md 5, written out independently of the implementations.
LEGAL: dict[tuple[StreamState, StreamEvent], StreamState] = {
    (S.INIT, E.OPEN): S.OPENING,
    (S.INIT, E.RESET): S.CLOSED,
    (S.OPENING, E.ACCEPT): S.ACCEPTED,
    (S.OPENING, E.FIN): S.CLOSING,
    (S.OPENING, E.RESET): S.CLOSED,
    (S.ACCEPTED, E.SPLICE): S.SPLICED,
    (S.ACCEPTED, E.FIN): S.CLOSING,
    (S.ACCEPTED, E.RESET): S.CLOSED,
    (S.SPLICED, E.FIN): S.CLOSING,
    (S.SPLICED, E.RESET): S.CLOSED,
    (S.CLOSING, E.FIN): S.CLOSED,
    (S.CLOSING, E.RESET): S.CLOSED,
    (S.CLOSED, E.RESET): S.CLOSED,
}

# Two dicts: IntEnum members of equal value compare (and hash) equal.
STATE_NAMES = {
    S.INIT: "Init",
    S.OPENING: "Opening",
    S.ACCEPTED: "Accepted",
    S.SPLICED: "Spliced",
    S.CLOSING: "Closing",
    S.CLOSED: "Closed",
}
EVENT_NAMES = {
    E.OPEN: "Open",
    E.ACCEPT: "Accept",
    E.SPLICE: "Splice",
    E.FIN: "Fin",
    E.RESET: "Reset",
}

#: The shortest event path from Init to each state.
PATH: dict[StreamState, list[StreamEvent]] = {
    S.INIT: [],
    S.OPENING: [E.OPEN],
    S.ACCEPTED: [E.OPEN, E.ACCEPT],
    S.SPLICED: [E.OPEN, E.ACCEPT, E.SPLICE],
    S.CLOSING: [E.OPEN, E.FIN],
    S.CLOSED: [E.RESET],
}


def at(fsm: ModuleType, state: StreamState) -> Any:
    machine = fsm.StreamFSM()
    for event in PATH[state]:
        machine.apply(event)
    assert machine.state is state
    return machine


def test_starts_in_init(fsm: ModuleType) -> None:
    machine = fsm.StreamFSM()
    assert machine.state is S.INIT
    assert not machine.closed


@pytest.mark.parametrize("state", list(S), ids=str)
@pytest.mark.parametrize("event", list(E), ids=str)
def test_matrix_cell(fsm: ModuleType, state: StreamState, event: StreamEvent) -> None:
    machine = at(fsm, state)
    expected = LEGAL.get((state, event))
    if expected is None:
        with pytest.raises(InvalidTransition) as info:
            machine.apply(event)
        assert str(info.value) == (
            f"orp: invalid transition {STATE_NAMES[state]} --{EVENT_NAMES[event]}--> ?"
        )
        assert machine.state is state
    else:
        result = machine.apply(event)
        assert result is expected
        assert machine.state is expected
        assert machine.closed == (expected is S.CLOSED)


@pytest.mark.parametrize("state", list(S), ids=str)
def test_plain_int_events(fsm: ModuleType, state: StreamState) -> None:
    for event in E:
        machine = at(fsm, state)
        expected = LEGAL.get((state, event))
        if expected is None:
            with pytest.raises(InvalidTransition):
                machine.apply(int(event))
        else:
            assert machine.apply(int(event)) is expected


@pytest.mark.parametrize("value", [-1, 5, 6, 255, 2**31, 2**63, 2**80, -(2**80)])
def test_unknown_event(fsm: ModuleType, value: int) -> None:
    machine = at(fsm, S.OPENING)
    with pytest.raises(InvalidTransition) as info:
        machine.apply(value)
    assert str(info.value) == f"orp: invalid transition Opening --Unknown({value})--> ?"
    assert isinstance(info.value, OrpError)
    assert machine.state is S.OPENING


@pytest.mark.parametrize("value", [1.0, "1", None, b"\x01"])
def test_non_integer_event(fsm: ModuleType, value: object) -> None:
    machine = fsm.StreamFSM()
    with pytest.raises(TypeError):
        machine.apply(value)
    assert machine.state is S.INIT


def test_full_lifecycle(fsm: ModuleType) -> None:
    machine = fsm.StreamFSM()
    seen = [machine.apply(e) for e in (E.OPEN, E.ACCEPT, E.SPLICE, E.FIN, E.FIN)]
    assert seen == [S.OPENING, S.ACCEPTED, S.SPLICED, S.CLOSING, S.CLOSED]
    assert machine.closed
    assert machine.apply(E.RESET) is S.CLOSED
    with pytest.raises(InvalidTransition, match=r"^orp: invalid transition Closed --Fin--> \?$"):
        machine.apply(E.FIN)


def test_two_fins_from_spliced(fsm: ModuleType) -> None:
    machine = at(fsm, S.SPLICED)
    assert machine.apply(E.FIN) is S.CLOSING
    assert not machine.closed
    assert machine.apply(E.FIN) is S.CLOSED
    assert machine.closed


def test_shortcuts_skip_states(fsm: ModuleType) -> None:
    assert at(fsm, S.OPENING).apply(E.FIN) is S.CLOSING
    assert at(fsm, S.ACCEPTED).apply(E.FIN) is S.CLOSING


def test_machines_are_independent(fsm: ModuleType) -> None:
    a, b = fsm.StreamFSM(), fsm.StreamFSM()
    a.apply(E.OPEN)
    assert b.state is S.INIT
