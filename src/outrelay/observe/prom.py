"""Prometheus text exposition of a ``Registry`` through prometheus-client.

Names get an ``outrelay_`` prefix; counters keep (or gain) ``_total``;
histograms are converted to seconds with cumulative ``le`` buckets.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from outrelay.observe.metrics import Registry

PREFIX = "outrelay_"

__all__ = ["CONTENT_TYPE_LATEST", "render"]


class _Collector:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        snap = self._registry.snapshot()
        for name, value in snap["counters"].items():
            base = PREFIX + name.removesuffix("_total")
            yield CounterMetricFamily(base, f"counter {name}", value=value)
        for name, value in snap["gauges"].items():
            yield GaugeMetricFamily(PREFIX + name, f"gauge {name}", value=value)
        for name, h in snap["histograms"].items():
            buckets: list[tuple[str, float]] = []
            running = 0
            for bound, count in zip(h["bounds_ns"], h["counts"], strict=False):
                running += count
                buckets.append((repr(bound / 1e9), running))
            buckets.append(("+Inf", h["n"]))
            yield HistogramMetricFamily(
                PREFIX + name + "_seconds",
                f"histogram {name}",
                buckets=buckets,
                sum_value=h["sum_ns"] / 1e9,
            )


def render(registry: Registry) -> bytes:
    """The Prometheus text format (version 0.0.4) of every metric in ``registry``."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(registry))
    return generate_latest(reg)
