from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from outrelay.observe import DebugServer, Histogram, Registry, kv, run_dumper, setup_logging
from outrelay.observe.prom import render


def test_snapshot_format_is_the_references() -> None:
    reg = Registry()
    reg.counter("b_total").add(3)
    reg.counter("a").inc()
    reg.gauge("g<&>").set(-2)
    h = reg.histogram("lat")
    h.observe_ns(1_000)  # bucket 0 (<=)
    h.observe_ns(1_001)  # bucket 1
    h.observe_ns(10**11)  # overflow
    assert reg.histogram("lat", bounds_ns=[5]) is h  # first bounds stick
    text = reg.snapshot_json(now_ms=7)
    assert text.endswith("}\n") and " " not in text
    assert text.startswith(
        '{"ts_unix_ms":7,"counters":{"a":1,"b_total":3},"gauges":{"g\\u003c\\u0026\\u003e":-2}'
    )
    snap = json.loads(text)
    assert list(snap) == ["ts_unix_ms", "counters", "gauges", "histograms"]
    assert list(snap["histograms"]["lat"]) == ["bounds_ns", "counts", "sum_ns", "n"]
    assert snap["histograms"]["lat"]["counts"] == [1, 1, 0, 0, 0, 0, 0, 0, 1]
    assert snap["histograms"]["lat"]["n"] == 3
    assert json.loads(Registry().snapshot_json())["gauges"] == {}


def test_quantile_rules() -> None:
    h = Histogram([10, 100])
    assert h.quantile(0.5) == 0
    for d in (5, 50, 50, 50):
        h.observe_ns(d)
    assert h.quantile(0) == 0 and h.quantile(1) == 0
    assert h.quantile(0.25) == 10
    assert h.quantile(0.9) == 100
    h.observe_ns(1000)
    h.observe_ns(1000)
    assert h.quantile(0.99) == (5 + 150 + 2000) // 6  # overflow: mean of all samples
    with pytest.raises(ValueError):
        Histogram([3, 2])


def test_prometheus_text_parses() -> None:
    reg = Registry()
    reg.counter("audit_events_total").add(5)
    reg.gauge("stream_active").set(2)
    reg.histogram("policy_eval_duration").observe_ns(2_000)
    families = {f.name: f for f in text_string_to_metric_families(render(reg).decode())}
    assert families["outrelay_audit_events"].samples[0].value == 5
    assert families["outrelay_stream_active"].samples[0].value == 2
    samples = families["outrelay_policy_eval_duration_seconds"].samples
    count = [s for s in samples if s.name.endswith("_count")][0]
    assert count.value == 1


def test_dumper_writes_first_line_at_once(tmp_path: Path) -> None:
    reg = Registry()
    reg.counter("x").inc()
    path = tmp_path / "sub" / "m.jsonl"

    async def go() -> None:
        task = asyncio.create_task(run_dumper(reg, path, 0.05))
        deadline = time.monotonic() + 4
        while not (path.exists() and path.read_text().count("\n") >= 2):
            assert time.monotonic() < deadline, "two dump lines not written within 4s"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(go(), 5))
    lines = path.read_text().splitlines()
    assert 2 <= len(lines) <= 5
    assert json.loads(lines[0])["counters"] == {"x": 1}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def test_debug_server_routes() -> None:
    reg = Registry()
    reg.counter("c").inc()
    ready = [False]

    async def go() -> None:
        srv = DebugServer(reg, ready=lambda: ready[0])
        _, port = await srv.start("127.0.0.1", 0)
        try:
            status, body = await _get(port, "/debug/metrics")
            assert status == 200 and json.loads(body)["counters"] == {"c": 1}
            status, body = await _get(port, "/metrics")
            assert status == 200 and "outrelay_c_total 1.0" in body
            assert (await _get(port, "/healthz"))[0] == 200
            assert (await _get(port, "/readyz"))[0] == 503
            ready[0] = True
            assert (await _get(port, "/readyz"))[0] == 200
            assert (await _get(port, "/nope"))[0] == 404
        finally:
            await srv.close()

    asyncio.run(asyncio.wait_for(go(), 10))


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_structured_logs(fmt: str) -> None:
    out = io.StringIO()
    setup_logging("debug", fmt, stream=out)
    try:
        logging.getLogger("outrelay.test").warning(
            "rule added", extra=kv(tenant="acme", n=2, s="a b")
        )
        logging.getLogger("outrelay.test").debug("quiet")
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if h.get_name() == "outrelay"]:
            root.removeHandler(h)
        root.setLevel(logging.WARNING)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    if fmt == "json":
        obj = json.loads(lines[0])
        assert obj["level"] == "WARN" and obj["msg"] == "rule added"
        assert obj["tenant"] == "acme" and obj["n"] == 2
    else:
        assert 'level=WARN msg="rule added"' in lines[0]
        assert 'tenant=acme n=2 s="a b"' in lines[0]
    with pytest.raises(ValueError):
        setup_logging("loud")
