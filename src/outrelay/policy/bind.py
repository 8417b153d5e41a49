"""Bind decisions: may this agent provide this service? (OutRelay extension)

The relay (on REGISTER, from its policy snapshot) and the controller (on
RegisterService, from its store) ask the same question of the same
``PolicyEngine.decide_bind`` and refuse with the same words, so an agent
reads one reason whichever of the two refused it.
"""

from __future__ import annotations

from outrelay.policy.engine import Decision, PolicyEngine


def bind_refusal(decision: Decision, agent_uri: str, service: str) -> str:
    """The reason a refused registration carries (empty if ``decision`` allows)."""
    if decision.allowed:
        return ""
    why = f"bind rule {decision.rule_id}" if decision.rule_id else "no bind rule allows it"
    return f"bind denied: {agent_uri} may not provide {service!r} ({why})"


def check_bind(engine: PolicyEngine, tenant: str, agent_uri: str, service: str, now_ms: int) -> str:
    """Evaluate the bind rules; the refusal reason, or "" when the registration is allowed."""
    decision = engine.decide_bind(tenant, agent_uri, service, now_ms)
    return bind_refusal(decision, agent_uri, service)
