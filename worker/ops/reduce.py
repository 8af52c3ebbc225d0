"""Reductions (sum, mean, max over axes, with keepdims), softmax family and losses."""

from __future__ import annotations

import numpy as np

from .. import batching
from .elementwise import sigmoid
from .indexing import (
    LOSS_ATTRS,
    class_loss,
    class_loss_batch,
    class_loss_samples,
    class_loss_vjp,
    class_loss_workspace,
    infer_class_loss,
)
from .registry import (
    Attr,
    Op,
    Sample,
    ShapeError,
    fmt_shape,
    keepdims_shape,
    normalize_axes,
    register,
    require_float,
    require_same_dtype,
)
from ..spec import TensorSpec

REDUCE_ATTRS = {"axis": Attr("axes", None), "keepdims": Attr("bool", False)}


def _axis(axis):
    return tuple(axis) if isinstance(axis, list) else axis


def _infer_reduce(x: TensorSpec, axis=None, keepdims=False) -> TensorSpec:
    require_float(x)
    axes = normalize_axes(axis, x.ndim)
    return TensorSpec(keepdims_shape(x.shape, axes, keepdims), x.dtype)


def _expand(g: np.ndarray, x: np.ndarray, axis, keepdims) -> np.ndarray:
    """``g`` (a reduction's output gradient) with the reduced axes restored as size 1."""
    return g if keepdims else np.expand_dims(g, normalize_axes(axis, x.ndim))


def _count(x: np.ndarray, axis) -> int:
    return int(np.prod([x.shape[a] for a in normalize_axes(axis, x.ndim)]))


def _reduce_samples(rng):
    x = rng.normal(size=(3, 4, 2))
    return [Sample((x,), {}), Sample((x,), {"axis": 1}), Sample((x,), {"axis": [0, 2], "keepdims": True}),
            Sample((x,), {"axis": -1})]


def _reduce_batch(over_batch: batching.Batch | None):
    """A reduction's rule. ``over_batch``: what reducing over the batch axis gives (MEAN for
    mean, even over several axes: each example has as many elements; SUM for sum; None for
    max, which is not linear). Reducing a batch-free mean or sum keeps it only when linear."""
    def rule(ins, specs, out, axis=None, keepdims=False):
        (b,), (s,) = ins, specs
        if b.reduced:
            return b if over_batch else batching.coupled("takes a max of a mean or sum over the batch")
        axes = normalize_axes(axis, s.ndim)
        if b.axis in axes:
            return over_batch or batching.coupled("takes a max over the batch axis")
        return batching.rows(b.axis if keepdims else b.axis - sum(a < b.axis for a in axes))
    return rule


def reduction(name, forward, rule, saves, doc, batch):
    return register(Op(name, forward, _infer_reduce, (rule,), _reduce_samples,
                       attrs=REDUCE_ATTRS, saves=saves, doc=doc, batch=_reduce_batch(batch)))


reduction("sum", lambda x, axis=None, keepdims=False: np.sum(x, axis=_axis(axis), keepdims=keepdims),
          lambda g, y, x, axis=None, keepdims=False: np.broadcast_to(_expand(g, x, axis, keepdims), x.shape),
          saves=(), doc="sum over axes (all when axis is None)", batch=batching.SUM)
reduction("mean", lambda x, axis=None, keepdims=False: np.mean(x, axis=_axis(axis), keepdims=keepdims),
          lambda g, y, x, axis=None, keepdims=False:
              np.broadcast_to(_expand(g, x, axis, keepdims) / _count(x, axis), x.shape),
          saves=(), doc="mean over axes (all when axis is None)", batch=batching.MEAN)


