"""The QUIC path's acceptance set, run again with every agent on ``--transport tcp``.

Same tests as ``test_accept_streams.py`` (imported below, so they run once
per module; the slow consumer runs on its own TCP stack in
``test_accept_slow_consumer_tcp.py``): 64 MiB each way, 1,000
sequential and 200 concurrent streams byte-exact, 403/404/503/409 with
their reasons, policy changes within 1 s, deregistration, audit, and the
slow consumer with bounded relay and agent RSS. Here the relay also listens
with ``--listen-tcp`` and :class:`TcpStack` starts every agent with
``--relay-tcp <relay> --transport tcp`` (the 409 probes still dial QUIC:
a mixed relay).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from .conftest import AgentProcess, Stack
from .test_accept_streams import (
    test_64_mib_each_way_sha256,
    test_200_concurrent_streams_byte_exact,
    test_1000_sequential_streams_byte_exact,
    test_backend_down_503_provider_rejected,
    test_one_audit_event_per_decision,
    test_policy_add_and_remove_take_effect_within_1s,
    test_policy_denied_403_with_reason,
    test_provider_agent_stopped_deregistered_404,
    test_stream_id_collision_409,
    test_unknown_service_404,
    world,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]


__all__ = [
    "test_1000_sequential_streams_byte_exact",
    "test_200_concurrent_streams_byte_exact",
    "test_64_mib_each_way_sha256",
    "test_backend_down_503_provider_rejected",
    "test_one_audit_event_per_decision",
    "test_policy_add_and_remove_take_effect_within_1s",
    "test_policy_denied_403_with_reason",
    "test_provider_agent_stopped_deregistered_404",
    "test_stream_id_collision_409",
    "test_unknown_service_404",
    "world",
]


class TcpStack(Stack):
    """A :class:`Stack` whose relay listens on TCP too and whose agents use only TCP."""

    def start(self, relay_args: Sequence[str] = ()) -> Stack:
        return super().start([*relay_args, "--listen-tcp", "127.0.0.1:0"])

    def agent(self, name: str, *, args: Sequence[str] = (), **kw: object) -> AgentProcess:
        assert self.relay is not None
        host, port = self.relay.tcp
        tcp = ["--relay-tcp", f"{host}:{port}", "--transport", "tcp"]
        proc = super().agent(name, args=[*tcp, *args], **kw)  # type: ignore[arg-type]
        assert proc.addresses["transport"] == "tcp"
        return proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = TcpStack(tmp_path_factory.mktemp("tcpaccept"))
    try:
        yield s.start()
    finally:
        s.close()
