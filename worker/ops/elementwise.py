"""Elementwise ops: the seed's add/mul/relu/sigmoid and the rest of the unary/binary family."""

from __future__ import annotations

import numpy as np

from .. import batching
from .registry import (
    Attr,
    Op,
    Sample,
    ShapeError,
    broadcast_dims,
    register,
    require_float,
    require_same_dtype,
)
from ..spec import DTYPES, TensorSpec

# Test-input domains, by name, so each op states where its samples live.
DOMAINS = {
    "real": lambda rng, shape: rng.uniform(-2.0, 2.0, shape),
    "positive": lambda rng, shape: rng.uniform(0.5, 2.0, shape),
    "small": lambda rng, shape: rng.uniform(-1.0, 1.0, shape),
    # away from 0 so finite differences never straddle a kink
    "nonzero": lambda rng, shape: rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 2.0, shape),
}

BINARY_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((), (3,))]


def _infer_unary(x: TensorSpec, **_: object) -> TensorSpec:
    require_float(x)
    return x


def _infer_binary(a: TensorSpec, b: TensorSpec) -> TensorSpec:
    require_float(a, b)
    require_same_dtype(a, b)
    return TensorSpec(broadcast_dims(a.shape, b.shape), a.dtype)


def unary(name, forward, rule, saves, domain="real", attrs=None, attr_samples=({},), doc="",
          batch=batching.elementwise):
    def samples(rng):
        return [Sample((DOMAINS[domain](rng, (3, 4)),), dict(a)) for a in attr_samples]

    return register(Op(name, forward, _infer_unary, (rule,), samples, arity=1,
                       attrs=attrs or {}, saves=saves, doc=doc, batch=batch))


def binary(name, forward, rule_a, rule_b, saves, domain=("real", "real"), doc="", batch=batching.elementwise):
    def samples(rng):
        return [Sample((DOMAINS[domain[0]](rng, sa), DOMAINS[domain[1]](rng, sb)))
                for sa, sb in BINARY_SHAPES]

    return register(Op(name, forward, _infer_binary, (rule_a, rule_b), samples, arity=2,
                       saves=saves, broadcast=True, doc=doc, batch=batch))


def _mask(condition: np.ndarray, like: np.ndarray) -> np.ndarray:
    return condition.astype(like.dtype, copy=False)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: one transcendental per element and no overflow for large |x|.
    # Computed as 0.5 + 0.5 * tanh(0.5 * x) in one buffer (same operations in the same
    # order, so the same bits): NumPy cannot reuse the temporary across the np.tanh call, and
    # the extra activation-sized allocation made this the engine's slowest elementwise op.
    t = np.multiply(x, 0.5)
    if not isinstance(t, np.ndarray):  # a 0-d input gives a NumPy scalar
        return 0.5 + 0.5 * np.tanh(t)
    np.tanh(t, out=t)
    t *= 0.5
    t += 0.5
    return t


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


# ------------------------------------------------------------------ the seed's nodes

binary("add", np.add,
       lambda g, y, a, b: g,
       lambda g, y, a, b: g, saves=(), batch=batching.linear, doc="a + b, broadcasting")
binary("mul", np.multiply,
       lambda g, y, a, b: g * b,
       lambda g, y, a, b: g * a, saves=(0, 1), batch=batching.scaling, doc="a * b, broadcasting")
# NOTE: the subgradient at x == 0 is 0, as in PyTorch; y > 0 iff x > 0, so y suffices.
# g * (y > 0) casts the bool mask inside the multiply (1.0/0.0 exactly, in g's dtype): the
# same values as multiplying by a converted mask, without allocating that mask.
unary("relu", _relu, lambda g, y, x: g * (y > 0), saves=("y",), domain="nonzero", doc="max(x, 0)")
unary("sigmoid", sigmoid, lambda g, y, x: g * y * (1 - y), saves=("y",), doc="1 / (1 + exp(-x))")

# ------------------------------------------------------------------ binary

binary("sub", np.subtract,
       lambda g, y, a, b: g,
       lambda g, y, a, b: -g, saves=(), batch=batching.linear, doc="a - b, broadcasting")
binary("div", np.divide,
       lambda g, y, a, b: g / b,
       lambda g, y, a, b: -g * y / b, saves=(1, "y"), domain=("real", "positive"), batch=batching.dividing,
       doc="a / b, broadcasting")


def _pick_larger(a, b, g):
    # ties split the gradient evenly, as PyTorch does
    return g * (_mask(a > b, g) + 0.5 * _mask(a == b, g))


binary("maximum", np.maximum,
       lambda g, y, a, b: _pick_larger(a, b, g),
       lambda g, y, a, b: _pick_larger(b, a, g), saves=(0, 1), doc="elementwise max(a, b); ties split the gradient")
