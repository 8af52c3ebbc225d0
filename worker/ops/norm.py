"""Normalization (batch_norm, layer_norm, group_norm, instance_norm) and dropout.

All normalizations share one kernel: standardize over some axes with the biased variance,
x_hat = (x - mean) / sqrt(var + epsilon), then scale and shift per channel (or per
normalized element, for layer_norm). Their input gradient is the usual closed form
dx = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)) over those axes.

dropout draws its mask from a counter-based hash of (seed, example's row index, element
index within the example): the mask of an example does not depend on which other examples
share its batch or shard, provided the op is given the examples' global row indices as its
second input (``dropout(x, rows)``; rows: int (N,), e.g. ``np.arange(N)`` or the dataset
indices). Without that input the row index is the position in the array the kernel sees,
which on a shard is not the example's: that form refuses to shard (batch rule COUPLED).
"""

from __future__ import annotations

import numpy as np

from .. import batching
from .registry import (
    Attr,
    Op,
    Sample,
    ShapeError,
    fmt_shape,
    register,
    require_float,
    require_same_dtype,
)
from ..spec import INT_DTYPES, TensorSpec, num_elements


def _standardize(x, axes, epsilon):
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = np.mean(np.square(centered), axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(var + x.dtype.type(epsilon))
    return centered * inv_std, inv_std


def _standardize_vjp(dxhat, xhat, inv_std, axes):
    return inv_std * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                      - xhat * np.mean(dxhat * xhat, axis=axes, keepdims=True))


def _channel(v, ndim):
    """A per-channel vector (C,) shaped to broadcast over (N, C, ...)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _not_channel(x):
    return (0,) + tuple(range(2, x.ndim))


def _norm_flops(out, x, *rest, **_):
    return 8 * num_elements(x.shape)


def _norm_workspace(stats):
    """Bytes (see the registry) of a normalization whose statistics have ``stats(x_spec, **attrs)``
    elements: forward, two x-sized buffers (centered, its square; then x_hat) and four of the
    statistics' size (mean, var, var + epsilon, 1 / sqrt); backward (every rule, run in turn),
    up to five x-sized (x_hat, dx_hat and three terms of the closed form) and the statistics.
    The statistics are as large as x when each normalizes one element (layer_norm over an axis
    of size 1): the default rule's three buffers would not hold them."""
    def workspace(phase, out, x, *rest, **attrs):
        big = 2 if phase == "forward" else 5
        return (big * num_elements(x.shape) + 4 * stats(x, **attrs)) * x.dtype.itemsize
    return workspace


def _channels(x, **_):
    return 1 if x.ndim < 2 or x.shape[1] is None else x.shape[1]


def _require_channels(op, x, *vectors, names):
    require_float(x, *vectors)
    require_same_dtype(x, *vectors)
    if x.ndim < 2:
        raise ShapeError(f"{op} needs x (N, C, ...), got {fmt_shape(x.shape)}")
    for name, v in zip(names, vectors):
        if v.ndim != 1 or (v.shape[0] is not None and x.shape[1] is not None and v.shape[0] != x.shape[1]):
            raise ShapeError(f"{op}: {name} must be ({x.shape[1] if x.shape[1] is not None else 'C'},), "
                             f"got {fmt_shape(v.shape)} for x {fmt_shape(x.shape)}")


def _per_example(what):
    """x carries the batch along axis 0 with batch-free parameters: per example. Anything
    else (rows along another axis, a mean or sum, batch-dependent parameters) couples."""
    def rule(ins, specs, out, **_):
        x, rest = ins[0], ins[1:]
        if x.reduced:
            return batching.coupled(f"normalizes a mean or sum over the batch ({what})")
        if any(b.kind != "free" for b in rest):
            return batching.coupled(f"normalizes with batch-dependent parameters ({what})")
        if x.axis != 0:
            return batching.coupled(f"normalizes over the batch axis ({what})")
        return x
    return rule


# ------------------------------------------------------------------ batch_norm

BN_ATTRS = {"training": Attr("bool", False), "epsilon": Attr("float", 1e-5)}


def _bn_xhat(x, mean, var, training, epsilon):
    if training:
        return _standardize(x, _not_channel(x), epsilon)
    inv_std = 1 / np.sqrt(_channel(var, x.ndim) + x.dtype.type(epsilon))
    return (x - _channel(mean, x.ndim)) * inv_std, inv_std


def batch_norm(x, scale, bias, mean, var, training=False, epsilon=1e-5):
    xhat, _ = _bn_xhat(x, mean, var, training, epsilon)
    return xhat * _channel(scale, x.ndim) + _channel(bias, x.ndim)


