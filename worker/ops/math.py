"""Comparisons and logic, casts, more activations and unary math, more reductions, gemm and einsum.

Every kernel is vectorized NumPy (no Python loop over elements or the batch). Ops whose output
is not a float (comparisons, logic, argmax/argmin, cast to an integer) have no gradient rule
(``None``) for inputs they cannot be differentiated through; their outputs feed ``where``'s
condition, integer labels, or are fetched.
"""

from __future__ import annotations

import functools
import string

import numpy as np

from .. import batching
from .elementwise import BINARY_SHAPES, sigmoid
from .reduce import (
    REDUCE_ATTRS,
    _axis,
    _expand,
    _infer_reduce,
    _reduce_samples,
)
from .registry import (
    Attr,
    Op,
    Sample,
    ShapeError,
    broadcast_dims,
    fmt_shape,
    keepdims_shape,
    normalize_axes,
    register,
    require_float,
    require_same_dtype,
)
from ..spec import DTYPES, FLOAT_DTYPES, INT_DTYPES, TensorSpec, num_elements

BOOL = DTYPES["bool"]
NUMERIC_DTYPES = FLOAT_DTYPES | INT_DTYPES


def _uniform(lo, hi):
    return lambda rng, shape: rng.uniform(lo, hi, shape)


def _away_from_zero(lo, hi):
    return lambda rng, shape: rng.choice([-1.0, 1.0], shape) * rng.uniform(lo, hi, shape)


def _infer_unary(x: TensorSpec, **_: object) -> TensorSpec:
    require_float(x)
    return x


def _unary(name, forward, rule, saves, domain, doc, attrs=None, attr_samples=({},), batch=batching.elementwise,
           workspace=None):
    def samples(rng):
        return [Sample((domain(rng, (3, 4)),), dict(a)) for a in attr_samples]

    return register(Op(name, forward, _infer_unary, (rule,), samples, arity=1, attrs=attrs or {},
                       saves=saves, doc=doc, batch=batch, workspace=workspace))


# ------------------------------------------------------------------ comparisons and logic


def _infer_compare(a: TensorSpec, b: TensorSpec) -> TensorSpec:
    for s in (a, b):
        if s.dtype not in NUMERIC_DTYPES:
            raise ShapeError(f"expected a float or int tensor, got {s}")
    require_same_dtype(a, b)
    return TensorSpec(broadcast_dims(a.shape, b.shape), BOOL)


def _compare_samples(rng):
    out = []
    for sa, sb in BINARY_SHAPES:
        # a coarse grid, so equal and unequal elements both occur
        out.append(Sample((rng.integers(-2, 3, sa).astype(np.float64), rng.integers(-2, 3, sb).astype(np.float64))))
    return out


for _name, _fn in (("equal", np.equal), ("greater", np.greater), ("less", np.less),
                   ("greater_equal", np.greater_equal), ("less_equal", np.less_equal)):
    register(Op(_name, _fn, _infer_compare, (None, None), _compare_samples, arity=2, saves=(), broadcast=True,
                doc=f"elementwise {_fn.__name__}(a, b) with broadcasting: a bool tensor, not differentiable"))


def _infer_logic(*xs: TensorSpec) -> TensorSpec:
    for s in xs:
        if s.dtype != BOOL:
            raise ShapeError(f"expected a bool tensor, got {s}")
    return TensorSpec(broadcast_dims(*(s.shape for s in xs)), BOOL)


def _logic_samples(rng):
    return [Sample((rng.random(sa) > 0.5, rng.random(sb) > 0.5)) for sa, sb in BINARY_SHAPES]


register(Op("logical_and", np.logical_and, _infer_logic, (None, None), _logic_samples, arity=2, saves=(),
            broadcast=True, doc="elementwise a and b of bool tensors, with broadcasting"))
register(Op("logical_or", np.logical_or, _infer_logic, (None, None), _logic_samples, arity=2, saves=(),
            broadcast=True, doc="elementwise a or b of bool tensors, with broadcasting"))
register(Op("logical_not", np.logical_not, _infer_logic, (None,),
            lambda rng: [Sample((rng.random((3, 4)) > 0.5,))], arity=1, saves=(),
            doc="elementwise not of a bool tensor"))

# ------------------------------------------------------------------ cast


def _infer_cast(x: TensorSpec, to) -> TensorSpec:
    if to not in DTYPES:
        raise ShapeError(f"cast: 'to' must be one of {sorted(DTYPES)}, got {to!r}")
    return TensorSpec(x.shape, DTYPES[to])


def _cast(x, to):
    return np.asarray(x).astype(DTYPES[to])  # a copy, even when the dtype does not change


def _cast_vjp(g, y, x, to):
    # float -> float: the gradient cast back. Anything through an integer or bool is piecewise
    # constant: a zero gradient (not None: the engine would then find no gradient for a value
    # it was asked to differentiate through).
    if x.dtype.kind == "f" and y.dtype.kind == "f":
        return g.astype(x.dtype)
    return np.zeros(x.shape, x.dtype)


