"""Observability shared by every component: metrics, debug HTTP, logs.

* ``REGISTRY`` (``Registry``): counters, gauges, histograms; ``snapshot()``.
* ``DebugServer``: ``/debug/metrics``, ``/metrics``, ``/healthz``, ``/readyz``.
* ``run_dumper``: JSONL snapshots every interval (``--metrics-dump``).
* ``setup_logging`` / ``kv``: structured text or JSON logs on stderr.
"""

from outrelay.observe.dump import run_dumper, write_snapshot
from outrelay.observe.http import DebugServer, parse_hostport
from outrelay.observe.log import kv, setup_logging
from outrelay.observe.metrics import (
    DEFAULT_BOUNDS_NS,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    Registry,
)

__all__ = [
    "DEFAULT_BOUNDS_NS",
    "REGISTRY",
    "Counter",
    "DebugServer",
    "Gauge",
    "Histogram",
    "Registry",
    "kv",
    "parse_hostport",
    "run_dumper",
    "setup_logging",
    "write_snapshot",
]
