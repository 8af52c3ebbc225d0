"""gradwire's one error hierarchy, rooted at ``GradwireError``: the engine, the graph builder,
``gw.local()``, the server's status table and ``gw.connect()`` all raise these, so the same
fault is the same class, with the same message, wherever it is found.

Each class names its gRPC status code (``status``, a name, so the engine imports no gRPC;
``code`` is the ``grpc.StatusCode``). ``str(error)`` is the message alone.
"""

from __future__ import annotations


class GradwireError(Exception):
    status = "UNKNOWN"

    def __init__(self, message: str, node: str | None = None, op: str | None = None):
        where = f"node {node!r}" + (f" (op {op!r})" if op else "") + ": " if node else ""
        super().__init__(where + message)
        self.message = where + message
        self.node, self.op = node, op

    @property
    def code(self):
        import grpc  # only where a code is asked for: the engine itself never needs gRPC

        return grpc.StatusCode[self.status]

    def __str__(self) -> str:
        return self.message


class InvalidGraph(GradwireError, ValueError):
    """A graph or request that cannot run (INVALID_ARGUMENT). ``node``/``op`` name the culprit."""

    status = "INVALID_ARGUMENT"


class ResourceExhausted(GradwireError):
    """Over a configured limit, or the server is at capacity (RESOURCE_EXHAUSTED)."""

    status = "RESOURCE_EXHAUSTED"


class NotFound(GradwireError):
    status = "NOT_FOUND"


class Unavailable(GradwireError):
    status = "UNAVAILABLE"


class DeadlineExceeded(GradwireError):
    status = "DEADLINE_EXCEEDED"


class Cancelled(GradwireError):
    status = "CANCELLED"


class PermissionDenied(GradwireError):
    status = "PERMISSION_DENIED"


class Unauthenticated(GradwireError):
    """The server requires a token (``gw.connect(address, token=...)`` or ``GRADWIRE_TOKEN``) and
    the call carried none, or one it does not know."""

    status = "UNAUTHENTICATED"


class FailedPrecondition(GradwireError):
    status = "FAILED_PRECONDITION"


class Internal(GradwireError):
    status = "INTERNAL"


BY_STATUS: dict[str, type[GradwireError]] = {
    cls.status: cls for cls in (InvalidGraph, ResourceExhausted, NotFound, Unavailable, DeadlineExceeded, Cancelled,
                                PermissionDenied, Unauthenticated, FailedPrecondition, Internal)}


def from_status(status: str, message: str) -> GradwireError:
    """The error a status (by name) stands for, with its message."""
    cls = BY_STATUS.get(status, GradwireError)
    error = cls(message)
    if cls is GradwireError:
        error.status = status
    return error
