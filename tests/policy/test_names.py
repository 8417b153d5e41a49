"""The service-name rule and the pattern shapes (outrelay.policy.names)."""

from __future__ import annotations

import pytest

from outrelay.policy.names import (
    InvalidPattern,
    InvalidServiceName,
    check_caller_pattern,
    check_service_name,
    check_target_pattern,
    valid_service_name,
)

GOOD = ["web", "echo", "svc-echo", "db2", "a", "0", "a" * 63, "x-1-y"]
BAD = ["evil/web", "../acme/web", "web\x00evil", "*", "w" * 5000, "", "a" * 64, "Web", "we b",
       "web.", "a.b", "-web", "web-", "we_b", "web\n", "wéb", "acme/web"]  # fmt: skip


@pytest.mark.parametrize("name", GOOD)
def test_good_service_names(name: str) -> None:
    assert valid_service_name(name) and check_service_name(name) == name


@pytest.mark.parametrize("name", BAD, ids=lambda n: repr(n)[:20])
def test_bad_service_names_refused_with_the_rule(name: str) -> None:
    assert not valid_service_name(name)
    with pytest.raises(InvalidServiceName) as info:
        check_service_name(name)
    msg = str(info.value)
    assert "1-63 characters of a-z, 0-9 and '-'" in msg and len(msg) < 250
    assert info.value.code == 400 and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "pattern", ["*", "outrelay://acme/agent/*", "outrelay://*", "outrelay://acme/agent/1234-ab"]
)
def test_good_caller_patterns(pattern: str) -> None:
    assert check_caller_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "pattern", ["not a uri[", "", "c1", "acme/*", "outrelay://acme/agent/x y", "*x", "x" * 2000]
)
def test_bad_caller_patterns(pattern: str) -> None:
    with pytest.raises(InvalidPattern, match="--caller"):
        check_caller_pattern(pattern, "--caller")


def test_target_patterns() -> None:
    for ok in ("web", "web-*", "*", "*-api"):
        assert check_target_pattern(ok, bind=True) == ok
    # callee-side dial rules name the consumer
    assert check_target_pattern("outrelay://acme/agent/*", bind=False)
    for bad in ("evil/web", "Web", "outrelay://acme/agent/*", "a b", "web\x00"):
        with pytest.raises(InvalidPattern, match="service name"):
            check_target_pattern(bad, bind=True)
    with pytest.raises(InvalidPattern):
        check_target_pattern("../x", bind=False)
