"""Indexing and layout ops (ONNX names and semantics): gather, embedding, gather_elements,
one_hot, flatten, squeeze, unsqueeze, pad, split, tile, expand; and the class-indexed losses'
shared core (``nll_loss`` here, ``softmax_cross_entropy`` in ``reduce``).

Indices are int32 or int64; negative indices count from the end as in ONNX; an index out of
range is refused at run time (``ValueError``: the engine reports it as an ``ExecutionError``
naming the node). String attributes (pad's ``mode``, the losses' ``reduction``, one_hot's
``dtype``) have the kind ``"str"``.
"""

from __future__ import annotations

import functools

import numpy as np

from .. import batching
from .registry import (
    Attr,
    Op,
    Sample,
    ShapeError,
    broadcast_dims,
    fmt_shape,
    normalize_axes,
    register,
    require_float,
    require_same_dtype,
    unbroadcast,
)
from ..spec import DTYPES, INT_DTYPES, TensorSpec, num_elements


@functools.lru_cache(maxsize=None)
def str_attrs_supported() -> bool:
    """Whether the validator accepts attributes of kind ``"str"`` (samples and tests that
    need a non-default string attribute are enabled by it)."""
    from ..graph import Node
    from ..validate import GraphError, normalize_attrs

    try:
        normalize_attrs(Node("probe", "pad", ("x",), {"pads": [0, 0], "mode": "edge"}))
    except GraphError:
        return False
    return True


def _require_int(spec: TensorSpec, what: str = "indices") -> None:
    if spec.dtype not in INT_DTYPES:
        raise ShapeError(f"{what} must be an int32 or int64 tensor, got {spec}")


def _axis(axis: int, ndim: int, what: str = "axis") -> int:
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{what} {axis} is out of range for a tensor of rank {ndim}")
    return axis % ndim


def _checked_indices(indices: np.ndarray, dim: int, what: str = "indices") -> np.ndarray:
    """``indices`` made non-negative (ONNX: -dim..dim-1); anything else raises ``ValueError``."""
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < -dim or hi >= dim:
            raise ValueError(f"{what} must lie in [{-dim}, {dim}) for an axis of size {dim}, "
                             f"got values in [{lo}, {hi}]")
    return np.where(indices < 0, indices + dim, indices)


def _ints(rng, high, size):
    return rng.integers(0, high, size=size).astype(np.int64)


# ---------------------------------------------------------------- gather, embedding


def _infer_gather(data: TensorSpec, indices: TensorSpec, axis=0) -> TensorSpec:
    _require_int(indices)
    if data.ndim == 0:
        raise ShapeError("gather needs data of rank >= 1")
    a = _axis(axis, data.ndim)
    return TensorSpec(data.shape[:a] + indices.shape + data.shape[a + 1:], data.dtype)


def _gather(data, indices, axis=0):
    a = axis % data.ndim
    return np.take(data, _checked_indices(indices, data.shape[a]), axis=a)


def _gather_vjp(g, y, data, indices, axis=0):
    """Scatter-add: an index picked twice gets both contributions (``np.add.at``)."""
    a = axis % data.ndim
    idx = _checked_indices(indices, data.shape[a]).ravel()
    grad = np.zeros(data.shape, dtype=g.dtype)
    rows = np.moveaxis(np.reshape(g, data.shape[:a] + (idx.size,) + data.shape[a + 1:]), a, 0)
    np.add.at(np.moveaxis(grad, a, 0), idx, rows)
    return grad


def _gather_batch(ins, specs, out, axis=0):
    """Linear in the data: a gathered mean or sum (batch-free indices) stays one. Per-example
    indices into a batch-free table give rows where the indices land; per-example data gathered
    along another axis keeps its rows."""
    (d, i), (ds, is_) = ins, specs
    a = axis % ds.ndim
    if d.reduced:
        return d if i.kind == "free" else batching.coupled("gathers a mean or sum over the batch with per-example indices")
    if i.reduced:
        return batching.coupled("indexes with a mean or sum")
    if d.kind == "rows" and i.kind == "rows":
        return batching.coupled("gathers per-example data with per-example indices (every example with every other)")
    if i.kind == "rows":
        return batching.rows(a + i.axis)
    if d.axis == a:
        return batching.coupled("gathers along the batch axis (picks examples by position)")
    return batching.rows(d.axis if d.axis < a else d.axis + is_.ndim - 1)


def _gather_samples(rng):
    idx = np.array([[0, 2], [2, -1], [1, 0]])  # duplicates and a negative index
    return [Sample((rng.normal(size=(4, 3)), idx), {}),
            Sample((rng.normal(size=(2, 4, 3)), np.array([3, 3, 0, -4])), {"axis": 1}),
            Sample((rng.normal(size=(3, 5)), np.array(2)), {"axis": -1})]