def _bn_dx(g, y, x, scale, bias, mean, var, training=False, epsilon=1e-5):
    xhat, inv_std = _bn_xhat(x, mean, var, training, epsilon)
    dxhat = g * _channel(scale, x.ndim)
    return _standardize_vjp(dxhat, xhat, inv_std, _not_channel(x)) if training else dxhat * inv_std


def _bn_dscale(g, y, x, scale, bias, mean, var, training=False, epsilon=1e-5):
    xhat, _ = _bn_xhat(x, mean, var, training, epsilon)
    return np.sum(g * xhat, axis=_not_channel(x))


def _infer_bn(x, scale, bias, mean, var, **_):
    _require_channels("batch_norm", x, scale, bias, mean, var, names=("scale", "bias", "running_mean", "running_var"))
    return x


def _bn_batch(ins, specs, out, training=False, **_):
    if training:
        # the statistics are means over (N, spatial...): every example's output depends on
        # every other's, and shards would normalize with their own statistics
        return batching.coupled("normalizes with statistics over the batch (batch_norm in training mode)")
    return _per_example("batch_norm with running statistics")(ins, specs, out)


def _bn_samples(rng):
    def case(shape, **attrs):
        c = shape[1]
        return Sample((rng.normal(size=shape), rng.uniform(0.5, 1.5, c), rng.normal(size=c),
                       rng.normal(size=c), rng.uniform(0.5, 2.0, c)), attrs)
    return [case((4, 3, 2, 2), training=True), case((5, 3), training=True),
            case((2, 3, 2, 3)), case((4, 2), epsilon=0.1)]


register(Op(
    "batch_norm", batch_norm, _infer_bn,
    (_bn_dx, _bn_dscale, lambda g, y, x, *rest, **attrs: np.sum(g, axis=_not_channel(g)), None, None),
    _bn_samples, arity=5, attrs=BN_ATTRS, saves=(0, 1, 3, 4), batch=_bn_batch, flops=_norm_flops,
    workspace=_norm_workspace(_channels),
    doc="batch_norm(x, scale, bias, running_mean, running_var): x (N, C, ...) normalized per channel with "
        "the batch's statistics over N and the spatial axes (training=true; couples examples) or the given "
        "running statistics (training=false, the default); running statistics are not differentiated "
        "nor updated",
))


# ------------------------------------------------------------------ layer_norm


def _ln_axes(x, axis):
    return tuple(range(axis % x.ndim, x.ndim))


def layer_norm(x, scale, bias, axis=-1, epsilon=1e-5):
    xhat, _ = _standardize(x, _ln_axes(x, axis), epsilon)
    return xhat * scale + bias


def _ln_dx(g, y, x, scale, bias, axis=-1, epsilon=1e-5):
    axes = _ln_axes(x, axis)
    xhat, inv_std = _standardize(x, axes, epsilon)
    return _standardize_vjp(g * scale, xhat, inv_std, axes)


def _ln_stats(x, axis=-1, **_):
    return num_elements(x.shape[:axis % x.ndim])


def _ln_lead(x, axis):
    return tuple(range(axis % x.ndim))


def _ln_dscale(g, y, x, scale, bias, axis=-1, epsilon=1e-5):
    xhat, _ = _standardize(x, _ln_axes(x, axis), epsilon)
    return np.sum(g * xhat, axis=_ln_lead(x, axis))


def _infer_ln(x, scale, bias, axis=-1, **_):
    require_float(x, scale, bias)
    require_same_dtype(x, scale, bias)
    if x.ndim < 1 or not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"axis {axis} is out of range for x {fmt_shape(x.shape)}")
    tail = x.shape[axis % x.ndim:]
    for name, v in (("scale", scale), ("bias", bias)):
        if len(v.shape) != len(tail) or any(a is not None and b is not None and a != b for a, b in zip(v.shape, tail)):
            raise ShapeError(f"layer_norm: {name} must have the normalized shape {fmt_shape(tail)}, got {fmt_shape(v.shape)}")
    return x


def _ln_batch(ins, specs, out, axis=-1, **_):
    x, rest = ins[0], ins[1:]
    if x.reduced:
        return batching.coupled("normalizes a mean or sum over the batch (layer_norm)")
    if any(b.kind != "free" for b in rest):
        return batching.coupled("normalizes with batch-dependent parameters (layer_norm)")
    if x.axis >= axis % specs[0].ndim:
        return batching.coupled("normalizes over the batch axis (layer_norm)")
    return x


def _ln_samples(rng):
    def case(shape, axis):
        tail = shape[axis % len(shape):]
        return Sample((rng.normal(size=shape), rng.uniform(0.5, 1.5, tail), rng.normal(size=tail)),
                      {} if axis == -1 else {"axis": axis})
    return [case((4, 5), -1), case((2, 3, 4), 1), case((3, 2, 2, 2), -2)]


