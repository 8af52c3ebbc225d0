"""The SDK: graph building, the local engine and (``connect``) the remote client."""

from gradwire.client.graph import OP_FUNCTIONS, Graph, Value, call
from gradwire.client.errors import (
    Cancelled, DeadlineExceeded, GradwireError, Internal, InvalidGraph, NotFound, ResourceExhausted, Unavailable,
)
from gradwire.client.errors import PermissionDenied
from gradwire.client.errors import Unauthenticated
from gradwire.client.local import LocalEngine, local
from gradwire.client.jobs import JobEvent, TrainingJob
from gradwire.client.remote import Client, RemoteResult, Session, connect
from gradwire.client.onnx_io import from_onnx, to_onnx  # needs the onnx extra only when called
from gradwire.worker import optim
from gradwire.worker.engine import ExecutionError, Result
from gradwire.worker.validate import GraphError, LimitError

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
