"""Exceptions to gRPC status codes, in one place. The server's own errors are members of
gradwire's one hierarchy (``worker/errors.py``), each naming its status; the table below maps
the few foreign exceptions that can reach a handler. Anything else is INTERNAL, reported with
the request id (never UNKNOWN, never a traceback on the wire)."""

from __future__ import annotations

import grpc

from ..worker import errors
from ..worker.cancel import Cancelled


class NotFound(errors.NotFound):
    """An unknown graph, session or job id (or another tenant's: the same answer)."""


class Unauthenticated(errors.Unauthenticated):
    """A call without a known token on a server that requires one (the message names no token)."""


class Overloaded(errors.ResourceExhausted):
    """Too many requests in flight."""


class WorkersUnavailable(errors.Unavailable):
    """The backend could not finish the work (workers kept dying, cluster gone)."""


class StillResuming(errors.Unavailable):
    """A job id not known yet while the server is still resuming its folder's jobs (clients retry
    UNAVAILABLE)."""


class JobNotDone(errors.FailedPrecondition):
    """A training job's result was asked for before it finished (or after it failed)."""


class PermissionDenied(errors.PermissionDenied):
    """A request for something the server's configuration does not allow (a path outside the data roots)."""


class DeadlineExceeded(errors.DeadlineExceeded):
    """The client's deadline passed or the call was cancelled while shards were running."""


STATUS_TABLE: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (Cancelled, grpc.StatusCode.DEADLINE_EXCEEDED),  # the engine's token: the client is gone or its deadline passed
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, errors.GradwireError):
        return grpc.StatusCode[exc.status]
    for kind, code in STATUS_TABLE:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL
