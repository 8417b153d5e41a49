"""Stream FSM, pure-Python twin of ``outrelay._fast._fsm`` (wire.md 5).

How this works: the legal transitions are the table ``TRANSITIONS``, one
row per state and one column per event, ``None`` (``_x``) marking an illegal
cell. ``StreamFSM.apply`` is the only code that moves the state: it looks the
cell up, raises ``InvalidTransition`` on ``None`` and otherwise stores the
new state. Reset is legal everywhere (Closed --Reset--> Closed included).
The FSM is purely in memory and single-threaded: the caller serialises.
"""

from __future__ import annotations

import operator
from typing import NoReturn, SupportsIndex

from outrelay.orp.errors import InvalidTransition, not_copyable
from outrelay.orp.types import StreamEvent, StreamState

_S = StreamState
_x = None  # an illegal cell

#: TRANSITIONS[state][event] -> next state, or None when illegal.
# fmt: off
TRANSITIONS: tuple[tuple[StreamState | None, ...], ...] = (
    # Open       Accept        Splice       Fin          Reset
    (_S.OPENING, _x,          _x,          _x,          _S.CLOSED),  # Init
    (_x,         _S.ACCEPTED, _x,          _S.CLOSING,  _S.CLOSED),  # Opening
    (_x,         _x,          _S.SPLICED,  _S.CLOSING,  _S.CLOSED),  # Accepted
    (_x,         _x,          _x,          _S.CLOSING,  _S.CLOSED),  # Spliced
    (_x,         _x,          _x,          _S.CLOSED,   _S.CLOSED),  # Closing
    (_x,         _x,          _x,          _x,          _S.CLOSED),  # Closed
)
# fmt: on

_N_EVENTS = len(StreamEvent)


def _event_name(event: int) -> str:
    if 0 <= event < _N_EVENTS:
        return str(StreamEvent(event))
    return f"Unknown({event})"


class StreamFSM:
    """The lifecycle of one stream; starts in ``StreamState.INIT``."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = StreamState.INIT

    @property
    def state(self) -> StreamState:
        """The current state."""
        return self._state

    @property
    def closed(self) -> bool:
        """True once the stream reached ``StreamState.CLOSED``."""
        return self._state is StreamState.CLOSED

    def apply(self, event: SupportsIndex) -> StreamState:
        """Apply ``event`` (a ``StreamEvent`` or its int value); return the new state.

        Raises ``InvalidTransition`` (state unchanged) when the event is not
        legal in the current state or is not a known event; ``TypeError``
        when ``event`` is not an integer.
        """
        ev = operator.index(event)
        nxt = TRANSITIONS[self._state][ev] if 0 <= ev < _N_EVENTS else None
        if nxt is None:
            raise InvalidTransition(
                f"orp: invalid transition {self._state} --{_event_name(ev)}--> ?"
            )
        self._state = nxt
        return nxt

    def __repr__(self) -> str:
        return f"<StreamFSM {self._state}>"

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        """Refuse pickling and copying (TypeError), as the compiled twin does."""
        raise not_copyable("StreamFSM")
