"""The relay as a real process between a real controller and probe agents."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from outrelay.controller.testing import ControllerProcess, dev_pki
from outrelay.identity import Identity
from outrelay.orp import FrameType
from outrelay.pki.ca import CA, cert_pem
from outrelay.pki.csr import key_pem
from outrelay.proto import audit_pb2 as ap
from outrelay.proto import audit_pb2_grpc as ag
from outrelay.proto import orp_pb2
from outrelay.proto import policy_pb2 as pp
from outrelay.proto import policy_pb2_grpc as pg
from outrelay.proto import registry_pb2 as rp
from outrelay.proto import registry_pb2_grpc as rg
from outrelay.relay.testing import (
    ProbeAgent,
    ProbeStream,
    RelayProcess,
    echo_provider,
)
from outrelay.transport import HandshakeError

from .conftest import debug_metrics, wait_for
from .conftest import run_async as run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TENANT = "acme"


@dataclass
class Leaf:
    cert: Path
    key: Path
    uri: str


@dataclass
class Env:
    pki: Path
    ca: CA
    ctl: ControllerProcess
    relay: RelayProcess
    admin: grpc.Channel

    def leaf(
        self,
        name: str,
        identity: Identity | None = None,
        *,
        ca: CA | None = None,
        now: dt.datetime | None = None,
        ttl: dt.timedelta | None = None,
    ) -> Leaf:
        identity = identity or Identity.new_agent(TENANT)
        key, cert = (ca or self.ca).issue(identity, ttl or dt.timedelta(hours=1), now=now)
        cert_path, key_path = self.pki / f"{name}.crt", self.pki / f"{name}.key"
        cert_path.write_bytes(cert_pem(cert))
        key_path.write_bytes(key_pem(key))
        os.chmod(key_path, 0o600)
        return Leaf(cert_path, key_path, str(identity))

    async def agent(self, leaf: Leaf | None = None) -> ProbeAgent:
        leaf = leaf or self.leaf(f"agent-{time.monotonic_ns()}")
        agent = await ProbeAgent.dial(self.relay.quic, leaf.cert, leaf.key, self.pki / "ca.crt")
        ack = await agent.hello()
        assert ack.type == FrameType.HELLO_ACK and ack.payload == b""
        return agent

    async def provider(self, service: str, **kw: Any) -> tuple[ProbeAgent, asyncio.Task[None]]:
        agent = await self.agent()
        self.ctl.allow_bind(agent.uri, service)
        ack = await agent.register_bound(service)
        assert ack.type == FrameType.REGISTER_ACK, ack
        assert orp_pb2.RegisterAck.FromString(ack.payload).service_id == f"{TENANT}/{service}"
        return agent, asyncio.create_task(echo_provider(agent, **kw))

    def add_rule(self, rule_id: str, target: str, *, deny: bool = False, caller: str = "*") -> None:
        rule = pp.PolicyRule(
            id=rule_id,
            tenant=TENANT,
            caller_pattern=caller,
            target_pattern=target,
            decision=pp.DECISION_DENY if deny else pp.DECISION_ALLOW,
        )
        pg.PolicyStub(self.admin).AddPolicy(pp.AddPolicyRequest(rule=rule), timeout=5)

    def remove_rule(self, rule_id: str) -> None:
        pg.PolicyStub(self.admin).RemovePolicy(
            pp.RemovePolicyRequest(tenant=TENANT, id=rule_id), timeout=5
        )

    def metrics(self) -> dict[str, Any]:
        return debug_metrics(self.relay)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("relay")
    pki = dev_pki(work / "pki")
    ctl = ControllerProcess(work, pki)
    relay: RelayProcess | None = None
    try:
        ctl.start()
        admin = ctl.channel("admin")
        rule = pp.PolicyRule(
            id="allow-all",
            tenant=TENANT,
            caller_pattern="*",
            target_pattern="*",
            decision=pp.DECISION_ALLOW,
        )
        pg.PolicyStub(admin).AddPolicy(pp.AddPolicyRequest(rule=rule), timeout=5)
        relay = RelayProcess(
            work,
            cert=pki / "relay-r1.crt",
            key=pki / "relay-r1.key",
            ca=pki / "ca.crt",
            controller=ctl.target,
            args=["--relay-id", "r1", "--tenant", TENANT, "--window", "256KiB"],
        )
        relay.start()
        yield Env(pki, CA.load(pki), ctl, relay, admin)
        admin.close()
    finally:
        if relay is not None:
            relay.kill()
        ctl.kill()


async def reject_of(stream: ProbeStream) -> tuple[int, str]:
    frame = await stream.read_frame()
    assert frame.type == FrameType.STREAM_REJECT, frame
    msg = orp_pb2.StreamReject.FromString(frame.payload)
    assert await stream.ended()  # nothing after the reject, then EOF
    return msg.code, msg.reason


# -- handshake and security ---------------------------------------------------


def test_hello_ping_observed_addr(env: Env) -> None:
    async def main() -> None:
        agent = await env.agent()
        agent.control.send_frame(FrameType.PING)
        pong = await agent.control_frame()
        assert (pong.type, pong.payload) == (FrameType.PONG, b"")
        agent.control.write(b"\x20\x7f\x00\x00\x00\x00\x00\x00")  # unknown type 0x07f
        agent.control.send_frame(
            FrameType.OBSERVED_ADDR_QUERY, orp_pb2.ObservedAddrQuery(request_id=42)
        )
        frame = await agent.control_frame()
        assert frame.type == FrameType.OBSERVED_ADDR_RESP
        resp = orp_pb2.ObservedAddrResp.FromString(frame.payload)
        local = agent.link._driver.transport.get_extra_info("sockname")  # type: ignore[union-attr]
        assert (resp.request_id, resp.ip, resp.port) == (42, "127.0.0.1", local[1])
        agent.close()

    run(main)


def test_hello_uri_mismatch_closes(env: Env) -> None:
    async def main() -> None:
        leaf = env.leaf("mismatch")
        agent = await ProbeAgent.dial(env.relay.quic, leaf.cert, leaf.key, env.pki / "ca.crt")
        with pytest.raises(EOFError):
            await agent.hello(uri=leaf.uri + "/")
        await agent.wait_closed()

    run(main)


async def _refused(env: Env, cert: Path | None, key: Path | None) -> None:
    """The relay must end the connection before it serves anything."""
    try:
        agent = await ProbeAgent.dial(env.relay.quic, cert, key, env.pki / "ca.crt")
    except HandshakeError:
        return
    with pytest.raises(EOFError):
        await agent.hello(uri="outrelay://acme/agent/00000000-0000-0000-0000-000000000009")
    await agent.wait_closed()


@pytest.mark.parametrize("kind", ["relay-role", "admin-role", "none", "other-ca", "expired"])
def test_refused_certificates(env: Env, kind: str) -> None:
    cert: Path | None
    key: Path | None
    if kind == "relay-role":
        cert, key = env.pki / "relay-r1.crt", env.pki / "relay-r1.key"
    elif kind == "admin-role":
        cert, key = env.pki / "admin-admin.crt", env.pki / "admin-admin.key"
    elif kind == "none":
        cert = key = None
    elif kind == "other-ca":
        leaf = env.leaf("foreign", ca=CA.create())
        cert, key = leaf.cert, leaf.key
    else:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        leaf = env.leaf("expired", now=past, ttl=dt.timedelta(hours=1))
        cert, key = leaf.cert, leaf.key
    run(lambda: _refused(env, cert, key))


# -- control --------------------------------------------------------------------


def test_register_refused_answers_with_reject(env: Env) -> None:
    async def main() -> None:
        agent = await env.agent()
        answer = await agent.register("svc-unbound")  # no bind rule lets this agent provide it
        assert answer.type == FrameType.STREAM_REJECT
        rej = orp_pb2.StreamReject.FromString(answer.payload)
        assert rej.code == 403 and rej.reason.startswith("register rejected: bind denied: ")
        answer = await agent.register("")  # breaks the service-name rule
        rej = orp_pb2.StreamReject.FromString(answer.payload)
        assert answer.type == FrameType.STREAM_REJECT and rej.code == 400
        assert rej.reason.startswith("register rejected: invalid service name ''")
        agent.control.send_frame(FrameType.PING)
        assert (await agent.control_frame()).type == FrameType.PONG
        agent.close()

    run(main)


def test_disconnect_deregisters(env: Env) -> None:
    reg = rg.RegistryStub(env.admin)
    req = rp.ResolveRequest(tenant=TENANT, service_name="svc-gone")

    async def main() -> None:
        agent, task = await env.provider("svc-gone")
        assert reg.Resolve(req, timeout=5).providers
        task.cancel()
        agent.close()
        await agent.wait_closed()

    run(main)
    wait_for(
        lambda: not reg.Resolve(req, timeout=5).providers,
        5,
        "provider deregistered",
        interval=0.05,
    )


# -- OPEN_STREAM ------------------------------------------------------------------


def test_splice_byte_exact_with_half_close(env: Env) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # > --window: backpressure engaged

    async def main() -> None:
        provider, task = await env.provider("svc-echo")
        consumer = await env.agent()
        stream = consumer.open("svc-echo", stream_id=0xFEED0001)
        stream.write(payload, fin=True)  # half-close right away; the echo still flows back
        got = await stream.read_to_eof(timeout=30)
        assert got == payload
        for agent in (consumer, provider):
            ready = await agent.control_frame()
            assert ready.type == FrameType.STREAM_READY
            assert orp_pb2.StreamReady.FromString(ready.payload).stream_id == 0xFEED0001
        task.cancel()
        consumer.close()
        provider.close()

    run(main, 60)
    m = env.metrics()
    assert m["counters"]["bytes_forwarded"] >= 2 * len(payload)
    assert m["counters"]["stream_opens"] >= 1


def test_backpressure_relay_holds_at_most_the_window(env: Env) -> None:
    payload = os.urandom(4 * 1024 * 1024)
    window = 256 * 1024

    async def main() -> None:
        provider = await env.agent()
        env.ctl.allow_bind(provider.uri, "svc-slow")
        assert (await provider.register_bound("svc-slow")).type == FrameType.REGISTER_ACK
        provider.auto_grant = False  # a reader that does not read
        consumer = await env.agent()
        stream = consumer.open("svc-slow")
        incoming = await asyncio.wait_for(provider.incoming.get(), 5)
        assert (await incoming.read_frame()).type == FrameType.INCOMING_STREAM
        incoming.send_frame(FrameType.STREAM_ACCEPT)
        stream.write(payload, fin=True)
        rx = incoming._rx
        # the provider's 1 MiB window fills, then everything stops
        async with asyncio.timeout(10):
            while len(rx.buf) < 1024 * 1024 - 1024:
                rx.wake.clear()
                await rx.wake.wait()
        for _ in range(5):
            m = await asyncio.to_thread(env.metrics)
            assert m["gauges"]["splice_buffer_bytes"] <= window
            assert len(rx.buf) <= 1024 * 1024 + 64
            assert consumer.link.send_buffered(stream.id) >= len(payload) - 1024 * 1024 - 2 * window
        provider.auto_grant = True
        got = bytes(rx.buf)
        provider.link.grant(incoming.id, len(got) + 64)
        rx.buf.clear()
        got += await incoming.read_to_eof(timeout=30)
        assert got == payload

    run(main, 60)


def test_concurrent_streams(env: Env) -> None:  # A2
    async def main() -> None:
        provider, task = await env.provider("svc-many")
        consumer = await env.agent()
        streams = [consumer.open("svc-many") for _ in range(20)]
        for i, s in enumerate(streams):
            s.write(bytes([65 + i, 97 + i]))
        for i, s in enumerate(streams):
            assert await s.read_exactly(2) == bytes([65 + i, 97 + i])
        task.cancel()
        consumer.close()
        provider.close()

    run(main)


def test_unknown_service_404(env: Env) -> None:
    async def main() -> None:
        consumer = await env.agent()
        assert await reject_of(consumer.open("svc-missing")) == (404, "service not found")
        consumer.close()

    run(main)


def test_policy_deny_403(env: Env) -> None:
    env.add_rule("deny-svc", "svc-deny", deny=True)

    async def main() -> None:
        provider, task = await env.provider("svc-deny")
        consumer = await env.agent()
        deadline = time.monotonic() + 2
        while True:  # the rule reaches the relay through Policy.Watch
            code = await reject_of(consumer.open("svc-deny"))
            if code == (403, "denied: deny-svc") or time.monotonic() > deadline:
                break
        assert code == (403, "denied: deny-svc")
        task.cancel()
        consumer.close()
        provider.close()

    run(main)


def test_callee_side_deny_403(env: Env) -> None:
    async def main() -> None:
        provider, task = await env.provider("svc-callee")
        blocked = env.leaf("blocked")
        env.add_rule("callee-deny", blocked.uri, deny=True, caller=provider.uri)
        consumer = await env.agent(blocked)
        deadline = time.monotonic() + 2
        while True:
            result = await _open_result(consumer, "svc-callee")
            if result == (403, "denied (callee): callee-deny") or time.monotonic() > deadline:
                break
        assert result == (403, "denied (callee): callee-deny")
        task.cancel()
        consumer.close()
        provider.close()

    run(main)


async def _open_result(consumer: ProbeAgent, service: str) -> tuple[int, str] | bytes:
    """Open, write b"x"; the reject (code, reason) or the echoed bytes."""
    stream = consumer.open(service)
    stream.write(b"x")
    first = await stream.read_exactly(1)
    if first == b"x":
        stream.write(b"", fin=True)
        return first
    rest = await stream.read_to_eof()
    header = first + rest
    assert header[:2] == b"\x20\x13", header  # version 1, STREAM_REJECT
    msg = orp_pb2.StreamReject.FromString(header[8:])
    return msg.code, msg.reason


def test_policy_change_takes_effect_within_a_second(env: Env) -> None:
    async def main() -> None:
        provider, task = await env.provider("svc-live")
        consumer = await env.agent()
        assert await _open_result(consumer, "svc-live") == b"x"
        for deny in (True, False):
            if deny:
                env.add_rule("live-deny", "svc-live", deny=True)
                want: tuple[int, str] | bytes = (403, "denied: live-deny")
            else:
                env.remove_rule("live-deny")
                want = b"x"
            start = time.monotonic()
            while (got := await _open_result(consumer, "svc-live")) != want:
                assert time.monotonic() - start < 1.0, got
        task.cancel()
        consumer.close()
        provider.close()

    run(main)


def test_provider_rejects_503(env: Env) -> None:
    async def main() -> None:
        provider, task = await env.provider("svc-rej", reject=True)
        consumer = await env.agent()
        assert await reject_of(consumer.open("svc-rej")) == (503, "provider rejected")
        task.cancel()
        consumer.close()
        provider.close()

    run(main)


def test_early_data_reaches_the_provider_before_it_accepts(env: Env) -> None:
    payload = os.urandom(1024 * 1024)  # 4 x the relay's window: credit must flow before accept

    async def main() -> None:
        provider = await env.agent()
        env.ctl.allow_bind(provider.uri, "svc-early")
        assert (await provider.register_bound("svc-early")).type == FrameType.REGISTER_ACK
        consumer = await env.agent()
        stream = consumer.open("svc-early", stream_id=0xEA51)
        stream.write(payload, fin=True)
        incoming = await asyncio.wait_for(provider.incoming.get(), 5)
        assert (await incoming.read_frame()).type == FrameType.INCOMING_STREAM
        assert await incoming.read_to_eof(timeout=20) == payload  # no answer yet
        incoming.send_frame(FrameType.STREAM_ACCEPT)
        incoming.write(b"done", fin=True)
        assert await stream.read_to_eof() == b"done"
        for agent in (consumer, provider):
            ready = await agent.control_frame()
            assert ready.type == FrameType.STREAM_READY
        # a provider that read early data and rejects: the consumer still reads
        # exactly one STREAM_REJECT, then EOF
        stream = consumer.open("svc-early")
        stream.write(b"discarded", fin=True)
        incoming = await asyncio.wait_for(provider.incoming.get(), 5)
        assert (await incoming.read_frame()).type == FrameType.INCOMING_STREAM
        assert await incoming.read_to_eof() == b"discarded"
        incoming.send_frame(FrameType.STREAM_REJECT, orp_pb2.StreamReject(code=502, reason="x"))
        incoming.write(b"", True)
        assert await reject_of(stream) == (503, "provider rejected")
        consumer.close()
        provider.close()

    run(main)


def test_stream_id_collision_409(env: Env) -> None:
    async def main() -> None:
        provider, task = await env.provider("svc-col")
        first, second = await env.agent(), await env.agent()
        s1 = first.open("svc-col", stream_id=0xC011)
        s1.write(b"a")
        assert await s1.read_exactly(1) == b"a"
        s2 = second.open("svc-col", stream_id=0xC011)
        assert await reject_of(s2) == (409, "stream id collision")
        s1.write(b"b")  # the first splice is unaffected
        assert await s1.read_exactly(1) == b"b"
        task.cancel()
        for agent in (first, second, provider):
            agent.close()

    run(main)


def test_one_audit_event_per_decision(env: Env) -> None:
    async def main() -> tuple[str, str]:
        provider, task = await env.provider("svc-audit")
        consumer = await env.agent()
        assert await _open_result(consumer, "svc-audit") == b"x"
        task.cancel()
        consumer.close()
        provider.close()
        return consumer.uri, provider.uri

    consumer_uri, provider_uri = run(main)
    audit = ag.AuditStub(env.admin)

    def query(caller: str, target: str) -> list[ap.AuditEvent]:
        req = ap.QueryAuditRequest(tenant=TENANT, caller=caller, target=target)
        return list(audit.Query(req, timeout=5))

    wait_for(
        lambda: query(consumer_uri, "svc-audit") and query(provider_uri, consumer_uri),
        5,
        "audit events recorded",
        interval=0.05,
    )
    caller_side, callee_side = query(consumer_uri, "svc-audit"), query(provider_uri, consumer_uri)
    assert len(caller_side) == 1 and len(callee_side) == 1
    assert caller_side[0].decision == pp.DECISION_ALLOW and caller_side[0].reason == "allow-all"


def test_debug_metrics(env: Env) -> None:
    m = env.metrics()
    for name in ("stream_active", "splice_buffer_bytes", "agents_connected"):
        assert name in m["gauges"]
    for name in ("bytes_forwarded", "stream_rejects", "policy_cache_misses"):
        assert name in m["counters"]
    assert "stream_open_duration" in m["histograms"]