register(Op(
    "gather", _gather, _infer_gather, (_gather_vjp, None), _gather_samples, arity=2,
    attrs={"axis": Attr("int", 0)}, saves=(1,), batch=_gather_batch,
    doc="ONNX Gather: data indexed along axis by integer indices (negative count from the end); "
        "output data.shape[:axis] + indices.shape + data.shape[axis+1:]",
))


def _embedding_batch(ins, specs, out):
    return _gather_batch(ins, specs, out, axis=0)


register(Op(
    "embedding", lambda weight, indices: _gather(weight, indices, 0),
    lambda weight, indices: _infer_gather(weight, indices, 0),
    (lambda g, y, weight, indices: _gather_vjp(g, y, weight, indices, 0), None),
    lambda rng: [Sample((rng.normal(size=(5, 3)), np.array([[1, 4, 1], [0, 1, 3]])))],
    arity=2, saves=(1,), batch=_embedding_batch,
    doc="rows of a table: embedding(weight (vocab, ...), ids) = gather(weight, ids, axis=0); "
        "the gradient of a row looked up several times accumulates",
))


# ---------------------------------------------------------------- gather_elements


def _infer_gather_elements(data: TensorSpec, indices: TensorSpec, axis=0) -> TensorSpec:
    _require_int(indices)
    if data.ndim == 0 or indices.ndim != data.ndim:
        raise ShapeError(f"gather_elements needs data and indices of the same rank >= 1, got "
                         f"{fmt_shape(data.shape)} and {fmt_shape(indices.shape)}")
    a = _axis(axis, data.ndim)
    for k, (dd, di) in enumerate(zip(data.shape, indices.shape)):
        if k != a and dd is not None and di is not None and di > dd:
            raise ShapeError(f"indices {fmt_shape(indices.shape)} exceed data {fmt_shape(data.shape)} on axis {k}")
    return TensorSpec(indices.shape, data.dtype)


def _elements_index(data, indices, axis):
    a = axis % data.ndim
    ix = list(np.ogrid[tuple(slice(n) for n in indices.shape)])
    ix[a] = _checked_indices(indices, data.shape[a])
    return tuple(ix)


def _gather_elements_vjp(g, y, data, indices, axis=0):
    grad = np.zeros(data.shape, dtype=g.dtype)
    np.add.at(grad, _elements_index(data, indices, axis), g)
    return grad


def _gather_elements_batch(ins, specs, out, axis=0):
    (d, i), (ds, _) = ins, specs
    a = axis % ds.ndim
    if d.reduced:
        return d if i.kind == "free" else batching.coupled("gathers a mean or sum over the batch with per-example indices")
    if i.reduced:
        return batching.coupled("indexes with a mean or sum")
    if i.kind == "rows" and d.kind == "free" and i.axis == a:
        return batching.rows(a)  # out[n] = data[idx[n]] along the batch-free table's axis
    if i.kind == "rows" and d.kind == "rows" and i.axis == d.axis != a:
        return batching.rows(d.axis)
    return batching.coupled("pairs indices with data by position along the batch axis")


register(Op(
    "gather_elements", lambda data, indices, axis=0: data[_elements_index(data, indices, axis)],
    _infer_gather_elements, (_gather_elements_vjp, None),
    lambda rng: [Sample((rng.normal(size=(3, 4)), np.array([[0, 2, 2, -1], [1, 1, 0, 2]])), {}),
                 Sample((rng.normal(size=(2, 3, 4)), _ints(rng, 4, (2, 3, 6)) - 1), {"axis": -1})],
    arity=2, attrs={"axis": Attr("int", 0)}, saves=(1,), batch=_gather_elements_batch,
    doc="ONNX GatherElements: out[..i..] = data[..indices[..i..]..] along axis; output has indices' shape",
))


# ---------------------------------------------------------------- one_hot


def _infer_one_hot(indices: TensorSpec, *values: TensorSpec, depth, axis=-1, dtype="float32") -> TensorSpec:
    _require_int(indices)
    if len(values) > 1:
        raise ShapeError(f"one_hot takes indices and optionally values [off, on], got {1 + len(values)} inputs")
    if depth < 1:
        raise ShapeError(f"depth must be >= 1, got {depth}")
    if values:
        (v,) = values
        require_float(v)
        if v.shape not in ((2,), (None,)):
            raise ShapeError(f"values must be [off_value, on_value] of shape (2,), got {fmt_shape(v.shape)}")
        out_dtype = v.dtype
    else:
        if dtype not in ("float32", "float64"):
            raise ShapeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        out_dtype = DTYPES[dtype]
    a = _axis(axis, indices.ndim + 1)
    return TensorSpec(indices.shape[:a] + (depth,) + indices.shape[a:], out_dtype)


