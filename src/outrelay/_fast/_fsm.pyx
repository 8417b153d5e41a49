# cython: language_level=3, boundscheck=False, wraparound=False
"""Stream FSM, compiled twin of ``outrelay.orp._fsm_py`` (wire.md 5).

How this works: ``_TABLE[state][event]`` holds the next state, or -1 when
the event is illegal in that state; it is the same table as
``_fsm_py.TRANSITIONS``. ``StreamFSM.apply`` is the only code that moves
the state. The state is a C int; the ``StreamState`` members are handed
out from a tuple so that no enum lookup happens on the hot path.
"""

from cpython.long cimport PyLong_AsLongAndOverflow
from cpython.number cimport PyNumber_Index

from outrelay.orp.errors import InvalidTransition, not_copyable
from outrelay.orp.types import StreamEvent, StreamState

cdef enum:
    N_STATES = 6
    N_EVENTS = 5
    CLOSED = 5

# Init=0 Opening=1 Accepted=2 Spliced=3 Closing=4 Closed=5; -1 = illegal.
cdef signed char _TABLE[N_STATES][N_EVENTS]
_TABLE[:] = [
    # Open  Accept  Splice  Fin  Reset
    [1,     -1,     -1,     -1,  5],   # Init
    [-1,    2,      -1,     4,   5],   # Opening
    [-1,    -1,     3,      4,   5],   # Accepted
    [-1,    -1,     -1,     4,   5],   # Spliced
    [-1,    -1,     -1,     5,   5],   # Closing
    [-1,    -1,     -1,     -1,  5],   # Closed
]

cdef tuple _STATES = tuple(StreamState(i) for i in range(N_STATES))
cdef tuple _EVENT_NAMES = tuple(str(StreamEvent(i)) for i in range(N_EVENTS))


cdef str _event_name(object event):
    event = PyNumber_Index(event)  # exact int, as operator.index in the twin
    if 0 <= event < N_EVENTS:
        return <str>_EVENT_NAMES[event]
    return f"Unknown({event})"


cdef class StreamFSM:
    """The lifecycle of one stream; starts in ``StreamState.INIT``."""

    def __init__(self):
        # an __init__ (not __cinit__, which would ignore them) refuses arguments
        self._state = 0

    @property
    def state(self):
        """The current state."""
        return _STATES[self._state]

    @property
    def closed(self):
        """True once the stream reached ``StreamState.CLOSED``."""
        return self._state == CLOSED

    def apply(self, event):
        """Apply ``event`` (a ``StreamEvent`` or its int value); return the new state.

        Raises ``InvalidTransition`` (state unchanged) when the event is not
        legal in the current state or is not a known event; ``TypeError``
        when ``event`` is not an integer.
        """
        cdef int overflow = 0
        cdef long ev
        cdef int nxt = -1
        if not isinstance(event, int):
            event = PyNumber_Index(event)
        ev = PyLong_AsLongAndOverflow(event, &overflow)
        if overflow == 0 and 0 <= ev < N_EVENTS:
            nxt = _TABLE[self._state][ev]
        if nxt < 0:
            raise InvalidTransition(
                f"orp: invalid transition {_STATES[self._state]} --{_event_name(event)}--> ?"
            )
        self._state = nxt
        return _STATES[nxt]

    def __repr__(self):
        return f"<StreamFSM {_STATES[self._state]}>"

    def __reduce_ex__(self, protocol):
        """Refuse pickling and copying (TypeError), as the pure twin does."""
        raise not_copyable("StreamFSM")
