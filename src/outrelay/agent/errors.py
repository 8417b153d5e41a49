"""Agent errors. Those that end as a STREAM_REJECT carry its code as ``code``.

"The relay or peer refused" (:class:`StreamRejected`, :class:`StreamFailed`)
is kept apart from "this agent refuses" (:class:`ProviderRefusal` and its
subclasses, turned into a STREAM_REJECT frame in one place, the provider
flow of :mod:`outrelay.agent.client`).
"""

from __future__ import annotations

from outrelay.errors import OutRelayError


class AgentError(OutRelayError):
    """Base class of the agent's errors."""


class OpenError(AgentError, ConnectionError):
    """``open_connection`` did not get a usable stream.

    A ``ConnectionError``: on the early-data path (``open_connection(...,
    early_data=True)``) it is raised by the stream's next read or ``drain``,
    where code handling connection errors expects one.
    """


class StreamRejected(OpenError):
    """The relay answered OPEN_STREAM with STREAM_REJECT.

    ``code`` is the relay's code (403 policy, 404 unknown service, 409 id
    collision, 502 infrastructure, 503 provider refused) and ``reason`` its text.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"stream rejected: {code} {reason}")
        self.code = code
        self.reason = reason


class StreamFailed(OpenError):
    """The stream ended (FIN or reset) before it was accepted, without a reject frame."""


class NotConnected(AgentError):
    """No relay session is up (not started, stopped, or still reconnecting)."""


class ConnectFailed(AgentError):
    """No relay of the list completed the QUIC handshake and HELLO / HELLO_ACK."""


class HandshakeFailed(AgentError):
    """A relay accepted QUIC but did not answer HELLO with HELLO_ACK in time."""


class RegisterFailed(AgentError):
    """REGISTER got no REGISTER_ACK in time, or the relay refused it.

    A reference relay sends nothing at all when the controller refuses a
    registration (relay.md §5), so a timeout is its only failure signal; an
    OutRelay relay answers with STREAM_REJECT (code and reason in the message).
    """


class RegisterRefused(RegisterFailed):
    """The relay refused a REGISTER with a code and reason (bind denied 403, bad
    name 400): a configuration problem that retrying cannot fix, so the agent
    does not wait for another relay or attempt; it fails with the reason."""


class ProviderRefusal(AgentError):
    """This (provider) agent refuses an incoming stream; ``code`` goes on the wire."""

    code = 502

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NoHandler(ProviderRefusal):
    """No service of that name is exposed here."""

    code = 404

    def __init__(self, reason: str = "no handler") -> None:
        super().__init__(reason)


class CallerLimit(ProviderRefusal):
    """The caller already has its share of concurrent streams to this provider."""

    code = 503

    def __init__(self, reason: str = "caller stream limit reached") -> None:
        super().__init__(reason)


class BackendUnavailable(ProviderRefusal):
    """The local backend could not be dialled (refused, unreachable, timed out)."""

    code = 502


class StreamLost(AgentError, ConnectionResetError):
    """A stream could not be resumed after its relay leg was lost.

    The application sees it as a connection reset (it is a
    ``ConnectionResetError``); ``reason`` says why: no partner within the
    resume window (relay code 504), the ring overran, the peer reset it, ...
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"stream lost: {reason}")
        self.reason = reason
