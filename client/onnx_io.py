"""ONNX in and out: ``gw.from_onnx(model) -> (Graph, params)`` and ``gw.to_onnx(graph, params)``.

Import is driven by one table, ``IMPORTERS``: ONNX op type -> ``Importer(fn, attrs)``, where
``fn(b, a)`` translates one node (``b`` the builder: ``b.x(i)`` an input as a graph value,
``b.c(i, what)`` a constant input's array, ``b.op(name, *xs, **attrs)`` a gradwire node) and
``a`` holds the node's ONNX attributes; ``attrs`` lists the attributes it understands (any other
is refused). ``fn`` returns the node's outputs: graph values, or NumPy arrays for values known
at import time (Constant, Shape of a static tensor, ...). Adding an ONNX op is one entry.

Entries ask for gradwire ops by name through ``b.op``, which looks them up in ``OPS`` at run
time: an entry whose gradwire op is not registered (or lacks an attribute it passes) refuses
the node, naming the ONNX op type, the node and what is missing. Entries that have a
composition of today's ops use a dedicated op when one is registered (``b.has``) and the
composition otherwise. A node whose inputs are all known at import time is evaluated then
(ONNX's reference evaluator): constant subgraphs (shape arithmetic) cost nothing at run time.

Sources. Initializers become parameters (``trainable="initializers"``, the default), constants
(``"none"``), or parameters for a given set of names and constants for the rest; integer and
bool initializers are always constants, and so, with the default, is a float initializer read
only where a value must be known at import time (Clip's bounds, Pad's value). Graph inputs that are not initializers become batch
inputs. Their dims: a symbolic dim (``dim_param``, or no value) is unknown, ``None``: for the
usual leading batch dim that is gradwire's batch dim; a fixed dim stays fixed, except that
``batch_dim="leading"`` makes the leading dim of every batch input ``None`` (a model exported
with a fixed batch size). Every ONNX value keeps its name: ``g.value("logits")``.

Export walks the graph's nodes feeding the loss and fetched outputs through ``EXPORTERS``
(gradwire op -> ONNX nodes), params become initializers, constants ``Constant`` nodes (so a
re-import keeps them constant), and the loss and fetched outputs the model's outputs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .graph import Graph, Value
from ..worker.graph import GraphDef
from ..worker.ops import OPS
from ..worker.ops.registry import broadcast_dims
from ..worker.spec import DTYPES, FLOAT_DTYPES, TensorSpec
from ..worker.validate import GraphError, infer, topological_order

MIN_OPSET = 13
EXPORT_OPSET = 21  # axes as inputs of every Reduce* (18), Gelu (20), GroupNormalization per channel (21)
INT64_MAX = 2**63 - 1
# never evaluated at import time: their outputs are random
_NOT_FOLDED = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
               "Multinomial", "Dropout"}


class OnnxError(ValueError):
    """Something an ONNX model (or, on export, a graph) uses that the mapping does not cover."""

    def __init__(self, message: str, op_type: str | None = None, node: str | None = None):
        self.op_type, self.node = op_type, node
        where = f"ONNX op {op_type!r} (node {node!r}): " if op_type else ""
        super().__init__(where + message)


def _onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX support needs the onnx package: pip install 'gradwire[onnx]'") from exc
    return onnx


def _np_dtype(elem_type: int) -> np.dtype | None:
    """The gradwire dtype of an ONNX element type, or None when gradwire has no such dtype."""
    onnx = _onnx()
    try:
        dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None
    return DTYPES.get(dt.name)


def _type_name(elem_type: int) -> str:
    try:
        return _onnx().helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()
    except (KeyError, ValueError):
        return f"element type {elem_type}"


def _elem_type(dtype: np.dtype) -> int:
    return _onnx().helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


# ------------------------------------------------------------------ the import table


@dataclass(frozen=True)
class Importer:
    fn: Callable[..., Any]
    attrs: frozenset[str] = frozenset()


IMPORTERS: dict[str, Importer] = {}


def onnx_op(*op_types: str, attrs: Iterable[str] = ()):
    """Register ``fn`` as the translation of ``op_types``, understanding ``attrs``."""
    def register(fn):
        for t in op_types:
            if t in IMPORTERS:
                raise ValueError(f"ONNX op {t!r} mapped twice")
            IMPORTERS[t] = Importer(fn, frozenset(attrs))
        return fn
    return register


class _Builder:
    """What a translation sees: the current node's inputs and a way to add gradwire nodes."""

    def __init__(self, g: Graph, names: set[str], opset: int):
        self.g, self.opset = g, opset
        self.taken = names  # every ONNX value name: internal names avoid them
        self.values: dict[str, Value] = {}
        self.consts: dict[str, np.ndarray] = {}
        # trainable="initializers": a float initializer read where a constant is needed (Clip's
        # bounds, Pad's value, ...) is that constant; one read only so is not a parameter
        self.params_as_consts: dict[str, np.ndarray] = {}
        self.params_as_tensors: set[str] = set()
        self.node = None
        self._counter = 0

    # -- the current node
    def refuse(self, message: str):
        raise OnnxError(message, self.node.op_type, self.node.name or self.node.output[0])

    def given(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def x(self, i: int) -> Value:
        if not self.given(i):
            self.refuse(f"input {i} is required")
        return self.value(self.node.input[i])

    def xs(self) -> list[Value]:
        return [self.value(n) for n in self.node.input if n]

    def c(self, i: int, what: str) -> np.ndarray | None:
        """Input ``i``'s value, which must be known at import time; None when not given."""
        if not self.given(i):
            return None
        name = self.node.input[i]
        if name in self.params_as_consts:
            return self.params_as_consts[name]
        if name not in self.consts:
            self.refuse(f"{what} (input {i}, {name!r}) must be a constant (an initializer that is not "
                        "trained, or a Constant node's output); gradwire needs it when building the graph")
        return self.consts[name]

    def ints(self, i: int, what: str) -> list[int] | None:
        arr = self.c(i, what)
        return None if arr is None else [int(v) for v in np.asarray(arr).reshape(-1)]

    # -- values
    def value(self, name: str) -> Value:
        if name in self.values:
            self.params_as_tensors.add(name)
            return self.values[name]
        if name in self.consts:
            arr = self.consts[name]
            if arr.dtype.name not in DTYPES:
                self.refuse(f"constant {name!r} is {arr.dtype.name}; gradwire has {sorted(DTYPES)}")
            v = self.g.const(arr, dtype=arr.dtype, name=name)
            self.values[name] = v
            return v
        self.refuse(f"input {name!r} is not a value of the graph (the nodes must be in topological order)")

    def fresh(self) -> str:
        base = (self.node.output[0] if self.node is not None and self.node.output else "") or "onnx"
        while True:
            self._counter += 1
            name = f"{base}/{self._counter}"
            if name not in self.taken and name not in self.g._specs:
                return name

    def const(self, array, like: Value | None = None) -> Value:
        arr = np.asarray(array, dtype=None if like is None else like.dtype)
        return self.g.const(arr, dtype=arr.dtype, name=self.fresh())

    def scalar(self, value: float, like: Value) -> Value:
        return self.const(np.asarray(value, like.dtype))

    def has(self, op: str, *attrs: str) -> bool:
        return op in OPS and set(attrs) <= set(OPS[op].attrs)

    def op(self, op: str, *inputs: Value, **attrs) -> Value:
        if op not in OPS:
            self.refuse(f"needs gradwire op {op!r}, which is not registered")
        unknown = sorted(k for k, v in attrs.items() if v is not None and k not in OPS[op].attrs)
        if unknown:
            self.refuse(f"needs attribute(s) {unknown} of gradwire op {op!r}, which takes {sorted(OPS[op].attrs)}")
        try:
            return self.g.add_node(op, list(inputs), attrs, name=self.fresh())
        except GraphError as exc:
            self.refuse(f"gradwire op {op!r} refuses it: {exc}")

    def try_op(self, op: str, *inputs: Value, **attrs) -> Value | None:
        """``op`` if registered and it accepts these inputs, else None (for a fallback)."""
        if not self.has(op, *(k for k, v in attrs.items() if v is not None)):
            return None
        try:
            return self.g.add_node(op, list(inputs), attrs, name=self.fresh())
        except GraphError:
            return None

    # -- small compositions
    def reshape(self, x: Value, dims) -> Value:
        """Reshape to ``dims``; a ``None`` (unknown) dim becomes -1 (at most one)."""
        dims = [-1 if d is None else int(d) for d in dims]
        if tuple(dims) == x.shape:
            return x
        if dims.count(-1) > 1:
            self.refuse(f"cannot reshape {x.spec} to {dims}: more than one unknown dim")
        return self.op("reshape", x, shape=dims)

    def static_shape(self, x: Value, why: str) -> tuple[int, ...]:
        if not x.spec.is_static:
            self.refuse(f"{why} needs a known shape, got {x.spec}")
        return x.shape


def _axes(b: _Builder, a: dict, i: int = 1) -> list[int] | None:
    """Axes given as an attribute (older opsets) or as input ``i`` (newer ones)."""
    if "axes" in a:
        return [int(v) for v in a["axes"]]
    return b.ints(i, "axes")


def _binary(op):
    def fn(b, a):
        return b.op(op, b.x(0), b.x(1))
    return fn


def _unary(op):
    def fn(b, a):
        return b.op(op, b.x(0))
    return fn


for _t, _op in {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}.items():
    onnx_op(_t)(_binary(_op))
for _t, _op in {"Neg": "neg", "Exp": "exp", "Log": "log", "Tanh": "tanh", "Sqrt": "sqrt", "Abs": "abs",
                "Relu": "relu", "Sigmoid": "sigmoid", "Sin": "sin", "Cos": "cos", "Erf": "erf",
                "Floor": "floor", "Ceil": "ceil", "Round": "round", "Sign": "sign", "Not": "logical_not",
                "HardSwish": "hard_swish"}.items():
    onnx_op(_t)(_unary(_op))
for _t, _op in {"Equal": "equal", "Less": "less", "Greater": "greater", "LessOrEqual": "less_equal",
                "GreaterOrEqual": "greater_equal", "And": "logical_and", "Or": "logical_or"}.items():
    onnx_op(_t)(_binary(_op))


@onnx_op("Where")
def _where(b, a):
    return b.op("where", b.x(0), b.x(1), b.x(2))


def _fold(op):
    def fn(b, a):
        xs = b.xs()
        y = xs[0]
        for x in xs[1:]:
            y = b.op(op, y, x)
        return y
    return fn


onnx_op("Max")(_fold("maximum"))
onnx_op("Min")(_fold("minimum"))
onnx_op("Sum")(_fold("add"))


@onnx_op("Mean")
def _mean(b, a):
    y = _fold("add")(b, a)
    n = len(b.xs())
    return y if n == 1 else b.op("div", y, b.scalar(n, y))


@onnx_op("Pow")
def _pow(b, a):
    x = b.x(0)
    if b.node.input[1] not in b.consts:
        return b.op("pow", x, b.x(1))
    e = b.c(1, "the exponent")
    if e.size != 1:
        b.refuse("only a scalar exponent is supported")
    return b.op("pow", x, exponent=float(e.reshape(-1)[0]))


@onnx_op("Reciprocal")
def _reciprocal(b, a):
    x = b.x(0)
    return b.op("reciprocal", x) if b.has("reciprocal") else b.op("div", b.scalar(1, x), x)


@onnx_op("Identity")
def _identity(b, a):
    return b.x(0)


@onnx_op("Dropout", attrs=("seed",))
def _dropout(b, a):  # inference: the identity (training_mode must be absent or false)
    if b.given(2) and bool(np.asarray(b.c(2, "training_mode")).reshape(-1)[0]):
        b.refuse("training_mode=true is not supported (dropout runs as the identity)")
    x = b.x(0)
    mask = np.ones(b.static_shape(x, "the mask output"), bool) if len(b.node.output) > 1 and b.node.output[1] else None
    return [x, mask]


@onnx_op("Constant", attrs=("value", "value_float", "value_floats", "value_int", "value_ints"))
def _constant(b, a):
    if "value" in a:
        return _onnx().numpy_helper.to_array(a["value"])
    if "value_float" in a:
        return np.asarray(a["value_float"], np.float32)
    if "value_floats" in a:
        return np.asarray(a["value_floats"], np.float32)
    if "value_int" in a:
        return np.asarray(a["value_int"], np.int64)
    if "value_ints" in a:
        return np.asarray(a["value_ints"], np.int64)
    b.refuse("only tensor, float(s) and int(s) values are supported")


@onnx_op("Shape", attrs=("start", "end"))
def _shape(b, a):
    shape = b.static_shape(b.x(0), "Shape")
    return np.asarray(shape[slice(a.get("start", 0), a.get("end"))], np.int64)


@onnx_op("Size")
def _size(b, a):
    return np.asarray(int(np.prod(b.static_shape(b.x(0), "Size"))), np.int64)


@onnx_op("Cast", attrs=("to", "saturate", "round_mode"))
def _cast(b, a):
    x = b.x(0)
    to = _np_dtype(a["to"])
    if to is None:
        b.refuse(f"target type {_type_name(a['to'])} is not a gradwire dtype ({sorted(DTYPES)})")
    if to == x.dtype:
        return x
    return b.op("cast", x, to=to.name)


@onnx_op("CastLike", attrs=("saturate", "round_mode"))
def _cast_like(b, a):
    x, like = b.x(0), b.x(1)
    if x.dtype == like.dtype:
        return x
    return b.op("cast", x, to=like.dtype.name)


@onnx_op("MatMul")
def _matmul(b, a):
    x, w = b.x(0), b.x(1)
    y = b.try_op("matmul", x, w)
    if y is not None or not (x.spec.ndim == 1 or w.spec.ndim == 1):
        return y if y is not None else b.op("matmul", x, w)
    # a 1-D operand on a matmul without NumPy's promotion: through a size-1 axis removed again
    xx = b.reshape(x, (1, x.shape[0])) if x.spec.ndim == 1 else x
    ww = b.reshape(w, (w.shape[0], 1)) if w.spec.ndim == 1 else w
    y = b.op("matmul", xx, ww)
    dims = list(y.shape)
    if w.spec.ndim == 1:
        dims.pop(-1)
    if x.spec.ndim == 1:
        dims.pop(-2 if w.spec.ndim != 1 else -1)
    return b.reshape(y, dims)


@onnx_op("Gemm", attrs=("alpha", "beta", "transA", "transB"))
def _gemm(b, a):
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    x, w = b.x(0), b.x(1)
    ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))
    if b.has("gemm", "alpha", "beta", "transA", "transB"):
        return b.op("gemm", *([x, w, b.x(2)] if b.given(2) else [x, w]), alpha=alpha, beta=beta, transA=ta, transB=tb)
    if a.get("transA", 0):
        x = b.op("transpose", x)
    if a.get("transB", 0):
        w = b.op("transpose", w)
    y = b.op("matmul", x, w)
    if alpha != 1.0:
        y = b.op("mul", y, b.scalar(alpha, y))
    if b.given(2) and beta != 0.0:
        c = b.x(2)
        y = b.op("add", y, c if beta == 1.0 else b.op("mul", c, b.scalar(beta, c)))
    return y


