"""The SDK's exceptions: gradwire's one hierarchy (``worker/errors.py``), each carrying its
gRPC status ``.code`` and the message; the same fault raises the same class whether it is
found by the builder, ``gw.local()`` or a server."""

from __future__ import annotations

import grpc

from ..worker.errors import (  # noqa: F401  (re-exported)
    BY_STATUS, Cancelled, DeadlineExceeded, FailedPrecondition, GradwireError, Internal, InvalidGraph, NotFound,
    PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable,
)
from ..worker import errors as _errors


def from_status(code: grpc.StatusCode, message: str) -> GradwireError:
    return _errors.from_status(code.name, message)
