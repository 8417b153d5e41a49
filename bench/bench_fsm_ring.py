"""Stream FSM and resume ring benchmarks, compiled and pure side by side."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from outrelay.orp.types import StreamEvent

KIB = 1024
CYCLE = (StreamEvent.OPEN, StreamEvent.ACCEPT, StreamEvent.SPLICE, StreamEvent.FIN, StreamEvent.FIN)


@pytest.mark.benchmark(group="fsm-cycle")
def bench_fsm_cycle(benchmark: Any, fsm: ModuleType) -> None:
    """A new FSM through Init -> Opening -> Accepted -> Spliced -> Closing -> Closed."""
    make = fsm.StreamFSM
    open_, accept, splice, fin, _ = CYCLE

    def cycle() -> Any:
        m = make()
        m.apply(open_)
        m.apply(accept)
        m.apply(splice)
        m.apply(fin)
        return m.apply(fin)

    assert benchmark(cycle) == 5


#: Write sizes of one batch: 1 KiB to 16 KiB, 256 KiB in all.
WRITE_SIZES = [1, 4, 16, 2, 8, 1, 16, 12, 3, 16, 7, 16, 1, 5, 16, 4] * 2
WRITE_SIZES = [s * KIB for s in WRITE_SIZES]


@pytest.mark.benchmark(group="ring-write-discard")
def bench_ring_write_discard(benchmark: Any, ring: ModuleType) -> None:
    """32 writes (1-16 KiB) into an adaptive ring, the peer acking every 4 writes.

    The ack lags 48 KiB behind head, so the ring wraps, grows past its
    64 KiB start and settles; every call is one batch on the same ring.
    """
    r = ring.RingBuffer.adaptive()
    chunks = [memoryview(bytes(range(256)) * (s // 256)) for s in WRITE_SIZES]

    def batch() -> int:
        write, discard = r.write, r.discard
        for i, chunk in enumerate(chunks):
            write(chunk)
            if i % 4 == 3:
                discard(r.head - 48 * KIB)
        return r.head

    benchmark(batch)
    assert r.bytes_from(r.head - len(chunks[-1])) == bytes(chunks[-1])


#: Read sizes of one batch, each range crossing the end of the ring's storage.
READ_SIZES = [64 * KIB, 16 * KIB, 4 * KIB, 2 * KIB]


@pytest.mark.benchmark(group="ring-bytes-from")
def bench_ring_bytes_from(benchmark: Any, ring: ModuleType) -> None:
    """Re-send after a resume: the newest 64, 16, 4 and 2 KiB, read across the wrap point."""
    cap = 256 * KIB
    r = ring.RingBuffer(cap)
    r.write(bytes(range(256)) * (cap // 256))  # fills storage from index 0
    r.write(b"\xaa" * 512)  # wraps: the newest 512 bytes sit at the front of storage
    positions = [r.head - size for size in READ_SIZES]

    def batch() -> int:
        read = r.bytes_from
        return sum(len(read(p)) for p in positions)

    assert benchmark(batch) == sum(READ_SIZES)
    assert r.bytes_from(r.head - 1024) == bytes(range(256)) * 2 + b"\xaa" * 512
