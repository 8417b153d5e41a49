"""Enrollment tokens: format, every verification failure, replay across a store reopen."""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from outrelay.identity import InvalidTenant, InvalidUUID
from outrelay.pki import (
    ApswTokenStore,
    MemoryTokenStore,
    TokenInvalid,
    TokenIssuer,
    TokenReplay,
    TokenStore,
    TokenVerifier,
)
from outrelay.pki.errors import TokenError

AID = "00000000-0000-0000-0000-00000000000a"


def _segment(token: str, i: int) -> dict[str, Any]:
    part = token.split(".")[i]
    assert "=" not in part
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


@pytest.fixture(params=["memory", "apsw"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> TokenStore:
    if request.param == "memory":
        return MemoryTokenStore()
    s = ApswTokenStore(tmp_path / "tokens.db")
    request.addfinalizer(s.close)
    return s


def test_format(store: TokenStore) -> None:
    before = int(time.time())
    issued = TokenIssuer(store).issue("acme")
    header, claims = _segment(issued.token, 0), _segment(issued.token, 1)
    assert header == {"alg": "EdDSA", "typ": "JWT"}
    assert list(claims) == ["ten", "iss", "aud", "exp", "nbf", "iat", "jti"]
    assert claims["ten"] == "acme"
    assert claims["iss"] == "outrelay-controller"
    assert claims["aud"] == ["outrelay-agent"]
    assert before <= claims["iat"] <= before + 2
    assert claims["nbf"] == claims["iat"] - 1 or claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] in (599, 600, 601)  # default ten minutes
    assert len(claims["jti"]) == 22 and "=" not in claims["jti"]
    assert issued.claims.jti == claims["jti"] and issued.claims.expires == claims["exp"]
    bound = TokenIssuer(store).issue("acme", agent_id=AID.upper(), ttl=dt.timedelta(seconds=30))
    claims = _segment(bound.token, 1)
    assert list(claims)[:2] == ["ten", "aid"] and claims["aid"] == AID
    assert claims["exp"] - claims["iat"] in (29, 30, 31)


def test_issue_validates_inputs(store: TokenStore) -> None:
    with pytest.raises(InvalidTenant):
        TokenIssuer(store).issue("Acme")
    with pytest.raises(InvalidUUID):
        TokenIssuer(store).issue("acme", agent_id="nope")


def test_verify_once_then_replay(store: TokenStore) -> None:
    issued = TokenIssuer(store).issue("acme", agent_id=AID)
    verifier = TokenVerifier(store)
    claims = verifier.verify(issued.token)
    assert (claims.tenant, claims.agent_id, claims.jti) == ("acme", AID, issued.claims.jti)
    with pytest.raises(TokenReplay, match="already used"):
        verifier.verify(issued.token)
    assert not issubclass(TokenReplay, TokenInvalid) and issubclass(TokenReplay, TokenError)


def test_check_does_not_consume(store: TokenStore) -> None:
    issued = TokenIssuer(store).issue("acme")
    verifier = TokenVerifier(store)
    verifier.check(issued.token)
    verifier.check(issued.token)
    verifier.verify(issued.token)


def test_expired_zero_leeway(store: TokenStore) -> None:
    issuer, verifier = TokenIssuer(store), TokenVerifier(store)
    # exp == now (to the second) is already expired: valid only while now < exp
    old = issuer.issue("acme", ttl=dt.timedelta(seconds=600), now=time.time() - 600)
    with pytest.raises(TokenInvalid, match="expired"):
        verifier.verify(old.token)
    # issued 50 ms ago with a 1 ms lifetime
    tiny = issuer.issue("acme", ttl=dt.timedelta(milliseconds=1), now=time.time() - 0.05)
    if tiny.claims.expires <= int(time.time()):
        with pytest.raises(TokenInvalid, match="expired"):
            verifier.verify(tiny.token)


def test_not_yet_valid(store: TokenStore) -> None:
    future = TokenIssuer(store).issue("acme", now=time.time() + 60)
    with pytest.raises(TokenInvalid, match="not yet valid"):
        TokenVerifier(store).verify(future.token)


def _forge(store: TokenStore, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "ten": "acme",
        "iss": "outrelay-controller",
        "aud": ["outrelay-agent"],
        "exp": now + 60,
        "nbf": now - 1,
        "iat": now,
        "jti": "abc",
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return jwt.encode(claims, store.signing_key(), algorithm="EdDSA")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"aud": ["someone-else"]}, "(?i)audience"),
        ({"aud": None}, "aud"),
        ({"iss": "mallory"}, "(?i)issuer"),
        ({"iss": None}, "iss"),
        ({"exp": None}, "exp"),
        ({"jti": None}, "missing jti"),
        ({"jti": ""}, "missing jti"),
        ({"ten": None}, "invalid tenant claim"),
        ({"ten": "ACME"}, "invalid tenant claim"),
        ({"aid": "not-a-uuid"}, "invalid aid claim"),
        ({"aid": 7}, "invalid aid claim"),
    ],
)
def test_bad_claims(store: TokenStore, changes: dict[str, Any], match: str) -> None:
    with pytest.raises(TokenInvalid, match=match):
        TokenVerifier(store).verify(_forge(store, **changes))