@onnx_op("Transpose", attrs=("perm",))
def _transpose(b, a):
    return b.op("transpose", b.x(0), perm=[int(p) for p in a["perm"]] if "perm" in a else None)


@onnx_op("Reshape", attrs=("allowzero",))
def _reshape(b, a):
    x = b.x(0)
    dims: list[int | None] = b.ints(1, "the target shape")
    if not a.get("allowzero", 0):
        for i, d in enumerate(dims):
            if d == 0:
                if i >= x.spec.ndim:
                    b.refuse(f"shape {dims} copies dim {i} of a rank-{x.spec.ndim} input")
                dims[i] = x.shape[i]
    if None in dims and -1 in dims:
        b.refuse(f"shape {dims} copies an unknown dim and infers another")
    return b.reshape(x, dims)


@onnx_op("Flatten", attrs=("axis",))
def _flatten(b, a):
    x = b.x(0)
    axis = int(a.get("axis", 1))
    axis = axis + x.spec.ndim if axis < 0 else axis
    head, tail = x.shape[:axis], x.shape[axis:]
    def size(dims):
        return None if None in dims else int(np.prod(dims, dtype=np.int64))
    return b.reshape(x, (size(head), size(tail)))


@onnx_op("Squeeze", attrs=("axes",))
def _squeeze(b, a):
    x = b.x(0)
    axes = _axes(b, a)
    nd = x.spec.ndim
    if axes is None:
        b.static_shape(x, "Squeeze without axes")
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = {ax % nd for ax in axes}
    return b.reshape(x, [d for i, d in enumerate(x.shape) if i not in axes])