register(Op(
    "cast", _cast, _infer_cast, (_cast_vjp,),
    # (to float32 rounds: finite differences in float64 cannot check it; tests/test_ops_math.py does)
    lambda rng: [Sample((rng.normal(size=(3, 4)),), {"to": "float64"}),
                 Sample((rng.normal(size=(3, 4)),), {"to": "int64"})],
    attrs={"to": Attr("str")}, saves=(),
    doc="x converted to dtype `to` (float32, float64, int32, int64, bool; as NumPy's astype); "
        "the gradient is cast back for float to float, zero through an integer or bool",
))

# ------------------------------------------------------------------ clip


def _clip_bounds(x, min, max):
    lo = -np.inf if min is None else min
    hi = np.inf if max is None else max
    return x.dtype.type(lo), x.dtype.type(hi)


def _clip(x, min=None, max=None):
    lo, hi = _clip_bounds(x, min, max)
    return np.minimum(np.maximum(x, lo), hi)


def _clip_vjp(g, y, x, min=None, max=None):
    lo, hi = _clip_bounds(x, min, max)
    return g * ((x >= lo) & (x <= hi))  # passes where inside, bounds included (as PyTorch)


register(Op(
    "clip", _clip, _infer_unary, (_clip_vjp,),
    lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)),), a) for a in
                 ({"min": -0.5, "max": 1.0}, {"min": 0.25}, {"max": -0.3}, {})],
    attrs={"min": Attr("float", None), "max": Attr("float", None)}, saves=(0,),
    doc="x limited to [min, max] (either optional); the gradient passes where min <= x <= max",
))

# ------------------------------------------------------------------ erf (W. J. Cody's rational approximations)

# Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969),
# coefficients as in his CALERF (SPECFUN): relative error below 1e-15 on each interval.
_ERF_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
          3.20937758913846947e03, 1.85777706184603153e-1)
_ERF_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
          2.84423683343917062e03)
_ERF_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
          2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
          2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_ERF_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
          1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
          3.43936767414372164e03, 1.23033935480374942e03)
_ERF_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
          1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_ERF_Q = (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1,
          6.05183413124413191e-2, 2.33520497626869185e-3)
_SQRT_PI_INV = 5.6418958354775628695e-1  # 1/sqrt(pi)
_TWO_OVER_SQRT_PI = 2 * _SQRT_PI_INV


