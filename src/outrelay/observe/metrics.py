"""Counters, gauges and histograms in one registry (operations.md §2).

Metrics are created on first use and shared by name; each kind has its own
namespace, and a histogram's bounds are fixed by its first registration.
Everything is thread-safe. ``Registry.snapshot()`` gives the reference's
snapshot object (``ts_unix_ms``, ``counters``, ``gauges``, ``histograms``),
which ``/debug/metrics`` and the JSONL dumper encode compactly.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

#: Default histogram bucket bounds in ns: 1 µs … 10 s, one per decade.
DEFAULT_BOUNDS_NS: tuple[int, ...] = tuple(10**e for e in range(3, 11))


class Counter:
    """A monotonically increasing int64 (``add`` accepts negatives, as the reference)."""

    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def inc(self) -> None:
        """Add one."""
        self.add(1)

    def add(self, n: int) -> None:
        """Add ``n``."""
        with self._lock:
            self._value += n

    @property
    def value(self) -> int:
        """Current value."""
        return self._value


class Gauge:
    """An int64 that goes up and down."""

    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def set(self, value: int) -> None:
        """Set the value."""
        self._value = value

    def inc(self) -> None:
        """Add one."""
        with self._lock:
            self._value += 1

    def dec(self) -> None:
        """Subtract one."""
        with self._lock:
            self._value -= 1

    @property
    def value(self) -> int:
        """Current value."""
        return self._value


class Histogram:
    """Duration samples in ns: "≤ bound" buckets, one overflow bucket, sum and count."""

    __slots__ = ("_lock", "bounds_ns", "counts", "sum_ns", "n")

    def __init__(self, bounds_ns: Sequence[int] = DEFAULT_BOUNDS_NS) -> None:
        if list(bounds_ns) != sorted(set(bounds_ns)) or not bounds_ns:
            raise ValueError("histogram bounds must be non-empty and strictly increasing")
        self._lock = threading.Lock()
        self.bounds_ns: tuple[int, ...] = tuple(bounds_ns)
        self.counts = [0] * (len(self.bounds_ns) + 1)
        self.sum_ns = 0
        self.n = 0

    def observe_ns(self, d_ns: int) -> None:
        """Record one duration in ns."""
        at = bisect.bisect_left(self.bounds_ns, d_ns)
        with self._lock:
            self.counts[at] += 1
            self.sum_ns += d_ns
            self.n += 1

    def observe(self, seconds: float) -> None:
        """Record one duration in seconds."""
        self.observe_ns(int(seconds * 1e9))

    @contextmanager
    def time(self) -> Iterator[None]:
        """Record the duration of the ``with`` block."""
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            self.observe_ns(time.perf_counter_ns() - start)

    def quantile(self, q: float) -> int:
        """Upper bound (ns) of the bucket holding quantile ``q`` (operations.md §2.1).

        0 unless ``0 < q < 1`` and there are samples; in the overflow bucket
        the mean of all samples is returned.
        """
        with self._lock:
            counts, n, total = list(self.counts), self.n, self.sum_ns
        if not 0 < q < 1 or n == 0:
            return 0
        target = int(n * q)
        seen = 0
        for i, count in enumerate(counts):
            seen += count
            if seen >= target:
                if i < len(self.bounds_ns):
                    return self.bounds_ns[i]
                return total // n if count else self.bounds_ns[-1]
        return self.bounds_ns[-1]

    def snapshot(self) -> dict[str, Any]:
        """``{"bounds_ns", "counts", "sum_ns", "n"}`` in that key order."""
        with self._lock:
            return {
                "bounds_ns": list(self.bounds_ns),
                "counts": list(self.counts),
                "sum_ns": self.sum_ns,
                "n": self.n,
            }


class Registry:
    """Named metrics, get-or-create, one namespace per kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._histograms: dict[str, Histogram] = {}

    def counter(self, name: str) -> Counter:
        """The counter called ``name``, created at 0 if new."""
        with self._lock:
            if name not in self._counters:
                self._counters[name] = Counter()
            return self._counters[name]

    def gauge(self, name: str) -> Gauge:
        """The gauge called ``name``, created at 0 if new."""
        with self._lock:
            if name not in self._gauges:
                self._gauges[name] = Gauge()
            return self._gauges[name]

    def histogram(self, name: str, bounds_ns: Sequence[int] = DEFAULT_BOUNDS_NS) -> Histogram:
        """The histogram called ``name``; ``bounds_ns`` only counts the first time.

        Raises ValueError for bounds that are empty or not strictly increasing.
        """
        with self._lock:
            if name not in self._histograms:
                self._histograms[name] = Histogram(bounds_ns)
            return self._histograms[name]

    def snapshot(self, now_ms: int | None = None) -> dict[str, Any]:
        """The snapshot object of operations.md §2.3, maps sorted by name."""
        with self._lock:
            counters = sorted(self._counters.items())
            gauges = sorted(self._gauges.items())
            histograms = sorted(self._histograms.items())
        return {
            "ts_unix_ms": time.time_ns() // 1_000_000 if now_ms is None else now_ms,
            "counters": {name: c.value for name, c in counters},
            "gauges": {name: g.value for name, g in gauges},
            "histograms": {name: h.snapshot() for name, h in histograms},
        }

    def snapshot_json(self, now_ms: int | None = None) -> str:
        """The snapshot encoded compactly, like Go's encoder, plus ``\\n``."""
        text = json.dumps(self.snapshot(now_ms), separators=(",", ":"))
        # Go's encoding/json escapes these for safe embedding in HTML
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n"


#: The process-wide registry every component uses unless given another.
REGISTRY = Registry()