@onnx_op("Unsqueeze", attrs=("axes",))
def _unsqueeze(b, a):
    x = b.x(0)
    axes = _axes(b, a)
    nd = x.spec.ndim + len(axes)
    axes = sorted(ax % nd for ax in axes)
    dims = list(x.shape)
    for ax in axes:
        dims.insert(ax, 1)
    return b.reshape(x, dims)


@onnx_op("Expand")
def _expand(b, a):
    x = b.x(0)
    shape = b.ints(1, "the target shape")
    if b.has("expand", "shape"):
        return b.op("expand", x, shape=shape)
    target = broadcast_dims(x.shape, tuple(shape))
    if target == x.shape:
        return x
    if None in target:
        b.refuse(f"expanding {x.spec} to {list(target)} needs a known size")
    return b.op("broadcast_to", x, shape=list(target))


@onnx_op("Concat", attrs=("axis",))
def _concat(b, a):
    xs = b.xs()
    return xs[0] if len(xs) == 1 else b.op("concat", *xs, axis=int(a["axis"]))


@onnx_op("Slice")
def _slice(b, a):
    x = b.x(0)
    starts, ends = b.ints(1, "starts"), b.ints(2, "ends")
    axes, steps = b.ints(3, "axes"), b.ints(4, "steps")
    return b.op("slice", x, starts=starts, ends=ends, axes=axes, steps=steps)


@onnx_op("Softmax", "LogSoftmax", attrs=("axis",))
def _softmax(b, a):
    op = "softmax" if b.node.op_type == "Softmax" else "log_softmax"
    return b.op(op, b.x(0), axis=int(a.get("axis", -1)))


def _reduce(make):
    """A Reduce* op: axes from the attribute or input, keepdims, noop_with_empty_axes."""
    def fn(b, a):
        x = b.x(0)
        axes = _axes(b, a)
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = None
        return make(b, x, axes, bool(a.get("keepdims", 1)))
    return fn


def _plain(op):
    return lambda b, x, axes, keep: b.op(op, x, axis=axes, keepdims=keep)


def _reduce_min(b, x, axes, keep):
    if b.has("min", "axis", "keepdims"):
        return b.op("min", x, axis=axes, keepdims=keep)
    return b.op("neg", b.op("max", b.op("neg", x), axis=axes, keepdims=keep))


def _reduce_logsumexp(b, x, axes, keep):
    if b.has("logsumexp", "axis", "keepdims"):
        return b.op("logsumexp", x, axis=axes, keepdims=keep)
    m = b.op("max", x, axis=axes, keepdims=True)  # shifted: never overflows
    y = b.op("add", b.op("log", b.op("sum", b.op("exp", b.op("sub", x, m)), axis=axes, keepdims=True)), m)
    if keep:
        return y
    nd = x.spec.ndim
    gone = set(range(nd)) if axes is None else {ax % nd for ax in axes}
    return b.reshape(y, [d for i, d in enumerate(y.shape) if i not in gone])


def _reduce_prod(b, x, axes, keep):
    if b.has("prod", "axis", "keepdims"):
        return b.op("prod", x, axis=axes, keepdims=keep)
    b.refuse("needs gradwire op 'prod' (with axis and keepdims)")


_REDUCE_ATTRS = ("axes", "keepdims", "noop_with_empty_axes")
for _t, _make in {
    "ReduceSum": _plain("sum"),
    "ReduceMean": _plain("mean"),
    "ReduceMax": _plain("max"),
    "ReduceMin": _reduce_min,
    "ReduceProd": _reduce_prod,
    "ReduceLogSumExp": _reduce_logsumexp,
    "ReduceSumSquare": lambda b, x, axes, keep: b.op("sum", b.op("square", x), axis=axes, keepdims=keep),
    "ReduceL1": lambda b, x, axes, keep: (b.op("reduce_l1", x, axis=axes, keepdims=keep) if b.has("reduce_l1")
                                          else b.op("sum", b.op("abs", x), axis=axes, keepdims=keep)),
    "ReduceL2": lambda b, x, axes, keep: (b.op("reduce_l2", x, axis=axes, keepdims=keep) if b.has("reduce_l2") else
                                          b.op("sqrt", b.op("sum", b.op("square", x), axis=axes, keepdims=keep))),
    "ReduceLogSum": lambda b, x, axes, keep: b.op("log", b.op("sum", x, axis=axes, keepdims=keep)),
}.items():
    onnx_op(_t, attrs=_REDUCE_ATTRS)(_reduce(_make))


# ------------------------------------------------------------------ activations


def _softplus_of(b, x):
    # relu(x) + log(1 + exp(-|x|)): never exponentiates a positive number
    e = b.op("exp", b.op("neg", b.op("abs", x)))
    return b.op("add", b.op("relu", x), b.op("log", b.op("add", b.scalar(1, x), e)))


@onnx_op("Softplus")
def _softplus(b, a):
    x = b.x(0)
    return b.op("softplus", x) if b.has("softplus") else _softplus_of(b, x)


@onnx_op("Softsign")
def _softsign(b, a):
    x = b.x(0)
    if b.has("softsign"):
        return b.op("softsign", x)
    return b.op("div", x, b.op("add", b.scalar(1, x), b.op("abs", x)))


@onnx_op("LeakyRelu", attrs=("alpha",))
def _leaky_relu(b, a):
    x, alpha = b.x(0), float(a.get("alpha", 0.01))
    if b.has("leaky_relu", "alpha"):
        return b.op("leaky_relu", x, alpha=alpha)
    # relu(x) + alpha * min(x, 0)
    return b.op("add", b.op("relu", x), b.op("mul", b.scalar(alpha, x), b.op("minimum", x, b.scalar(0, x))))


@onnx_op("PRelu")
def _prelu(b, a):
    x, slope = b.x(0), b.x(1)
    return b.op("add", b.op("relu", x), b.op("mul", slope, b.op("minimum", x, b.scalar(0, x))))


def _expm1_neg(b, x, alpha, scale_in=1.0):
    """alpha * (exp(min(x, 0) * scale_in) - 1): the negative branch of the ELU family."""
    m = b.op("minimum", x, b.scalar(0, x))
    if scale_in != 1.0:
        m = b.op("mul", m, b.scalar(scale_in, x))
    return b.op("mul", b.scalar(alpha, x), b.op("sub", b.op("exp", m), b.scalar(1, x)))


@onnx_op("Elu", attrs=("alpha",))
def _elu(b, a):
    x, alpha = b.x(0), float(a.get("alpha", 1.0))
    if b.has("elu", "alpha"):
        return b.op("elu", x, alpha=alpha)
    return b.op("add", b.op("relu", x), _expm1_neg(b, x, alpha))


@onnx_op("Celu", attrs=("alpha",))
def _celu(b, a):
    x, alpha = b.x(0), float(a.get("alpha", 1.0))
    return b.op("add", b.op("relu", x), _expm1_neg(b, x, alpha, 1.0 / alpha))


@onnx_op("Selu", attrs=("alpha", "gamma"))
def _selu(b, a):
    x = b.x(0)
    alpha, gamma = float(a.get("alpha", 1.67326319217681884765625)), float(a.get("gamma", 1.05070102214813232421875))
    if b.has("selu", "alpha", "gamma"):
        return b.op("selu", x, alpha=alpha, gamma=gamma)
    y = b.op("add", b.op("relu", x), _expm1_neg(b, x, alpha))
    return b.op("mul", b.scalar(gamma, x), y)


def _hard_sigmoid_of(b, x, alpha, beta):
    y = b.op("add", b.op("mul", b.scalar(alpha, x), x), b.scalar(beta, x))
    return b.op("maximum", b.op("minimum", y, b.scalar(1, x)), b.scalar(0, x))


@onnx_op("HardSigmoid", attrs=("alpha", "beta"))
def _hard_sigmoid(b, a):
    x, alpha, beta = b.x(0), float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if b.has("hard_sigmoid", "alpha", "beta"):
        return b.op("hard_sigmoid", x, alpha=alpha, beta=beta)
    return _hard_sigmoid_of(b, x, alpha, beta)


@onnx_op("Mish")
def _mish(b, a):
    x = b.x(0)
    return b.op("mul", x, b.op("tanh", _softplus_of(b, x)))