binary("minimum", np.minimum,
       lambda g, y, a, b: _pick_larger(b, a, g),
       lambda g, y, a, b: _pick_larger(a, b, g), saves=(0, 1), doc="elementwise min(a, b); ties split the gradient")

# ------------------------------------------------------------------ unary

unary("neg", np.negative, lambda g, y, x: -g, saves=(), batch=batching.unary_linear, doc="-x")
unary("exp", np.exp, lambda g, y, x: g * y, saves=("y",), domain="small", doc="e ** x")
unary("log", np.log, lambda g, y, x: g / x, saves=(0,), domain="positive", doc="natural logarithm")
unary("tanh", np.tanh, lambda g, y, x: g * (1 - y * y), saves=("y",), doc="hyperbolic tangent")
unary("square", np.square, lambda g, y, x: 2 * g * x, saves=(0,), doc="x * x")
unary("sqrt", np.sqrt, lambda g, y, x: g / (2 * y), saves=("y",), domain="positive", doc="square root")
# NOTE: subgradient 0 at x == 0 (np.sign), as in PyTorch.
unary("abs", np.abs, lambda g, y, x: g * np.sign(x), saves=(0,), domain="nonzero", doc="|x|")


def _pow(x, exponent):
    return np.power(x, x.dtype.type(exponent))


def _pow_forward(a, b=None, exponent=None):
    if b is None:
        return _pow(a, exponent)
    return np.power(a, b)


def _infer_pow(*xs: TensorSpec, exponent=None) -> TensorSpec:
    if len(xs) == 1:
        if exponent is None:
            raise ShapeError("pow with one input needs the attribute 'exponent'")
        return _infer_unary(xs[0])
    if len(xs) == 2:
        if exponent is not None:
            raise ShapeError("pow takes the exponent as the attribute 'exponent' or as a second input, not both")
        return _infer_binary(*xs)
    raise ShapeError(f"pow takes one input (and 'exponent') or two (base, exponent), got {len(xs)}")


def _pow_vjp(g, y, a, b=None, exponent=None):
    if b is None:
        if exponent == 0:
            return (np.zeros(a.shape, g.dtype),)
        return (g * (exponent * _pow(a, exponent - 1)),)
    with np.errstate(divide="ignore", invalid="ignore"):
        # d/da = b a^(b-1), 0 where b == 0 (as PyTorch: no 0 * inf at a == 0);
        # d/db = a^b log a, 0 where a == 0 (the limit for b > 0; PyTorch's choice)
        ga = g * np.where(b == 0, a.dtype.type(0), b * np.power(a, b - 1))
        gb = g * np.where(a == 0, a.dtype.type(0), y * np.log(np.where(a == 0, a.dtype.type(1), a)))
    return ga, gb


def _pow_samples(rng):
    unary = [Sample((DOMAINS["positive"](rng, (3, 4)),), {"exponent": e}) for e in (2.0, 0.5, -1.5)]
    return unary + [Sample((DOMAINS["positive"](rng, sa), DOMAINS["real"](rng, sb))) for sa, sb in BINARY_SHAPES]


register(Op(
    "pow", _pow_forward, _infer_pow, _pow_vjp, _pow_samples, arity=None,
    attrs={"exponent": Attr("float", None)}, saves=None, broadcast=True,
    doc="a ** exponent for a scalar attribute exponent, or a ** b elementwise (broadcasting) for a "
        "second input b; at a == 0 the gradient for b is 0",
))

# ------------------------------------------------------------------ where


def _infer_where(cond: TensorSpec, a: TensorSpec, b: TensorSpec) -> TensorSpec:
    if cond.dtype != DTYPES["bool"]:
        raise ShapeError(f"condition must be a bool tensor, got {cond}")
    require_float(a, b)
    require_same_dtype(a, b)
    return TensorSpec(broadcast_dims(cond.shape, a.shape, b.shape), a.dtype)


def _where_samples(rng):
    return [Sample((rng.uniform(size=sc) > 0.5, rng.normal(size=sa), rng.normal(size=sb)))
            for sc, sa, sb in [((3, 4), (3, 4), (3, 4)), ((3, 4), (4,), (3, 1)), ((4,), (3, 4), ())]]


register(Op(
    "where", np.where, _infer_where,
    (None,
     lambda g, y, c, a, b: np.where(c, g, 0),
     lambda g, y, c, a, b: np.where(c, 0, g)),
    _where_samples, arity=3, saves=(0,), broadcast=True,
    doc="where(condition, a, b): a where condition is true, else b; condition is not differentiated",
))
