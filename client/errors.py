"""The SDK's exceptions: one hierarchy, each carrying the gRPC status code and the server's message."""

from __future__ import annotations

import grpc


class GradwireError(Exception):
    code: grpc.StatusCode | None = None

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name if self.code else 'ERROR'}: {self.message}"


class InvalidGraph(GradwireError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(GradwireError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotFound(GradwireError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(GradwireError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(GradwireError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(GradwireError):
    code = grpc.StatusCode.CANCELLED


class PermissionDenied(GradwireError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(GradwireError):
    """The server requires a token (``gw.connect(address, token=...)`` or ``GRADWIRE_TOKEN``) and
    the call carried none, or one it does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Internal(GradwireError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE = {cls.code: cls for cls in (InvalidGraph, ResourceExhausted, NotFound, Unavailable,
                                      DeadlineExceeded, Cancelled, Internal, PermissionDenied,
                                      Unauthenticated)}


def from_status(code: grpc.StatusCode, message: str) -> GradwireError:
    return _BY_CODE.get(code, GradwireError)(message, code)