@onnx_op("Gelu", attrs=("approximate",))
def _gelu(b, a):
    x, approx = b.x(0), a.get("approximate", "none")
    if b.has("gelu", "approximate"):
        return b.op("gelu", x, approximate=approx)
    if approx == "none" and b.has("gelu"):
        return b.op("gelu", x)
    if approx == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        inner = b.op("add", x, b.op("mul", b.scalar(0.044715, x), b.op("pow", x, exponent=3.0)))
        t = b.op("tanh", b.op("mul", b.scalar(np.sqrt(2 / np.pi), x), inner))
        return b.op("mul", b.op("mul", b.scalar(0.5, x), x), b.op("add", b.scalar(1, x), t))
    if b.has("erf"):
        e = b.op("erf", b.op("mul", x, b.scalar(1 / np.sqrt(2), x)))
        return b.op("mul", b.op("mul", b.scalar(0.5, x), x), b.op("add", b.scalar(1, x), e))
    b.refuse("exact GELU needs gradwire op 'gelu' or 'erf'")


@onnx_op("Clip")
def _clip(b, a):
    x = b.x(0)
    lo, hi = b.c(1, "min"), b.c(2, "max")
    if b.has("clip", "min", "max"):
        scalar = lambda v: None if v is None else float(np.asarray(v).reshape(-1)[0])  # noqa: E731
        return b.op("clip", x, min=scalar(lo), max=scalar(hi))
    if hi is not None:
        x = b.op("minimum", x, b.const(hi, like=x))
    if lo is not None:
        x = b.op("maximum", x, b.const(lo, like=x))
    return x


# ------------------------------------------------------------------ losses and normalization


@onnx_op("SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss", attrs=("reduction", "ignore_index"))
def _sce(b, a):
    op = "softmax_cross_entropy" if b.node.op_type == "SoftmaxCrossEntropyLoss" else "nll_loss"
    xs = [b.x(0), b.x(1)] + ([b.x(2)] if b.given(2) else [])
    if b.has(op, "reduction", "ignore_index"):
        loss = b.op(op, *xs, reduction=a.get("reduction", "mean"), ignore_index=a.get("ignore_index"))
    elif a.get("reduction", "mean") != "mean" or len(xs) > 2 or "ignore_index" in a:
        b.refuse("only reduction='mean' without weights nor ignore_index is supported")
    else:
        loss = b.op(op, *xs)
    if len(b.node.output) > 1 and b.node.output[1]:  # SoftmaxCrossEntropyLoss's log_prob
        return [loss, b.op("log_softmax", xs[0], axis=1)]
    return loss


def _channel(b, v: Value, ndim: int) -> Value:
    """A per-channel (C,) vector shaped (C, 1, ..., 1) to broadcast against (N, C, ...)."""
    return b.reshape(v, [v.shape[0]] + [1] * (ndim - 2))


@onnx_op("BatchNormalization", attrs=("epsilon", "momentum", "training_mode"))
def _batch_norm(b, a):  # eval mode: running statistics
    if a.get("training_mode", 0):
        b.refuse("training_mode=1 is not supported (eval mode only)")
    x, eps = b.x(0), float(a.get("epsilon", 1e-5))
    if len(b.node.output) > 1 and any(b.node.output[1:]):
        b.refuse("the running_mean and running_var outputs are not supported (eval mode only)")
    if b.has("batch_norm", "training", "epsilon"):
        return b.op("batch_norm", *(b.x(i) for i in range(5)), training=False, epsilon=eps)
    nd = x.spec.ndim
    scale, bias, mean, var = (_channel(b, b.x(i), nd) for i in range(1, 5))
    std = b.op("sqrt", b.op("add", var, b.scalar(float(a.get("epsilon", 1e-5)), var)))
    return b.op("add", b.op("mul", b.op("div", b.op("sub", x, mean), std), scale), bias)


def _normalize(b, x, axes, eps):
    mu = b.op("mean", x, axis=axes, keepdims=True)
    d = b.op("sub", x, mu)
    var = b.op("mean", b.op("square", d), axis=axes, keepdims=True)
    return b.op("div", d, b.op("sqrt", b.op("add", var, b.scalar(eps, x))))


@onnx_op("LayerNormalization", attrs=("axis", "epsilon", "stash_type"))
def _layer_norm(b, a):
    x, eps, axis = b.x(0), float(a.get("epsilon", 1e-5)), int(a.get("axis", -1))
    nd = x.spec.ndim
    axes = list(range(axis % nd, nd))
    if b.has("layer_norm", "axis", "epsilon"):
        bias = b.x(2) if b.given(2) else b.const(np.zeros(b.static_shape(b.x(1), "the scale"), x.dtype))
        y = b.op("layer_norm", x, b.x(1), bias, axis=axis, epsilon=eps)
    else:
        y = b.op("mul", _normalize(b, x, axes, eps), b.x(1))
        y = b.op("add", y, b.x(2)) if b.given(2) else y
    if len(b.node.output) == 1 or not any(b.node.output[1:]):
        return y
    # the optional Mean and InvStdDev outputs, over the normalized axes, kept as size 1
    mu = b.op("mean", x, axis=axes, keepdims=True)
    var = b.op("mean", b.op("square", b.op("sub", x, mu)), axis=axes, keepdims=True)
    inv = b.op("div", b.scalar(1, x), b.op("sqrt", b.op("add", var, b.scalar(eps, x))))
    return [y, mu, inv]


@onnx_op("InstanceNormalization", attrs=("epsilon",))
def _instance_norm(b, a):
    x = b.x(0)
    if b.has("instance_norm", "epsilon"):
        return b.op("instance_norm", x, b.x(1), b.x(2), epsilon=float(a.get("epsilon", 1e-5)))
    nd = x.spec.ndim
    y = _normalize(b, x, list(range(2, nd)), float(a.get("epsilon", 1e-5)))
    return b.op("add", b.op("mul", y, _channel(b, b.x(1), nd)), _channel(b, b.x(2), nd))


@onnx_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(b, a):
    x = b.x(0)
    op = "mean" if b.node.op_type == "GlobalAveragePool" else "max"
    return b.op(op, x, axis=list(range(2, x.spec.ndim)), keepdims=True)


# ------------------------------------------------------------------ ops only other modules provide
# Their gradwire names and attributes are those of the op table; until an op is registered
# these nodes are refused, naming it.


@onnx_op("GroupNormalization", attrs=("num_groups", "epsilon", "stash_type"))
def _group_norm(b, a):
    if b.opset < 21:
        b.refuse("GroupNormalization before opset 21 (scale and bias per group) is not supported")
    return b.op("group_norm", b.x(0), b.x(1), b.x(2), num_groups=int(a["num_groups"]),
                epsilon=float(a.get("epsilon", 1e-5)))


@onnx_op("Gather", "GatherElements", attrs=("axis",))
def _gather(b, a):
    op = "gather" if b.node.op_type == "Gather" else "gather_elements"
    return b.op(op, b.x(0), b.x(1), axis=int(a.get("axis", 0)))


@onnx_op("ArgMax", "ArgMin", attrs=("axis", "keepdims", "select_last_index"))
def _argmax(b, a):
    op = "argmax" if b.node.op_type == "ArgMax" else "argmin"
    x, axis, keep = b.x(0), int(a.get("axis", 0)), bool(a.get("keepdims", 1))
    if not a.get("select_last_index", 0):
        return b.op(op, x, axis=axis, keepdims=keep)
    # the last extremum: the first one of x reversed along axis, counted from the end
    n = x.shape[axis % x.spec.ndim]
    if n is None:
        b.refuse(f"select_last_index needs the size of axis {axis} known, got {x.spec}")
    first = b.op(op, b.op("slice", x, starts=[-1], ends=[-INT64_MAX - 1], axes=[axis], steps=[-1]),
                 axis=axis, keepdims=keep)
    as_float = b.op("cast", first, to="float64")  # int arithmetic through exact float64
    return b.op("cast", b.op("sub", b.const(np.asarray(n - 1, np.float64)), as_float), to="int64")


AUTO_PAD = {"NOTSET": 0, "SAME_UPPER": 1, "SAME_LOWER": 2, "VALID": 3}


def _auto_pad(b, a) -> int:
    mode = a.get("auto_pad", "NOTSET")
    if mode not in AUTO_PAD:
        b.refuse(f"auto_pad={mode!r} is not supported")
    return AUTO_PAD[mode]


def _rank4(b, x, what):
    if x.spec.ndim != 4:
        b.refuse(f"only 2-D {what} (rank-4 input) is supported, got {x.spec}")


