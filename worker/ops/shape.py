"""Linear algebra and shape ops: matmul, transpose, reshape, broadcast_to, concat, slice."""

from __future__ import annotations

import numpy as np

from gradwire.worker.ops.registry import (
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
from gradwire.worker.spec import TensorSpec, num_elements


def _swap(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)


def _infer_matmul(a: TensorSpec, b: TensorSpec) -> TensorSpec:
    require_float(a, b)
    require_same_dtype(a, b)
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError(f"matmul needs inputs of rank >= 2, got {fmt_shape(a.shape)} and {fmt_shape(b.shape)}")
    k_a, k_b = a.shape[-1], b.shape[-2]
    if k_a is not None and k_b is not None and k_a != k_b:
        raise ShapeError(f"inner dimensions differ: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)}")
    batch = broadcast_dims(a.shape[:-2], b.shape[:-2])
    return TensorSpec(batch + (a.shape[-2], b.shape[-1]), a.dtype)


def _matmul_samples(rng):
    pairs = [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2))]
    return [Sample((rng.normal(size=sa), rng.normal(size=sb))) for sa, sb in pairs]


def _matmul_flops(out: TensorSpec, a: TensorSpec, b: TensorSpec) -> int:
    # a multiply and an add per (output element, inner index), batch dims included
    k = a.shape[-1]  # unknown (None) only before a batch arrives: count it as 1, as num_elements does
    return 2 * num_elements(out.shape) * (1 if k is None else k)


# broadcast=True: the executor sums each gradient over broadcast batch dimensions.
register(Op(
    "matmul", np.matmul, _infer_matmul,
    (lambda g, y, a, b: g @ _swap(b),
     lambda g, y, a, b: _swap(a) @ g),
    _matmul_samples, arity=2, saves=(0, 1), broadcast=True,
    doc="a @ b over the last two dimensions; leading dimensions broadcast", flops=_matmul_flops,
))


def _perm(ndim: int, perm) -> tuple[int, ...]:
    return tuple(range(ndim))[::-1] if perm is None else tuple(perm)


def _infer_transpose(x: TensorSpec, perm=None) -> TensorSpec:
    p = _perm(x.ndim, perm)
    if sorted(p) != list(range(x.ndim)):
        raise ShapeError(f"perm {list(p)} is not a permutation of the {x.ndim} axes of {fmt_shape(x.shape)}")
    return TensorSpec(tuple(x.shape[i] for i in p), x.dtype)


register(Op(
    "transpose", lambda x, perm=None: np.transpose(x, perm), _infer_transpose,
    (lambda g, y, x, perm=None: np.transpose(g, np.argsort(_perm(x.ndim, perm))),),
    lambda rng: [Sample((rng.normal(size=(2, 3, 4)),), {"perm": [1, 2, 0]}),
                 Sample((rng.normal(size=(3, 4)),), {})],
    attrs={"perm": Attr("ints", None)}, saves=(),
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


register(Op(
    "reshape", lambda x, shape: np.reshape(x, shape), _infer_reshape,
    (lambda g, y, x, shape: np.reshape(g, x.shape),),
    lambda rng: [Sample((rng.normal(size=(2, 6)),), {"shape": [3, 4]}),
                 Sample((rng.normal(size=(2, 3, 2)),), {"shape": [-1, 2]})],
    attrs={"shape": Attr("ints")}, saves=(),
))


def _infer_broadcast_to(x: TensorSpec, shape) -> TensorSpec:
    target = tuple(shape)
    if any(d < 0 for d in target):
        raise ShapeError(f"broadcast_to target {fmt_shape(target)} has a negative dim")
    if broadcast_dims(x.shape, target) != target:
        raise ShapeError(f"cannot broadcast {fmt_shape(x.shape)} to {fmt_shape(target)}")
    return TensorSpec(target, x.dtype)


register(Op(
    "broadcast_to", lambda x, shape: np.broadcast_to(x, shape), _infer_broadcast_to,
    (lambda g, y, x, shape: unbroadcast(g, x.shape),),
    lambda rng: [Sample((rng.normal(size=(3, 1)),), {"shape": [2, 3, 4]})],
    attrs={"shape": Attr("ints")}, saves=(),
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


register(Op(
    "concat", lambda *xs, axis=0: np.concatenate(xs, axis=axis), _infer_concat, _concat_vjp,
    lambda rng: [Sample((rng.normal(size=(2, 3)), rng.normal(size=(2, 1)), rng.normal(size=(2, 2))), {"axis": 1}),
                 Sample((rng.normal(size=(1, 3)), rng.normal(size=(2, 3))), {})],
    arity=None, attrs={"axis": Attr("int", 0)}, saves=(),
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
    saves=(),
    doc="Python-style slicing (negative indices, steps) along the given axes, as ONNX Slice",
))

