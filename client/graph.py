"""The graph builder: ``gw.Graph``, graph values with operator sugar, one function per op.

Every node's spec is inferred the moment it is built, so a shape or dtype error surfaces
at the line that caused it, with the node, op and shapes named, not at request time.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

from ..worker.graph import BATCH_REDUCTIONS, GraphDef, Node
from ..worker.lru import LruCache
from ..worker.ops import OPS, Op
from ..worker.spec import TensorSpec, as_dtype
from ..worker.validate import GraphError, infer


class Value:
    """A value in a graph: a batch input, parameter, constant or op output."""

    __array_priority__ = 1000  # numpy defers to our operators: np_array * value builds a node

    def __init__(self, graph: "Graph", name: str, spec: TensorSpec):
        self.graph, self.name, self.spec = graph, name, spec

    @property
    def shape(self):
        return self.spec.shape

    @property
    def dtype(self) -> np.dtype:
        return self.spec.dtype

    def __repr__(self) -> str:
        return f"Value({self.name!r}, {self.spec})"

    def __add__(self, other): return call("add", self, other)
    def __radd__(self, other): return call("add", other, self)
    def __sub__(self, other): return call("sub", self, other)
    def __rsub__(self, other): return call("sub", other, self)
    def __mul__(self, other): return call("mul", self, other)
    def __rmul__(self, other): return call("mul", other, self)
    def __truediv__(self, other): return call("div", self, other)
    def __rtruediv__(self, other): return call("div", other, self)
    def __matmul__(self, other): return call("matmul", self, other)
    def __rmatmul__(self, other): return call("matmul", other, self)
    def __neg__(self): return call("neg", self)
    def __pow__(self, exponent):  # a graph value as exponent: pow's second input, with its gradient
        return call("pow", self, exponent) if isinstance(exponent, Value) else call("pow", self, exponent=float(exponent))

    def __rpow__(self, base): return call("pow", base, self)

    @property
    def T(self) -> "Value":
        return call("transpose", self)


# Graph tokens are never reused (unlike id(), which a new graph gets once an old one is collected).
_tokens = itertools.count()


class Graph:
    """A computational graph under construction. ``graph.graph_def`` is its plain IR.

    Every builder method that changes the graph bumps ``revision``; caches of what is derived
    from a graph (``GraphCache``) key on its token and revision. ``graph_def`` is the live IR,
    to read: edits made to it directly bypass the revision, so a cache keeps serving the graph
    as it was. To edit the IR by hand, edit a copy and pass that ``GraphDef`` itself (keyed by
    content, so every edit counts) or wrap it with ``Graph.from_graph_def``.
    """

    def __init__(self) -> None:
        self._token = next(_tokens)
        self._revision = 0
        self._graph_def = GraphDef()
        self._specs: dict[str, TensorSpec] = {}
        self._ids = itertools.count()
        self._scalar_consts: dict[tuple[float, str], Value] = {}

    def _fresh(self, prefix: str) -> str:
        while True:
            name = f"{prefix}_{next(self._ids)}"
            if name not in self._specs:
                return name

    @property
    def graph_def(self) -> GraphDef:
        return self._graph_def

    @property
    def revision(self) -> int:
        """How many times the builder has changed the graph."""
        return self._revision

    def _changed(self) -> None:
        self._revision += 1

    def _claim(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise GraphError(f"value names must be non-empty strings, got {name!r}")
        if name in self._specs:
            raise GraphError(f"the graph already has a value named {name!r}")
        return name

    def input(self, name: str, shape, dtype="float32") -> Value:
        """A batch input; ``None`` in ``shape`` (normally the leading dim) is the batch size."""
        return self._source(self.graph_def.inputs, name, shape, dtype)

    def param(self, name: str, shape, dtype="float32") -> Value:
        return self._source(self.graph_def.params, name, shape, dtype)

    def _source(self, table, name, shape, dtype) -> Value:
        name = self._claim(name)
        dims = tuple(None if d is None else int(d) for d in shape)
        if any(d is not None and d < 0 for d in dims):
            raise GraphError(f"{name!r}: negative dimension in shape {shape}")
        spec = TensorSpec(dims, as_dtype(dtype))
        table[name] = spec
        self._specs[name] = spec
        self._changed()
        return Value(self, name, spec)

    def const(self, value, dtype=None, name: str | None = None) -> Value:
        """A constant tensor stored in the graph (sent with it, hashed into its id)."""
        array = np.array(value, dtype=None if dtype is None else as_dtype(dtype))
        if dtype is None and array.dtype.kind == "f":
            array = array.astype(np.float32)
        spec = TensorSpec.of(array)
        as_dtype(array.dtype)
        name = self._claim(name) if name else self._fresh("const")
        self.graph_def.constants[name] = array
        self._specs[name] = spec
        self._changed()
        return Value(self, name, spec)

    def scalar(self, value: float, dtype: np.dtype) -> Value:
        key = (float(value), np.dtype(dtype).name)
        if key not in self._scalar_consts:
            self._scalar_consts[key] = self.const(value, dtype)
        return self._scalar_consts[key]

    def add_node(self, op: str, inputs: list[Value], attrs: dict[str, Any], name: str | None = None) -> Value:
        if op not in OPS:
            raise GraphError(f"unknown op {op!r}", name, op)
        node = Node(self._claim(name) if name else self._fresh(op), op, tuple(v.name for v in inputs),
                    {k: v for k, v in attrs.items() if v is not None})
        probe = GraphDef(nodes=[node])
        specs, _ = infer(probe, [node], {v.name: v.spec for v in inputs})
        self.graph_def.nodes.append(node)
        self._specs[node.name] = specs[node.name]
        self._changed()
        return Value(self, node.name, specs[node.name])

    def set_loss(self, value: Value, batch_reduction: str = "mean") -> Value:
        """Make ``value`` (a float scalar) the loss. ``batch_reduction`` says whether it is a
        mean over the batch (default) or a sum. The engine derives which it is from the graph
        and refuses a graph that declares the other; a loss that couples examples (a batch
        statistic inside it) runs unsharded, whatever the shard count."""
        self._own(value)
        if value.spec.shape != () or value.dtype.kind != "f":
            op = next((n.op for n in self.graph_def.nodes if n.name == value.name), None)
            raise GraphError(f"the loss must be a float scalar, got {value.spec}", value.name, op)
        if batch_reduction not in BATCH_REDUCTIONS:
            raise GraphError(f"batch_reduction must be one of {BATCH_REDUCTIONS}, got {batch_reduction!r}",
                             value.name)
        self.graph_def.loss = value.name
        self.graph_def.batch_reduction = batch_reduction
        self._changed()
        return value

    def fetch(self, *values: Value) -> None:
        """Also return these values' forward results from every request."""
        for v in values:
            self._own(v)
        self.graph_def.outputs = tuple(dict.fromkeys(self.graph_def.outputs + tuple(v.name for v in values)))
        self._changed()

    def _own(self, value: Value) -> None:
        if not isinstance(value, Value) or value.graph is not self:
            raise GraphError(f"{value!r} is not a value of this graph")

    def __getitem__(self, name: str) -> Value:
        return Value(self, name, self._specs[name])

    def value(self, name: str) -> Value:
        """The value named ``name``: a batch input, parameter, constant or node output (an
        imported ONNX model's outputs and intermediates keep their ONNX names), to build on."""
        if name not in self._specs:
            raise KeyError(f"the graph has no value named {name!r}")
        return Value(self, name, self._specs[name])

    # serialization lives in the codec; these are conveniences
    def to_bytes(self) -> bytes:
        from ..worker.codec import graph_to_proto
        return graph_to_proto(self.graph_def).SerializeToString(deterministic=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Graph":
        from ..worker.codec import graph_from_bytes
        return cls.from_graph_def(graph_from_bytes(data))

    @classmethod
    def from_graph_def(cls, graph_def: GraphDef) -> "Graph":
        """A graph over ``graph_def``, which it takes over: change it through the graph from now on."""
        from ..worker.engine import Program
        graph = cls()
        graph._graph_def = graph_def
        graph._specs = dict(Program(graph_def).specs) if graph_def.loss else dict(graph_def.sources())
        return graph

    @property
    def id(self) -> str:
        """The graph's content hash: its id on servers."""
        from ..worker.codec import graph_id
        return graph_id(self.graph_def)


V = TypeVar("V")


class GraphCache(Generic[V]):
    """What a client derives from a graph (local mode's analysed Program, the remote client's
    wire form and id), made by ``make(graph_def)`` once per graph content and bounded (LRU).

    A ``Graph`` is keyed by (token, revision), so any builder change is seen and a graph that
    reuses a collected one's id() never hits its entry. A bare ``GraphDef`` has no revision:
    it is keyed by its content hash (one serialization a call) and its entry made from a deep
    copy, so later in-place edits of it cannot reach the entry an equal GraphDef would hit.
    """

    def __init__(self, make: Callable[[GraphDef], V], capacity: int = 32):
        self._make = make
        self._items: LruCache[tuple[int, int] | str, V] = LruCache(capacity)

    def get(self, graph: Graph | GraphDef) -> V:
        if isinstance(graph, Graph):
            key, graph_def = (graph._token, graph._revision), graph.graph_def
            return self._items.get_or_make(key, lambda: self._make(graph_def))
        from ..worker.codec import graph_id
        return self._items.get_or_make(graph_id(graph), lambda: self._make(copy.deepcopy(graph)))

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def call(op_name: str, *inputs, name: str | None = None, **attrs) -> Value:
    """Add an ``op_name`` node; Python scalars and arrays among the inputs become constants
    of the graph, scalars taking the dtype of the graph values beside them."""
    values = [x for x in inputs if isinstance(x, Value)]
    if not values:
        raise TypeError(f"{op_name}: at least one input must be a graph value")
    graph = values[0].graph
    if any(v.graph is not graph for v in values):
        raise GraphError(f"{op_name}: inputs come from different graphs")
    float_like = next((v.dtype for v in values if v.dtype.kind == "f"), values[0].dtype)
    converted = []
    for x in inputs:
        if isinstance(x, Value):
            converted.append(x)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            converted.append(graph.scalar(x, float_like))
        else:
            array = np.asarray(x)
            converted.append(graph.const(array, float_like if array.dtype.kind == "f" else None))
    return graph.add_node(op_name, converted, attrs, name)


def _make_function(op: Op):
    def fn(*inputs, name: str | None = None, **attrs) -> Value:
        return call(op.name, *inputs, name=name, **attrs)

    fn.__name__ = fn.__qualname__ = op.name
    attrs = ", ".join(f"{k}={'<required>' if a.required else repr(a.default)}" for k, a in op.attrs.items())
    arity = "*inputs" if op.arity is None else ", ".join(f"x{i}" for i in range(op.arity))
    fn.__doc__ = f"{op.name}({arity}{', ' + attrs if attrs else ''}): {op.doc or 'see the op table'}"
    return fn


# One SDK function per registered op, named as in the registry and on the wire.
OP_FUNCTIONS = {name: _make_function(op) for name, op in OPS.items()}