@onnx_op("Conv", attrs=("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"))
def _conv(b, a):
    x = b.x(0)
    _rank4(b, x, "convolution")
    return b.op("conv2d", *b.xs(), stride=list(a.get("strides", [1, 1])), padding=list(a.get("pads", [0, 0, 0, 0])),
                dilation=list(a.get("dilations", [1, 1])), groups=int(a.get("group", 1)), auto_pad=_auto_pad(b, a))


@onnx_op("ConvTranspose", attrs=("kernel_shape", "strides", "pads", "dilations", "group", "output_padding"))
def _conv_transpose(b, a):
    x = b.x(0)
    _rank4(b, x, "transposed convolution")
    return b.op("conv_transpose2d", *b.xs(), stride=list(a.get("strides", [1, 1])),
                padding=list(a.get("pads", [0, 0, 0, 0])), output_padding=list(a.get("output_padding", [0, 0])),
                dilation=list(a.get("dilations", [1, 1])), groups=int(a.get("group", 1)))


@onnx_op("MaxPool", "AveragePool", attrs=("kernel_shape", "strides", "pads", "auto_pad", "ceil_mode",
                                          "dilations", "count_include_pad", "storage_order"))
def _pool(b, a):
    if a.get("ceil_mode", 0):
        b.refuse("ceil_mode=1 is not supported")
    if len(b.node.output) > 1 and b.node.output[1]:
        b.refuse("the indices output is not supported")
    x = b.x(0)
    _rank4(b, x, "pooling")
    kernel = list(a["kernel_shape"])
    extra = {"count_include_pad": bool(a.get("count_include_pad", 0))} if b.node.op_type == "AveragePool" else {}
    return b.op("max_pool2d" if b.node.op_type == "MaxPool" else "avg_pool2d", x, kernel=kernel,
                stride=list(a.get("strides", [1] * len(kernel))), padding=list(a.get("pads", [0, 0, 0, 0])),
                dilation=list(a.get("dilations", [1, 1])), auto_pad=_auto_pad(b, a), **extra)


@onnx_op("Pad", attrs=("mode",))
def _pad(b, a):
    x = b.x(0)
    pads = b.ints(1, "pads")
    value = b.c(2, "constant_value")
    axes = b.ints(3, "axes")
    if axes is not None:  # pads only for these axes: spread them over all
        nd, k = x.spec.ndim, len(axes)
        full = [0] * (2 * nd)
        for i, ax in enumerate(axes):
            full[ax % nd], full[ax % nd + nd] = pads[i], pads[i + k]
        pads = full
    return b.op("pad", x, pads=pads, mode=a.get("mode", "constant"),
                value=0.0 if value is None or value.size == 0 else float(value.reshape(-1)[0]))


@onnx_op("Tile")
def _tile(b, a):
    return b.op("tile", b.x(0), repeats=b.ints(1, "repeats"))


@onnx_op("Split", attrs=("axis", "num_outputs"))
def _split(b, a):
    x, sizes = b.x(0), b.ints(1, "split")
    n = len(b.node.output)
    extra = {"split": sizes} if sizes is not None else {"num_outputs": int(a.get("num_outputs", n))}
    return [b.op("split", x, index=i, axis=int(a.get("axis", 0)), **extra) for i in range(n)]


@onnx_op("OneHot", attrs=("axis",))
def _one_hot(b, a):
    depth = b.c(1, "depth")
    values = b.x(2)
    return b.op("one_hot", b.x(0), values, depth=int(np.asarray(depth).reshape(-1)[0]), axis=int(a.get("axis", -1)),
                dtype=values.dtype.name)


@onnx_op("Einsum", attrs=("equation",))
def _einsum(b, a):
    xs, equation = b.xs(), a["equation"].replace(" ", "")
    if len(xs) == 1 and "->" in equation:  # one operand: paired with a scalar 1 (an empty subscript)
        ins, out = equation.split("->")
        return b.op("einsum", xs[0], b.scalar(1, xs[0]), equation=f"{ins},->{out}")
    if len(xs) != 2:
        b.refuse(f"only one or two operands (with an explicit '->') are supported, got {len(xs)}")
    return b.op("einsum", *xs, equation=equation)


# ------------------------------------------------------------------ values known at import time


@onnx_op("ConstantOfShape", attrs=("value",))
def _constant_of_shape(b, a):
    value = _onnx().numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
    return np.full(b.ints(0, "the shape"), value.reshape(-1)[0], value.dtype)


@onnx_op("Range", attrs=("stash_type",))
def _range(b, a):
    start, limit, delta = (b.c(i, what) for i, what in enumerate(("start", "limit", "delta")))
    return np.arange(start, limit, delta).astype(np.asarray(start).dtype)


@onnx_op("EyeLike", attrs=("dtype", "k"))
def _eye_like(b, a):
    x = b.x(0)
    rows, cols = b.static_shape(x, "EyeLike")
    dtype = _np_dtype(a["dtype"]) if "dtype" in a else x.dtype
    if dtype is None:
        b.refuse(f"dtype {_type_name(a['dtype'])} is not a gradwire dtype")
    return np.eye(rows, cols, int(a.get("k", 0)), dtype=dtype)


# ------------------------------------------------------------------ compositions over masks and comparisons


@onnx_op("Trilu", attrs=("upper",))
def _trilu(b, a):
    x = b.x(0)
    k = b.ints(1, "k")
    k = 0 if k is None else k[0]
    rows, cols = x.shape[-2:]
    if rows is None or cols is None:
        b.refuse(f"Trilu needs the last two dims known, got {x.spec}")
    keep = (np.triu if a.get("upper", 1) else np.tril)(np.ones((rows, cols), bool), k)
    zero = b.const(np.zeros((), x.dtype))
    return b.op("where", b.const(keep), x, zero)


@onnx_op("Mod", attrs=("fmod",))
def _mod(b, a):  # on values known at import time (shape arithmetic) it is folded before this
    return b.op("mod", b.x(0), b.x(1), fmod=bool(a.get("fmod", 0)))


@onnx_op("Xor")
def _xor(b, a):
    x, y = b.x(0), b.x(1)
    return b.op("logical_and", b.op("logical_or", x, y), b.op("logical_not", b.op("logical_and", x, y)))


@onnx_op("ThresholdedRelu", attrs=("alpha",))
def _thresholded_relu(b, a):
    x = b.x(0)
    return b.op("where", b.op("greater", x, b.scalar(float(a.get("alpha", 1.0)), x)), x, b.scalar(0, x))


@onnx_op("Shrink", attrs=("bias", "lambd"))
def _shrink(b, a):
    x = b.x(0)
    lambd, bias = float(a.get("lambd", 0.5)), float(a.get("bias", 0.0))
    high = b.op("where", b.op("greater", x, b.scalar(lambd, x)), b.op("sub", x, b.scalar(bias, x)), b.scalar(0, x))
    return b.op("where", b.op("less", x, b.scalar(-lambd, x)), b.op("add", x, b.scalar(bias, x)), high)


@onnx_op("Swish", attrs=("alpha",))
def _swish(b, a):
    x, alpha = b.x(0), float(a.get("alpha", 1.0))
    if alpha == 1.0 and b.has("silu"):
        return b.op("silu", x)
    return b.op("mul", x, b.op("sigmoid", b.op("mul", x, b.scalar(alpha, x))))


@onnx_op("Hardmax", attrs=("axis",))
def _hardmax(b, a):
    x = b.x(0)
    axis = int(a.get("axis", -1)) % x.spec.ndim
    depth = x.shape[axis]
    if depth is None:
        b.refuse(f"Hardmax needs the size of axis {axis} known, got {x.spec}")
    index = b.op("argmax", x, axis=axis, keepdims=False)
    return b.op("one_hot", index, b.const(np.array([0, 1], x.dtype)), depth=depth, axis=axis, dtype=x.dtype.name)


@onnx_op("RMSNormalization", attrs=("axis", "epsilon", "stash_type"))
def _rms_norm(b, a):
    x = b.x(0)
    nd = x.spec.ndim
    axes = list(range(int(a.get("axis", -1)) % nd, nd))
    ms = b.op("mean", b.op("square", x), axis=axes, keepdims=True)
    y = b.op("div", x, b.op("sqrt", b.op("add", ms, b.scalar(float(a.get("epsilon", 1e-5)), x))))
    return b.op("mul", y, b.x(1))