def _hot(indices, depth, axis):
    """ONNX: indices in [-depth, depth) (negative from the end); others give all off_value."""
    idx = np.where(indices < 0, indices + depth, indices)
    hot = idx[..., None] == np.arange(depth)
    return np.moveaxis(hot, -1, axis % (indices.ndim + 1))


def _one_hot(indices, *values, depth, axis=-1, dtype="float32"):
    hot = _hot(indices, depth, axis)
    if not values:
        return hot.astype(dtype)
    off, on = values[0][0], values[0][1]
    return np.where(hot, on, off)


def _one_hot_vjp(g, y, indices, *values, depth, axis=-1, dtype="float32"):
    if not values:
        return (None,)
    hot = _hot(indices, depth, axis)
    on = np.sum(g, where=hot)
    return None, np.array([np.sum(g) - on, on], dtype=values[0].dtype)


def _one_hot_batch(ins, specs, out, depth, axis=-1, dtype="float32"):
    i, v = ins[0], (ins[1] if len(ins) > 1 else batching.FREE)
    if v.reduced and i.kind == "free":
        return v  # off (1 - hot) + on hot: linear in the values, no constant term
    if v.kind != "free" or i.reduced:
        return batching.coupled("mixes per-example indices with values that depend on the batch")
    a = axis % out.ndim
    return batching.rows(i.axis if i.axis < a else i.axis + 1)


register(Op(
    "one_hot", _one_hot, _infer_one_hot, _one_hot_vjp,
    lambda rng: [Sample((np.array([[0, 3], [-1, 5]]), np.array([-0.5, 2.0])), {"depth": 4}),
                 Sample((np.array([2, 0, 1]), np.array([0.1, 0.9])), {"depth": 3, "axis": 0})],
    arity=None, attrs={"depth": Attr("int"), "axis": Attr("int", -1), "dtype": Attr("str", "float32")},
    saves=(0,), batch=_one_hot_batch,
    doc="ONNX OneHot: a new axis of size depth holding on_value at each index and off_value elsewhere; "
        "inputs indices and optional values [off_value, on_value] (their dtype; default [0, 1] as dtype); "
        "indices outside [-depth, depth) give all off_value; differentiable in values only",
))


# ---------------------------------------------------------------- flatten, squeeze, unsqueeze


def _prod(dims):
    return None if None in dims else num_elements(dims)


def _infer_flatten(x: TensorSpec, axis=1) -> TensorSpec:
    if not -x.ndim <= axis <= x.ndim:
        raise ShapeError(f"flatten axis {axis} is out of range for a tensor of rank {x.ndim}")
    a = axis + x.ndim if axis < 0 else axis
    return TensorSpec((_prod(x.shape[:a]), _prod(x.shape[a:])), x.dtype)


def _flatten(x, axis=1):
    a = axis + x.ndim if axis < 0 else axis
    return np.reshape(x, (num_elements(x.shape[:a]), num_elements(x.shape[a:])))


def _flatten_batch(ins, specs, out, axis=1):
    (b,), (s,) = ins, specs
    if b.reduced:
        return b
    a = axis + s.ndim if axis < 0 else axis
    if b.axis == 0 and a >= 1 and all(d == 1 for d in s.shape[1:a]):
        return batching.rows(0)
    return batching.coupled("flattens the batch axis together with others")


register(Op(
    "flatten", _flatten, _infer_flatten, (lambda g, y, x, axis=1: np.reshape(g, x.shape),),
    lambda rng: [Sample((rng.normal(size=(2, 3, 4)),), {}), Sample((rng.normal(size=(2, 3, 2)),), {"axis": -1}),
                 Sample((rng.normal(size=(2, 3)),), {"axis": 0})],
    attrs={"axis": Attr("int", 1)}, saves=(), batch=_flatten_batch,
    doc="ONNX Flatten: a matrix (prod(shape[:axis]), prod(shape[axis:]))",
))


def _infer_squeeze(x: TensorSpec, axes=None) -> TensorSpec:
    if axes is None:
        if None in x.shape:
            raise ShapeError(f"squeeze without axes on {fmt_shape(x.shape)} is ambiguous (an unknown dim may be 1); give axes")
        return TensorSpec(tuple(d for d in x.shape if d != 1), x.dtype)
    picked = normalize_axes(axes, x.ndim)
    for a in picked:
        if x.shape[a] not in (1, None):
            raise ShapeError(f"cannot squeeze axis {a} of size {x.shape[a]} of {fmt_shape(x.shape)}")
    return TensorSpec(tuple(d for i, d in enumerate(x.shape) if i not in picked), x.dtype)


