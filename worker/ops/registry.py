"""The op table's contract. Every op is one ``Op`` registered once with ``register``.

An op holds, side by side:

* ``forward(*xs, **attrs) -> y``: a vectorized NumPy kernel.
* ``vjp``: one rule per input, ``rule(g, y, *xs, **attrs) -> gradient for that input``
  (``None`` for an input that is not differentiable, e.g. integer labels). ``g`` is the
  gradient of the loss w.r.t. ``y``. Rules reuse ``y`` where cheaper than recomputing.
  Variadic ops give one callable ``rule(g, y, *xs, **attrs) -> tuple`` instead.
* ``infer(*specs, **attrs) -> TensorSpec``: the shape/dtype rule. It *is* the validator:
  it raises ``ShapeError`` for anything the kernel would reject.
* ``saves``: which forward values the vjp reads (``"y"`` and/or input positions). The
  executor frees the rest as soon as the forward pass is done with them; a vjp is then
  handed a zero-strided placeholder that has only the right shape and dtype.
* ``broadcast``: the op broadcasts its inputs as NumPy does; the executor reduces each
  gradient back to its input's shape with ``unbroadcast`` (the one place that does it).
* ``batch(ins, in_specs, out_spec, **attrs) -> Batch``: how the output depends on the batch,
  given the inputs' points of the lattice in ``worker/batching.py`` (FREE, ROWS(axis), MEAN,
  SUM, COUPLED). The default, ``batching.elementwise``, is right only for elementwise ops that
  are non-linear; every other op states its rule (``tests/test_batching.py`` checks each
  rule against the op's kernel). Sharding is derived from these rules, so a wrong one gives
  wrong sharded answers: when unsure, return ``batching.coupled(why)``.
* ``flops(out_spec, *in_specs, **attrs) -> int``: the forward pass's floating-point
  operations, for the admission estimate (``worker/budget.py``). ``None``: one per element
  of the largest operand, input or output (right for elementwise ops and reductions).
* ``workspace(phase, out_spec, *in_specs, **attrs) -> int``: the BYTES of temporaries the
  kernel holds at its peak, for the admission estimate's memory model (``worker/budget.py``):
  ``phase="forward"``, besides its inputs and its output; ``phase="backward"``, the VJP with
  every rule run (``vjp_for`` may skip some), besides ``g``, ``y`` and the inputs and
  *including* the gradients it makes at their full size (a padded buffer before its crop, a
  product before ``unbroadcast``; the estimate counts the gradients once more: over, never
  under). Count what the code allocates (the peak of a sequence of NumPy expressions, without
  relying on NumPy eliding temporaries); the estimate adds ``BUFFERS`` a step for NumPy's ufunc
  buffers and array objects. Unknown (None) dims count as 1, as in ``num_elements``. ``None``:
  ``WORKSPACE`` (3) buffers as large as the largest operand, input or output: right for
  elementwise ops, reductions and layout ops. Declared by kernels whose temporaries outgrow
  their operands (conv2d's im2col columns, kh*kw times x; padded copies; matmul's broadcast
  products) or outnumber three (erf and gelu, computed in float64; prod's VJP; normalizations,
  whose statistics are as large as x over an axis of size 1; dropout's uint64 hash; the class
  losses' per-target buffers, larger than the scores' with few classes).
* ``samples(rng) -> [Sample]``: float64 test inputs inside the op's domain. The test
  suite checks every registered op with them; an op without samples fails it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import batching
from ..spec import FLOAT_DTYPES, TensorSpec


class ShapeError(ValueError):
    """Raised by a shape rule; the validator adds the node, op and input shapes."""


_REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """An attribute's kind and default. Kinds: int, ints, float, bool, str, axes (None|int|ints)."""

    kind: str
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@dataclass(frozen=True)
class Sample:
    inputs: tuple[np.ndarray, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


VjpRule = Callable[..., Any]


@dataclass(frozen=True)
class Op:
    name: str
    forward: Callable[..., np.ndarray]
    infer: Callable[..., TensorSpec]
    vjp: tuple[VjpRule | None, ...] | VjpRule
    samples: Callable[[np.random.Generator], list[Sample]] | None
    arity: int | None = 1  # None: variadic, at least one input
    attrs: dict[str, Attr] = field(default_factory=dict)
    saves: tuple[str | int, ...] | None = None  # None: everything
    broadcast: bool = False
    doc: str = ""
    flops: Callable[..., int] | None = None  # flops(out_spec, *in_specs, **attrs); see the module docstring
    workspace: Callable[..., int] | None = None  # workspace(phase, out_spec, *in_specs, **attrs) -> bytes; ditto
    batch: Callable[..., batching.Batch] = batching.elementwise  # see the module docstring

    def differentiable(self, n_inputs: int) -> tuple[bool, ...]:
        if callable(self.vjp):
            return (True,) * n_inputs
        return tuple(rule is not None for rule in self.vjp)

    def input_grads(self, needs: Sequence[bool], g, y, xs, attrs) -> list[np.ndarray | None]:
        """Gradients for the inputs flagged in ``needs`` (others ``None``), unbroadcast."""
        return self.vjp_for(needs)(g, y, xs, attrs)

    def vjp_for(self, needs: Sequence[bool]) -> Callable[..., list[np.ndarray | None]]:
        """``input_grads`` specialised to one ``needs``: the engine resolves it once per
        schedule (a choice of ``wrt`` and ``fetch``), so a step runs only the rules it needs
        and no per-call bookkeeping."""
        needs = tuple(bool(n) for n in needs)
        whole = self.vjp if callable(self.vjp) else None
        rules = () if whole else tuple(rule if need else None for need, rule in zip(needs, self.vjp))
        broadcast = self.broadcast

        def input_grads(g, y, xs, attrs):
            if whole is not None:
                grads = [gr if need else None for gr, need in zip(whole(g, y, *xs, **attrs), needs)]
            else:
                grads = [None if rule is None else rule(g, y, *xs, **attrs) for rule in rules]
            if broadcast:
                grads = [gr if gr is None or gr.shape == x.shape else unbroadcast(gr, x.shape)
                         for gr, x in zip(grads, xs)]
            return grads

        return input_grads


OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    if op.name in OPS:
        raise ValueError(f"op {op.name!r} registered twice")
    if not callable(op.vjp) and op.arity is not None and len(op.vjp) != op.arity:
        raise ValueError(f"op {op.name!r}: {len(op.vjp)} vjp rules for arity {op.arity}")
    OPS[op.name] = op
    return op


# ---------------------------------------------------------------- shared helpers


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes NumPy broadcasting added or stretched to reach ``shape``."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, d in enumerate(shape) if d == 1 and grad.shape[extra + i] != 1
    )
    return grad.sum(axis=axes).reshape(shape)


