"""OutRelay: an outbound-only service relay.

Every workload dials out: agents keep an mTLS QUIC session to a relay, the
relay splices consumer and provider streams, and a controller decides who
may talk to whom.
"""

__version__ = "0.1.0"