def _max_vjp(g, y, x, axis=None, keepdims=False):
    # ties share the gradient evenly, so the rule stays a valid subgradient
    hit = (x == _expand(y, x, axis, keepdims)).astype(g.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty axis: no element to divide for
        return hit * (_expand(g, x, axis, keepdims) / hit.sum(axis=_axis(axis), keepdims=True))


def _max(x, axis=None, keepdims=False):
    axes = normalize_axes(axis, x.ndim)
    if any(x.shape[a] == 0 for a in axes):  # ONNX's identity for ReduceMax over an empty axis
        return np.full(keepdims_shape(x.shape, axes, keepdims), -np.inf, dtype=x.dtype)
    return np.max(x, axis=_axis(axis), keepdims=keepdims)


reduction("max", _max, _max_vjp, saves=(0, "y"),
          doc="max over axes (all when axis is None); -inf over an empty axis", batch=None)


# ------------------------------------------------------------------ softmax family


def _infer_softmax(x: TensorSpec, axis=-1) -> TensorSpec:
    require_float(x)
    normalize_axes(axis, x.ndim)
    return x


def _log_softmax(x, axis=-1):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _softmax_batch(ins, specs, out, axis=-1):
    (b,), (s,) = ins, specs
    if b.reduced:
        return batching.coupled("normalizes a mean or sum over the batch")
    if axis % s.ndim == b.axis:
        return batching.coupled("normalizes along the batch axis")
    return b


def _softmax_samples(rng):
    return [Sample((rng.normal(size=(3, 5)),), {}), Sample((rng.normal(size=(2, 3, 4)),), {"axis": 1})]


register(Op(
    "softmax", _softmax, _infer_softmax,
    (lambda g, y, x, axis=-1: y * (g - (g * y).sum(axis=axis, keepdims=True)),),
    _softmax_samples, attrs={"axis": Attr("int", -1)}, saves=("y",), batch=_softmax_batch,
    doc="exp(x) / sum(exp(x)) along axis",
))
register(Op(
    "log_softmax", _log_softmax, _infer_softmax,
    (lambda g, y, x, axis=-1: g - np.exp(y) * g.sum(axis=axis, keepdims=True),),
    _softmax_samples, attrs={"axis": Attr("int", -1)}, saves=("y",), batch=_softmax_batch,
    doc="log(softmax(x)) along axis, computed stably",
))

# ------------------------------------------------------------------ losses (scalar, mean over elements)


def _mean_loss_batch(batch_axis: int | None):
    """The losses are means over every element (cross-entropy: over rows): a mean over
    examples when every input carries the batch on the same axis (``batch_axis`` when the op
    fixes it). A batch-free target would pair its rows with examples by position."""
    def rule(ins, specs, out):
        axes = {b.axis for b in ins}
        if all(b.kind == "rows" for b in ins) and len(axes) == 1 and (batch_axis is None or axes == {batch_axis}):
            return batching.MEAN
        where = "the same axis" if batch_axis is None else f"axis {batch_axis}"
        return batching.coupled(f"needs every input to carry the batch on {where}")
    return rule


def _infer_sce(logits: TensorSpec, labels: TensorSpec, *weight: TensorSpec, ignore_index=None,
               reduction="mean") -> TensorSpec:
    return infer_class_loss(logits, labels, *weight, reduction=reduction, what="logits")


def _plain(logits, weight, ignore_index, reduction) -> bool:
    """The original case, (N, C) logits, unweighted mean: computed as it always was, bit for bit
    (pinned training runs depend on it)."""
    return logits.ndim == 2 and not weight and ignore_index is None and reduction == "mean"


def _picked(logits, labels):
    classes = logits.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got values in [{labels.min()}, {labels.max()}]")
    return np.take_along_axis(logits, labels[:, None], axis=1)[:, 0]


# NOTE: fused on purpose. log(softmax(z)) underflows to log(0) = -inf once a logit trails the
# largest by ~100 (float32) and its gradient divides by that 0; the fused form works on the
# log-sum-exp of shifted logits, which never overflows, and its gradient (softmax - onehot)/N
# is bounded.
def _sce_forward(logits, labels, *weight, ignore_index=None, reduction="mean"):
    if _plain(logits, weight, ignore_index, reduction):
        return np.mean(-_picked(_log_softmax(logits), labels)).astype(logits.dtype)
    return class_loss(_log_softmax(logits, axis=1), labels, weight[0] if weight else None, ignore_index, reduction)


def _sce_vjp(g, y, logits, labels, *weight, ignore_index=None, reduction="mean"):
    if _plain(logits, weight, ignore_index, reduction):
        grad = _softmax(logits)
        grad[np.arange(len(labels)), labels] -= 1
        return grad * (g / len(labels)), None
    grad, gw = class_loss_vjp(g, _log_softmax(logits, axis=1), labels, weight[0] if weight else None,
                              ignore_index, reduction, softmax=_softmax(logits, axis=1))
    return (grad, None) + ((gw,) if weight else ())


register(Op(
    "softmax_cross_entropy", _sce_forward, _infer_sce, _sce_vjp, class_loss_samples,
    arity=None, attrs=LOSS_ATTRS, batch=class_loss_batch(linear=False),  # saves all: the weights are optional
    workspace=class_loss_workspace(3, 5),  # log_softmax's shifted logits and exp; then log_softmax, softmax, grad
    doc="-log softmax(logits)[label] over the class axis 1 (PyTorch's cross_entropy with integer targets): "
        "logits (batch, classes) or (batch, classes, d1, ...), integer labels (batch,) or (batch, d1, ...), "
        "optional class weights (classes,); ignore_index; reduction mean (default: over the batch; weighted: "
        "by the counted targets' total weight), sum or none",
))


def _infer_pairwise_loss(a: TensorSpec, b: TensorSpec) -> TensorSpec:
    require_float(a, b)
    require_same_dtype(a, b)
    if len(a.shape) != len(b.shape) or any(
        da is not None and db is not None and da != db for da, db in zip(a.shape, b.shape)
    ):
        raise ShapeError(f"prediction {fmt_shape(a.shape)} and target {fmt_shape(b.shape)} differ in shape")
    return TensorSpec((), a.dtype)


def _pair_samples(domain_b):
    return lambda rng: [Sample((rng.normal(size=(4, 3)), domain_b(rng, (4, 3))))]


register(Op(
    "mse", lambda p, t: np.mean(np.square(p - t)).astype(p.dtype), _infer_pairwise_loss,
    (lambda g, y, p, t: (p - t) * (2 * g / p.size),
     lambda g, y, p, t: (t - p) * (2 * g / p.size)),
    _pair_samples(lambda rng, s: rng.normal(size=s)), arity=2, saves=(0, 1), batch=_mean_loss_batch(None),
    doc="mean squared error over all elements",
))


def _bce_forward(x, t):
    # max(x, 0) - x t + log(1 + e^-|x|): never exponentiates a positive number
    return np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype)


register(Op(
    "binary_cross_entropy_with_logits", _bce_forward, _infer_pairwise_loss,
    (lambda g, y, x, t: (sigmoid(x) - t) * (g / x.size),
     lambda g, y, x, t: x * (-g / x.size)),
    _pair_samples(lambda rng, s: rng.uniform(0.0, 1.0, s)), arity=2, saves=(0, 1), batch=_mean_loss_batch(None),
    doc="mean over all elements of the logistic loss of logits against targets in [0, 1]",
))