def _squeeze(x, axes=None):
    return np.squeeze(x, axis=None if axes is None else normalize_axes(axes, x.ndim))


def _squeeze_batch(ins, specs, out, axes=None):
    (b,), (s,) = ins, specs
    if b.reduced:
        return b
    picked = normalize_axes(axes, s.ndim) if axes is not None else tuple(i for i, d in enumerate(s.shape) if d == 1)
    if b.axis in picked:
        return batching.coupled("squeezes the batch axis (a batch of one)")
    return batching.rows(b.axis - sum(a < b.axis for a in picked))


register(Op(
    "squeeze", _squeeze, _infer_squeeze, (lambda g, y, x, axes=None: np.reshape(g, x.shape),),
    lambda rng: [Sample((rng.normal(size=(3, 1, 4, 1)),), {"axes": [1, -1]}),
                 Sample((rng.normal(size=(2, 1)),), {"axes": 1})],
    attrs={"axes": Attr("axes", None)}, saves=(), batch=_squeeze_batch,
    doc="ONNX Squeeze: drop the given size-1 axes (all size-1 axes when axes is None; needs known dims)",
))


def _unsqueeze_axes(axes, ndim) -> tuple[int, ...]:
    return normalize_axes(axes, ndim + (1 if isinstance(axes, int) else len(axes)))


def _infer_unsqueeze(x: TensorSpec, axes) -> TensorSpec:
    new = _unsqueeze_axes(axes, x.ndim)
    rest = iter(x.shape)
    return TensorSpec(tuple(1 if i in new else next(rest) for i in range(x.ndim + len(new))), x.dtype)


def _unsqueeze_batch(ins, specs, out, axes):
    (b,), (s,) = ins, specs
    if b.reduced:
        return b
    new = _unsqueeze_axes(axes, s.ndim)
    kept = [i for i in range(out.ndim) if i not in new]
    return batching.rows(kept[b.axis])


register(Op(
    "unsqueeze", lambda x, axes: np.expand_dims(x, _unsqueeze_axes(axes, x.ndim)), _infer_unsqueeze,
    (lambda g, y, x, axes: np.reshape(g, x.shape),),
    lambda rng: [Sample((rng.normal(size=(3, 4)),), {"axes": [0, -1]}), Sample((rng.normal(size=(2, 3)),), {"axes": 1})],
    attrs={"axes": Attr("axes")}, saves=(), batch=_unsqueeze_batch,
    doc="ONNX Unsqueeze: insert size-1 axes at the given positions of the output",
))


# ---------------------------------------------------------------- pad

PAD_MODES = ("constant", "reflect", "edge")


def _pad_widths(pads, ndim):
    return [(pads[i], pads[i + ndim]) for i in range(ndim)]


def _infer_pad(x: TensorSpec, pads, mode="constant", value=0.0) -> TensorSpec:
    if mode not in PAD_MODES:
        raise ShapeError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    if len(pads) != 2 * x.ndim:
        raise ShapeError(f"pads must hold 2 * rank = {2 * x.ndim} entries (all begins, then all ends), got {len(pads)}")
    if any(p < 0 for p in pads):
        raise ShapeError(f"negative pads {list(pads)} are not supported (crop with slice)")
    out = []
    for k, (d, (b, e)) in enumerate(zip(x.shape, _pad_widths(pads, x.ndim))):
        if d is not None and b + e:
            if mode == "reflect" and max(b, e) > d - 1:
                raise ShapeError(f"reflect pads ({b}, {e}) on axis {k} must be smaller than its size {d}")
            if mode == "edge" and d == 0:
                raise ShapeError(f"edge pads on axis {k} of size 0")
        out.append(None if d is None else d + b + e)
    return TensorSpec(tuple(out), x.dtype)


def _pad(x, pads, mode="constant", value=0.0):
    widths = _pad_widths(pads, x.ndim)
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=np.asarray(value, x.dtype))
    if mode == "reflect":
        for k, (b, e) in enumerate(widths):
            if max(b, e) > x.shape[k] - 1 and b + e:
                raise ValueError(f"reflect pads ({b}, {e}) on axis {k} must be smaller than its size {x.shape[k]}")
    return np.pad(x, widths, mode=mode)


