"""OutRelay: an outbound-only service relay.

Every workload dials out: agents keep an mTLS QUIC session to a relay, the
relay splices consumer and provider streams, and a controller decides who
may talk to whom.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # ``outrelay.Agent`` without importing the agent (and aioquic) on ``import outrelay``.
    if name == "Agent":
        from outrelay.agent import Agent

        return Agent
    raise AttributeError(f"module 'outrelay' has no attribute {name!r}")
