"""Resume over real QUIC: a relay is SIGKILLed mid-stream, both agents resume on another."""

from __future__ import annotations

import asyncio
import time

import pytest

from outrelay.controller.testing import ControllerProcess
from outrelay.orp import FrameType
from outrelay.proto import orp_pb2
from outrelay.relay.testing import ProbeStream, RelayProcess

from .conftest import debug_metrics, dial, run_async

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SID = 0x0123456789ABCDEF


def _relay(ctl: ControllerProcess, name: str, *args: str) -> RelayProcess:
    pki = ctl.pki
    return RelayProcess(
        ctl.workdir,
        cert=pki / "relay-r1.crt",
        key=pki / "relay-r1.key",
        ca=pki / "ca.crt",
        controller=ctl.target,
        args=["--no-policy", *args],
        name=f"{name}-{time.monotonic_ns()}",
    )


async def _echo_of(stream: ProbeStream) -> tuple[int, int, int]:
    frame = await stream.read_frame(timeout=5)
    assert frame.type == FrameType.STREAM_RESUME, frame
    msg = orp_pb2.StreamResume.FromString(frame.payload)
    return msg.stream_id, msg.my_position, msg.peer_ack_position


def test_resume_on_a_new_relay_after_sigkill(ctl: ControllerProcess) -> None:
    pki = ctl.pki
    first = _relay(ctl, "r-old")
    second = _relay(ctl, "r-new")
    try:
        first.start()

        async def main() -> None:
            provider = await dial(first, pki, "provider")
            ctl.allow_bind(provider.uri, "svc-resume")
            assert (await provider.register_bound("svc-resume")).type == FrameType.REGISTER_ACK
            consumer = await dial(first, pki, "consumer")
            cs = consumer.open("svc-resume", stream_id=SID)
            ps = await asyncio.wait_for(provider.incoming.get(), 5)
            assert (await ps.read_frame()).type == FrameType.INCOMING_STREAM
            ps.send_frame(FrameType.STREAM_ACCEPT)
            cs.write(b"before")
            assert await ps.read_exactly(6) == b"before"
            ps.write(b"back")
            assert await cs.read_exactly(4) == b"back"

            first.kill()  # SIGKILL: no goodbye to anyone
            await asyncio.to_thread(second.start)
            # both agents reconnect (no history on this relay), replay REGISTER,
            # and resume: consumer sent 6 and got 4, provider the reverse
            provider2 = await dial(second, pki, "provider")
            assert (await provider2.register("svc-resume")).type == FrameType.REGISTER_ACK
            consumer2 = await dial(second, pki, "consumer")
            rc = consumer2.resume(SID, 6, 4)
            rp = provider2.resume(SID, 4, 6)
            assert await _echo_of(rc) == (SID, 4, 6)
            assert await _echo_of(rp) == (SID, 6, 4)
            rc.write(b"post-resume")
            assert await rp.read_exactly(11, timeout=3) == b"post-resume"
            rp.write(b"pong-back")
            assert await rc.read_exactly(9, timeout=3) == b"pong-back"
            rc.write(b"", fin=True)
            assert await rp.read_to_eof() == b""
            rp.write(b"", fin=True)
            assert await rc.read_to_eof() == b""
            m = debug_metrics(second)
            assert m["counters"]["resume_matched"] == 1
            assert m["gauges"]["resume_pending"] == 0

        run_async(main, 60)
    finally:
        first.kill()
        second.kill()


@pytest.mark.slow
def test_lone_half_rejected_within_window_plus_one_second(ctl: ControllerProcess) -> None:
    pki = ctl.pki
    relay = _relay(ctl, "r-window", "--resume-window", "1s")
    try:
        relay.start()

        async def main() -> None:
            agent = await dial(relay, pki, "consumer")
            t0 = time.monotonic()
            half = agent.resume(SID, 10, 10)
            frame = await half.read_frame(timeout=5)
            waited = time.monotonic() - t0
            assert frame.type == FrameType.STREAM_REJECT
            rej = orp_pb2.StreamReject.FromString(frame.payload)
            assert rej.code == 504 and "resume" in rej.reason
            assert await half.ended()
            assert 1.0 <= waited <= 2.0, waited
            m = debug_metrics(relay)
            assert m["counters"]["resume_timeouts"] == 1

        run_async(main, 30)
    finally:
        relay.kill()
