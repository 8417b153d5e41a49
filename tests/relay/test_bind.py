"""REGISTER at the relay core: the service-name rule and bind rules (issue #12, finding 2)."""

from __future__ import annotations

import pytest

from outrelay.orp import FrameType
from outrelay.policy import Action, PolicyEngine, Rule, Verdict
from outrelay.proto import orp_pb2
from outrelay.relay.errors import ControllerError

from .harness import World, bind_rule, frame

#: Names the finding saw acknowledged; each must now be refused with 400.
BAD_NAMES = ["evil/web", "../acme/web", "web\x00evil", "*", "w" * 5000, "", "Web", "we b", "web."]


def _register(w: World, conn: int, name: str) -> orp_pb2.StreamReject | None:
    """Send REGISTER; the STREAM_REJECT that answers it, or None if it was acknowledged."""
    w.data(conn, 0, frame(FrameType.REGISTER, orp_pb2.Register(service_name=name)))
    last = w.frames(conn, 0)[-1]
    if last.type == FrameType.REGISTER_ACK:
        return None
    assert last.type == FrameType.STREAM_REJECT, last
    return orp_pb2.StreamReject.FromString(last.payload)


def _registered(w: World) -> list[str]:
    return [c.request.service_name for c in w.controller.calls if c.method == "RegisterService"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", [True, False], ids=["policy", "no-policy"])
@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:20])
def test_register_bad_service_name_refused_400_before_the_controller(
    name: str, policy: bool
) -> None:
    engine = PolicyEngine([Rule("bind-all", "acme", "*", "*", action=Action.BIND)])
    w = World(engine if policy else None)
    conn, _ = w.agent()
    rej = _register(w, conn, name)
    assert rej is not None and rej.code == 400
    assert rej.reason.startswith("register rejected: invalid service name ")
    assert len(rej.reason) < 300  # a 5,000-character name is not echoed back whole
    assert _registered(w) == []  # the controller was never asked
    w.data(conn, 0, frame(FrameType.PING))  # the control stream goes on
    assert w.frames(conn, 0)[-1].type == FrameType.PONG


def test_register_without_bind_rule_refused_403_with_reason() -> None:
    # a dial rule for everything grants no registration
    w = World(PolicyEngine([Rule("allow-all", "acme", "*", "*")]))
    conn, uri = w.agent()
    rej = _register(w, conn, "web")
    assert rej is not None
    assert (rej.code, rej.reason) == (
        403,
        f"register rejected: bind denied: {uri} may not provide 'web' (no bind rule allows it)",
    )
    assert _registered(w) == [] and w.core.local.providers("acme", "web") == []


def test_register_with_bind_rule_accepted() -> None:
    w = World(PolicyEngine())
    conn, uri = w.agent()
    w.core.policy.add(bind_rule(uri, "web"))  # type: ignore[union-attr]
    assert _register(w, conn, "web") is None
    assert _registered(w) == ["web"]
    # the rule names this service only
    rej = _register(w, conn, "db")
    assert rej is not None and rej.code == 403


def test_attacker_agent_of_the_same_tenant_cannot_take_over_a_service() -> None:
    w = World(PolicyEngine([Rule("allow-all", "acme", "*", "*")]))
    pconn, puri = w.provider("web")  # the real provider, with its bind rule
    aconn, auri = w.agent()  # another agent of tenant acme, no bind rule
    rej = _register(w, aconn, "web")
    assert rej is not None and rej.code == 403 and auri in rej.reason
    # every open reaches the real provider
    cconn, _ = w.agent()
    for i in range(6):
        w.open(cconn, 4 + 4 * i, "web")
    assert len(w.opened[pconn]) == 6 and not w.opened.get(aconn)


def test_bind_deny_rule_wins_over_allow() -> None:
    w = World(PolicyEngine())
    conn, uri = w.agent()
    w.core.policy.add(bind_rule(uri, "web"))  # type: ignore[union-attr]
    w.core.policy.add(  # type: ignore[union-attr]
        Rule(
            "no-web",
            "acme",
            "outrelay://acme/agent/*",
            "web",
            verdict=Verdict.DENY,
            action=Action.BIND,
        )
    )
    rej = _register(w, conn, "web")
    assert rej is not None and rej.code == 403 and rej.reason.endswith("(bind rule no-web)")


def test_register_during_controller_outage_is_still_checked() -> None:
    # Before: a REGISTER during an outage was acknowledged as deferred, whatever it named.
    w = World(PolicyEngine())
    w.controller.fail["RegisterService"] = ControllerError("down", status="UNAVAILABLE")
    conn, uri = w.agent()
    rej = _register(w, conn, "web")
    assert rej is not None and rej.code == 403
    assert w.core.m_deferred.value == 0
    # with its bind rule, the registration is deferred and acknowledged as before
    w.core.policy.add(bind_rule(uri, "web"))  # type: ignore[union-attr]
    assert _register(w, conn, "web") is None
    assert w.core.m_deferred.value == 1


def test_bind_rule_grants_no_stream() -> None:
    w = World(PolicyEngine([Rule("bind-all", "acme", "*", "*", action=Action.BIND)]))
    w.provider("web")
    cconn, _ = w.agent()
    w.open(cconn, 4, "web")
    assert w.reject_of(cconn, 4) == (403, "denied: no matching rule")
