"""Linear algebra and shape ops: matmul, transpose, reshape, broadcast_to, concat, slice."""

from __future__ import annotations

import numpy as np

from .. import batching
from .registry import (
    Attr,
    Op,
    Sample,
    ShapeError,
    broadcast_dims,
    fmt_shape,
    register,
    require_float,
    require_same_dtype,
    unbroadcast,
)
from ..spec import TensorSpec, num_elements


def _swap(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)


def _infer_matmul(a: TensorSpec, b: TensorSpec) -> TensorSpec:
    """np.matmul's rule: a 1-D a is a row (k,) -> (1, k), a 1-D b a column (k,) -> (k, 1), and
    the added dimension is removed from the result."""
    require_float(a, b)
    require_same_dtype(a, b)
    if a.ndim < 1 or b.ndim < 1:
        raise ShapeError(f"matmul needs inputs of rank >= 1, got {fmt_shape(a.shape)} and {fmt_shape(b.shape)}")
    a_shape = (1,) + a.shape if a.ndim == 1 else a.shape
    b_shape = b.shape + (1,) if b.ndim == 1 else b.shape
    k_a, k_b = a_shape[-1], b_shape[-2]
    if k_a is not None and k_b is not None and k_a != k_b:
        raise ShapeError(f"inner dimensions differ: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)}")
    batch = broadcast_dims(a_shape[:-2], b_shape[:-2])
    rows = () if a.ndim == 1 else (a_shape[-2],)
    cols = () if b.ndim == 1 else (b_shape[-1],)
    return TensorSpec(batch + rows + cols, a.dtype)


def _matmul_vjp_a(g, y, a, b):
    if a.ndim > 1 and b.ndim > 1:
        return g @ _swap(b)
    if b.ndim == 1:  # g lacks the column axis: an outer product with b
        grad = g[..., None] * b
    else:  # a is 1-D, b is not: g lacks the row axis
        grad = (g[..., None, :] @ _swap(b))[..., 0, :]
    return grad  # a 1-D a: the executor sums the leading (broadcast) axes away


def _matmul_vjp_b(g, y, a, b):
    if a.ndim > 1 and b.ndim > 1:
        return _swap(a) @ g
    if a.ndim == 1:  # g lacks the row axis
        if b.ndim == 1:
            return g * a
        return a[:, None] * g[..., None, :]
    return (_swap(a) @ g[..., None])[..., 0]  # b is 1-D, a is not


def _matmul_samples(rng):
    pairs = [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)),
             ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4,)), ((4,), (2, 4, 5))]
    return [Sample((rng.normal(size=sa), rng.normal(size=sb))) for sa, sb in pairs]


def _matmul_lands(b: batching.Batch, spec: TensorSpec, kept: int) -> int | None:
    """Where a ROWS operand's batch axis lands in the output, counted from the right: its
    ``kept`` axis (-2 for a's rows, -1 for b's columns) and leading (broadcast) axes stay in
    place; the contracted axis (the other of the last two) lands nowhere (None)."""
    k = b.axis - spec.ndim
    return None if k == -3 - kept else k


def _matmul_batch(ins, specs, out):
    """a @ b is bilinear: a mean or sum times a batch-free matrix keeps it; rows of a (or
    columns of b) stay per-example; contracting over the batch, or pairing a's rows with b's
    columns, couples examples. A 1-D operand is promoted as np.matmul does: its only axis is
    contracted, and the axis added for it is gone from the output."""
    reduced = [b for b in ins if b.reduced]
    if reduced:
        if len(reduced) == 1 and all(b.kind == "free" for b in ins if not b.reduced):
            return reduced[0]
        return batching.coupled("multiplies a mean or sum over the batch by a batch-dependent operand")
    if any(b.kind == "rows" and s.ndim == 1 for b, s in zip(ins, specs)):
        return batching.coupled("contracts over the batch axis")
    a_spec, b_spec = specs
    promoted = (TensorSpec((1,) + a_spec.shape, a_spec.dtype) if a_spec.ndim == 1 else a_spec,
                TensorSpec(b_spec.shape + (1,), b_spec.dtype) if b_spec.ndim == 1 else b_spec)
    landed = {_matmul_lands(b, s, kept) for b, s, kept in zip(ins, promoted, (-2, -1)) if b.kind == "rows"}
    if None in landed:
        return batching.coupled("contracts over the batch axis")
    if len(landed) > 1:
        return batching.coupled("pairs every example of one operand with every example of the other")
    k = landed.pop()
    if k <= -3:  # a broadcast (leading) axis: as elementwise, a batch-free operand must have size 1 there
        lead = tuple(TensorSpec(s.shape[:-2], s.dtype) for s in promoted)
        n_lead = out.ndim - (a_spec.ndim > 1) - (b_spec.ndim > 1)
        return batching.broadcast_rows(ins, lead, n_lead)
    if b_spec.ndim == 1:  # a's rows (k == -2) land on the output's last axis
        k += 1
    return batching.rows(out.ndim + k)