def _pad_vjp(g, y, x, pads, mode="constant", value=0.0):
    """Constant: the middle. Reflect/edge: every padded element adds to the element it copies."""
    widths = _pad_widths(pads, x.ndim)
    if mode == "constant":
        return g[tuple(slice(b, b + n) for (b, _), n in zip(widths, x.shape))].copy()
    grad = g
    for k, ((b, e), n) in enumerate(zip(widths, x.shape)):
        if not b + e:
            continue
        gk = np.moveaxis(grad, k, 0)
        out = gk[b:b + n].copy()
        if mode == "reflect":  # padded[j] = x[b - j] before, x[n - 2 - j] after
            out[1:b + 1] += gk[:b][::-1]
            out[n - 1 - e:n - 1] += gk[b + n:][::-1]
        else:
            out[0] += gk[:b].sum(axis=0)
            out[n - 1] += gk[b + n:].sum(axis=0)
        grad = np.moveaxis(out, 0, k)
    return np.ascontiguousarray(grad)


def _pad_batch(ins, specs, out, pads, mode="constant", value=0.0):
    (b,), (s,) = ins, specs
    if b.reduced:  # linear, and a constant stays itself under a mean; a sum would count it per shard
        if mode == "constant" and value != 0 and b.kind == "sum" and any(pads):
            return batching.coupled("pads a sum over the batch with a non-zero constant")
        return b
    if pads[b.axis] or pads[b.axis + s.ndim]:
        return batching.coupled("pads along the batch axis")
    return b


def _pad_samples(rng):
    out = [Sample((rng.normal(size=(3, 4)),), {"pads": [1, 0, 2, 3]}),
           Sample((rng.normal(size=(2, 3, 2)),), {"pads": [0, 1, 0, 0, 2, 1], "value": 1.5})]
    if str_attrs_supported():
        out += [Sample((rng.normal(size=(3, 4)),), {"pads": [2, 1, 1, 3], "mode": "reflect"}),
                Sample((rng.normal(size=(2, 3)),), {"pads": [1, 3, 2, 0], "mode": "edge"})]
    return out


register(Op(
    "pad", _pad, _infer_pad, (_pad_vjp,), _pad_samples,
    attrs={"pads": Attr("ints"), "mode": Attr("str", "constant"), "value": Attr("float", 0.0)},
    saves=(), batch=_pad_batch,
    doc="ONNX Pad: pads [begin_0, ..., begin_{r-1}, end_0, ..., end_{r-1}] (>= 0) with mode constant "
        "(value), reflect (mirror, edge excluded; pads < size) or edge (repeat the edge)",
))


# ---------------------------------------------------------------- split (one piece), tile, expand