@onnx_op("LpNormalization", attrs=("axis", "p"))
def _lp_norm(b, a):
    x, p = b.x(0), int(a.get("p", 2))
    axis = int(a.get("axis", -1))
    if p == 1:
        norm = b.op("sum", b.op("abs", x), axis=axis, keepdims=True)
    elif p == 2:
        norm = b.op("sqrt", b.op("sum", b.op("square", x), axis=axis, keepdims=True))
    else:
        b.refuse(f"p={p} is not supported (1 or 2)")
    # 0 where the norm is 0 (all of x is 0 there): divide by 1 instead
    safe = b.op("where", b.op("equal", norm, b.scalar(0, x)), b.scalar(1, x), norm)
    return b.op("div", x, safe)


# ------------------------------------------------------------------ from_onnx


def _attributes(node) -> dict[str, Any]:
    onnx = _onnx()
    out = {}
    for attr in node.attribute:
        v = onnx.helper.get_attribute_value(attr)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[attr.name] = v
    return out


def _evaluate(node, inputs: list[np.ndarray]) -> list[np.ndarray] | None:
    """The outputs of ``node`` on known inputs (ONNX's reference evaluator), None if it cannot."""
    onnx = _onnx()
    from onnx.reference import ReferenceEvaluator
    try:
        names = [f"in{i}" if n else "" for i, n in enumerate(node.input)]
        outs = [f"out{i}" if n else "" for i, n in enumerate(node.output)]
        copy = onnx.helper.make_node(node.op_type, names, outs, domain=node.domain)
        copy.attribute.extend(node.attribute)
        feeds = {n: v for n, v in zip(names, inputs) if n}
        results = ReferenceEvaluator(copy).run(None, feeds)
    except Exception:  # noqa: BLE001 - whatever the evaluator cannot do, the translation may
        return None
    it = iter(results)
    return [np.asarray(next(it)) if o else None for o in outs]


def _load(model_or_path):
    onnx = _onnx()
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if isinstance(model_or_path, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model_or_path))
    if isinstance(model_or_path, (str, os.PathLike)):
        return onnx.load(os.fspath(model_or_path))
    raise TypeError(f"expected an onnx.ModelProto, bytes or a path, got {type(model_or_path).__name__}")


def _opset(model) -> int:
    onnx = _onnx()
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    opset = versions.get("ai.onnx")
    newest = onnx.defs.onnx_opset_version()
    if opset is None or not MIN_OPSET <= opset <= newest:
        raise OnnxError(f"the model's ai.onnx opset is {opset}; gradwire imports opsets {MIN_OPSET} to {newest}")
    return opset


def _input_dims(vi, batch_dim: str) -> tuple[int | None, ...]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        raise OnnxError(f"graph input {vi.name!r} has no shape (its rank must be known)")
    dims = []
    for i, d in enumerate(t.shape.dim):
        fixed = d.HasField("dim_value") and not (batch_dim == "leading" and i == 0)
        dims.append(int(d.dim_value) if fixed else None)
    return tuple(dims)


def from_onnx(model_or_path, *, trainable: str | Iterable[str] = "initializers",
              batch_dim: str = "auto") -> tuple[Graph, dict[str, np.ndarray]]:
    """A gradwire ``Graph`` (no loss yet: build it on ``g.value(name)``) and its parameters.

    ``trainable``: ``"initializers"`` (every float initializer is a parameter), ``"none"``
    (all constants) or a set of initializer names. ``batch_dim``: ``"auto"`` (symbolic dims
    are unknown, fixed ones stay) or ``"leading"`` (the leading dim of every batch input is
    the batch dim, fixed or not). Refuses (``OnnxError``) any op, attribute or value the
    mapping does not cover, naming the ONNX op type and node.
    """
    onnx = _onnx()
    model = _load(model_or_path)
    if batch_dim not in ("auto", "leading"):
        raise ValueError(f"batch_dim must be 'auto' or 'leading', got {batch_dim!r}")
    opset = _opset(model)
    graph = model.graph
    if len(graph.sparse_initializer):
        raise OnnxError("sparse initializers are not supported")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    if trainable == "initializers":
        train = {n for n, v in inits.items() if v.dtype in FLOAT_DTYPES}
    elif trainable == "none":
        train = set()
    elif isinstance(trainable, str):
        raise ValueError(f"trainable must be 'initializers', 'none' or a set of names, got {trainable!r}")
    else:
        train = set(trainable)
        unknown = sorted(train - set(inits))
        if unknown:
            raise ValueError(f"trainable names {unknown} are not initializers of the model")
        ints = sorted(n for n in train if inits[n].dtype not in FLOAT_DTYPES)
        if ints:
            raise ValueError(f"initializers {ints} are not float tensors and cannot be trained")

    names = {n for node in graph.node for n in (*node.input, *node.output) if n}
    names |= {vi.name for vi in graph.input} | set(inits)
    g = Graph()
    b = _Builder(g, names, opset)
    params: dict[str, np.ndarray] = {}
    for name, arr in inits.items():
        if name in train:
            b.values[name] = g.param(name, arr.shape, arr.dtype)
            params[name] = np.array(arr)
            if trainable == "initializers":
                b.params_as_consts[name] = arr
        else:
            b.consts[name] = arr
    for vi in graph.input:
        if vi.name in inits:
            continue  # IR < 4 lists initializers among the inputs
        dtype = _np_dtype(vi.type.tensor_type.elem_type)
        if dtype is None:
            raise OnnxError(f"graph input {vi.name!r} is {_type_name(vi.type.tensor_type.elem_type)}, "
                            f"not one of gradwire's dtypes {sorted(DTYPES)}")
        b.values[vi.name] = g.input(vi.name, _input_dims(vi, batch_dim), dtype)

    for node in graph.node:
        b.node = node
        _translate(b, node)
    b.node = None
    for name in set(b.params_as_consts) - b.params_as_tensors - {vi.name for vi in graph.output}:
        del g.graph_def.params[name], g._specs[name], params[name]  # read only as a constant
    g._changed()

    for vi in graph.output:
        if vi.name in g._specs:
            continue
        if vi.name in b.values:  # an alias of another value (Identity, a no-op Cast, ...): a copy named so
            v = b.values[vi.name]
            if v.shape.count(None) <= 1:
                op, attrs = "reshape", {"shape": [-1 if d is None else d for d in v.shape]}
            else:
                op, attrs = "slice", {"starts": [0], "ends": [INT64_MAX], "axes": [0]}
            b.values[vi.name] = g.add_node(op, [v], attrs, name=vi.name)
        elif vi.name in b.consts:
            b.value(vi.name)
        else:
            raise OnnxError(f"graph output {vi.name!r} is not produced by any node")
    return g, params


def _translate(b: _Builder, node) -> None:
    if node.domain not in ("", "ai.onnx"):
        b.refuse(f"domain {node.domain!r} is not supported (only the default ai.onnx domain)")
    entry = IMPORTERS.get(node.op_type)
    attrs = _attributes(node)
    known = [n for n in node.input if n]
    if (node.op_type not in _NOT_FOLDED and known and all(n in b.consts for n in known)):
        outs = _evaluate(node, [b.consts[n] if n else None for n in node.input])
        if outs is not None:
            for name, arr in zip(node.output, outs):
                if name:
                    b.consts[name] = arr
            return
    if entry is None:
        b.refuse("has no gradwire mapping")
    extra = sorted(set(attrs) - entry.attrs)
    if extra:
        b.refuse(f"attribute(s) {extra} are not supported")
    start = len(b.g.graph_def.nodes)
    results = entry.fn(b, attrs)
    if not isinstance(results, list):
        results = [results]
    for i, name in enumerate(node.output):
        if not name:
            continue
        r = results[i] if i < len(results) else None
        if r is None:
            b.refuse(f"output {i} ({name!r}) is not supported")
        if isinstance(r, np.ndarray):
            b.consts[name] = r
            continue
        created = b.g.graph_def.nodes[start:]
        if any(n.name == r.name for n in created) and not any(r.name in n.inputs for n in created) \
                and not any(r.name == v.name for v in results[:i] if isinstance(v, Value)):
            r = _rename(b.g, r, name)
        b.values[name] = r


def _rename(g: Graph, v: Value, new: str) -> Value:
    """Give the node just built for ``v`` the ONNX output's name (nothing reads it yet)."""
    nodes = g.graph_def.nodes
    for i in range(len(nodes) - 1, -1, -1):
        if nodes[i].name == v.name:
            nodes[i] = dataclasses.replace(nodes[i], name=new)
            break
    g._specs[new] = g._specs.pop(v.name)
    g._changed()
    return Value(g, new, v.spec)


