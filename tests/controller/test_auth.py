"""The role and scope tables of ``outrelay.controller.auth``, without a server."""

from __future__ import annotations

import importlib
from typing import Any

import grpc
import pytest

from outrelay.controller.auth import ANONYMOUS, METHOD_ROLES, SCOPES, check_scope
from outrelay.identity import Identity, Role
from outrelay.proto import audit_pb2 as ap
from outrelay.proto import policy_pb2 as pp
from outrelay.proto import registry_pb2 as rp

ADMIN = Identity.admin("acme", "ops")
RELAY = Identity.relay("eu", "r1")
AGENT = Identity.new_agent("acme")

_R = "/outrelay.control.v1.Registry/"
_P = "/outrelay.control.v1.Policy/"
_A = "/outrelay.control.v1.Audit/"


def all_methods() -> set[str]:
    paths = set()
    for module in ("registry", "policy", "audit", "enrollment"):
        fd = importlib.import_module(f"outrelay.proto.{module}_pb2").DESCRIPTOR
        for service in fd.services_by_name.values():
            paths |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return paths


def test_every_method_has_a_role_entry_and_scopes_are_known() -> None:
    assert set(METHOD_ROLES) == all_methods()
    assert set(SCOPES) <= set(METHOD_ROLES)
    for method, by_role in SCOPES.items():
        assert set(by_role) <= set(METHOD_ROLES[method]) - {ANONYMOUS}, method
    assert METHOD_ROLES[_R + "ListServices"] == {Role.ADMIN}
    assert METHOD_ROLES[_R + "ListRelays"] == {Role.ADMIN}


# (caller, method, request, expected refusal field or None, field value after the check)
CASES: list[tuple[str, Identity, str, Any, str | None, tuple[str, str] | None]] = [
    # admin: own tenant passes, another is refused, empty becomes its own
    ("admin own", ADMIN, _P + "ListPolicies", pp.ListPoliciesRequest(tenant="acme"), None, None),
    ("admin other", ADMIN, _P + "ListPolicies", pp.ListPoliciesRequest(tenant="x"), "tenant", None),
    (
        "admin empty",
        ADMIN,
        _P + "ListPolicies",
        pp.ListPoliciesRequest(),
        None,
        ("tenant", "acme"),
    ),
    (
        "admin remove other",
        ADMIN,
        _P + "RemovePolicy",
        pp.RemovePolicyRequest(tenant="x", id="1"),
        "tenant",
        None,
    ),
    (
        "admin add other",
        ADMIN,
        _P + "AddPolicy",
        pp.AddPolicyRequest(rule=pp.PolicyRule(tenant="x")),
        "rule.tenant",
        None,
    ),
    (
        "admin add empty",
        ADMIN,
        _P + "AddPolicy",
        pp.AddPolicyRequest(rule=pp.PolicyRule()),
        None,
        ("rule.tenant", "acme"),
    ),
    ("admin add no rule", ADMIN, _P + "AddPolicy", pp.AddPolicyRequest(), None, None),
    ("admin audit other", ADMIN, _A + "Query", ap.QueryAuditRequest(tenant="x"), "tenant", None),
    (
        "admin services other",
        ADMIN,
        _R + "ListServices",
        rp.ListServicesRequest(tenant="x"),
        "tenant",
        None,
    ),
    (
        "admin resolve other",
        ADMIN,
        _R + "Resolve",
        rp.ResolveRequest(tenant="x", service_name="s"),
        "tenant",
        None,
    ),
    ("admin relays", ADMIN, _R + "ListRelays", rp.ListRelaysRequest(), None, None),
    # relay: own relay id passes, another is refused, empty is left for the handler
    (
        "relay register own",
        RELAY,
        _R + "RegisterService",
        rp.RegisterServiceRequest(tenant="any", relay_id="r1"),
        None,
        None,
    ),
    (
        "relay register other",
        RELAY,
        _R + "RegisterService",
        rp.RegisterServiceRequest(tenant="any", relay_id="r2"),
        "relay_id",
        None,
    ),
    (
        "relay register empty",
        RELAY,
        _R + "RegisterService",
        rp.RegisterServiceRequest(tenant="any"),
        None,
        ("relay_id", ""),
    ),
    (
        "relay deregister other",
        RELAY,
        _R + "DeregisterAgent",
        rp.DeregisterAgentRequest(tenant="any", relay_id="r2"),
        "relay_id",
        None,
    ),
    (
        "relay upsert other",
        RELAY,
        _R + "UpsertRelay",
        rp.UpsertRelayRequest(id="r2", endpoint="e"),
        "id",
        None,
    ),
    (
        "relay upsert own",
        RELAY,
        _R + "UpsertRelay",
        rp.UpsertRelayRequest(id="r1", endpoint="e"),
        None,
        None,
    ),
    # relays serve every tenant: no tenant scope for them
    (
        "relay resolve any tenant",
        RELAY,
        _R + "Resolve",
        rp.ResolveRequest(tenant="x", service_name="s"),
        None,
        None,
    ),
    (
        "relay list policies any tenant",
        RELAY,
        _P + "ListPolicies",
        pp.ListPoliciesRequest(tenant="x"),
        None,
        None,
    ),
    # the region in a relay certificate is not a tenant
    (
        "relay id equal to region",
        Identity.relay("r2", "r1"),
        _R + "UpsertRelay",
        rp.UpsertRelayRequest(id="r2"),
        "id",
        None,
    ),
]


@pytest.mark.parametrize(
    ("caller", "method", "request_", "refused", "after"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_check_scope(
    caller: Identity,
    method: str,
    request_: Any,
    refused: str | None,
    after: tuple[str, str] | None,
) -> None:
    got = check_scope(method, caller, request_)
    if refused is None:
        assert got is None
    else:
        assert got is not None
        code, message = got
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert message.startswith(f"{refused}: {caller} may only use its own ")
    if after is not None:
        field, value = after
        obj = request_.rule if field.startswith("rule.") else request_
        assert getattr(obj, field.removeprefix("rule.")) == value


def test_no_identity_is_not_scoped() -> None:
    req = pp.ListPoliciesRequest()
    assert check_scope(_P + "ListPolicies", None, req) is None
    assert req.tenant == ""
    assert check_scope(_P + "ListPolicies", AGENT, req) is None  # agents: role table refuses
