"""Role checks on a verified peer's URI, and the controller's reserved role name."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from outrelay.identity import (
    CONTROLLER_NAME,
    CONTROLLER_NAME_OPTION,
    Identity,
    Role,
    RoleRefused,
    explain_controller_refusal,
    is_reserved_name,
    require_role,
)

RELAY = "outrelay://eu/relay/r1"
AGENT = "outrelay://acme/agent/00000000-0000-0000-0000-000000000001"


def test_accepted_role_returns_the_identity() -> None:
    assert require_role(RELAY, [Role.RELAY]) == Identity.relay("eu", "r1")
    assert require_role(RELAY, [Role.AGENT, Role.RELAY], pinned=RELAY).role is Role.RELAY


@pytest.mark.parametrize(
    ("uri", "roles", "pinned", "message"),
    [
        (
            AGENT,
            [Role.RELAY],
            None,
            "expected a relay identity (outrelay://<region>/relay/<id>); "
            f"the server presented {AGENT} (agent role)",
        ),
        (
            "outrelay://acme/admin/ops",
            [Role.AGENT],
            None,
            "expected an agent identity (outrelay://<tenant>/agent/<uuid>); "
            "the server presented outrelay://acme/admin/ops (admin role)",
        ),
        (
            None,
            [Role.RELAY],
            None,
            "expected a relay identity (outrelay://<region>/relay/<id>); "
            "the server certificate has no URI SAN",
        ),
        (
            "outrelay://eu/relay/r2",
            [Role.RELAY],
            RELAY,
            f"expected the pinned URI {RELAY}; the server presented outrelay://eu/relay/r2",
        ),
        (
            AGENT,
            [Role.RELAY],
            RELAY,  # a wrong role is named as such even when pinned
            "expected a relay identity (outrelay://<region>/relay/<id>); "
            f"the server presented {AGENT} (agent role)",
        ),
    ],
)
def test_refusals_name_expected_and_presented(
    uri: str | None, roles: list[Role], pinned: str | None, message: str
) -> None:
    with pytest.raises(RoleRefused) as info:
        require_role(uri, roles, pinned=pinned, peer="server")
    assert str(info.value) == message


def test_a_uri_that_is_no_identity_is_refused() -> None:
    with pytest.raises(RoleRefused, match=r"presented 'https://relay.example/', not an identity"):
        require_role("https://relay.example/", [Role.RELAY])


def test_pin_is_exact() -> None:
    """A pin is compared as written: a non-canonical spelling of the same relay is refused."""
    with pytest.raises(RoleRefused):
        require_role(RELAY, [Role.RELAY], pinned="OUTRELAY://eu/relay/r1")


@pytest.mark.parametrize(
    ("name", "reserved"),
    [
        (CONTROLLER_NAME, True),
        ("CONTROLLER.OUTRELAY.INVALID.", True),
        ("outrelay.invalid", True),
        ("relay.outrelay.invalid", True),
        ("outrelay.invalid.example", False),
        ("notoutrelay.invalid", False),
        ("localhost", False),
    ],
)
def test_reserved_names(name: str, reserved: bool) -> None:
    assert is_reserved_name(name) is reserved


def test_controller_name_option() -> None:
    assert CONTROLLER_NAME == "controller.outrelay.invalid"
    assert CONTROLLER_NAME_OPTION == ("grpc.ssl_target_name_override", CONTROLLER_NAME)


def test_controller_refusal_is_explained() -> None:
    grpc_text = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Custom "
        "verification check failed with error: UNAUTHENTICATED: Hostname Verification Check failed."
    )
    explained = explain_controller_refusal(grpc_text)
    assert explained.startswith("the server is not the controller: its certificate lacks")
    assert CONTROLLER_NAME in explained and grpc_text in explained
    assert explain_controller_refusal("deadline exceeded") == "deadline exceeded"


def test_relay_controller_client_ignores_a_server_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--controller-server-name cannot replace the role check: ignored with a warning."""
    import asyncio

    from outrelay.pki.devbundle import DevBundleConfig, write_dev_bundle
    from outrelay.relay.controller_client import ControllerClient

    pki = tmp_path / "pki"
    write_dev_bundle(DevBundleConfig(out=pki))
    files = {"cert": pki / "relay-r1.crt", "key": pki / "relay-r1.key", "ca": pki / "ca.crt"}

    async def build(server_name: str) -> None:
        client = ControllerClient(
            "127.0.0.1:1", **{k: str(v) for k, v in files.items()}, server_name=server_name
        )
        await client.close()

    with caplog.at_level(logging.WARNING, logger="outrelay.relay"):
        asyncio.run(build("localhost"))
        asyncio.run(build(""))
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "--controller-server-name is ignored: the controller is checked by its role name "
        f"{CONTROLLER_NAME}"
    ]