# ------------------------------------------------------------------ to_onnx


class _Exporter:
    def __init__(self, taken: Iterable[str]):
        self.taken = set(taken)
        self.nodes: list = []
        self._counter = 0

    def fresh(self, base: str) -> str:
        while True:
            self._counter += 1
            name = f"{base}/{self._counter}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def node(self, op_type: str, inputs: list[str], out: str, **attrs) -> str:
        self.nodes.append(_onnx().helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, array, base: str) -> str:
        onnx = _onnx()
        out = self.fresh(base)
        self.nodes.append(onnx.helper.make_node("Constant", [], [out], name=out,
                                                value=onnx.numpy_helper.from_array(np.asarray(array), out)))
        return out

    def ints(self, values, base: str) -> str:
        return self.const(np.asarray([int(v) for v in values], np.int64), base)


EXPORTERS: dict[str, Callable[..., None]] = {}

for _op, _t in {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "neg": "Neg", "exp": "Exp",
                "log": "Log", "tanh": "Tanh", "sqrt": "Sqrt", "abs": "Abs", "relu": "Relu",
                "sigmoid": "Sigmoid", "where": "Where", "matmul": "MatMul", "maximum": "Max",
                "minimum": "Min"}.items():
    EXPORTERS[_op] = (lambda t: lambda e, out, xs, specs, a: e.node(t, xs, out))(_t)


def _export_pow(e, out, xs, specs, a):
    if len(xs) == 2:
        e.node("Pow", xs, out)
        return
    e.node("Pow", [xs[0], e.const(np.asarray(a["exponent"], specs[0].dtype), out)], out)


def _export_reduce(t):
    def fn(e, out, xs, specs, a):
        axis = a["axis"]
        ins = list(xs)
        if axis is not None:
            ins.append(e.ints([axis] if isinstance(axis, int) else axis, out))
        e.node(t, ins, out, keepdims=int(bool(a["keepdims"])))
    return fn


def _export_slice(e, out, xs, specs, a):
    n = len(a["starts"])
    axes = a["axes"] if a["axes"] is not None else range(n)
    steps = a["steps"] if a["steps"] is not None else [1] * n
    e.node("Slice", [xs[0], e.ints(a["starts"], out), e.ints(a["ends"], out), e.ints(axes, out),
                     e.ints(steps, out)], out)


def _export_loss(t):
    def fn(e, out, xs, specs, a):
        extra = {"ignore_index": int(a["ignore_index"])} if a.get("ignore_index") is not None else {}
        e.node(t, xs, out, reduction=a.get("reduction", "mean"), **extra)
    return fn


def _export_mse(e, out, xs, specs, a):
    d = e.node("Sub", xs, e.fresh(out))
    e.node("ReduceMean", [e.node("Mul", [d, d], e.fresh(out))], out, keepdims=0)


def _export_bce(e, out, xs, specs, a):
    # max(x, 0) - x t + log(1 + exp(-|x|)), as the kernel
    x, t = xs
    tail = e.node("Softplus", [e.node("Neg", [e.node("Abs", [x], e.fresh(out))], e.fresh(out))], e.fresh(out))
    lin = e.node("Sub", [e.node("Relu", [x], e.fresh(out)), e.node("Mul", [x, t], e.fresh(out))], e.fresh(out))
    e.node("ReduceMean", [e.node("Add", [lin, tail], e.fresh(out))], out, keepdims=0)


EXPORTERS.update({
    "square": lambda e, out, xs, specs, a: e.node("Mul", [xs[0], xs[0]], out),
    "pow": _export_pow,
    "transpose": lambda e, out, xs, specs, a: e.node("Transpose", xs, out, **(
        {"perm": list(a["perm"])} if a["perm"] is not None else {})),
    "reshape": lambda e, out, xs, specs, a: e.node("Reshape", [xs[0], e.ints(a["shape"], out)], out, allowzero=1),
    "broadcast_to": lambda e, out, xs, specs, a: e.node("Expand", [xs[0], e.ints(a["shape"], out)], out),
    "concat": lambda e, out, xs, specs, a: e.node("Concat", xs, out, axis=int(a["axis"])),
    "slice": _export_slice,
    "sum": _export_reduce("ReduceSum"),
    "mean": _export_reduce("ReduceMean"),
    "max": _export_reduce("ReduceMax"),
    "softmax": lambda e, out, xs, specs, a: e.node("Softmax", xs, out, axis=int(a["axis"])),
    "log_softmax": lambda e, out, xs, specs, a: e.node("LogSoftmax", xs, out, axis=int(a["axis"])),
    "softmax_cross_entropy": _export_loss("SoftmaxCrossEntropyLoss"),
    "nll_loss": _export_loss("NegativeLogLikelihoodLoss"),
    "mse": _export_mse,
    "binary_cross_entropy_with_logits": _export_bce,
})

# ---- the ops of math.py, indexing.py, conv.py and norm.py

for _op, _t in {"sign": "Sign", "floor": "Floor", "ceil": "Ceil", "round": "Round", "erf": "Erf",
                "reciprocal": "Reciprocal", "softplus": "Softplus", "softsign": "Softsign", "hard_swish": "HardSwish",
                "equal": "Equal", "less": "Less", "greater": "Greater", "less_equal": "LessOrEqual",
                "greater_equal": "GreaterOrEqual", "logical_and": "And", "logical_or": "Or", "logical_not": "Not",
                "global_avg_pool2d": "GlobalAveragePool", "global_max_pool2d": "GlobalMaxPool"}.items():
    EXPORTERS[_op] = (lambda t: lambda e, out, xs, specs, a: e.node(t, xs, out))(_t)


def _with_attrs(t, **names):
    """A 1:1 export whose ONNX attributes are gradwire attributes (``onnx_name=gradwire_name``)."""
    def fn(e, out, xs, specs, a):
        e.node(t, xs, out, **{k: a[v] for k, v in names.items() if a.get(v) is not None})
    return fn


for _op in ("min", "prod", "logsumexp", "reduce_l1", "reduce_l2"):
    EXPORTERS[_op] = _export_reduce({"min": "ReduceMin", "prod": "ReduceProd", "logsumexp": "ReduceLogSumExp",
                                     "reduce_l1": "ReduceL1", "reduce_l2": "ReduceL2"}[_op])


def _export_composed(build):
    """An export as a small ONNX composition: ``build(e, out, x, spec, a)`` -> nothing."""
    return lambda e, out, xs, specs, a: build(e, out, xs[0], specs[0], a)


def _one(e, out, spec):
    return e.const(np.asarray(1, spec.dtype), out)


def _export_clip(e, out, xs, specs, a):
    dt = specs[0].dtype
    bound = [("" if a[k] is None else e.const(np.asarray(a[k], dt), out)) for k in ("min", "max")]
    e.node("Clip", [xs[0], *bound], out)


def _export_cast(e, out, xs, specs, a):
    e.node("Cast", xs, out, to=_elem_type(np.dtype(a["to"])))


def _export_axes_op(t, attr):
    def fn(e, out, xs, specs, a):
        axes = a[attr]
        ins = list(xs) + ([] if axes is None else [e.ints([axes] if isinstance(axes, int) else axes, out)])
        e.node(t, ins, out)
    return fn


def _export_pad(e, out, xs, specs, a):
    ins = [xs[0], e.ints(a["pads"], out)]
    if a["mode"] == "constant":
        ins.append(e.const(np.asarray(a["value"], specs[0].dtype), out))
    e.node("Pad", ins, out, mode=a["mode"])


def _export_split(e, out, xs, specs, a):
    n = len(a["split"]) if a.get("split") is not None else a["num_outputs"]
    outs = [out if i == a["index"] else e.fresh(out) for i in range(n)]
    ins = [xs[0]] + ([e.ints(a["split"], out)] if a.get("split") is not None else [])
    extra = {} if a.get("split") is not None else {"num_outputs": int(n)}
    e.nodes.append(_onnx().helper.make_node("Split", ins, outs, name=out, axis=int(a["axis"]), **extra))


def _export_one_hot(e, out, xs, specs, a):
    values = xs[1] if len(xs) > 1 else e.const(np.asarray([0, 1], np.dtype(a["dtype"])), out)
    e.node("OneHot", [xs[0], e.ints([a["depth"]], out), values], out, axis=int(a["axis"]))


_AUTO_PAD_NAMES = {v: k for k, v in AUTO_PAD.items()}


def _pads4(padding):
    p = [int(v) for v in padding]
    return p * 2 if len(p) == 2 else p