def _erfc_scaled_tail(y):
    """erfc(y) for y > 0.46875 (float64 array), by Cody's second and third approximations."""
    y = np.minimum(y, 30.0)  # erfc(30) underflows to 0 already; keeps inf out of inf - inf
    out = np.empty_like(y)
    mid = y <= 4.0
    t = y[mid]  # 0.46875 < y <= 4
    num, den = _ERF_C[8] * t, t
    for c, d in zip(_ERF_C[:7], _ERF_D[:7]):
        num, den = (num + c) * t, (den + d) * t
    out[mid] = (num + _ERF_C[7]) / (den + _ERF_D[7])
    t = y[~mid]
    z = 1.0 / (t * t)
    num, den = _ERF_P[5] * z, z
    for p, q in zip(_ERF_P[:4], _ERF_Q[:4]):
        num, den = (num + p) * z, (den + q) * z
    out[~mid] = (_SQRT_PI_INV - z * (num + _ERF_P[4]) / (den + _ERF_Q[4])) / t
    # exp(-y^2) split as exp(-r^2) exp(-(y-r)(y+r)), r = y rounded down to 1/16: no cancellation
    r = np.trunc(y * 16.0) / 16.0
    return np.exp(-r * r) * np.exp(-(y - r) * (y + r)) * out


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, vectorized, to about 1e-15 relative in float64 (computed in float64)."""
    x = np.asarray(x)
    v = x.astype(np.float64)
    y = np.abs(v)
    out = np.empty_like(v)
    small = y <= 0.46875
    xs = v[small]
    z = xs * xs
    num, den = _ERF_A[4] * z, z
    for a, b in zip(_ERF_A[:3], _ERF_B[:3]):
        num, den = (num + a) * z, (den + b) * z
    out[small] = xs * (num + _ERF_A[3]) / (den + _ERF_B[3])
    big = ~small & ~np.isnan(v)
    out[big] = np.copysign((0.5 - _erfc_scaled_tail(y[big])) + 0.5, v[big])
    out[np.isnan(v)] = np.nan
    return out.astype(x.dtype, copy=False) if x.dtype.kind == "f" else out


def _erf_grad(x):
    return _TWO_OVER_SQRT_PI * np.exp(-x * x)


ERF_BYTES = 14 * 8  # erf's temporaries an element: float64 (whatever x's dtype), ~13 at once (measured: 103 bytes)


def _erf_workspace(phase, out, x):
    """Bytes (see the registry): forward, ``ERF_BYTES`` an element; backward, g * 2/sqrt(pi) exp(-x^2)
    holds three buffers."""
    return num_elements(x.shape) * (ERF_BYTES if phase == "forward" else 3 * x.dtype.itemsize)


_unary("erf", erf, lambda g, y, x: g * _erf_grad(x), saves=(0,), domain=_uniform(-3, 3),
       workspace=_erf_workspace, doc="the error function (W. J. Cody's rational approximations, ~1e-15 relative)")

# ------------------------------------------------------------------ activations


def _leaky_relu(x, alpha=0.01):
    return np.where(x > 0, x, x * x.dtype.type(alpha))


_unary("leaky_relu", _leaky_relu,
       lambda g, y, x, alpha=0.01: g * np.where(x > 0, x.dtype.type(1), x.dtype.type(alpha)),
       saves=(0,), domain=_away_from_zero(0.1, 2), attrs={"alpha": Attr("float", 0.01)},
       attr_samples=({}, {"alpha": 0.2}),
       doc="x where x > 0, else alpha * x (ONNX LeakyRelu); subgradient alpha at 0")


def _elu(x, alpha=1.0):
    return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


_unary("elu", _elu,
       lambda g, y, x, alpha=1.0: g * np.where(x > 0, x.dtype.type(1), y + x.dtype.type(alpha)),
       saves=(0, "y"), domain=_away_from_zero(0.1, 2), attrs={"alpha": Attr("float", 1.0)},
       attr_samples=({}, {"alpha": 0.5}), doc="x where x > 0, else alpha * (exp(x) - 1) (ONNX Elu)")

SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875


def _selu(x, alpha=SELU_ALPHA, gamma=SELU_GAMMA):
    t = x.dtype.type
    return t(gamma) * np.where(x > 0, x, t(alpha) * np.expm1(np.minimum(x, 0)))


def _selu_vjp(g, y, x, alpha=SELU_ALPHA, gamma=SELU_GAMMA):
    t = x.dtype.type
    return g * (t(gamma) * np.where(x > 0, t(1), t(alpha) * np.exp(np.minimum(x, 0))))


_unary("selu", _selu, _selu_vjp, saves=(0,), domain=_away_from_zero(0.1, 2),
       attrs={"alpha": Attr("float", SELU_ALPHA), "gamma": Attr("float", SELU_GAMMA)},
       doc="gamma * (x where x > 0, else alpha * (exp(x) - 1)), ONNX Selu's defaults")

_SQRT_2_OVER_PI = 0.7978845608028654
_GELU_C = 0.044715


def _gelu(x, approximate="none"):
    t = x.dtype.type
    if approximate == "tanh":
        return t(0.5) * x * (t(1) + np.tanh(t(_SQRT_2_OVER_PI) * (x + t(_GELU_C) * x * x * x)))
    return t(0.5) * x * (t(1) + erf(x * t(np.sqrt(0.5))))


def _gelu_vjp(g, y, x, approximate="none"):
    t = x.dtype.type
    if approximate == "tanh":
        th = np.tanh(t(_SQRT_2_OVER_PI) * (x + t(_GELU_C) * x * x * x))
        dinner = t(_SQRT_2_OVER_PI) * (t(1) + t(3 * _GELU_C) * x * x)
        return g * (t(0.5) * (t(1) + th) + t(0.5) * x * (t(1) - th * th) * dinner)
    cdf = t(0.5) * (t(1) + erf(x * t(np.sqrt(0.5))))
    pdf = t(0.5 * _SQRT_2_OVER_PI) * np.exp(t(-0.5) * x * x)  # 1/sqrt(2 pi) exp(-x^2/2)
    return g * (cdf + x * pdf)


def _gelu_workspace(phase, out, x, approximate="none"):
    """Bytes (see the registry). The erf form: erf's temporaries and three (forward) or five
    (backward: cdf, pdf and their products, the gradient) of x's size; the tanh form holds up to
    three (forward) or seven (backward) x-sized buffers (measured: 2 and 6)."""
    it, backward = x.dtype.itemsize, phase == "backward"
    if approximate == "tanh":
        per = (7 if backward else 3) * it
    else:
        per = ERF_BYTES + (5 if backward else 3) * it
    return num_elements(x.shape) * per


def _infer_gelu(x: TensorSpec, approximate="none") -> TensorSpec:
    if approximate not in ("none", "tanh"):
        raise ShapeError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _infer_unary(x)


register(Op(
    "gelu", _gelu, _infer_gelu, (_gelu_vjp,),
    lambda rng: [Sample((rng.uniform(-3, 3, (3, 4)),), a) for a in ({}, {"approximate": "tanh"})],
    attrs={"approximate": Attr("str", "none")}, saves=(0,), workspace=_gelu_workspace,
    doc="x * Phi(x) (approximate='none', the erf form) or its tanh approximation (approximate='tanh')",
))


def _softplus(x):
    # max(x, 0) + log(1 + e^-|x|): never exponentiates a positive number
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


_unary("softplus", _softplus, lambda g, y, x: g * sigmoid(x), saves=(0,), domain=_uniform(-4, 4),
       doc="log(1 + exp(x)), computed without overflow")
_unary("softsign", lambda x: x / (1 + np.abs(x)), lambda g, y, x: g / np.square(1 + np.abs(x)),
       saves=(0,), domain=_uniform(-3, 3), doc="x / (1 + |x|)")


def _hard_sigmoid(x, alpha=0.2, beta=0.5):
    t = x.dtype.type
    return np.clip(t(alpha) * x + t(beta), t(0), t(1))


def _hard_sigmoid_vjp(g, y, x, alpha=0.2, beta=0.5):
    t = x.dtype.type
    z = t(alpha) * x + t(beta)
    return g * (t(alpha) * ((z > 0) & (z < 1)))


_unary("hard_sigmoid", _hard_sigmoid, _hard_sigmoid_vjp, saves=(0,), domain=_uniform(-4, 4),
       attrs={"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)},
       attr_samples=({}, {"alpha": 1 / 6, "beta": 0.5}),
       doc="max(0, min(1, alpha * x + beta)) (ONNX HardSigmoid); subgradient 0 at the kinks")


def _hard_swish(x):
    return x * _hard_sigmoid(x, 1 / 6, 0.5)


def _hard_swish_vjp(g, y, x):
    t = x.dtype.type
    inside = (x > -3) & (x < 3)
    return g * (_hard_sigmoid(x, 1 / 6, 0.5) + x * (t(1 / 6) * inside))


_unary("hard_swish", _hard_swish, _hard_swish_vjp, saves=(0,), domain=_uniform(-5, 5),
       doc="x * hard_sigmoid(x, alpha=1/6, beta=0.5) (ONNX HardSwish)")


def _silu_vjp(g, y, x):
    s = sigmoid(x)
    return g * (s * (1 + x * (1 - s)))


_unary("silu", lambda x: x * sigmoid(x), _silu_vjp, saves=(0,), domain=_uniform(-4, 4),
       doc="x * sigmoid(x) (swish)")

# ------------------------------------------------------------------ unary math

_unary("log1p", np.log1p, lambda g, y, x: g / (1 + x), saves=(0,), domain=_uniform(-0.8, 2),
       doc="log(1 + x), accurate for small x")
_unary("expm1", np.expm1, lambda g, y, x: g * (y + 1), saves=("y",), domain=_uniform(-2, 1),
       doc="exp(x) - 1, accurate for small x")
_unary("reciprocal", np.reciprocal, lambda g, y, x: -g * (y * y), saves=("y",),
       domain=_away_from_zero(0.5, 2), doc="1 / x")


def _zero_grad(g, y, x):
    return np.zeros(x.shape, g.dtype)


# NOTE: sign, floor, ceil and round are piecewise constant: their derivative is zero almost
# everywhere (undefined at the jumps), so the gradient is zero, as in PyTorch.
_unary("sign", np.sign, _zero_grad, saves=(), domain=_away_from_zero(0.1, 2),
       doc="-1, 0 or 1 by the sign of x; zero gradient (piecewise constant)")
_unary("floor", np.floor, _zero_grad, saves=(), domain=_uniform(-3, 3),
       doc="the largest integer <= x; zero gradient (piecewise constant)")
_unary("ceil", np.ceil, _zero_grad, saves=(), domain=_uniform(-3, 3),
       doc="the smallest integer >= x; zero gradient (piecewise constant)")
_unary("round", np.round, _zero_grad, saves=(), domain=_uniform(-3, 3),
       doc="x rounded to the nearest integer, halves to even (ONNX Round); zero gradient (piecewise constant)")

# ------------------------------------------------------------------ reductions


def _reduction_rule(over_batch: batching.Batch | None, what: str, keeps_reduced: bool):
    """A reduction's batch rule. ``over_batch``: what reducing per-example rows over the batch
    axis gives (SUM for sums of per-example terms, None: coupled); ``keeps_reduced``: whether
    reducing a mean or sum over the batch keeps it (only when the op is linear)."""
    def rule(ins, specs, out, axis=None, keepdims=False):
        (b,), (s,) = ins, specs
        if b.reduced:
            return b if keeps_reduced else batching.coupled(f"takes {what} of a mean or sum over the batch")
        axes = normalize_axes(axis, s.ndim)
        if b.axis in axes:
            return over_batch or batching.coupled(f"takes {what} over the batch axis")
        return batching.rows(b.axis if keepdims else b.axis - sum(a < b.axis for a in axes))
    return rule


def _empty_reduction(x, axis, keepdims, fill):
    """The result of a reduction over an empty axis: ``fill`` everywhere, or None if no
    reduced axis is empty."""
    axes = normalize_axes(axis, x.ndim)
    if not any(x.shape[a] == 0 for a in axes):
        return None
    return np.full(keepdims_shape(x.shape, axes, keepdims), fill, dtype=x.dtype)


def reduce_min(x, axis=None, keepdims=False):
    """min over axes; +inf over an empty axis (ONNX's identity for ReduceMin)."""
    empty = _empty_reduction(x, axis, keepdims, np.inf)
    return empty if empty is not None else np.min(x, axis=_axis(axis), keepdims=keepdims)


def _extreme_vjp(g, y, x, axis=None, keepdims=False):
    # ties share the gradient evenly, as max's rule does
    hit = (x == _expand(y, x, axis, keepdims)).astype(g.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty reduction: 0/0 on no elements
        return hit * (_expand(g, x, axis, keepdims) / hit.sum(axis=_axis(axis), keepdims=True))


register(Op("min", reduce_min, _infer_reduce, (_extreme_vjp,), _reduce_samples, attrs=REDUCE_ATTRS,
            saves=(0, "y"), batch=_reduction_rule(None, "a min", False),
            doc="min over axes (all when axis is None); +inf over an empty axis"))


def _prod(x, axis=None, keepdims=False):
    return np.prod(x, axis=_axis(axis), keepdims=keepdims)


def _prod_vjp(g, y, x, axis=None, keepdims=False):
    """The product of the other elements of each group, without dividing by zero: with no
    zero in a group it is prod / x; with one zero, the product of the rest at the zero and 0
    elsewhere; with two or more, 0 everywhere."""
    zero = x == 0
    safe = np.where(zero, x.dtype.type(1), x)
    rest = np.prod(safe, axis=_axis(axis), keepdims=True)  # the product of the non-zeros
    zeros = zero.sum(axis=_axis(axis), keepdims=True)
    others = np.where(zeros == 0, rest / safe, np.where((zeros == 1) & zero, rest, x.dtype.type(0)))
    return _expand(g, x, axis, keepdims) * others


def _prod_workspace(phase, out, x, **_):
    """Bytes (see the registry): the forward reduction holds at most one x-sized buffer; the VJP
    two bool masks and four x-sized buffers at once (safe, rest / safe, the inner where, others),
    and the gradient (one more, for margin)."""
    it = x.dtype.itemsize
    return num_elements(x.shape) * (it if phase == "forward" else 5 * it + 2)


def _prod_samples(rng):
    x = rng.uniform(0.5, 1.5, (3, 4, 2)) * rng.choice([-1.0, 1.0], (3, 4, 2))
    with_zeros = x.copy()
    with_zeros[0, 1, 0] = 0.0  # one zero in its row along axis 1
    with_zeros[2, 0, 1] = with_zeros[2, 3, 1] = 0.0  # two zeros in another
    return [Sample((x,), {}), Sample((x,), {"axis": 1}), Sample((x,), {"axis": [0, 2], "keepdims": True}),
            Sample((with_zeros,), {"axis": 1}), Sample((with_zeros,), {"axis": -1, "keepdims": True})]


register(Op("prod", _prod, _infer_reduce, (_prod_vjp,), _prod_samples, attrs=REDUCE_ATTRS, saves=(0,),
            batch=_reduction_rule(None, "a product", False), workspace=_prod_workspace,
            doc="product over axes (all when axis is None); 1 over an empty axis; the gradient handles zeros"))


def _logsumexp(x, axis=None, keepdims=False):
    axes = _axis(axis)
    if x.size == 0:  # (an empty reduced axis makes x empty)
        with np.errstate(divide="ignore"):
            return np.log(np.sum(np.exp(x), axis=axes, keepdims=keepdims))  # log(0) = -inf when empty
    m = np.max(x, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, x.dtype.type(0))  # all -inf (or an inf): no shift
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=normalize_axes(axis, x.ndim))


def _logsumexp_vjp(g, y, x, axis=None, keepdims=False):
    return _expand(g, x, axis, keepdims) * np.exp(x - _expand(y, x, axis, keepdims))


register(Op("logsumexp", _logsumexp, _infer_reduce, (_logsumexp_vjp,), _reduce_samples, attrs=REDUCE_ATTRS,
            saves=(0, "y"), batch=_reduction_rule(None, "a log-sum-exp", False),
            doc="log(sum(exp(x))) over axes, shifted by the max so it never overflows; -inf over an empty axis"))


def _reduce_l1(x, axis=None, keepdims=False):
    return np.sum(np.abs(x), axis=_axis(axis), keepdims=keepdims)


register(Op("reduce_l1", _reduce_l1, _infer_reduce,
            (lambda g, y, x, axis=None, keepdims=False: _expand(g, x, axis, keepdims) * np.sign(x),),
            _reduce_samples, attrs=REDUCE_ATTRS, saves=(0,),
            batch=_reduction_rule(batching.SUM, "an L1 norm", False),
            doc="sum of |x| over axes (ONNX ReduceL1); subgradient 0 at x == 0"))


def _reduce_l2(x, axis=None, keepdims=False):
    return np.sqrt(np.sum(np.square(x), axis=_axis(axis), keepdims=keepdims))


def _reduce_l2_vjp(g, y, x, axis=None, keepdims=False):
    norm = _expand(y, x, axis, keepdims)
    safe = np.where(norm == 0, x.dtype.type(1), norm)
    return _expand(g, x, axis, keepdims) * np.where(norm == 0, x.dtype.type(0), x / safe)


register(Op("reduce_l2", _reduce_l2, _infer_reduce, (_reduce_l2_vjp,), _reduce_samples, attrs=REDUCE_ATTRS,
            saves=(0, "y"), batch=_reduction_rule(None, "an L2 norm", False),
            doc="sqrt(sum of x^2) over axes (ONNX ReduceL2); subgradient 0 where the norm is 0"))

# ------------------------------------------------------------------ argmax / argmin


def _infer_arg(x: TensorSpec, axis=0, keepdims=False) -> TensorSpec:
    if x.dtype not in NUMERIC_DTYPES:
        raise ShapeError(f"expected a float or int tensor, got {x}")
    if x.ndim == 0:
        raise ShapeError("argmax/argmin need a tensor of rank >= 1")
    (a,) = normalize_axes(axis, x.ndim)
    if x.shape[a] == 0:
        raise ShapeError(f"argmax/argmin over axis {axis} of size 0 of {fmt_shape(x.shape)}")
    return TensorSpec(keepdims_shape(x.shape, (a,), keepdims), DTYPES["int64"])


def _arg_batch(ins, specs, out, axis=0, keepdims=False):
    (b,), (s,) = ins, specs
    if b.reduced:
        return batching.coupled("takes an arg-extreme of a mean or sum over the batch")
    a = axis % s.ndim
    if a == b.axis:
        return batching.coupled("picks an index along the batch axis")
    return batching.rows(b.axis if keepdims or b.axis < a else b.axis - 1)


def _arg_samples(rng):
    x = rng.normal(size=(3, 4, 2))
    return [Sample((x,), {}), Sample((x,), {"axis": 1}), Sample((x,), {"axis": -1, "keepdims": True})]


for _name, _fn in (("argmax", np.argmax), ("argmin", np.argmin)):
    def _arg(x, axis=0, keepdims=False, _fn=_fn):
        return _fn(x, axis=axis, keepdims=keepdims).astype(np.int64, copy=False)

    register(Op(_name, _arg, _infer_arg, (None,), _arg_samples, attrs={"axis": Attr("int", 0),
                "keepdims": Attr("bool", False)}, saves=(), batch=_arg_batch,
                doc=f"int64 index of the {_name[3:]} along axis (the first on ties); not differentiable"))

# ------------------------------------------------------------------ gemm


def _gemm_parts(specs, transA, transB):
    a, b = specs[0], specs[1]
    for s in (a, b):
        if s.ndim != 2:
            raise ShapeError(f"gemm needs 2-D A and B, got {fmt_shape(a.shape)} and {fmt_shape(b.shape)}")
    m, k = a.shape[::-1] if transA else a.shape
    k2, n = b.shape[::-1] if transB else b.shape
    return m, k, k2, n


def _infer_gemm(*specs: TensorSpec, alpha=1.0, beta=1.0, transA=0, transB=0) -> TensorSpec:
    if len(specs) not in (2, 3):
        raise ShapeError(f"gemm takes A, B and an optional C, got {len(specs)} inputs")
    if transA not in (0, 1) or transB not in (0, 1):
        raise ShapeError(f"gemm: transA and transB must be 0 or 1, got {transA} and {transB}")
    require_float(*specs)
    require_same_dtype(*specs)
    m, k, k2, n = _gemm_parts(specs, transA, transB)
    if k is not None and k2 is not None and k != k2:
        raise ShapeError(f"gemm: inner dimensions differ: A' is {fmt_shape((m, k))}, B' is {fmt_shape((k2, n))}")
    if len(specs) == 3:
        c = specs[2]
        # unidirectional: C stretches to (M, N), never the other way
        ok = c.ndim <= 2 and all(d in (1, e) or d is None or e is None
                                 for d, e in zip(c.shape[::-1], (n, m)))
        if not ok:
            raise ShapeError(f"gemm: C {fmt_shape(c.shape)} does not broadcast to {fmt_shape((m, n))}")
    return TensorSpec((m, n), specs[0].dtype)


def _gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    t = a.dtype.type
    y = (a.T if transA else a) @ (b.T if transB else b)
    if alpha != 1.0:
        y *= t(alpha)
    if c is not None:
        y = y + t(beta) * c
    return y


def _gemm_vjp(g, y, a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    t = g.dtype.type
    ga_ = t(alpha) * (g @ (b if transB else b.T))  # the gradient w.r.t. A' = op(A)
    gb_ = t(alpha) * ((a.T if transA else a).T @ g)
    grads = (ga_.T if transA else ga_, gb_.T if transB else gb_)
    return grads if c is None else grads + (t(beta) * g,)  # unbroadcast to C's shape by the executor


def _gemm_batch(ins, specs, out, alpha=1.0, beta=1.0, transA=0, transB=0):
    """alpha * op(A) @ op(B) (bilinear, as matmul) plus beta * C (as add)."""
    a, b = ins[0], ins[1]
    a_row = a.kind == "rows" and a.axis == (1 if transA else 0)  # batch on op(A)'s rows
    b_col = b.kind == "rows" and b.axis == (0 if transB else 1)  # batch on op(B)'s columns
    if a.reduced or b.reduced:
        if (a.reduced and b.kind == "free") or (b.reduced and a.kind == "free"):
            p = a if a.reduced else b
        else:
            p = batching.coupled("multiplies a mean or sum over the batch by a batch-dependent operand")
    elif a.kind == "rows" and b.kind == "rows":
        p = batching.coupled("pairs every example of one operand with every example of the other")
    elif (a.kind == "rows" and not a_row) or (b.kind == "rows" and not b_col):
        p = batching.coupled("contracts over the batch axis")
    elif a.kind == "rows":
        p = batching.rows(0)
    elif b.kind == "rows":
        p = batching.rows(1)
    else:
        p = batching.FREE
    if len(ins) == 2 or p.kind == "coupled":
        return p
    c = ins[2]
    if p.kind == "free" and c.kind == "free":
        return p
    return batching.linear((p, c), (out, specs[2]), out)


def _gemm_flops(out: TensorSpec, a: TensorSpec, b: TensorSpec, c: TensorSpec | None = None,
                transA=0, transB=0, **_) -> int:
    k = a.shape[0 if transA else 1]
    n = num_elements(out.shape)
    return 2 * n * (1 if k is None else k) + (2 * n if c is not None else 0)


def _gemm_samples(rng):
    n = rng.normal
    return [Sample((n(size=(3, 4)), n(size=(4, 5)), n(size=(5,))), {}),
            Sample((n(size=(4, 3)), n(size=(4, 5)), n(size=(3, 1))), {"transA": 1, "alpha": 0.5, "beta": 2.0}),
            Sample((n(size=(3, 4)), n(size=(5, 4)), n(size=(3, 5))), {"transB": 1, "beta": -1.0}),
            Sample((n(size=(4, 3)), n(size=(5, 4))), {"transA": 1, "transB": 1, "alpha": 1.5}),
            Sample((n(size=(3, 4)), n(size=(4, 5)), n(size=())), {})]


register(Op(
    "gemm", _gemm, _infer_gemm, _gemm_vjp, _gemm_samples, arity=None,
    attrs={"alpha": Attr("float", 1.0), "beta": Attr("float", 1.0), "transA": Attr("int", 0),
           "transB": Attr("int", 0)},
    saves=(0, 1), broadcast=True, batch=_gemm_batch, flops=_gemm_flops,
    doc="ONNX Gemm: alpha * op(A) @ op(B) + beta * C, op transposing when transA/transB is 1; "
        "A and B 2-D, C optional and broadcast to the output",
))

# ------------------------------------------------------------------ einsum (two operands)

_LETTERS = frozenset(string.ascii_letters)


@functools.lru_cache(maxsize=256)  # parsed by every kernel call; a bad equation raises (and is not cached)
def parse_einsum(equation: str) -> tuple[str, str, str]:
    """(a's, b's, the output's subscripts) of a two-operand equation; ShapeError if unsupported."""
    if not isinstance(equation, str):
        raise ShapeError(f"einsum: equation must be a string, got {equation!r}")
    eq = equation.replace(" ", "")
    if "." in eq:
        raise ShapeError(f"einsum {equation!r}: ellipsis ('...') is not supported")
    lhs, arrow, out = eq.partition("->")
    if "-" in lhs or ">" in lhs or "-" in out or ">" in out:
        raise ShapeError(f"einsum {equation!r}: malformed '->'")
    operands = lhs.split(",")
    if len(operands) != 2:
        raise ShapeError(f"einsum {equation!r}: exactly two operands are supported, got {len(operands)}")
    sa, sb = operands
    for s in (sa, sb, out):
        bad = set(s) - _LETTERS
        if bad:
            raise ShapeError(f"einsum {equation!r}: subscripts must be letters, got {sorted(bad)}")
    for s in (sa, sb):
        if len(set(s)) != len(s):
            raise ShapeError(f"einsum {equation!r}: an index repeated within one operand ({s!r}: a diagonal "
                             "or trace) is not supported")
    if not arrow:  # NumPy's implicit output: the indices used once, in alphabetical order
        out = "".join(sorted(i for i in set(sa + sb) if (sa + sb).count(i) == 1))
    if len(set(out)) != len(out):
        raise ShapeError(f"einsum {equation!r}: an output index is repeated")
    missing = set(out) - set(sa) - set(sb)
    if missing:
        raise ShapeError(f"einsum {equation!r}: output indices {sorted(missing)} appear in no operand")
    return sa, sb, out


def _einsum_sizes(sa, sb, a_shape, b_shape, equation):
    sizes: dict[str, int | None] = {}
    for subs, shape in ((sa, a_shape), (sb, b_shape)):
        for i, d in zip(subs, shape):
            known = sizes.get(i)
            if known is not None and d is not None and known != d:
                raise ShapeError(f"einsum {equation!r}: index {i!r} has sizes {known} and {d} "
                                 f"(operands {fmt_shape(a_shape)} and {fmt_shape(b_shape)})")
            if known is None:
                sizes[i] = d
    return sizes


def _infer_einsum(a: TensorSpec, b: TensorSpec, equation) -> TensorSpec:
    require_float(a, b)
    require_same_dtype(a, b)
    sa, sb, out = parse_einsum(equation)
    for subs, spec, which in ((sa, a, "first"), (sb, b, "second")):
        if len(subs) != spec.ndim:
            raise ShapeError(f"einsum {equation!r}: the {which} operand has rank {spec.ndim}, "
                             f"its subscripts {subs!r} name {len(subs)} axes")
    sizes = _einsum_sizes(sa, sb, a.shape, b.shape, equation)
    return TensorSpec(tuple(sizes[i] for i in out), a.dtype)


def contract(sa: str, a: np.ndarray, sb: str, b: np.ndarray, out: str) -> np.ndarray:
    """np.einsum(f"{sa},{sb}->{out}", a, b) as one (batched) matmul, BLAS-backed where
    np.einsum would loop: indices in one operand only and not in the output are summed first;
    then the shared indices kept in the output batch, the shared ones not kept are contracted,
    and the rest are each operand's own rows / columns."""
    a_sum = tuple(k for k, i in enumerate(sa) if i not in sb and i not in out)
    if a_sum:
        a, sa = a.sum(axis=a_sum), "".join(i for i in sa if i in sb or i in out)
    b_sum = tuple(k for k, i in enumerate(sb) if i not in sa and i not in out)
    if b_sum:
        b, sb = b.sum(axis=b_sum), "".join(i for i in sb if i in sa or i in out)
    size = {**dict(zip(sa, a.shape)), **dict(zip(sb, b.shape))}
    batch = [i for i in out if i in sa and i in sb]
    inner = [i for i in sa if i in sb and i not in out]
    a_own = [i for i in sa if i not in sb]
    b_own = [i for i in sb if i not in sa]

    def dims(labels):
        return int(np.prod([size[i] for i in labels], dtype=np.int64))

    lead = tuple(size[i] for i in batch)
    am = np.transpose(a, [sa.index(i) for i in batch + a_own + inner]).reshape(lead + (dims(a_own), dims(inner)))
    bm = np.transpose(b, [sb.index(i) for i in batch + inner + b_own]).reshape(lead + (dims(inner), dims(b_own)))
    y = np.matmul(am, bm).reshape(lead + tuple(size[i] for i in a_own + b_own))
    labels = batch + a_own + b_own
    return np.transpose(y, [labels.index(i) for i in out])


def _einsum(a, b, equation):
    sa, sb, out = parse_einsum(equation)
    return contract(sa, a, sb, b, out)


def _einsum_grad(g, other, s_self, s_other, out, shape):
    """The gradient for the operand with subscripts ``s_self``: g contracted with the other
    operand; indices only ``s_self`` has (summed within it) come back by broadcasting."""
    kept = "".join(i for i in s_self if i in out or i in s_other)
    grad = contract(out, g, s_other, other, kept)
    if len(kept) < len(s_self):
        grad = np.broadcast_to(np.expand_dims(grad, tuple(k for k, i in enumerate(s_self) if i not in kept)), shape)
    return grad


def _einsum_vjp_a(g, y, a, b, equation):
    sa, sb, out = parse_einsum(equation)
    return _einsum_grad(g, b, sa, sb, out, a.shape)


def _einsum_vjp_b(g, y, a, b, equation):
    sa, sb, out = parse_einsum(equation)
    return _einsum_grad(g, a, sb, sa, out, b.shape)


def _einsum_batch(ins, specs, out_spec, equation):
    """einsum is bilinear. A ROWS operand's batch index: kept in the output, the output carries
    the batch there; summed over, the output is a SUM of per-example terms; either way the other
    operand must be batch-free or carry the batch under the same index (one product per example)."""
    sa, sb, out = parse_einsum(equation)
    (pa, pb), subs = ins, (sa, sb)
    if pa.reduced or pb.reduced:
        if (pa.reduced and pb.kind == "free") or (pb.reduced and pa.kind == "free"):
            return pa if pa.reduced else pb
        return batching.coupled("multiplies a mean or sum over the batch by a batch-dependent operand")
    labels = {s[p.axis] for p, s in zip(ins, subs) if p.kind == "rows"}
    if len(labels) > 1:
        return batching.coupled("pairs every example of one operand with every example of the other")
    (label,) = labels
    for p, s in zip(ins, subs):
        if p.kind == "free" and label in s:
            return batching.coupled(f"pairs the batch index {label!r} with a batch-free axis")
    return batching.rows(out.index(label)) if label in out else batching.SUM


def _einsum_flops(out: TensorSpec, a: TensorSpec, b: TensorSpec, equation) -> int:
    sa, sb, _ = parse_einsum(equation)
    sizes = _einsum_sizes(sa, sb, a.shape, b.shape, equation)
    return 2 * num_elements(tuple(sizes.values()))


def _einsum_samples(rng):
    n = rng.normal
    cases = [("ij,jk->ik", (3, 4), (4, 5)), ("bij,bjk->bik", (2, 3, 4), (2, 4, 5)), ("i,i->", (4,), (4,)),
             ("i,j->ij", (3,), (4,)), ("ij,j->i", (3, 4), (4,)), ("ijl,jk->ki", (3, 4, 2), (4, 5)),
             ("ij,jkm->i", (3, 4), (4, 2, 5)), ("ij,kj", (3, 4), (5, 4)), ("bi,bj->bij", (3, 2), (3, 4))]
    return [Sample((n(size=sa), n(size=sb)), {"equation": eq}) for eq, sa, sb in cases]


register(Op(
    "einsum", _einsum, _infer_einsum, (_einsum_vjp_a, _einsum_vjp_b), _einsum_samples, arity=2,
    attrs={"equation": Attr("str")}, saves=(0, 1), batch=_einsum_batch, flops=_einsum_flops,
    doc="np.einsum(equation, a, b) for two operands, e.g. 'bij,bjk->bik'; no ellipsis, no index "
        "repeated within one operand",
))
