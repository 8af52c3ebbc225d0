"""The SDK: graph building, the local engine and (``connect``) the remote client."""

from gradwire.client.graph import OP_FUNCTIONS, Graph, Value, call
from gradwire.client.local import LocalEngine, local
from gradwire.worker.engine import ExecutionError, Result
from gradwire.worker.validate import GraphError, LimitError

globals().update(OP_FUNCTIONS)

__all__ = [
    "Graph", "Value", "call", "local", "LocalEngine", "Result",
    "GraphError", "LimitError", "ExecutionError",
    *OP_FUNCTIONS,
]