def _split_bounds(dim, split, num_outputs, index):
    """(start, stop) of piece ``index`` along an axis of size ``dim`` (None: unknown)."""
    if split is not None:
        sizes = list(split)
        if any(s < 0 for s in sizes):
            raise ShapeError(f"split sizes must be >= 0, got {sizes}")
        if dim is not None and sum(sizes) != dim:
            raise ShapeError(f"split sizes {sizes} do not add up to the axis size {dim}")
    elif num_outputs is not None:
        if num_outputs < 1:
            raise ShapeError(f"num_outputs must be >= 1, got {num_outputs}")
        if dim is None:
            if not 0 <= index < num_outputs:
                raise ShapeError(f"piece index {index} is out of range for {num_outputs} pieces")
            return None
        chunk = -(-dim // num_outputs)  # ONNX: ceil; the last piece may be smaller
        sizes = [max(0, min(chunk, dim - i * chunk)) for i in range(num_outputs)]
    else:
        raise ShapeError("split needs split (the sizes) or num_outputs")
    if not 0 <= index < len(sizes):
        raise ShapeError(f"piece index {index} is out of range for {len(sizes)} pieces")
    start = sum(sizes[:index])
    return start, start + sizes[index]


def _infer_split(x: TensorSpec, index, axis=0, split=None, num_outputs=None) -> TensorSpec:
    if x.ndim == 0:
        raise ShapeError("split needs a tensor of rank >= 1")
    a = _axis(axis, x.ndim)
    bounds = _split_bounds(x.shape[a], split, num_outputs, index)
    shape = list(x.shape)
    shape[a] = None if bounds is None else bounds[1] - bounds[0]
    return TensorSpec(tuple(shape), x.dtype)


def _split_index(x, index, axis, split, num_outputs):
    a = axis % x.ndim
    start, stop = _split_bounds(x.shape[a], split, num_outputs, index)
    return (slice(None),) * a + (slice(start, stop),)


def _split_vjp(g, y, x, index, axis=0, split=None, num_outputs=None):
    grad = np.zeros(x.shape, dtype=g.dtype)
    grad[_split_index(x, index, axis, split, num_outputs)] = g
    return grad


def _split_batch(ins, specs, out, index, axis=0, split=None, num_outputs=None):
    (b,), (s,) = ins, specs
    if b.reduced:
        return b
    if b.axis == axis % s.ndim:
        return batching.coupled("splits along the batch axis")
    return b


register(Op(
    "split", lambda x, index, axis=0, split=None, num_outputs=None:
        x[_split_index(x, index, axis, split, num_outputs)].copy(),
    _infer_split, (_split_vjp,),
    lambda rng: [Sample((rng.normal(size=(3, 6)),), {"index": 1, "axis": 1, "split": [2, 3, 1]}),
                 Sample((rng.normal(size=(2, 7)),), {"index": 3, "axis": -1, "num_outputs": 4})],
    attrs={"index": Attr("int"), "axis": Attr("int", 0), "split": Attr("ints", None), "num_outputs": Attr("int", None)},
    saves=(), batch=_split_batch,
    doc="ONNX Split, ONE output: piece `index` of x cut along axis into pieces of sizes `split` "
        "(or `num_outputs` pieces of ceil(size / num_outputs), the last smaller). The engine's ops have "
        "one output each: use one split node per piece",
))


def _infer_tile(x: TensorSpec, repeats) -> TensorSpec:
    if len(repeats) != x.ndim or any(r < 0 for r in repeats):
        raise ShapeError(f"repeats must hold {x.ndim} non-negative entries (one per axis of {fmt_shape(x.shape)}), "
                         f"got {list(repeats)}")
    return TensorSpec(tuple(None if d is None else d * r for d, r in zip(x.shape, repeats)), x.dtype)


def _tile_vjp(g, y, x, repeats):
    split = [n for r, d in zip(repeats, x.shape) for n in (r, d)]  # out axis k is (repeat, element)
    return np.reshape(g, split).sum(axis=tuple(range(0, 2 * x.ndim, 2))).astype(g.dtype, copy=False)


def _tile_batch(ins, specs, out, repeats):
    (b,), _ = ins, specs
    if b.reduced or repeats[b.axis] == 1:
        return b
    return batching.coupled("tiles along the batch axis")


register(Op(
    "tile", lambda x, repeats: np.tile(x, repeats), _infer_tile, (_tile_vjp,),
    lambda rng: [Sample((rng.normal(size=(2, 3)),), {"repeats": [2, 3]}),
                 Sample((rng.normal(size=(3, 1, 2)),), {"repeats": [1, 4, 1]})],
    attrs={"repeats": Attr("ints")}, saves=(), batch=_tile_batch,
    doc="ONNX Tile: x repeated repeats[k] times along each axis k",
))


def _infer_expand(x: TensorSpec, shape) -> TensorSpec:
    target = tuple(shape)
    if any(d < 0 for d in target):
        raise ShapeError(f"expand shape {fmt_shape(target)} has a negative dim")
    return TensorSpec(broadcast_dims(x.shape, target), x.dtype)


def _expand_batch(ins, specs, out, shape):
    (b,), (s,) = ins, specs
    if b.reduced:
        return b
    k = b.axis + out.ndim - s.ndim
    j = k - (out.ndim - len(shape))
    if j >= 0 and shape[j] != 1:
        return batching.coupled(f"expands the batch axis against a fixed size {shape[j]}")
    return batching.rows(k)


register(Op(
    "expand", lambda x, shape: np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(shape))), _infer_expand,
    (lambda g, y, x, shape: unbroadcast(g, x.shape),),
    lambda rng: [Sample((rng.normal(size=(3, 1)),), {"shape": [2, 1, 4]}),
                 Sample((rng.normal(size=(2, 1, 3)),), {"shape": [4, 1]})],
    attrs={"shape": Attr("ints")}, saves=(), batch=_expand_batch,
    doc="ONNX Expand: x broadcast two-way with shape (a 1 in shape keeps x's dim)",
))


# ---------------------------------------------------------------- class-indexed losses (shared core)

REDUCTIONS = ("none", "sum", "mean")


