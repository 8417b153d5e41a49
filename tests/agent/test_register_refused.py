"""A relay's STREAM_REJECT answering a REGISTER, and service names in the SDK."""

from __future__ import annotations

import asyncio

import pytest

from outrelay.agent import Agent
from outrelay.agent import events as ev
from outrelay.agent.core import AgentProtocol
from outrelay.orp import FrameType, encode_message
from outrelay.policy.names import InvalidServiceName
from outrelay.proto import orp_pb2 as pb

from .conftest import DevPKI

URI = "outrelay://acme/agent/00000000-0000-0000-0000-000000000002"
CONTROL = 0


def started(**kw: float) -> AgentProtocol:
    proto = AgentProtocol(URI, **kw)
    proto.hello(CONTROL, now=0.0)
    proto.receive(CONTROL, encode_message(FrameType.HELLO_ACK, pb.HelloAck()), False, 0.0)
    return proto


def reject(code: int, reason: str) -> bytes:
    return encode_message(FrameType.STREAM_REJECT, pb.StreamReject(code=code, reason=reason))


def test_reject_on_control_stream_answers_the_oldest_register() -> None:
    proto = started(register_timeout=5.0)
    proto.register("web", "", now=0.0)
    proto.register("db", "", now=0.0)
    reason = "register rejected: bind denied: x may not provide 'web' (no bind rule allows it)"
    assert proto.receive(CONTROL, reject(403, reason), False, 1.0) == [
        ev.RegisterRejected("web", 403, reason)
    ]
    ack = encode_message(FrameType.REGISTER_ACK, pb.RegisterAck(service_id="acme/db"))
    assert proto.receive(CONTROL, ack, False, 1.0) == [ev.ServiceRegistered("db", "acme/db")]
    assert proto.next_timer() is None  # nothing left to time out


def test_reject_without_pending_register_is_ignored() -> None:
    proto = started()
    (out,) = proto.receive(CONTROL, reject(400, "x"), False, 0.0)
    assert isinstance(out, ev.ControlFrameIgnored)


@pytest.mark.parametrize("name", ["evil/web", "*", "", "Web", "w" * 64])
def test_sdk_refuses_a_bad_service_name_before_any_relay(dev_pki: DevPKI, name: str) -> None:
    async def main() -> None:
        agent = Agent(dev_pki.agent_config("provider", ["127.0.0.1:9"]))

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            pass

        with pytest.raises(InvalidServiceName, match="invalid service name"):
            await agent.serve(name, handler)
        with pytest.raises(ValueError, match="invalid service name"):
            await agent.expose(name, "127.0.0.1", 80)

    asyncio.run(asyncio.wait_for(main(), 10))