def _matmul_flops(out: TensorSpec, a: TensorSpec, b: TensorSpec) -> int:
    # a multiply and an add per (output element, inner index), batch dims included
    k = a.shape[-1]  # unknown (None) only before a batch arrives: count it as 1, as num_elements does
    return 2 * num_elements(out.shape) * (1 if k is None else k)


def _matmul_workspace(phase, out: TensorSpec, a: TensorSpec, b: TensorSpec) -> int:
    """Bytes (see the registry). Forward: none (BLAS or NumPy's loop on the operands as they are);
    counted as a copy of each, for margin. Backward: each rule's product before ``unbroadcast``
    has the output's batch dims and its operand's matrix, (batch, M, K) and (batch, K, N) — far
    more than the operand where one batch dim is broadcast (a (1, M, K) @ b (B, K, 1): B*M*K);
    the executor holds both products, then both sums."""
    a_shape = (1,) + a.shape if a.ndim == 1 else a.shape
    b_shape = b.shape + (1,) if b.ndim == 1 else b.shape
    if phase == "forward":
        return (num_elements(a_shape) + num_elements(b_shape)) * a.dtype.itemsize
    batch = num_elements(broadcast_dims(a_shape[:-2], b_shape[:-2]))
    return batch * (num_elements(a_shape[-2:]) + num_elements(b_shape[-2:])) * a.dtype.itemsize


# broadcast=True: the executor sums each gradient over broadcast batch dimensions.
register(Op(
    "matmul", np.matmul, _infer_matmul,
    (_matmul_vjp_a, _matmul_vjp_b),
    _matmul_samples, arity=2, saves=(0, 1), broadcast=True, batch=_matmul_batch, workspace=_matmul_workspace,
    doc="a @ b over the last two dimensions; leading dimensions broadcast; a 1-D operand is "
        "promoted and the added dimension removed, as np.matmul", flops=_matmul_flops,
))


def _perm(ndim: int, perm) -> tuple[int, ...]:
    return tuple(range(ndim))[::-1] if perm is None else tuple(perm)


def _infer_transpose(x: TensorSpec, perm=None) -> TensorSpec:
    p = _perm(x.ndim, perm)
    if sorted(p) != list(range(x.ndim)):
        raise ShapeError(f"perm {list(p)} is not a permutation of the {x.ndim} axes of {fmt_shape(x.shape)}")
    return TensorSpec(tuple(x.shape[i] for i in p), x.dtype)


def _transpose_batch(ins, specs, out, perm=None):
    (b,), (s,) = ins, specs
    return b if b.reduced else batching.rows(_perm(s.ndim, perm).index(b.axis))


register(Op(
    "transpose", lambda x, perm=None: np.transpose(x, perm), _infer_transpose,
    (lambda g, y, x, perm=None: np.transpose(g, np.argsort(_perm(x.ndim, perm))),),
    lambda rng: [Sample((rng.normal(size=(2, 3, 4)),), {"perm": [1, 2, 0]}),
                 Sample((rng.normal(size=(3, 4)),), {})],
    attrs={"perm": Attr("ints", None)}, saves=(), batch=_transpose_batch,
    doc="permute the axes (default: reverse them)",
))


