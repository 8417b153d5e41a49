"""Controller outage: SIGKILL the controller under a flowing stream, then restart it."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from outrelay.controller.testing import ControllerProcess, dev_pki
from outrelay.orp import HEADER_SIZE, FrameType, decode_header
from outrelay.proto import orp_pb2
from outrelay.proto import policy_pb2 as pp
from outrelay.proto import policy_pb2_grpc as pg
from outrelay.relay.testing import ProbeStream, RelayProcess, echo_provider

from .conftest import debug_metrics, dial, run_async

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

TENANT = "acme"
#: The issue's bound: a policy change reaches the relay within this after a restart.
PROPAGATION_S = 1.0
#: How long the controller stays down.
OUTAGE_S = 3.0


async def _roundtrip(stream: ProbeStream, data: bytes) -> None:
    stream.write(data)
    assert await stream.read_exactly(len(data), timeout=3) == data


async def _until(cond: Any, what: str, limit: float, step: ProbeStream | None = None) -> float:
    """Poll ``cond()`` (in a thread) until true; keep ``step`` flowing meanwhile."""
    t0 = time.monotonic()
    n = 0
    while not await asyncio.to_thread(cond):
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"{what}: not within {limit}s")
        if step is not None:
            n += 1
            await _roundtrip(step, f"tick-{n};".encode())
        else:
            await asyncio.sleep(0.02)
    return time.monotonic() - t0


def test_controller_sigkill_and_restart(tmp_path: Path) -> None:
    pki = dev_pki(tmp_path / "pki")
    ctl = ControllerProcess(tmp_path, pki).start()
    restarted: ControllerProcess | None = None
    relay = RelayProcess(
        tmp_path,
        cert=pki / "relay-r1.crt",
        key=pki / "relay-r1.key",
        ca=pki / "ca.crt",
        controller=ctl.target,
        args=["--relay-id", "r1", "--tenant", TENANT],
    )
    allow = pp.PolicyRule(
        id="allow-all",
        tenant=TENANT,
        caller_pattern="*",
        target_pattern="*",
        decision=pp.DECISION_ALLOW,
    )
    with ctl.channel("admin") as admin:
        pg.PolicyStub(admin).AddPolicy(pp.AddPolicyRequest(rule=allow), timeout=5)
    report: dict[str, float] = {}
    try:
        relay.start()

        async def main() -> None:
            nonlocal restarted
            provider = await dial(relay, pki, "provider")
            ctl.allow_bind(provider.uri, "svc-out")
            assert (await provider.register_bound("svc-out")).type == FrameType.REGISTER_ACK
            task = asyncio.create_task(echo_provider(provider))
            consumer = await dial(relay, pki, "consumer")
            flowing = consumer.open("svc-out")
            await _roundtrip(flowing, b"before the outage")

            ctl.signal(signal.SIGKILL)
            t_killed = time.monotonic()
            assert ctl.proc is not None
            await asyncio.to_thread(ctl.proc.wait, 10)
            # the stream keeps flowing while the relay notices the outage
            await _until(
                lambda: debug_metrics(relay)["gauges"]["controller_up"] == 0,
                "relay noticed the outage",
                10.0,
                step=flowing,
            )
            # a real outage lasts: keep the stream busy for OUTAGE_S in all
            # (long enough for gRPC's reconnect backoff to reach its cap)
            n = 0
            while time.monotonic() - t_killed < OUTAGE_S:
                n += 1
                await _roundtrip(flowing, f"during the outage {n};".encode())
            # a new stream to an already-resolved service still opens: the
            # provider is connected here, so the relay picks it without asking
            # the controller (local-first); nothing stale needs serving
            fresh = consumer.open("svc-out")
            await _roundtrip(fresh, b"new stream during the outage")
            assert debug_metrics(relay)["gauges"]["controller_up"] == 0

            # restart on the same port and database
            restarted = ControllerProcess(tmp_path, pki, db=ctl.db, args=["--listen", ctl.target])
            await asyncio.to_thread(restarted.start)
            t_ready = time.monotonic()
            with restarted.channel("admin") as admin2:
                pg.PolicyStub(admin2).RemovePolicy(
                    pp.RemovePolicyRequest(tenant=TENANT, id="allow-all"), timeout=5
                )
            t_changed = time.monotonic()

            async def denied() -> bool:
                # allowed: the provider echoes our 8 bytes; denied: a
                # STREAM_REJECT frame (8-byte header, then its payload)
                probe = consumer.open("svc-out")
                probe.write(b"allowed?")
                head = await probe.read_exactly(HEADER_SIZE, timeout=3)
                if head == b"allowed?":
                    probe.write(b"", fin=True)
                    return False
                _, ftype, _, length = decode_header(head)
                assert ftype == FrameType.STREAM_REJECT
                rej = orp_pb2.StreamReject.FromString(await probe.read_exactly(length))
                assert rej.code == 403, rej
                return True

            while not await denied():
                assert time.monotonic() - t_changed < PROPAGATION_S, "change not applied"
                await asyncio.sleep(0.02)
            report["change_to_enforced_s"] = time.monotonic() - t_changed
            report["restart_to_enforced_s"] = time.monotonic() - t_ready
            report["outage_roundtrips"] = n
            assert report["change_to_enforced_s"] <= PROPAGATION_S
            # streams opened before the change are not cut
            await _roundtrip(flowing, b"after the restart")
            await _roundtrip(fresh, b"still here")
            m = debug_metrics(relay)
            assert m["gauges"]["controller_up"] == 1
            assert m["counters"]["controller_outages"] == 1
            task.cancel()

        run_async(main, 60)
        print(f"\npolicy propagation after controller restart: {report}")
    finally:
        relay.kill()
        ctl.kill()
        if restarted is not None:
            restarted.kill()