def _export_conv(t):
    def fn(e, out, xs, specs, a):
        extra = {"output_padding": list(a["output_padding"])} if "output_padding" in a else {}
        auto = _AUTO_PAD_NAMES[a.get("auto_pad", 0)]
        if auto != "NOTSET":
            extra["auto_pad"] = auto
        else:
            extra["pads"] = _pads4(a["padding"])
        e.node(t, xs, out, kernel_shape=list(specs[1].shape[2:]), strides=list(a["stride"]),
               dilations=list(a["dilation"]), group=int(a["groups"]), **extra)
    return fn


def _export_pool(t):
    def fn(e, out, xs, specs, a):
        kernel = list(a["kernel"])
        auto = _AUTO_PAD_NAMES[a.get("auto_pad", 0)]
        extra = {} if auto != "NOTSET" else {"pads": _pads4(a["padding"])}
        if "count_include_pad" in a:
            extra["count_include_pad"] = int(a["count_include_pad"])
        if list(a["dilation"]) != [1, 1]:
            extra["dilations"] = list(a["dilation"])
        if auto != "NOTSET":
            extra["auto_pad"] = auto
        e.node(t, xs, out, kernel_shape=kernel, strides=list(a["stride"] if a["stride"] is not None else kernel),
               **extra)
    return fn


def _export_batch_norm(e, out, xs, specs, a):
    if a["training"]:
        raise OnnxError(f"batch_norm node {out!r} runs in training mode (batch statistics); "
                        "only eval mode exports (BatchNormalization with running statistics)")
    e.node("BatchNormalization", xs, out, epsilon=float(a["epsilon"]))


def _export_dropout(e, out, xs, specs, a):
    if a["training"] and a["ratio"] > 0:
        raise OnnxError(f"dropout node {out!r} is in training mode: its mask is gradwire's own hash, "
                        "which ONNX's Dropout cannot reproduce")
    e.node("Identity", xs[:1], out)


EXPORTERS.update({
    "elu": _with_attrs("Elu", alpha="alpha"),
    "selu": _with_attrs("Selu", alpha="alpha", gamma="gamma"),
    "leaky_relu": _with_attrs("LeakyRelu", alpha="alpha"),
    "hard_sigmoid": _with_attrs("HardSigmoid", alpha="alpha", beta="beta"),
    "gelu": _with_attrs("Gelu", approximate="approximate"),
    "argmax": lambda e, out, xs, specs, a: e.node("ArgMax", xs, out, axis=int(a["axis"]), keepdims=int(a["keepdims"])),
    "argmin": lambda e, out, xs, specs, a: e.node("ArgMin", xs, out, axis=int(a["axis"]), keepdims=int(a["keepdims"])),
    "gemm": _with_attrs("Gemm", alpha="alpha", beta="beta", transA="transA", transB="transB"),
    "einsum": _with_attrs("Einsum", equation="equation"),
    "gather": _with_attrs("Gather", axis="axis"),
    "gather_elements": _with_attrs("GatherElements", axis="axis"),
    "embedding": lambda e, out, xs, specs, a: e.node("Gather", xs, out, axis=0),
    "flatten": _with_attrs("Flatten", axis="axis"),
    "squeeze": _export_axes_op("Squeeze", "axes"),
    "unsqueeze": _export_axes_op("Unsqueeze", "axes"),
    "expand": lambda e, out, xs, specs, a: e.node("Expand", [xs[0], e.ints(a["shape"], out)], out),
    "tile": lambda e, out, xs, specs, a: e.node("Tile", [xs[0], e.ints(a["repeats"], out)], out),
    "pad": _export_pad,
    "split": _export_split,
    "one_hot": _export_one_hot,
    "clip": _export_clip,
    "cast": _export_cast,
    "expm1": _export_composed(lambda e, out, x, spec, a: e.node(
        "Sub", [e.node("Exp", [x], e.fresh(out)), _one(e, out, spec)], out)),
    "log1p": _export_composed(lambda e, out, x, spec, a: e.node(
        "Log", [e.node("Add", [x, _one(e, out, spec)], e.fresh(out))], out)),
    "silu": _export_composed(lambda e, out, x, spec, a: e.node(
        "Mul", [x, e.node("Sigmoid", [x], e.fresh(out))], out)),
    "conv2d": _export_conv("Conv"),
    "conv_transpose2d": _export_conv("ConvTranspose"),
    "max_pool2d": _export_pool("MaxPool"),
    "avg_pool2d": _export_pool("AveragePool"),
    "batch_norm": _export_batch_norm,
    "layer_norm": _with_attrs("LayerNormalization", axis="axis", epsilon="epsilon"),
    "instance_norm": _with_attrs("InstanceNormalization", epsilon="epsilon"),
    "group_norm": _with_attrs("GroupNormalization", num_groups="num_groups", epsilon="epsilon"),
    "dropout": _export_dropout,
})


def _value_info(name: str, spec: TensorSpec):
    dims = [f"{name}_dim{i}" if d is None else d for i, d in enumerate(spec.shape)]
    if spec.shape and spec.shape[0] is None:
        dims[0] = "batch"
    return _onnx().helper.make_tensor_value_info(name, _elem_type(spec.dtype), dims)


def to_onnx(graph: Graph | GraphDef, params: dict[str, Any], path: str | os.PathLike | None = None, *,
            opset: int = EXPORT_OPSET):
    """An ``onnx.ModelProto`` computing ``graph``'s loss and fetched outputs (its outputs), with
    ``params`` as initializers; checked with ``onnx.checker`` and saved to ``path`` if given."""
    onnx = _onnx()
    gd = graph.graph_def if isinstance(graph, Graph) else graph
    order = topological_order(gd)
    specs, attrs = infer(gd, order, gd.sources())
    outputs = list(dict.fromkeys(([gd.loss] if gd.loss else []) + list(gd.outputs)))
    if not outputs:
        raise OnnxError("the graph has neither a loss nor fetched outputs: nothing to export")
    missing = sorted(set(gd.params) - set(params))
    if missing:
        raise ValueError(f"missing parameter(s) {missing}")
    # only what feeds the outputs
    needed = set(outputs)
    kept = []
    for i in range(len(order) - 1, -1, -1):
        if order[i].name in needed:
            needed.update(order[i].inputs)
            kept.append(i)
    e = _Exporter(specs)
    for name in (n for n in gd.constants if n in needed):
        e.nodes.append(onnx.helper.make_node("Constant", [], [name], name=name,
                                             value=onnx.numpy_helper.from_array(np.asarray(gd.constants[name]), name)))
    for i in reversed(kept):
        node = order[i]
        fn = EXPORTERS.get(node.op)
        if fn is None:
            raise OnnxError(f"gradwire op {node.op!r} (node {node.name!r}) has no ONNX mapping")
        fn(e, node.name, list(node.inputs), [specs[r] for r in node.inputs], attrs[i])
    inits = [onnx.numpy_helper.from_array(np.asarray(params[n], spec.dtype), n) for n, spec in gd.params.items()]
    model = onnx.helper.make_model(
        onnx.helper.make_graph(e.nodes, "gradwire", [_value_info(n, s) for n, s in gd.inputs.items()],
                               [_value_info(n, specs[n]) for n in outputs], inits),
        opset_imports=[onnx.helper.make_opsetid("", opset)], producer_name="gradwire")
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model


# ---------------------------------------------------------------- training an ONNX model

LOSSES = ("softmax_cross_entropy", "nll_loss", "mse", "binary_cross_entropy_with_logits")


def training_graph(model_or_path, loss: str, label: str = "y", output: str | None = None):
    """``(graph, params)`` of an ONNX model with a loss chosen by name: ``loss`` (one of
    ``LOSSES``, each a mean over the batch) of the model's output (its first, or ``output``)
    and a new batch input ``label`` (int64 class labels for the class losses, else shaped as
    the output)."""
    from .graph import OP_FUNCTIONS

    if loss not in LOSSES:
        raise GraphError(f"loss must be one of {LOSSES}, got {loss!r}")
    model = _load(model_or_path)
    graph, params = from_onnx(model, batch_dim="leading")
    prediction = graph.value(output or model.graph.output[0].name)
    labels = graph.input(label, (None,), "int64") if loss in ("softmax_cross_entropy", "nll_loss") else \
        graph.input(label, prediction.shape, prediction.dtype.name)
    graph.set_loss(OP_FUNCTIONS[loss](prediction, labels))
    return graph, params