def infer_class_loss(scores: TensorSpec, labels: TensorSpec, *weight: TensorSpec, reduction="mean",
                     what="logits") -> TensorSpec:
    """Scores (N, C) or (N, C, d1, ...), labels (N,) or (N, d1, ...), optional weight (C,)."""
    require_float(scores)
    _require_int(labels, "labels")
    if len(weight) > 1:
        raise ShapeError(f"takes {what}, labels and optionally class weights, got {2 + len(weight)} inputs")
    if reduction not in REDUCTIONS:
        raise ShapeError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if scores.ndim < 2 or labels.ndim != scores.ndim - 1:
        raise ShapeError(f"expected {what} (batch, classes, d1, ...) and labels (batch, d1, ...), got "
                         f"{fmt_shape(scores.shape)} and {fmt_shape(labels.shape)}")
    spatial = scores.shape[:1] + scores.shape[2:]
    for k, (d, e) in enumerate(zip(spatial, labels.shape)):
        if d is not None and e is not None and d != e:
            which = "batch size" if k == 0 else "spatial dims"
            raise ShapeError(f"{what} {fmt_shape(scores.shape)} and labels {fmt_shape(labels.shape)} differ in {which}")
    if weight:
        (w,) = weight
        require_float(w)
        require_same_dtype(scores, w)
        c = scores.shape[1]
        if w.ndim != 1 or (c is not None and w.shape[0] is not None and w.shape[0] != c):
            raise ShapeError(f"class weights must have shape ({c if c is not None else '?'},), got {fmt_shape(w.shape)}")
    shape = tuple(d if d is not None else e for d, e in zip(labels.shape, spatial)) if reduction == "none" else ()
    return TensorSpec(shape, scores.dtype)