def broadcast_dims(*shapes: tuple[int | None, ...]) -> tuple[int | None, ...]:
    """NumPy's broadcasting rule on shapes that may hold unknown (None) dims."""
    ndim = max((len(s) for s in shapes), default=0)
    out: list[int | None] = []
    for i in range(ndim):
        dims = [s[len(s) - ndim + i] for s in shapes if len(s) - ndim + i >= 0]
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise ShapeError(f"shapes {' and '.join(map(fmt_shape, shapes))} do not broadcast")
        if known:
            out.append(known.pop())
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def fmt_shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def require_float(*specs: TensorSpec) -> None:
    for spec in specs:
        if spec.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"expected a float32 or float64 tensor, got {spec}")


def require_same_dtype(*specs: TensorSpec) -> None:
    if len({s.dtype for s in specs}) > 1:
        raise ShapeError("dtype mismatch: " + " vs ".join(str(s) for s in specs))


def normalize_axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """Axes as sorted non-negative ints; ``None`` means all. Out-of-range axes raise."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of range for a tensor of rank {ndim}")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {axes}")
    return tuple(sorted(out))


def keepdims_shape(shape: tuple, axes: tuple[int, ...], keepdims: bool) -> tuple:
    axes = frozenset(axes)  # `i in axes` on a tuple made this quadratic in the rank
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)
