"""Relay errors: each refusal carries the STREAM_REJECT code it maps to.

The relay core raises (or builds) these while deciding what to do with an
OPEN_STREAM; :func:`reject_frame` turns one into the STREAM_REJECT frame the
consumer reads. That is the only place a reject frame is made (relay.md §7.1).

``reason`` is the exact wire text of the reference where one exists.
"""

from __future__ import annotations

from outrelay.errors import OutRelayError
from outrelay.orp import FrameType, encode_message
from outrelay.proto import orp_pb2


class RelayError(OutRelayError):
    """Base class of relay errors; ``code`` is the STREAM_REJECT code (0: none)."""

    #: Default wire reason when none is given.
    default_reason: str = "relay error"

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason if reason is not None else self.default_reason
        super().__init__(self.reason)


class Denied(RelayError):
    """Policy refused the stream (caller-side or callee-side)."""

    code = 403
    default_reason = "denied: no matching rule"


class BadRequest(RelayError):
    """The agent sent a malformed request, e.g. a REGISTER whose service name
    breaks the rule of ``outrelay.policy.names`` (OutRelay extension)."""

    code = 400
    default_reason = "bad request"


class NotFound(RelayError):
    """No usable provider for the target service."""

    code = 404
    default_reason = "service not found"


class Collision(RelayError):
    """The stream id is already paired with a different (consumer, provider)."""

    code = 409
    default_reason = "stream id collision"


class BadGateway(RelayError):
    """We could not reach the provider (stream open failed, remote provider)."""

    code = 502
    default_reason = "provider stream open failed"


class Unavailable(RelayError):
    """The provider refused the stream, or the controller is unavailable."""

    code = 503
    default_reason = "provider rejected"


class CallerLimit(Unavailable):
    """The caller already has its share of concurrent streams to this provider."""

    default_reason = "caller stream limit reached"


class ProviderBusy(Unavailable):
    """The provider's connection allows no more concurrent streams right now."""

    default_reason = "provider stream limit reached"


class ResumeRefused(RelayError):
    """A STREAM_RESUME / MIGRATE_TO_RELAY half that will never be paired."""

    code = 409
    default_reason = "resume: superseded by a newer half"


class ResumeDenied(Denied):
    """A resume half from an agent that is not one of the stream's two agents."""

    default_reason = "resume: not a party to this stream"


class ResumeExpired(RelayError):
    """No partner half arrived within the resume window."""

    code = 504
    default_reason = "resume: no peer within the resume window"


class ControllerError(RelayError):
    """A controller RPC failed; ``status`` is the gRPC status name."""

    code = 503
    default_reason = "controller unavailable"

    def __init__(self, reason: str | None = None, *, status: str = "UNKNOWN") -> None:
        super().__init__(reason)
        self.status = status


#: gRPC statuses that mean "the controller could not be reached or did not answer".
TRANSIENT = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "ABORTED"}
)

#: gRPC statuses that mean "the controller refused" rather than "it failed".
_REFUSALS = frozenset(
    {"INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED", "FAILED_PRECONDITION"}
)


def register_refusal(err: ControllerError) -> RelayError:
    """The error an agent gets for a REGISTER the controller did not accept.

    A refusal (bad argument, permission) is a 403; anything else (controller
    down, timeout, internal error) is a 503.
    """
    reason = f"register rejected: {err.reason}"
    if err.status in _REFUSALS:
        return Denied(reason)
    return Unavailable(reason)


def reject_frame(err: RelayError) -> bytes:
    """The STREAM_REJECT frame for ``err`` (the one error -> wire boundary)."""
    return encode_message(
        FrameType.STREAM_REJECT, orp_pb2.StreamReject(code=err.code, reason=err.reason)
    )
