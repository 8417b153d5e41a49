"""Identity URI grammar, canonical form and every error case of spec §1."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outrelay.identity import (
    Identity,
    IdentityError,
    InvalidAdminName,
    InvalidPath,
    InvalidRelayID,
    InvalidScheme,
    InvalidTenant,
    InvalidURI,
    InvalidUUID,
    Role,
    parse,
    parse_uuid,
)

U = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"


@pytest.mark.parametrize(
    ("uri", "canonical", "role", "tenant", "ident"),
    [
        (f"outrelay://acme/agent/{U}", f"outrelay://acme/agent/{U}", Role.AGENT, "acme", U),
        (f"outrelay://acme/agent/{U.upper()}", f"outrelay://acme/agent/{U}", Role.AGENT, "acme", U),
        (f"outrelay://acme/agent/{{{U}}}", f"outrelay://acme/agent/{U}", Role.AGENT, "acme", U),
        (
            f"outrelay://acme/agent/urn:uuid:{U}",
            f"outrelay://acme/agent/{U}",
            Role.AGENT,
            "acme",
            U,
        ),
        (
            f"outrelay://acme/agent/URN:UUID:{U}",
            f"outrelay://acme/agent/{U}",
            Role.AGENT,
            "acme",
            U,
        ),
        (
            f"outrelay://acme/agent/{U.replace('-', '')}",
            f"outrelay://acme/agent/{U}",
            Role.AGENT,
            "acme",
            U,
        ),
        (
            "outrelay://acme/agent/00000000-0000-0000-0000-000000000000",
            "outrelay://acme/agent/00000000-0000-0000-0000-000000000000",
            Role.AGENT,
            "acme",
            "00000000-0000-0000-0000-000000000000",
        ),
        (
            "outrelay://eu-west-1/relay/r1",
            "outrelay://eu-west-1/relay/r1",
            Role.RELAY,
            "eu-west-1",
            "r1",
        ),
        ("OUTRELAY://acme/relay/r1", "outrelay://acme/relay/r1", Role.RELAY, "acme", "r1"),
        ("outrelay://acme-/relay/r1-", "outrelay://acme-/relay/r1-", Role.RELAY, "acme-", "r1-"),
        ("outrelay://acme/admin/alice", "outrelay://acme/admin/alice", Role.ADMIN, "acme", "alice"),
        # userinfo, query and fragment are ignored; the path is percent-decoded
        (
            "outrelay://user:pw@acme/relay/r1?x=1#frag",
            "outrelay://acme/relay/r1",
            Role.RELAY,
            "acme",
            "r1",
        ),
        ("outrelay://acme/relay%2Fr1", "outrelay://acme/relay/r1", Role.RELAY, "acme", "r1"),
        ("outrelay://acme/relay/%72%31", "outrelay://acme/relay/r1", Role.RELAY, "acme", "r1"),
    ],
)
def test_parse_valid(uri: str, canonical: str, role: Role, tenant: str, ident: str) -> None:
    identity = parse(uri)
    assert (identity.role, identity.tenant, identity.id) == (role, tenant, ident)
    assert str(identity) == canonical == identity.uri
    assert parse(canonical) == identity


LONG = "a" * 63


@pytest.mark.parametrize(
    ("uri", "error", "names"),
    [
        # step 0: generic URL parse
        ("outrelay://ac me/relay/r1", InvalidURI, "' '"),
        ("outrelay://acme/relay/r1\n", InvalidURI, "control"),
        ("outrelay://acme\x00/relay/r1", InvalidURI, "control"),
        ("outrelay://acme:port/relay/r1", InvalidURI, "port"),
        ("outrelay://acme/relay/%zz", InvalidURI, "escape"),
        ("://acme/relay/r1", InvalidURI, "scheme"),
        # step 1: scheme
        ("", InvalidScheme, "''"),
        ("https://acme/relay/r1", InvalidScheme, "'https'"),
        ("acme/relay/r1", InvalidScheme, "''"),
        ("outrelayx://acme/relay/r1", InvalidScheme, "outrelayx"),
        # step 2: tenant (host incl. port)
        ("outrelay:///agent/" + U, InvalidTenant, "''"),
        ("outrelay://ACME/agent/" + U, InvalidTenant, "'ACME'"),
        ("outrelay://acme:443/agent/" + U, InvalidTenant, "'acme:443'"),
        ("outrelay://-acme/relay/r1", InvalidTenant, "'-acme'"),
        ("outrelay://ac_me/relay/r1", InvalidTenant, "'ac_me'"),
        ("outrelay://ac.me/relay/r1", InvalidTenant, "'ac.me'"),
        (f"outrelay://{LONG}a/relay/r1", InvalidTenant, LONG),
        ("outrelay:acme/relay/r1", InvalidTenant, "''"),
        ("outrelay://[::1]/relay/r1", InvalidTenant, "[::1]"),
        # step 3: path shape
        ("outrelay://acme", InvalidPath, "''"),
        ("outrelay://acme/", InvalidPath, "'/'"),
        (f"outrelay://acme/{U}", InvalidPath, U),
        ("outrelay://acme/agent/", InvalidPath, "'/agent/'"),
        (f"outrelay://acme/agent/{U}/", InvalidPath, f"'/agent/{U}/'"),
        ("outrelay://acme//r1", InvalidPath, "unknown role ''"),
        ("outrelay://acme/agent/a/b", InvalidPath, "'/agent/a/b'"),
        # step 4c: unknown role
        ("outrelay://acme/operator/alice", InvalidPath, "'operator'"),
        ("outrelay://acme/Agent/" + U, InvalidPath, "'Agent'"),
        # step 4a: uuid
        ("outrelay://acme/agent/not-a-uuid", InvalidUUID, "not-a-uuid"),
        (f"outrelay://acme/agent/{U[:-1]}g", InvalidUUID, "format"),
        (f"outrelay://acme/agent/({U})", InvalidUUID, "braces"),
        (f"outrelay://acme/agent/urn:uuix:{U}", InvalidUUID, "urn"),
        (f"outrelay://acme/agent/{U.replace('-', '')[:-1]}x", InvalidUUID, "hex"),
        (f"outrelay://acme/agent/{U.replace('-', '_')}", InvalidUUID, "format"),
        # step 4b: relay id
        ("outrelay://acme/relay/R1", InvalidRelayID, "'R1'"),
        ("outrelay://acme/relay/-r1", InvalidRelayID, "'-r1'"),
        (f"outrelay://acme/relay/{LONG}a", InvalidRelayID, LONG),
        ("outrelay://acme/relay/r%201", InvalidRelayID, "'r 1'"),
        # extension: admin name
        ("outrelay://acme/admin/Alice", InvalidAdminName, "'Alice'"),
        ("outrelay://acme/admin/al.ice", InvalidAdminName, "'al.ice'"),
    ],
)
def test_parse_errors(uri: str, error: type[IdentityError], names: str) -> None:
    with pytest.raises(error) as info:
        parse(uri)
    assert isinstance(info.value, IdentityError)
    assert names in str(info.value)
    assert str(info.value).startswith("identity:")


def test_errors_are_distinct_subclasses() -> None:
    classes = {InvalidURI, InvalidScheme, InvalidTenant, InvalidPath, InvalidUUID, InvalidRelayID}
    assert all(issubclass(c, IdentityError) for c in classes)
    assert len(classes) == 6


def test_trailing_newline_never_accepted_by_the_rules() -> None:
    with pytest.raises(InvalidTenant):
        Identity.relay("acme\n", "r1")
    with pytest.raises(InvalidRelayID):
        Identity.relay("acme", "r1\n")
    with pytest.raises(InvalidUUID):
        parse_uuid(U + "\n")


def test_constructors() -> None:
    agent = Identity.new_agent("acme")
    assert agent.role is Role.AGENT and uuid.UUID(agent.id).version == 4
    assert parse(str(agent)) == agent
    assert Identity.agent("acme", uuid.UUID(U)).id == U
    assert Identity.agent("acme", U.upper()).id == U
    assert Identity.relay("eu", "r1").region == "eu"
    assert str(Identity.admin("acme", "ops")) == "outrelay://acme/admin/ops"
    with pytest.raises(InvalidTenant):
        Identity.new_agent("Acme")
    with pytest.raises(InvalidTenant):
        Identity.relay("", "r1")
    with pytest.raises(InvalidRelayID):
        Identity.relay("eu", "r_1")
    with pytest.raises(InvalidAdminName):
        Identity.admin("acme", "")


def test_unknown_role_renders_empty() -> None:
    assert str(Identity("acme", Role.UNKNOWN, "x")) == ""
    assert [str(r) for r in Role] == ["unknown", "agent", "relay", "admin"]
    assert [int(r) for r in Role] == [0, 1, 2, 3]


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(IdentityError):
        parse(b"outrelay://acme/relay/r1")  # type: ignore[arg-type]


labels = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)


@given(tenant=labels, relay_id=labels, agent=st.uuids())
def test_roundtrip(tenant: str, relay_id: str, agent: uuid.UUID) -> None:
    for identity in (Identity.relay(tenant, relay_id), Identity.agent(tenant, agent)):
        assert parse(str(identity)) == identity


@given(st.text(max_size=80))
def test_parse_never_crashes(text: str) -> None:
    try:
        identity = parse(text)
    except IdentityError:
        return
    assert parse(str(identity)) == identity