def _targets(labels, classes, ignore_index):
    """(labels safe to index with, mask of the counted targets or None)."""
    valid = None if ignore_index is None else labels != ignore_index
    counted = labels if valid is None else labels[valid]
    if counted.size and (counted.min() < 0 or counted.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got values in [{counted.min()}, {counted.max()}]")
    return (labels if valid is None else np.where(valid, labels, 0)), valid


def _target_weights(safe, valid, weight, dtype):
    """Each target's weight (None: all 1): weight[label], 0 where ignored."""
    if weight is None:
        return None if valid is None else valid.astype(dtype)
    wt = weight[safe]
    return wt if valid is None else wt * valid


def class_loss(logp, labels, weight=None, ignore_index=None, reduction="mean"):
    """PyTorch's nll_loss of log-probabilities ``logp`` (class axis 1): l = -w[y] logp[y] per
    target (0 where ignored); none, sum, or mean = sum(l) / sum of the counted targets' w."""
    safe, valid = _targets(labels, logp.shape[1], ignore_index)
    picked = np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    wt = _target_weights(safe, valid, weight, logp.dtype)
    losses = -picked if wt is None else -picked * wt
    if reduction == "none":
        return losses.astype(logp.dtype, copy=False)
    total = losses.sum()
    if reduction == "sum":
        return np.asarray(total, logp.dtype)
    denom = labels.size if wt is None else wt.sum()
    with np.errstate(invalid="ignore", divide="ignore"):  # no counted target: NaN, as PyTorch
        return np.asarray(total / denom, logp.dtype)


def class_loss_vjp(g, logp, labels, weight=None, ignore_index=None, reduction="mean", softmax=None):
    """(gradient for logp — or for the logits when ``softmax`` is given —, for weight or None)."""
    safe, valid = _targets(labels, logp.shape[1], ignore_index)
    wt = _target_weights(safe, valid, weight, logp.dtype)
    denom = 1.0
    if reduction == "mean":
        denom = labels.size if wt is None else wt.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.broadcast_to(g / denom, labels.shape)  # d loss / d l_n
    coef = -scale if wt is None else -scale * wt  # d loss / d logp[n, y_n]
    coef = coef.astype(logp.dtype, copy=False)
    grad = np.zeros(logp.shape, dtype=logp.dtype)
    np.put_along_axis(grad, safe[:, None], coef[:, None], axis=1)
    if softmax is not None:  # d logp / d z = onehot - softmax
        grad -= softmax * np.expand_dims(coef, 1)
    if weight is None:
        return grad, None
    picked = np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    per = -picked * scale  # d loss / d w[y_n], before the mean's denominator term
    if reduction == "mean":
        loss = np.sum(-picked * wt) / denom
        per = per - loss * scale
    if valid is not None:
        per = per * valid
    gw = np.bincount(safe.ravel(), weights=np.asarray(per, np.float64).ravel(), minlength=weight.shape[0])
    return grad, gw.astype(weight.dtype)


def class_loss_batch(linear: bool):
    """Rule of a class-indexed loss (scores, labels[, weight]): scores and labels carry the batch
    on matching axes (not the class axis), the weights are batch-free. none keeps the rows, sum
    is a sum; mean is a mean only unweighted and with no ignore_index (else it divides by a
    batch-dependent sum). ``linear``: the loss is linear in the scores (nll_loss)."""
    def rule(ins, specs, out, ignore_index=None, reduction="mean"):
        x, y = ins[0], ins[1]
        w = ins[2] if len(ins) > 2 else batching.FREE
        if w.kind != "free":
            return batching.coupled("takes class weights that depend on the batch")
        if y.reduced:
            return batching.coupled("indexes with a mean or sum")
        if x.reduced:
            if linear and y.kind == "free":
                return x
            return batching.coupled("takes a non-linear loss of a mean or sum over the batch")
        if x.kind == "free" or y.kind == "free":
            return batching.coupled("pairs per-example scores or labels with batch-free ones by position")
        if x.axis == 1:
            return batching.coupled("carries the batch on the class axis")
        if y.axis != (0 if x.axis == 0 else x.axis - 1):
            return batching.coupled("needs the labels to carry the batch on the scores' axis")
        if reduction == "none":
            return batching.rows(y.axis)
        if reduction == "sum":
            return batching.SUM
        if len(ins) > 2 or ignore_index is not None:
            return batching.coupled("takes a mean weighted by the targets' class weights or counting only "
                                    "non-ignored targets: it divides by a sum over the whole batch")
        return batching.MEAN
    return rule


LOSS_ATTRS = {"ignore_index": Attr("int", None), "reduction": Attr("str", "mean")}


def class_loss_workspace(forward: int, backward: int):
    """The ``workspace`` (bytes; see the registry) of a class-indexed loss: ``forward`` /
    ``backward`` buffers of the scores' size, and per target (labels' size) up to three int64
    (the safe labels, the counted ones, the bincount's float64 weights) and six of the scores'
    dtype (picked, weights, coefficients, per-target terms) besides bool masks: with few classes
    the targets' buffers outweigh the scores'."""
    def workspace(phase, out, scores, labels, *weight, **_):
        it = scores.dtype.itemsize
        big = forward if phase == "forward" else backward
        return big * num_elements(scores.shape) * it + (26 + 6 * it) * num_elements(labels.shape)
    return workspace


def class_loss_samples(rng, classes_first=True):
    """(scores, labels[, weight]) float64 samples: plain (N, C), weighted with an ignored target,
    rank 4 (N, C, d1, d2) weighted; reduction none/sum when the validator takes strings."""
    out = [Sample((rng.normal(size=(6, 4)), _ints(rng, 4, 6))),
           Sample((rng.normal(size=(5, 3)), np.array([0, -100, 2, 2, 1]), rng.uniform(0.5, 2.0, 3)),
                  {"ignore_index": -100}),
           Sample((rng.normal(size=(2, 3, 2, 2)), _ints(rng, 3, (2, 2, 2)), rng.uniform(0.5, 2.0, 3)))]
    if str_attrs_supported():
        labels = np.array([[1, 0], [2, 1], [0, 0]])
        out += [Sample((rng.normal(size=(3, 4, 2)), labels, rng.uniform(0.5, 2.0, 4)), {"reduction": "none"}),
                Sample((rng.normal(size=(3, 4, 2)), labels), {"reduction": "sum", "ignore_index": 0})]
    return out


def _nll_forward(logp, labels, *weight, ignore_index=None, reduction="mean"):
    return class_loss(logp, labels, weight[0] if weight else None, ignore_index, reduction)


def _nll_vjp(g, y, logp, labels, *weight, ignore_index=None, reduction="mean"):
    grad, gw = class_loss_vjp(g, logp, labels, weight[0] if weight else None, ignore_index, reduction)
    return (grad, None) + ((gw,) if weight else ())


def _nll_samples(rng):
    # log-probabilities (any real scores work: the loss is linear in them)
    return [Sample((s.inputs[0] - np.log(np.exp(s.inputs[0]).sum(axis=1, keepdims=True)),) + s.inputs[1:], s.attrs)
            for s in class_loss_samples(rng)]


register(Op(
    "nll_loss", _nll_forward,
    lambda logp, labels, *weight, ignore_index=None, reduction="mean":
        infer_class_loss(logp, labels, *weight, reduction=reduction, what="log_probs"),
    _nll_vjp, _nll_samples, arity=None, attrs=LOSS_ATTRS, batch=class_loss_batch(linear=True),
    workspace=class_loss_workspace(1, 2),
    doc="PyTorch's nll_loss: inputs log_probs (N, C) or (N, C, d1, ...), integer labels (N,) or "
        "(N, d1, ...), optional class weights (C,); l = -weight[label] log_probs[label] (0 where label == "
        "ignore_index); reduction none, sum or mean (sum / the counted targets' total weight)",
))


__all__ = ["REDUCTIONS", "LOSS_ATTRS", "class_loss", "class_loss_vjp", "class_loss_batch", "class_loss_samples",
           "class_loss_workspace", "infer_class_loss", "str_attrs_supported"]
