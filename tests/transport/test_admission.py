"""The address-validation policy in memory: Retry tokens, the Retry threshold, the half-open cap."""

from __future__ import annotations

import pytest

from outrelay.transport import TransportConfig
from outrelay.transport.admission import (
    MAC_SIZE,
    Admission,
    AdmissionMeters,
    InvalidToken,
    RetryMode,
    RetryTokens,
    Verdict,
    check_settings,
)

V1 = 0x00000001
ADDR = ("127.0.0.1", 40000)
ODCID = bytes(range(8))
RSCID = b"\xaa" * 8
KEY = b"k" * 32


def _token(tokens: RetryTokens, now: float = 100.0) -> bytes:
    return tokens.mint(version=V1, addr=ADDR, odcid=ODCID, retry_scid=RSCID, now=now)


# -- tokens -----------------------------------------------------------------


def test_token_round_trip_gives_the_original_dcid() -> None:
    tokens = RetryTokens(KEY)
    token = _token(tokens)
    assert tokens.check(token, version=V1, addr=ADDR, dcid=RSCID, now=101.0) == ODCID


def test_token_works_for_ipv6_addresses() -> None:
    tokens = RetryTokens(KEY)
    addr = ("::1", 443, 0, 0)
    token = tokens.mint(version=V1, addr=addr, odcid=ODCID, retry_scid=RSCID, now=1.0)
    assert tokens.check(token, version=V1, addr=addr, dcid=RSCID, now=1.0) == ODCID


@pytest.mark.parametrize(
    ("addr", "what"),
    [(("127.0.0.2", 40000), "another host"), (("127.0.0.1", 40001), "another port")],
)
def test_token_from_another_address_is_refused(addr: tuple[str, int], what: str) -> None:
    tokens = RetryTokens(KEY)
    with pytest.raises(InvalidToken, match="does not match"):
        tokens.check(_token(tokens), version=V1, addr=addr, dcid=RSCID, now=100.0)


def test_token_for_another_retry_connection_id_is_refused() -> None:
    tokens = RetryTokens(KEY)
    with pytest.raises(InvalidToken, match="does not match"):
        tokens.check(_token(tokens), version=V1, addr=ADDR, dcid=b"\xbb" * 8, now=100.0)


def test_token_for_another_quic_version_is_refused() -> None:
    tokens = RetryTokens(KEY)
    with pytest.raises(InvalidToken, match="does not match"):
        tokens.check(_token(tokens), version=0x6B3343CF, addr=ADDR, dcid=RSCID, now=100.0)


def test_expired_token_is_refused() -> None:
    tokens = RetryTokens(KEY, lifetime=10.0)
    token = _token(tokens, now=100.0)
    assert tokens.check(token, version=V1, addr=ADDR, dcid=RSCID, now=110.0) == ODCID
    with pytest.raises(InvalidToken, match="expired"):
        tokens.check(token, version=V1, addr=ADDR, dcid=RSCID, now=110.01)


def test_token_from_the_future_is_refused() -> None:
    tokens = RetryTokens(KEY)
    with pytest.raises(InvalidToken, match="future"):
        tokens.check(_token(tokens, now=200.0), version=V1, addr=ADDR, dcid=RSCID, now=100.0)


def test_token_minted_with_another_key_is_refused() -> None:
    token = _token(RetryTokens(b"a" * 32))
    with pytest.raises(InvalidToken, match="does not match"):
        RetryTokens(b"b" * 32).check(token, version=V1, addr=ADDR, dcid=RSCID, now=100.0)


def test_every_process_draws_its_own_key() -> None:
    token = _token(RetryTokens())
    with pytest.raises(InvalidToken):
        RetryTokens().check(token, version=V1, addr=ADDR, dcid=RSCID, now=100.0)


def test_tampered_token_is_refused_whatever_byte_changes() -> None:
    tokens = RetryTokens(KEY)
    token = _token(tokens)
    for i in range(len(token)):
        for flip in (0x01, 0x80):
            bad = bytearray(token)
            bad[i] ^= flip
            with pytest.raises(InvalidToken):
                tokens.check(bytes(bad), version=V1, addr=ADDR, dcid=RSCID, now=100.0)


@pytest.mark.parametrize(
    ("token", "match"),
    [
        (b"", "too short"),
        (b"\x01" * (10 + MAC_SIZE - 1), "too short"),
        (b"\x02" + bytes(9 + MAC_SIZE), "unknown token format"),
        (b"\x01" + bytes(8) + b"\x05" + bytes(MAC_SIZE), "length mismatch"),
        (b"\x01" + bytes(8) + b"\xff" + bytes(MAC_SIZE + 3), "length mismatch"),
    ],
)
def test_malformed_token_is_refused(token: bytes, match: str) -> None:
    with pytest.raises(InvalidToken, match=match):
        RetryTokens(KEY).check(token, version=V1, addr=ADDR, dcid=RSCID, now=100.0)


def test_token_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="lifetime"):
        RetryTokens(lifetime=0)
    with pytest.raises(ValueError, match="16 bytes"):
        RetryTokens(b"short")


# -- the policy -------------------------------------------------------------


class _Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def set(self, value: int) -> None:
        self.value = value


def _meters() -> AdmissionMeters:
    return AdmissionMeters(
        half_open=_Count(),
        retries=_Count(),
        invalid_tokens=_Count(),
        dropped_full=_Count(),
        accepted=_Count(),
        connections=_Count(),
    )


def _value(meter: object) -> int:
    assert isinstance(meter, _Count)
    return meter.value


