"""Which (consumer, provider) owns a stream id (relay.md §7 step 5, §12).

The consumer picks the 64-bit stream id. The relay records the pair from the
moment INCOMING_STREAM goes to the provider until the OPEN_STREAM flow ends;
a second OPEN_STREAM with the same id but another (consumer, provider) is a
collision (409). Id 0 is never recorded: it always succeeds and routes
nothing. The same pair twice is accepted; unlike the reference (where the
first flow to end deletes the entry) the entry is counted and lives until
the last of those flows ends. A resumed stream (``resume.py``) records its
two agents too, so its checkpoints and candidates stay routable (the
reference records none for resumed streams).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pair:
    """The two agents of a spliced stream."""

    #: URI of the agent that sent OPEN_STREAM.
    consumer: str
    #: URI of the agent that got INCOMING_STREAM.
    provider: str

    def peer_of(self, uri: str) -> str | None:
        """The other end for ``uri``, or None when ``uri`` is neither end."""
        if uri == self.consumer:
            return self.provider
        if uri == self.provider:
            return self.consumer
        return None


class PairTable:
    """stream id -> :class:`Pair`, with collision detection."""

    def __init__(self) -> None:
        self._pairs: dict[int, tuple[Pair, int]] = {}

    def __len__(self) -> int:
        return len(self._pairs)

    def record(self, stream_id: int, consumer: str, provider: str) -> bool:
        """Record ``stream_id`` for the pair; False if another pair holds it."""
        if stream_id == 0:
            return True
        pair = Pair(consumer, provider)
        held = self._pairs.get(stream_id)
        if held is None:
            self._pairs[stream_id] = (pair, 1)
            return True
        if held[0] != pair:
            return False
        self._pairs[stream_id] = (pair, held[1] + 1)
        return True

    def forget(self, stream_id: int) -> None:
        """Drop one recording of ``stream_id`` (the entry goes with the last)."""
        held = self._pairs.get(stream_id)
        if held is None:
            return
        if held[1] <= 1:
            del self._pairs[stream_id]
        else:
            self._pairs[stream_id] = (held[0], held[1] - 1)

    def get(self, stream_id: int) -> Pair | None:
        """The pair holding ``stream_id``, or None."""
        held = self._pairs.get(stream_id)
        return None if held is None else held[0]