register(Op(
    "layer_norm", layer_norm, _infer_ln,
    (_ln_dx, _ln_dscale, lambda g, y, x, scale, bias, axis=-1, epsilon=1e-5: np.sum(g, axis=_ln_lead(x, axis))),
    _ln_samples, arity=3, attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5)},
    saves=(0, 1), batch=_ln_batch, flops=_norm_flops, workspace=_norm_workspace(_ln_stats),
    doc="layer_norm(x, scale, bias): x normalized over the axes from axis (default -1) on, then scaled and "
        "shifted elementwise (scale, bias: x.shape[axis:]), as ONNX LayerNormalization",
))


# ------------------------------------------------------------------ group_norm, instance_norm


def _grouped(x, groups):
    n, c = x.shape[:2]
    return x.reshape((n, groups, c // groups) + x.shape[2:]), tuple(range(2, x.ndim + 1))


def group_norm(x, scale, bias, num_groups=1, epsilon=1e-5):
    xr, axes = _grouped(x, num_groups)
    xhat, _ = _standardize(xr, axes, epsilon)
    return xhat.reshape(x.shape) * _channel(scale, x.ndim) + _channel(bias, x.ndim)


def _gn_dx(g, y, x, scale, bias, num_groups=1, epsilon=1e-5):
    xr, axes = _grouped(x, num_groups)
    xhat, inv_std = _standardize(xr, axes, epsilon)
    dxhat = (g * _channel(scale, x.ndim)).reshape(xr.shape)
    return _standardize_vjp(dxhat, xhat, inv_std, axes).reshape(x.shape)


def _gn_dscale(g, y, x, scale, bias, num_groups=1, epsilon=1e-5):
    xr, axes = _grouped(x, num_groups)
    xhat, _ = _standardize(xr, axes, epsilon)
    return np.sum(g * xhat.reshape(x.shape), axis=_not_channel(x))


def _gn_dbias(g, y, x, *rest, **_):
    return np.sum(g, axis=_not_channel(g))


def _gn_stats(x, num_groups=1, **_):
    return num_elements(x.shape[:1]) * num_groups


def _in_stats(x, **_):
    return num_elements(x.shape[:2])


def _infer_gn(x, scale, bias, num_groups=1, **_):
    _require_channels("group_norm", x, scale, bias, names=("scale", "bias"))
    if num_groups < 1 or (x.shape[1] is not None and x.shape[1] % num_groups):
        raise ShapeError(f"group_norm: {x.shape[1]} channels do not split into {num_groups} groups")
    return x


def _gn_samples(rng):
    def case(shape, groups):
        c = shape[1]
        return Sample((rng.normal(size=shape), rng.uniform(0.5, 1.5, c), rng.normal(size=c)), {"num_groups": groups})
    return [case((2, 4, 3, 2), 2), case((3, 6, 4), 3), case((2, 3, 2, 2), 1)]


register(Op(
    "group_norm", group_norm, _infer_gn, (_gn_dx, _gn_dscale, _gn_dbias), _gn_samples, arity=3,
    attrs={"num_groups": Attr("int"), "epsilon": Attr("float", 1e-5)}, saves=(0, 1),
    batch=_per_example("group_norm"), flops=_norm_flops, workspace=_norm_workspace(_gn_stats),
    doc="group_norm(x, scale, bias): x (N, C, ...) normalized per example over groups of C/num_groups channels "
        "and the spatial axes, then scaled and shifted per channel (scale, bias: (C,))",
))


def _instance(fn):
    def wrapped(g, y, x, scale, bias, epsilon=1e-5):
        return fn(g, y, x, scale, bias, num_groups=x.shape[1], epsilon=epsilon)
    return wrapped


def _infer_in(x, scale, bias, **_):
    _require_channels("instance_norm", x, scale, bias, names=("scale", "bias"))
    if x.ndim < 3:
        raise ShapeError(f"instance_norm needs x (N, C, spatial...), got {fmt_shape(x.shape)}")
    return x


def _in_samples(rng):
    def case(shape, **attrs):
        c = shape[1]
        return Sample((rng.normal(size=shape), rng.uniform(0.5, 1.5, c), rng.normal(size=c)), attrs)
    return [case((2, 3, 3, 2)), case((3, 2, 5), epsilon=0.01)]


register(Op(
    "instance_norm", lambda x, scale, bias, epsilon=1e-5: group_norm(x, scale, bias, x.shape[1], epsilon), _infer_in,
    (_instance(_gn_dx), _instance(_gn_dscale), _gn_dbias), _in_samples, arity=3,
    attrs={"epsilon": Attr("float", 1e-5)}, saves=(0, 1), batch=_per_example("instance_norm"), flops=_norm_flops,
    workspace=_norm_workspace(_in_stats),
    doc="instance_norm(x, scale, bias): x (N, C, spatial...) normalized per example and channel over the spatial "
        "axes, then scaled and shifted per channel (ONNX InstanceNormalization)",
))


# ------------------------------------------------------------------ dropout

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN, _ODD = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD6E8FEB86659FD93)


def _mix(z):
    """splitmix64's finalizer, in place on a uint64 array (wrapping arithmetic)."""
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def dropout_keep(shape, rows, ratio, seed):
    """The keep mask for x of ``shape``: element e of example r is kept iff the 53-bit uniform
    drawn from hash(hash(seed, r), e) is >= ratio. A pure function of (seed, r, e)."""
    n = shape[0] if shape else 1
    per = int(np.prod(shape[1:])) if shape else 1
    r = np.arange(n, dtype=np.uint64) if rows is None else np.asarray(rows).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        key = _mix(r * _GOLDEN + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _ODD + _GOLDEN)
        h = _mix(key[:, None] ^ (np.arange(per, dtype=np.uint64) * _GOLDEN)[None, :])
    threshold = np.uint64(min(int(np.ceil(ratio * 2.0**53)), 2**53))
    return ((h >> np.uint64(11)) >= threshold).reshape(shape)


def _dropout_scale(x, ratio):
    return x.dtype.type(1.0 / (1.0 - ratio))


def dropout(x, rows=None, ratio=0.5, seed=0, training=True):
    if not training or ratio == 0.0:
        return x.copy()
    return x * dropout_keep(x.shape, rows, ratio, seed) * _dropout_scale(x, ratio)


def _dropout_vjp(g, y, x, rows=None, ratio=0.5, seed=0, training=True):
    if not training or ratio == 0.0:
        return (g, None)
    return (g * dropout_keep(g.shape, rows, ratio, seed) * _dropout_scale(g, ratio), None)


def _dropout_workspace(phase, out, x, *rows, **_):
    """Bytes (see the registry), either phase: the hash is uint64 whatever x's dtype, the mask
    held with a shifted copy and the comparison's bools (17 bytes an element), the per-row keys
    (up to six uint64 a row) and the per-element counters (two); then x (or g) times the mask."""
    n = x.shape[0] if x.ndim and x.shape[0] is not None else 1
    e = num_elements(x.shape)
    return (17 + x.dtype.itemsize) * e + 48 * n + 16 * (e // max(n, 1))


def _infer_dropout(*specs, ratio=0.5, **_):
    if len(specs) not in (1, 2):
        raise ShapeError(f"dropout takes (x) or (x, rows), got {len(specs)} inputs")
    x = specs[0]
    require_float(x)
    if not 0.0 <= ratio < 1.0:
        raise ShapeError(f"dropout ratio must lie in [0, 1), got {ratio}")
    if len(specs) == 2:
        r = specs[1]
        if r.dtype not in INT_DTYPES or r.ndim != 1 or x.ndim < 1:
            raise ShapeError(f"dropout's rows must be an int vector with one index per example of x, got {r} for {x}")
        if r.shape[0] is not None and x.shape[0] is not None and r.shape[0] != x.shape[0]:
            raise ShapeError(f"dropout: {r.shape[0]} row indices for {x.shape[0]} examples")
    return x


def _dropout_batch(ins, specs, out, training=True, ratio=0.5, **_):
    x = ins[0]
    if not training or ratio == 0.0:  # the identity on x
        return x
    if x.reduced:
        return batching.coupled("drops elements of a mean or sum over the batch")
    if len(ins) == 1:
        return batching.coupled("dropout needs global row indices: a shard's rows would draw the masks of "
                                "the batch's first rows (pass the examples' indices as dropout's second input)")
    if x.axis != 0 or ins[1].kind != "rows":
        return batching.coupled("keys its mask by row indices that are not the examples' (batch axis 0 of x and rows)")
    return x


def _dropout_samples(rng):
    x = rng.normal(size=(6, 3, 2))
    return [Sample((x, np.arange(6) + 10), {"ratio": 0.5, "seed": 3}),
            Sample((rng.normal(size=(4, 5)),), {"ratio": 0.25}),
            Sample((rng.normal(size=(4, 5)), np.arange(4)), {"training": False})]


register(Op(
    "dropout", dropout, _infer_dropout, _dropout_vjp, _dropout_samples, arity=None,
    attrs={"ratio": Attr("float", 0.5), "seed": Attr("int", 0), "training": Attr("bool", True)},
    saves=None, batch=_dropout_batch, workspace=_dropout_workspace,  # rows (input 1) when given; saves may not name an absent input
    doc="dropout(x[, rows]): zero each element with probability ratio and scale the rest by 1/(1-ratio) "
        "(training=true), else the identity. The mask is a counter-based hash of (seed, row index, element "
        "index within the example): pass rows (int, one per example of x, e.g. the dataset indices) to make it "
        "independent of batching and sharding; without rows the row index is the position in x, and the "
        "graph does not shard",
))