def _admission(mode: str, threshold: int = 2, cap: int = 4) -> Admission:
    cids = iter(bytes([n]) * 8 for n in range(1, 255))
    return Admission(
        mode,
        retry_threshold=threshold,
        max_half_open=cap,
        tokens=RetryTokens(KEY),
        new_cid=lambda: next(cids),
        meters=_meters(),
    )


def _fill(adm: Admission, n: int) -> None:
    for _ in range(n):
        decision = adm.initial(version=V1, addr=ADDR, dcid=ODCID, token=b"", now=100.0)
        assert decision.verdict is Verdict.ACCEPT
        adm.opened()


def test_never_accepts_up_to_the_cap_then_drops() -> None:
    adm = _admission("never", threshold=2, cap=3)
    _fill(adm, 3)
    decision = adm.initial(version=V1, addr=ADDR, dcid=ODCID, token=b"", now=100.0)
    assert decision.verdict is Verdict.DROP
    assert decision.reason == "half-open cap reached"
    assert _value(adm.meters.dropped_full) == 1
    assert _value(adm.meters.retries) == 0
    adm.settled()
    assert adm.initial(version=V1, addr=ADDR, dcid=ODCID, token=b"", now=100.0).verdict is (
        Verdict.ACCEPT
    )


def test_auto_accepts_below_the_threshold_and_retries_from_it() -> None:
    adm = _admission("auto", threshold=2, cap=4)
    _fill(adm, 2)
    assert adm.under_load
    decision = adm.initial(version=V1, addr=ADDR, dcid=ODCID, token=b"", now=100.0)
    assert decision.verdict is Verdict.RETRY
    assert decision.retry_scid == b"\x01" * 8
    assert (
        adm.tokens.check(decision.token, version=V1, addr=ADDR, dcid=decision.retry_scid, now=100.5)
        == ODCID
    )
    assert _value(adm.meters.retries) == 1
    assert adm.half_open == 2  # a Retry creates nothing


def test_auto_admits_a_validated_client_until_the_cap_and_drops_beyond() -> None:
    adm = _admission("auto", threshold=1, cap=2)
    _fill(adm, 1)
    retry = adm.initial(version=V1, addr=ADDR, dcid=ODCID, token=b"", now=100.0)
    assert retry.verdict is Verdict.RETRY and retry.retry_scid is not None
    back = adm.initial(version=V1, addr=ADDR, dcid=retry.retry_scid, token=retry.token, now=100.1)
    assert back.verdict is Verdict.ACCEPT
    assert back.original_dcid == ODCID and back.retry_scid == retry.retry_scid
    adm.opened()
    again = adm.initial(version=V1, addr=ADDR, dcid=retry.retry_scid, token=retry.token, now=100.2)
    assert again.verdict is Verdict.DROP  # cap of 2 reached
    assert _value(adm.meters.dropped_full) == 1


def test_always_retries_every_tokenless_initial_even_when_idle() -> None:
    adm = _admission("always")
    for _ in range(3):
        assert adm.initial(version=V1, addr=ADDR, dcid=ODCID, token=b"", now=1.0).verdict is (
            Verdict.RETRY
        )
    assert adm.half_open == 0
    assert _value(adm.meters.retries) == 3


def test_invalid_token_is_refused_with_invalid_token_when_idle_and_dropped_under_load() -> None:
    adm = _admission("auto", threshold=1, cap=4)
    bad = _token(RetryTokens(b"x" * 32))
    idle = adm.initial(version=V1, addr=ADDR, dcid=RSCID, token=bad, now=100.0)
    assert idle.verdict is Verdict.INVALID_TOKEN
    assert "does not match" in idle.reason
    _fill(adm, 1)
    loaded = adm.initial(version=V1, addr=ADDR, dcid=RSCID, token=bad, now=100.0)
    assert loaded.verdict is Verdict.DROP
    assert _value(adm.meters.invalid_tokens) == 2


def test_spoofed_token_for_another_address_is_not_admitted() -> None:
    adm = _admission("always")
    retry = adm.initial(version=V1, addr=ADDR, dcid=ODCID, token=b"", now=100.0)
    assert retry.retry_scid is not None
    stolen = adm.initial(
        version=V1, addr=("127.0.0.1", 40001), dcid=retry.retry_scid, token=retry.token, now=100.0
    )
    assert stolen.verdict is Verdict.INVALID_TOKEN


def test_half_open_gauge_follows_opened_and_settled() -> None:
    adm = _admission("never", threshold=2, cap=4)
    _fill(adm, 3)
    assert _value(adm.meters.half_open) == 3
    assert _value(adm.meters.accepted) == 3
    adm.settled()
    adm.settled()
    assert adm.half_open == 1
    assert _value(adm.meters.half_open) == 1


@pytest.mark.parametrize(
    ("mode", "threshold", "cap", "match"),
    [
        ("sometimes", 1, 2, "auto, always or never"),
        ("auto", 1, 0, "at least 1"),
        ("auto", -1, 2, "negative"),
        ("auto", 3, 2, "must not exceed"),
    ],
)
def test_bad_settings_are_refused(mode: str, threshold: int, cap: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_settings(mode, threshold, cap)
    with pytest.raises(ValueError, match=match):
        TransportConfig(
            cert=None, key=None, ca=None, retry=mode, retry_threshold=threshold, max_half_open=cap
        )


def test_defaults_are_auto_with_a_threshold_below_the_cap() -> None:
    config = TransportConfig(cert=None, key=None, ca=None)
    assert check_settings(config.retry, config.retry_threshold, config.max_half_open) is (
        RetryMode.AUTO
    )
    assert 0 < config.retry_threshold < config.max_half_open
    assert config.retry_token_lifetime == 10.0
