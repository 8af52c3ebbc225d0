"""The one table from domain errors to gRPC status codes. Anything not in it is INTERNAL,
reported with the request id (never UNKNOWN, never a traceback on the wire)."""

from __future__ import annotations

import grpc

from gradwire.worker.cancel import Cancelled
from gradwire.worker.validate import GraphError, LimitError


class NotFound(LookupError):
    """An unknown graph or session id."""


class Unauthenticated(Exception):
    """A call without a known token on a server that requires one (the message names no token)."""


class Overloaded(RuntimeError):
    """Too many requests in flight."""


class WorkersUnavailable(RuntimeError):
    """The backend could not finish the work (workers kept dying, cluster gone)."""


class StillResuming(RuntimeError):
    """A job id not known yet while the server is still resuming its folder's jobs (retryable)."""


class JobNotDone(RuntimeError):
    """A training job's result was asked for before it finished (or after it failed)."""


class PermissionDenied(PermissionError):
    """A request for something the server's configuration does not allow (a path outside the data roots)."""


class DeadlineExceeded(TimeoutError):
    """The client's deadline passed or the call was cancelled while shards were running."""


STATUS_TABLE: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (LimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),  # before its base class GraphError
    (GraphError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (WorkersUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StillResuming, grpc.StatusCode.UNAVAILABLE),  # clients retry UNAVAILABLE
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.DEADLINE_EXCEEDED),  # the client is gone or its deadline passed
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (JobNotDone, grpc.StatusCode.FAILED_PRECONDITION),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
]


def status_for(exc: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS_TABLE:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL
