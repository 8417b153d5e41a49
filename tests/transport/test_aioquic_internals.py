"""Tripwire: the aioquic internals outrelay.transport relies on are still there.

If this fails after an aioquic upgrade, read the message: it names every
private attribute, signature or heuristic that moved. Fix
``src/outrelay/transport/_aioquic_internals.py`` (and only it), then widen
``TESTED_AIOQUIC`` and the pin in ``pyproject.toml``.
"""

from __future__ import annotations

import aioquic
import pytest
from aioquic.quic.connection import QuicConnection

from outrelay.transport import MiB, StreamDataReceived, check_internals
from outrelay.transport._aioquic_internals import (
    TESTED_AIOQUIC,
    FlowControlledConnection,
    InternalsChanged,
)

from .conftest import PKI
from .pair import Pair

pytestmark = pytest.mark.dataplane


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


def test_internals_present() -> None:
    check_internals()


def test_installed_version_is_in_tested_range() -> None:
    low, high = (_version(part.lstrip("<>=")) for part in TESTED_AIOQUIC.split(","))
    assert low <= _version(aioquic.__version__) < high, (
        f"aioquic {aioquic.__version__} is outside the tested range {TESTED_AIOQUIC}"
    )


def test_check_names_what_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(QuicConnection, "_write_connection_limits")
    with pytest.raises(InternalsChanged, match="_write_connection_limits is missing"):
        check_internals()


def test_the_trap_is_real_plain_aioquic_doubles_the_window(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without our overrides aioquic grows the window on arrival; if this ever
    # stops holding, upstream changed its flow control and the override needs
    # another look.
    monkeypatch.setattr(
        FlowControlledConnection, "_write_stream_limits", QuicConnection._write_stream_limits
    )
    window = 256 * 1024
    server_config = pki.server_config(stream_window=window, connection_window=16 * MiB)
    pair = Pair(pki.client_config(), server_config)
    pair.run(lambda: pair.client.verified and pair.server.verified)
    sid = pair.client.open_stream()
    pair.client.send(sid, b"x" * (4 * window))

    def received() -> int:
        return sum(
            len(e.data)
            for e in pair.server_events
            if isinstance(e, StreamDataReceived) and e.stream_id == sid
        )

    pair.run(lambda: received() > window)
