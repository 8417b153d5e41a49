"""May this REGISTER go to the controller? (OutRelay extension, relay side)

Called by the relay core for every REGISTER, *before* the controller is
asked, so a controller outage (when the relay acknowledges registrations
itself and replays them later) opens no way around the rules:

* a service name that breaks the rule of ``outrelay.policy.names`` is a
  400 (``BadRequest``), checked even with policy disabled;
* with policy enabled, the relay's snapshot of the bind rules must allow
  the agent to provide the name, closed world: no matching ALLOW bind
  rule, or a matching DENY, is a 403 (``Denied``) with the reason.

The refusal is answered with a STREAM_REJECT on the control stream, as a
refusal by the controller is (relay.md §5 sends nothing; the agent hung).
"""

from __future__ import annotations

from outrelay.policy import PolicyEngine
from outrelay.policy.bind import check_bind
from outrelay.policy.names import InvalidServiceName, check_service_name
from outrelay.relay.errors import BadRequest, Denied, RelayError


def check_register(
    policy: PolicyEngine | None, tenant: str, agent_uri: str, service: str, now_ms: int
) -> RelayError | None:
    """The refusal of a REGISTER of ``service`` by ``agent_uri``, or None to go ahead."""
    try:
        check_service_name(service)
    except InvalidServiceName as exc:
        return BadRequest(f"register rejected: {exc}")
    if policy is None:
        return None  # the controller still checks the bind rules
    reason = check_bind(policy, tenant, agent_uri, service, now_ms)
    return Denied(f"register rejected: {reason}") if reason else None
