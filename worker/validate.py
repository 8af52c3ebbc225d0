"""Validation and shape inference: everything that can be wrong with a graph, found before
anything runs or is allocated. Errors name the node, op, inputs and shapes at fault."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

from .errors import InvalidGraph, ResourceExhausted
from .graph import BATCH_REDUCTIONS, GraphDef, Node
from .ops import OPS, Attr, ShapeError
from .spec import FLOAT_DTYPES, TensorSpec, num_elements


GraphError = InvalidGraph  # the engine's name for it: a graph or request that cannot run


class LimitError(ResourceExhausted, GraphError):
    """A request within the rules but over a configured size limit (RESOURCE_EXHAUSTED; still a
    ``GraphError`` to code that catches those)."""


# No dimension may exceed this, whatever the limits say: NumPy's shapes are signed 64-bit.
MAX_DIM = 2**62


@dataclass(frozen=True)
class Limits:
    max_nodes: int = 100_000  # also caps the constants, and the inputs plus parameters
    max_tensor_elements: int = 2**31  # per input, parameter or intermediate
    max_rank: int = 64  # NumPy's own limit: a higher rank would fail only at run time
    max_constant_bytes: int = 1 << 30  # all constants of a graph together

    @property
    def max_dim(self) -> int:
        return min(self.max_tensor_elements, MAX_DIM)


def normalize_attrs(node: Node) -> dict[str, Any]:
    """The node's attributes checked against its op's schema, with defaults filled in."""
    schema = OPS[node.op].attrs
    unknown = sorted(set(node.attrs) - set(schema))
    if unknown:
        raise GraphError(f"unknown attribute(s) {unknown}; {node.op} takes {sorted(schema) or 'none'}",
                         node.name, node.op)
    out = {}
    for name, attr in schema.items():
        if name not in node.attrs or node.attrs[name] is None:
            if attr.required:
                raise GraphError(f"missing required attribute {name!r} ({attr.kind})", node.name, node.op)
            out[name] = attr.default
            continue
        try:
            out[name] = _coerce(attr, node.attrs[name])
        except (TypeError, ValueError):
            raise GraphError(f"attribute {name!r} must be {attr.kind}, got {node.attrs[name]!r}",
                             node.name, node.op) from None
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _coerce(attr: Attr, value: Any) -> Any:
    kind = attr.kind
    if kind == "int" and _is_int(value):
        return value
    if kind == "float" and (_is_int(value) or isinstance(value, float)):
        return float(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, str):
        return value
    if kind in ("ints", "axes") and isinstance(value, (list, tuple)) and all(map(_is_int, value)):
        return tuple(value)
    if kind == "axes" and _is_int(value):
        return value
    raise TypeError


def check_sources(graph: GraphDef) -> None:
    """Each input, parameter and constant has its own name, and parameters a static shape
    (they are sent whole: an unknown dim could only be a batch dim, which they lack)."""
    kind_of: dict[str, str] = {}
    for kind, table in (("batch input", graph.inputs), ("parameter", graph.params), ("constant", graph.constants)):
        for name in table:
            if name in kind_of:
                raise GraphError(f"{kind} {name!r} has the same name as a {kind_of[name]}")
            kind_of[name] = kind
    for name, spec in graph.params.items():
        if not spec.is_static:
            raise GraphError(f"parameter {name!r} {_brief(spec)} has an unknown (-1) dimension; "
                             "parameters must have a static shape")


def topological_order(graph: GraphDef) -> list[Node]:
    """Nodes ordered so every input comes first (iterative: 10k-deep chains are fine).
    Raises on clashing source names, duplicate names, dangling references and cycles."""
    check_sources(graph)
    sources = graph.sources()
    by_name: dict[str, Node] = {}
    for node in graph.nodes:
        if node.name in by_name or node.name in sources:
            raise GraphError("duplicate value name", node.name, node.op)
        by_name[node.name] = node
    for node in graph.nodes:
        for ref in node.inputs:
            if ref not in by_name and ref not in sources:
                raise GraphError(f"input {ref!r} is not defined (dangling reference)", node.name, node.op)
    done: set[str] = set(sources)
    order: list[Node] = []
    on_path: set[str] = set()
    for root in graph.nodes:
        if root.name in done:
            continue
        stack = [(root, 0)]
        on_path.add(root.name)
        while stack:
            node, i = stack.pop()
            if i < len(node.inputs):
                stack.append((node, i + 1))
                ref = node.inputs[i]
                if ref in done:
                    continue
                if ref in on_path:
                    cycle = [n.name for n, _ in stack] + [ref]
                    cycle = cycle[cycle.index(ref):]
                    raise GraphError("cycle: " + " -> ".join(cycle), ref, by_name[ref].op)
                on_path.add(ref)
                stack.append((by_name[ref], 0))
            else:
                on_path.discard(node.name)
                done.add(node.name)
                order.append(node)
    return order


def infer(graph: GraphDef, order: list[Node], source_specs: dict[str, TensorSpec],
          limits: Limits | None = None) -> tuple[dict[str, TensorSpec], list[dict[str, Any]]]:
    """Specs of every value and each node's normalized attrs, from the specs of the sources.
    With concrete batch shapes this also enforces ``limits`` before any allocation."""
    limits = limits or Limits()
    if len(order) > limits.max_nodes:
        raise LimitError(f"graph has {len(order)} nodes; the limit is {limits.max_nodes}")
    specs = dict(source_specs)
    for name, spec in specs.items():
        _check_size(name, spec, limits, kind="tensor")
    attrs_list = []
    for node in order:
        op = OPS.get(node.op)
        if op is None:
            raise GraphError(f"unknown op {node.op!r}", node.name, node.op)
        if (op.arity is None and not node.inputs) or (op.arity is not None and len(node.inputs) != op.arity):
            want = "at least 1" if op.arity is None else str(op.arity)
            raise GraphError(f"wrong arity: takes {want} input(s), got {len(node.inputs)}", node.name, node.op)
        _check_attr_lengths(node, limits)
        attrs = normalize_attrs(node)
        in_specs = [specs[ref] for ref in node.inputs]
        try:
            spec = _infer_node(op, in_specs, attrs)
        except ShapeError as exc:
            args = ", ".join(f"{ref}: {s}" for ref, s in zip(node.inputs, in_specs))
            raise GraphError(f"{exc} [inputs {args}]", node.name, node.op) from None
        _check_size(node.name, spec, limits, kind=f"output of {node.op!r}")
        specs[node.name] = spec
        attrs_list.append(attrs)
    return specs, attrs_list


def _check_attr_lengths(node: Node, limits: Limits) -> None:
    # Every list attribute (shape, perm, axes, starts, ...) has at most one entry per dim:
    # refuse long ones before any shape rule spends time on them.
    for key, value in node.attrs.items():
        if isinstance(value, (list, tuple)) and len(value) > limits.max_rank:
            raise LimitError(f"attribute {key!r} lists {len(value)} entries; tensors have at most "
                             f"{limits.max_rank} dimensions", node.name, node.op)


def _infer_node(op, in_specs, attrs):
    """The op's shape rule; a variadic op's rule that cannot take this many inputs (its Python
    signature says how many it takes) is a wrong arity, not a crash."""
    signature = _signature(op.infer)
    if signature is not None:
        try:
            signature.bind(*in_specs, **attrs)
        except TypeError:
            raise ShapeError(f"wrong arity: {op.name} does not take {len(in_specs)} input(s)") from None
    return op.infer(*in_specs, **attrs)


@functools.lru_cache(maxsize=None)  # one per op's rule
def _signature(rule):
    try:
        return inspect.signature(rule)
    except (TypeError, ValueError):  # no signature to read (a builtin): the rule itself decides
        return None


def _check_size(name: str, spec: TensorSpec, limits: Limits, kind: str) -> None:
    if len(spec.shape) > limits.max_rank:  # first: the checks below are linear in the rank
        raise LimitError(f"{kind} {name!r} {_brief(spec)} has rank {len(spec.shape)}; the limit is {limits.max_rank}")
    if any(d is not None and d < 0 for d in spec.shape):
        raise GraphError(f"{kind} {name!r} has a negative dimension: {spec}")
    n = num_elements(spec.shape)  # Python ints: exact, no 64-bit overflow
    if n > limits.max_tensor_elements:
        raise LimitError(f"{kind} {name!r} {spec} would hold {n} elements; "
                         f"the limit is {limits.max_tensor_elements}")
    if n == 0:  # a zero dim hides the others from the product: (2**32, 2**32, 0)
        big = max((d for d in spec.shape if d is not None), default=0)
        if big > limits.max_dim:
            raise LimitError(f"{kind} {name!r} {spec} has a dimension of {big}; "
                             f"the limit is {limits.max_dim}")


def _brief(spec: TensorSpec, dims: int = 8) -> str:
    """A spec as ``str(spec)``, its dims elided after the first few (a rank can be huge)."""
    if spec.ndim <= dims:
        return str(spec)
    return str(TensorSpec(spec.shape[:dims], spec.dtype))[:-1] + ", ...]"


def check_outputs(graph: GraphDef, specs: dict[str, TensorSpec]) -> None:
    if not graph.nodes and graph.loss is None:
        raise GraphError("empty graph: no nodes and no loss")
    if graph.loss is None:
        raise GraphError("the graph has no loss (call set_loss)")
    if graph.loss not in specs:
        raise GraphError(f"loss {graph.loss!r} is not a value of the graph")
    loss = specs[graph.loss]
    if loss.shape != () or loss.dtype not in FLOAT_DTYPES:
        op = next((n.op for n in graph.nodes if n.name == graph.loss), None)
        raise GraphError(f"the loss must be a float scalar, got {loss}", graph.loss, op)
    for out in graph.outputs:
        if out not in specs:
            raise GraphError(f"fetched output {out!r} is not a value of the graph")
    if graph.batch_reduction not in BATCH_REDUCTIONS:
        raise GraphError(f"batch_reduction must be one of {BATCH_REDUCTIONS}, got {graph.batch_reduction!r}")
