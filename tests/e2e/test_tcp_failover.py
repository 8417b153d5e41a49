"""Failover and resume on the TCP path, real processes on 127.0.0.1 (issue 13).

Relays A and B listen for QUIC and TCP (``--listen-tcp``); the provider
and consumer agents have ``--relay A,B --relay-tcp A,B``. A transfer goes
through relay A, which is SIGKILLed mid-transfer: the agents reconnect to
B, replay REGISTER and resume the stream byte-exact, over TCP, or after
switching from QUIC to TCP (B's QUIC address is given as a dead port).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from outrelay.agent.testing import FailoverLab, MiB

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SIZE = 64 * MiB
KILL_AT = 16 * MiB


@pytest.fixture
def tcp_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailoverLab]:
    transports = {"provider": "tcp", "consumer": "tcp"}
    with FailoverLab(tmp_path_factory.mktemp("tcpfail"), tcp=True, transports=transports) as lab:
        yield lab.start()


@pytest.fixture
def switch_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailoverLab]:
    with FailoverLab(tmp_path_factory.mktemp("switch"), tcp=True, hide_quic=["B"]) as lab:
        yield lab.start()


def _check(lab: FailoverLab, transport_after: str) -> None:
    result = lab.transfer(SIZE, kill_at=KILL_AT, action="failover", timeout=120)
    assert result.error is None, result
    assert result.received == SIZE
    assert result.echoed_sha256 == result.sent_sha256
    assert lab.consumer is not None and lab.provider is not None
    for agent in (lab.consumer, lab.provider):
        log = agent.log()
        assert "stream resumed" in log
        assert "could not be resumed" not in log
        up = [line for line in log.splitlines() if "relay session up" in line]
        assert len(up) >= 2, up
        assert f"transport={transport_after}" in up[-1], up[-1]
        assert agent.metrics()["counters"]["streams_resumed"] >= 1
    # a new stream after the move: the provider's REGISTER was replayed on B
    after = lab.transfer(1 * MiB, timeout=30, seed=2)
    assert after.error is None and after.echoed_sha256 == after.sent_sha256, after
    print(f"pause {result.pause:.3f} s, {result.duration:.1f} s total")


def test_tcp_relay_sigkill_mid_transfer_resumes_byte_exact_on_second_relay(
    tcp_lab: FailoverLab,
) -> None:
    assert tcp_lab.consumer is not None
    assert tcp_lab.consumer.addresses["transport"] == "tcp"
    _check(tcp_lab, "tcp")


def test_stream_resumes_across_a_switch_from_quic_to_tcp(switch_lab: FailoverLab) -> None:
    """Established over QUIC on A; A dies; B is reachable only over TCP: resumed there."""
    assert switch_lab.consumer is not None
    assert switch_lab.consumer.addresses["transport"] == "quic"
    _check(switch_lab, "tcp")
