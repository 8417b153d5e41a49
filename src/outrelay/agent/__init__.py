"""The OutRelay agent: one mTLS QUIC session to a relay, providers and consumers.

* :class:`Agent` (:mod:`.client`) is the asyncio SDK; ``outrelay agent`` is
  built on it (:mod:`.runner`).
* :class:`AgentProtocol` (:mod:`.core`) is the sans-IO protocol logic.
* Errors: :class:`StreamRejected` (the relay's STREAM_REJECT code and reason),
  :class:`NotConnected`, :class:`ConnectFailed`, :class:`RegisterFailed`, ...

See ``docs/agent.md``.
"""

from outrelay.agent.client import Agent, certificate_uri
from outrelay.agent.config import AgentConfig, Mapping, RunConfig
from outrelay.agent.core import AgentProtocol
from outrelay.agent.errors import (
    AgentError,
    BackendUnavailable,
    ConnectFailed,
    HandshakeFailed,
    NoHandler,
    NotConnected,
    OpenError,
    ProviderRefusal,
    RegisterFailed,
    RegisterRefused,
    StreamFailed,
    StreamRejected,
)

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "AgentProtocol",
    "BackendUnavailable",
    "ConnectFailed",
    "HandshakeFailed",
    "Mapping",
    "NoHandler",
    "NotConnected",
    "OpenError",
    "ProviderRefusal",
    "RegisterFailed",
    "RegisterRefused",
    "RunConfig",
    "StreamFailed",
    "StreamRejected",
    "certificate_uri",
]
