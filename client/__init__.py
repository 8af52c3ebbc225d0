"""The SDK: graph building, the local engine and (``connect``) the remote client."""

from .graph import OP_FUNCTIONS, Graph, Value, call
from .errors import (
    Cancelled, DeadlineExceeded, GradwireError, Internal, InvalidGraph, NotFound, ResourceExhausted, Unavailable,
)
from .errors import PermissionDenied
from .errors import Unauthenticated
from .local import LocalEngine, local
from .jobs import JobEvent, TrainingJob
from .remote import Client, RemoteResult, Session, connect
from .onnx_io import from_onnx, to_onnx  # needs the onnx extra only when called
from ..worker import optim
from ..worker.engine import ExecutionError, Result
from ..worker.validate import GraphError, LimitError

globals().update(OP_FUNCTIONS)

__all__ = [
    "Graph", "Value", "call", "local", "LocalEngine", "Result",
    "connect", "Client", "Session", "RemoteResult", "TrainingJob", "JobEvent", "optim",
    "GradwireError", "InvalidGraph", "ResourceExhausted", "NotFound", "Unavailable", "DeadlineExceeded",
    "Cancelled", "Internal", "PermissionDenied", "Unauthenticated",
    "GraphError", "LimitError", "ExecutionError",
    "from_onnx", "to_onnx",
    *OP_FUNCTIONS,
]