def test_single_string_audience_accepted(store: TokenStore) -> None:
    assert TokenVerifier(store).verify(_forge(store, aud="outrelay-agent")).tenant == "acme"


def test_bad_signature_and_algorithms(store: TokenStore) -> None:
    verifier = TokenVerifier(store)
    other = TokenIssuer(MemoryTokenStore()).issue("acme")
    with pytest.raises(TokenInvalid, match="Signature verification failed"):
        verifier.verify(other.token)
    good = TokenIssuer(store).issue("acme").token
    head, body, sig = good.split(".")
    with pytest.raises(TokenInvalid):
        verifier.verify(f"{head}.{body}.{sig[:-4]}AAAA")
    hs = jwt.encode({"ten": "acme"}, "k" * 32, algorithm="HS256")
    with pytest.raises(TokenInvalid, match="unexpected jwt signing method: HS256"):
        verifier.verify(hs)
    none = jwt.encode({"ten": "acme"}, None, algorithm="none")
    with pytest.raises(TokenInvalid, match="signing method: none"):
        verifier.verify(none)
    for garbage in ("", "a.b", "not a token", "a.b.c"):
        with pytest.raises(TokenInvalid):
            verifier.verify(garbage)


def test_restart_keeps_key_and_replay_set(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    with ApswTokenStore(path) as first:
        used = TokenIssuer(first).issue("acme")
        outstanding = TokenIssuer(first).issue("acme", agent_id=AID)
        TokenVerifier(first).verify(used.token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with ApswTokenStore(path) as second:
        verifier = TokenVerifier(second)
        with pytest.raises(TokenReplay):
            verifier.verify(used.token)
        assert verifier.verify(outstanding.token).agent_id == AID
        with pytest.raises(TokenReplay):
            verifier.verify(outstanding.token)


def test_two_stores_on_one_file_share_state(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with ApswTokenStore(path) as a, ApswTokenStore(path) as b:
        assert isinstance(a, TokenStore)
        key_a = a.signing_key().private_bytes_raw()
        assert b.signing_key().private_bytes_raw() == key_a
        assert a.consume("j1", 10**10) is True
        assert b.consume("j1", 10**10) is False


def test_hosted_in_a_foreign_connection(tmp_path: Path) -> None:
    import apsw

    conn = apsw.Connection(str(tmp_path / "controller.db"))
    conn.execute("CREATE TABLE other (x)")
    store = ApswTokenStore(conn)
    assert isinstance(store.signing_key(), ed25519.Ed25519PrivateKey)
    store.close()  # does not close a connection it does not own
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"other", "enrollment_key", "used_tokens"} <= tables
    conn.close()


def test_purge_expired(store: TokenStore) -> None:
    now = int(time.time())
    assert store.consume("new", now + 60)
    assert store.consume("old", now - 10)
    assert store.purge_expired(now) == 1
    assert store.consume("old", now - 10)  # forgotten (its token fails exp anyway)
    assert not store.consume("new", now + 60)
    assert store.consume("other", now + 60)  # each consume also drops expired ids
    assert store.consume("old", now - 10)
    assert store.purge_expired(now) == 1


def test_concurrent_consume_exactly_one_wins(tmp_path: Path) -> None:
    with ApswTokenStore(tmp_path / "t.db") as store:
        issued = TokenIssuer(store).issue("acme")
        verifier = TokenVerifier(store)
        results: list[str] = []

        def attempt() -> None:
            try:
                verifier.verify(issued.token)
                results.append("ok")
            except TokenReplay:
                results.append("replay")

        threads = [threading.Thread(target=attempt) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert sorted(results) == ["ok"] + ["replay"] * 7
