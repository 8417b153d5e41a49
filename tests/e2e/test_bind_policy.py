"""Bind policies end to end (issue #12, finding 2): who may provide a service.

Real processes (controller, relay enforcing tenant ``acme``, ``outrelay
agent`` s) on 127.0.0.1. Before: any agent of a tenant could REGISTER any
name (an attacker registering ``web`` got 3 of 6 requests) and names were
not validated (``evil/web``, ``../acme/web``, ``web\\x00evil``, ``*`` and a
5,000-character name were acknowledged). Now a REGISTER needs a bind rule
and a valid name, checked by the relay and by the controller.
"""

from __future__ import annotations

import json
import socket
import socketserver
from collections.abc import Iterator

import grpc
import pytest

from outrelay.childproc import NotReadyError
from outrelay.orp import FrameType
from outrelay.proto import orp_pb2
from outrelay.proto import registry_pb2 as rp
from outrelay.proto import registry_pb2_grpc as rg

from .conftest import Stack, exchange, run_async, tcp_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

BAD_NAMES = ["evil/web", "../acme/web", "web\x00evil", "*", "w" * 5000, ""]


class _Impostor(socketserver.BaseRequestHandler):
    """What an attacker's backend would answer: its own tag, not the echo."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        while sock.recv(65536):
            pass
        sock.sendall(b"attacker")
        sock.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def impostor() -> Iterator[str]:
    with tcp_server(_Impostor) as addr:
        yield addr


def test_attacker_agent_without_bind_rule_is_refused_provider_serves_6_of_6(
    stack: Stack, echo_backend: str, impostor: str
) -> None:
    stack.policy_add("allow-all", "*", "allow")  # dial only: any agent of acme may open any stream
    provider = stack.agent("web-provider", expose={"web": echo_backend})  # + its bind rule
    # another agent identity of the same tenant, no bind rule: its REGISTER is refused
    with pytest.raises(NotReadyError) as info:
        stack.agent("attacker", expose={"web": impostor}, bind=False)
    attacker = stack.agents[-1]
    assert info.value.returncode == 1
    log = attacker.log()
    assert "REGISTER 'web' refused by the relay: 403 register rejected: bind denied: " in log
    assert "may not provide 'web' (no bind rule allows it)" in log
    assert provider.uri not in log  # the refusal names the attacker's identity, not the provider's
    assert "Traceback" not in log
    # the consumer's 6 requests all reach the real provider
    consumer = stack.agent("web-consumer", consume=["web"])
    for i in range(6):
        payload = f"request {i}".encode()
        assert exchange(consumer.consume_addr("web"), payload, timeout=10) == payload
    rows = json.loads(stack.cli("registry", "list", "--service", "web", "-o", "json"))
    assert [r["agent_uri"] for r in rows] == [provider.uri]


def test_register_needs_a_bind_rule_then_is_accepted(stack: Stack) -> None:
    async def main() -> None:
        probe = await stack.probe()
        answer = await probe.register("api")
        assert answer.type == FrameType.STREAM_REJECT
        rej = orp_pb2.StreamReject.FromString(answer.payload)
        assert rej.code == 403
        assert rej.reason == (
            f"register rejected: bind denied: {probe.uri} may not provide 'api' "
            "(no bind rule allows it)"
        )
        stack.policy_add("bind-api", "api", "allow", caller=probe.uri, action="bind")

        # the relay learns the rule through its policy watch: poll with a deadline
        assert (await probe.register_bound("api")).type == FrameType.REGISTER_ACK

    run_async(main)


def test_bad_service_names_refused_by_the_relay_process(stack: Stack) -> None:
    async def main() -> None:
        probe = await stack.probe()
        for name in BAD_NAMES:
            answer = await probe.register(name)
            assert answer.type == FrameType.STREAM_REJECT, name[:20]
            rej = orp_pb2.StreamReject.FromString(answer.payload)
            assert rej.code == 400 and "invalid service name" in rej.reason, rej.reason

    run_async(main)


def test_controller_refuses_bad_names_and_unbound_registrations(stack: Stack) -> None:
    """A direct gRPC caller (here the relay's own identity) cannot bypass either check."""
    with stack.ctl.channel("relay") as ch:
        reg = rg.RegistryStub(ch)

        def register(name: str, agent: str) -> rp.RegisterServiceResponse:
            request = rp.RegisterServiceRequest(
                tenant="acme", service_name=name, agent_uri=agent, relay_id="r1"
            )
            return reg.RegisterService(request, timeout=10)  # type: ignore[no-any-return]

        agent = "outrelay://acme/agent/0b5a8c3e-6f61-4d44-9d1c-2b7d2f0b9e11"
        for name in BAD_NAMES:
            with pytest.raises(grpc.RpcError) as err:
                register(name, agent)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name[:20]
            assert err.value.details().startswith("service_name: ")
        # a valid name with only dial rules (allow-all above): PERMISSION_DENIED with the reason
        with pytest.raises(grpc.RpcError) as err:
            register("web", agent)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert err.value.details() == (
            f"bind denied: {agent} may not provide 'web' (no bind rule allows it)"
        )
        stack.ctl.allow_bind(agent, "web")
        assert register("web", agent).service_id == "acme/web"
        # a DENY bind rule wins over the ALLOW
        stack.policy_add(
            "no-web", "web", "deny", caller="outrelay://acme/agent/0b5a*", action="bind"
        )
        with pytest.raises(grpc.RpcError) as err:
            register("web", agent)
        assert err.value.details().endswith("(bind rule no-web)")
        stack.policy_remove("no-web")
        # the controller reads the rules at each call: the removal applies at once
        assert register("web", agent).service_id == "acme/web"


def test_policy_list_shows_the_action(stack: Stack) -> None:
    rows = {r["id"]: r for r in json.loads(stack.cli("policy", "list", "-o", "json"))}
    assert rows["allow-all"]["action"] == "dial"
    assert rows["bind-api"]["action"] == "bind" and rows["bind-api"]["target"] == "api"
    table = stack.cli("policy", "list").splitlines()
    assert table[0].split()[:4] == ["ID", "CALLER", "TARGET", "ACTION"]