def _infer_reshape(x: TensorSpec, shape) -> TensorSpec:
    target = tuple(shape)
    if sum(d == -1 for d in target) > 1 or any(d < -1 for d in target):
        raise ShapeError(f"reshape target {fmt_shape(target)} may hold at most one -1 and no other negative dims")
    known = num_elements(target) * (-1 if -1 in target else 1)
    if not x.is_static:
        # the batch size is unknown until a batch arrives; -1 absorbs it
        return TensorSpec(tuple(None if d == -1 else d for d in target), x.dtype)
    total = num_elements(x.shape)
    if -1 in target:
        if known == 0 or total % known:
            raise ShapeError(f"cannot reshape {fmt_shape(x.shape)} into {fmt_shape(target)}")
        target = tuple(total // known if d == -1 else d for d in target)
    elif known != total:
        raise ShapeError(f"cannot reshape {fmt_shape(x.shape)} ({total} elements) into {fmt_shape(target)}")
    return TensorSpec(target, x.dtype)


def _reshape_batch(ins, specs, out, shape):
    """Per-example only when -1 takes exactly the leading batch axis: every example then
    keeps its own row (x.reshape(-1, 12) on (None, 3, 4)). A reshape keeps a mean or sum."""
    (b,), (s,) = ins, specs
    if b.reduced:
        return b
    rest, target = s.shape[1:], tuple(shape)[1:]
    if b.axis == 0 and shape and shape[0] == -1 and None not in rest and num_elements(rest) == num_elements(target):
        return b
    return batching.coupled("reshapes across the batch axis")


register(Op(
    "reshape", lambda x, shape: np.reshape(x, shape), _infer_reshape,
    (lambda g, y, x, shape: np.reshape(g, x.shape),),
    lambda rng: [Sample((rng.normal(size=(2, 6)),), {"shape": [3, 4]}),
                 Sample((rng.normal(size=(2, 3, 2)),), {"shape": [-1, 2]})],
    attrs={"shape": Attr("ints")}, saves=(), batch=_reshape_batch,
    doc="the same elements in a new shape (one -1 dim is inferred)",
))


def _infer_broadcast_to(x: TensorSpec, shape) -> TensorSpec:
    target = tuple(shape)
    if any(d < 0 for d in target):
        raise ShapeError(f"broadcast_to target {fmt_shape(target)} has a negative dim")
    if broadcast_dims(x.shape, target) != target:
        raise ShapeError(f"cannot broadcast {fmt_shape(x.shape)} to {fmt_shape(target)}")
    return TensorSpec(target, x.dtype)


def _broadcast_to_batch(ins, specs, out, shape):
    # the target is fixed: the batch axis would have to be of that size
    b = ins[0]
    return b if b.reduced else batching.coupled("broadcasts the batch axis to a fixed size")


register(Op(
    "broadcast_to", lambda x, shape: np.broadcast_to(x, shape), _infer_broadcast_to,
    (lambda g, y, x, shape: unbroadcast(g, x.shape),),
    lambda rng: [Sample((rng.normal(size=(3, 1)),), {"shape": [2, 3, 4]})],
    attrs={"shape": Attr("ints")}, saves=(), batch=_broadcast_to_batch,
    doc="broadcast to a shape, as NumPy broadcasting",
))


def _infer_concat(*xs: TensorSpec, axis=0) -> TensorSpec:
    require_same_dtype(*xs)
    ranks = {x.ndim for x in xs}
    if len(ranks) != 1:
        raise ShapeError("concat inputs differ in rank: " + ", ".join(fmt_shape(x.shape) for x in xs))
    ndim = ranks.pop()
    if not -ndim <= axis < ndim:
        raise ShapeError(f"axis {axis} is out of range for rank {ndim}")
    axis %= ndim
    out = list(xs[0].shape)
    for x in xs[1:]:
        for i, (d0, d) in enumerate(zip(out, x.shape)):
            if i != axis and d0 is not None and d is not None and d0 != d:
                raise ShapeError("concat inputs differ off the concat axis: "
                                 + ", ".join(fmt_shape(x.shape) for x in xs))
    sizes = [x.shape[axis] for x in xs]
    out[axis] = None if None in sizes else sum(sizes)
    return TensorSpec(tuple(out), xs[0].dtype)


def _concat_vjp(g, y, *xs, axis=0):
    cuts = np.cumsum([x.shape[axis] for x in xs])[:-1]
    return tuple(np.split(g, cuts, axis=axis))


def _concat_batch(ins, specs, out, axis=0):
    """Per-example when every input carries the batch on the same axis and the concat is
    along another; of means or sums, as add (concat is linear)."""
    if any(b.reduced for b in ins):
        return batching.linear(ins, specs, out)
    axes = {b.axis for b in ins}
    if len(axes) > 1 or None in axes:
        return batching.coupled("joins per-example rows with a batch-free tensor or rows along another axis")
    if axes == {axis % out.ndim}:
        return batching.coupled("concatenates along the batch axis")
    return ins[0]


register(Op(
    "concat", lambda *xs, axis=0: np.concatenate(xs, axis=axis), _infer_concat, _concat_vjp,
    lambda rng: [Sample((rng.normal(size=(2, 3)), rng.normal(size=(2, 1)), rng.normal(size=(2, 2))), {"axis": 1}),
                 Sample((rng.normal(size=(1, 3)), rng.normal(size=(2, 3))), {})],
    arity=None, attrs={"axis": Attr("int", 0)}, saves=(), batch=_concat_batch,
    doc="join inputs along axis",
))


def _slices(ndim, starts, ends, axes, steps):
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeError("slice: starts, ends, axes and steps must have the same length")
    index = [slice(None)] * ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if not -ndim <= axis < ndim:
            raise ShapeError(f"slice axis {axis} is out of range for rank {ndim}")
        if step == 0:
            raise ShapeError("slice step cannot be 0")
        index[axis % ndim] = slice(start, end, step)
    return tuple(index)


def _infer_slice(x: TensorSpec, starts, ends, axes=None, steps=None) -> TensorSpec:
    index = _slices(x.ndim, starts, ends, axes, steps)
    shape = tuple(d if d is None else len(range(*s.indices(d))) for d, s in zip(x.shape, index))
    return TensorSpec(shape, x.dtype)


def _slice_vjp(g, y, x, starts, ends, axes=None, steps=None):
    grad = np.zeros(x.shape, dtype=g.dtype)
    grad[_slices(x.ndim, starts, ends, axes, steps)] = g
    return grad


INT64_MAX = 2**63 - 1  # an end past any dimension: ONNX's "to the end"


def _slice_batch(ins, specs, out, starts, ends, axes=None, steps=None):
    """Slicing another axis keeps rows per-example; along the batch axis only the whole,
    in order ([0:INT64_MAX:1]) does: anything else picks examples by position."""
    (b,), (s,) = ins, specs
    if b.reduced:
        return b
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if axis % s.ndim == b.axis and (start, end, step) != (0, INT64_MAX, 1):
            return batching.coupled("slices along the batch axis")
    return b


def _slice(x, starts, ends, axes=None, steps=None):
    # a copy: a view would keep all of x alive for a few of its elements, which neither the
    # executor's freeing nor the memory estimate (worker/budget.py) would see
    return x[_slices(x.ndim, starts, ends, axes, steps)].copy()


register(Op(
    "slice", _slice,
    _infer_slice, (_slice_vjp,),
    lambda rng: [Sample((rng.normal(size=(4, 5)),), {"starts": [1], "ends": [3]}),
                 Sample((rng.normal(size=(4, 6)),), {"starts": [-1, 0], "ends": [-5, 6], "axes": [0, 1], "steps": [-1, 2]})],
    attrs={"starts": Attr("ints"), "ends": Attr("ints"), "axes": Attr("ints", None), "steps": Attr("ints", None)},
    saves=(), batch=_slice_batch,
    doc="Python-style slicing (negative indices, steps) along the given axes, as ONNX Slice",
))

