"""Sharding is proven, never assumed: every op's batch rule (``Op.batch``) is checked against
its kernel, and the loss's derived decomposition decides how a batch is cut (locally, on a
server and through a raw stub)."""

from __future__ import annotations

import itertools

import grpc
import numpy as np
import pytest

import gradwire as gw
from gradwire.protos import gradwire_pb2 as pb
from gradwire.protos import gradwire_pb2_grpc as pb_grpc
from gradwire.server.driver import Computation
from gradwire.server.store import Registered
from gradwire.worker import batching
from gradwire.worker.batching import FREE, MEAN, SUM, node_batch, rows
from gradwire.worker.codec import graph_to_proto, tensor_chunks
from gradwire.worker.engine import Program
from gradwire.worker.graph import Node
from gradwire.worker.ops import OPS, ShapeError
from gradwire.worker.spec import TensorSpec
from gradwire.worker.validate import GraphError, normalize_attrs

N = 5  # examples in a checked batch, cut unevenly:
SHARDS = [(0, 2), (2, 3), (3, 5)]
C = batching.coupled("")  # equality ignores the reason
R0, R1, R2 = rows(0), rows(1), rows(2)
I64_MAX = 2**63 - 1


# ---------------------------------------------------------------- checking one rule against its kernel


def _point_data(point, spec: TensorSpec, rng, base: np.ndarray | None = None):
    """(whole-batch value, per-shard values) for an input at ``point``. ``base`` (an op sample)
    gives values inside the op's domain; otherwise positive floats, small ints, random bools."""
    if point.kind == "rows":
        if base is not None:
            whole = np.take(base, rng.integers(0, base.shape[point.axis], N), axis=point.axis)
        else:
            whole = _fresh(tuple(N if d is None else d for d in spec.shape), spec.dtype, rng)
        index = [slice(None)] * whole.ndim
        return whole, [whole[tuple(index[:point.axis] + [slice(a, b)])] for a, b in SHARDS]
    value = _fresh(spec.shape, spec.dtype, rng) if base is None else base
    if point.kind == "free":
        return value, [value] * len(SHARDS)
    terms = value[None] * rng.uniform(0.75, 1.25, (N, *value.shape))  # per-example terms, sign kept
    reduce = np.mean if point.kind == "mean" else np.sum
    return reduce(terms, axis=0), [reduce(terms[a:b], axis=0) for a, b in SHARDS]


def _fresh(shape, dtype, rng):
    if dtype == np.bool_:
        return rng.random(shape) > 0.5
    if dtype.kind == "i":
        return rng.integers(0, 3, shape).astype(dtype)
    return rng.uniform(0.5, 1.5, shape).astype(dtype)


def _derive(op_name, points, specs, attrs):
    op = OPS[op_name]
    node = Node("n", op_name, tuple(f"x{i}" for i in range(len(points))), dict(attrs))
    attrs = normalize_attrs(node)
    out = op.infer(*specs, **attrs)
    return node_batch(node, op, tuple(points), tuple(specs), out, attrs), attrs


def _check_claim(op_name, claim, points, specs, attrs, rng, bases=None):
    """Run the kernel on the whole batch and on every shard: the claimed point must hold."""
    if claim.kind == "coupled":
        return
    forward = OPS[op_name].forward
    data = [_point_data(p, s, rng, None if bases is None else bases[i]) for i, (p, s) in enumerate(zip(points, specs))]
    try:
        whole = np.asarray(forward(*[d[0] for d in data], **attrs))
    except (ValueError, IndexError):
        return  # the whole batch itself is refused: no claim to check
    parts = [np.asarray(forward(*[d[1][i] for d in data], **attrs)) for i in range(len(SHARDS))]
    where = f"{op_name}{tuple(points)} {attrs} claims {claim!r}"
    if claim.kind == "rows":
        combined = np.concatenate(parts, axis=claim.axis)
    elif claim.kind == "mean":
        combined = sum((b - a) / N * p for (a, b), p in zip(SHARDS, parts))
    elif claim.kind == "sum":
        combined = sum(parts)
    else:
        for p in parts:
            np.testing.assert_allclose(p, whole, rtol=1e-12, err_msg=where)
        return
    np.testing.assert_allclose(combined, whole, rtol=1e-10, atol=1e-12, err_msg=where)


# ---------------------------------------------------------------- the table: every op, its cases


def _in(point, shape, dtype="float64"):
    return point, TensorSpec(tuple(shape), np.dtype(dtype))


UNARY_CASES = [([_in(R0, (None, 3))], {}, R0), ([_in(R1, (2, None))], {}, R1),
               ([_in(MEAN, (3,))], {}, C), ([_in(SUM, ())], {}, C)]
BROADCAST_CASES = [
    ([_in(R0, (None, 3)), _in(FREE, (3,))], R0),
    ([_in(FREE, (1, 3)), _in(R0, (None, 3))], R0),
    ([_in(R0, (None, 3)), _in(FREE, (4, 3))], C),  # rows paired with a fixed-size axis by position
    ([_in(R0, (None, 3)), _in(R0, (None, 1))], R0),
    ([_in(R0, (None, 3)), _in(R0, (None,))], C),  # (None,) aligns with axis 1: an outer pairing
    ([_in(R0, (None, 1, 3)), _in(FREE, (4, 1))], R0),
    ([_in(FREE, (2, 1)), _in(R1, (2, None))], R1),
    ([_in(FREE, (2, 3)), _in(R1, (2, None))], C),
    ([_in(R0, (None, 3)), _in(R1, (2, None))], C),
]
NONLINEAR_BINARY = [([_in(MEAN, (3,)), _in(FREE, (3,))], C), ([_in(SUM, (3,)), _in(FREE, ())], C),
                    ([_in(MEAN, (3,)), _in(MEAN, (3,))], C), ([_in(R0, (None, 3)), _in(MEAN, (3,))], C)]
LINEAR_CASES = [
    ([_in(MEAN, (3,)), _in(MEAN, (2, 3))], MEAN), ([_in(SUM, ()), _in(SUM, (3,))], SUM),
    ([_in(MEAN, (3,)), _in(FREE, (3,))], MEAN), ([_in(FREE, ()), _in(MEAN, (3,))], MEAN),
    ([_in(SUM, (3,)), _in(FREE, (3,))], C),  # each shard would add the free term once
    ([_in(MEAN, ()), _in(SUM, ())], C), ([_in(MEAN, (3,)), _in(R0, (None, 3))], C),
    ([_in(R0, (None, 3)), _in(SUM, ())], C),
]
SCALING_CASES = [
    ([_in(MEAN, (3,)), _in(FREE, (3,))], MEAN), ([_in(FREE, (2, 3)), _in(MEAN, (3,))], MEAN),
    ([_in(SUM, ()), _in(FREE, (3,))], SUM), ([_in(MEAN, (3,)), _in(MEAN, (3,))], C),
    ([_in(SUM, (3,)), _in(SUM, (3,))], C), ([_in(MEAN, (3,)), _in(R0, (None, 3))], C),
]
DIVIDING_CASES = [
    ([_in(MEAN, (3,)), _in(FREE, (3,))], MEAN), ([_in(SUM, ()), _in(FREE, (3,))], SUM),
    ([_in(FREE, (3,)), _in(MEAN, (3,))], C), ([_in(MEAN, (3,)), _in(MEAN, (3,))], C),
    ([_in(R0, (None, 3)), _in(MEAN, (3,))], C),
]


def _binary(extra):
    return [(ins, {}, out) for ins, out in BROADCAST_CASES + extra]


def _reduce_cases(over_batch):
    """sum/mean (``over_batch`` SUM/MEAN: linear) and max (None: not linear)."""
    batch = over_batch or C
    return [
        ([_in(R0, (None, 3, 4))], {}, batch),
        ([_in(R0, (None, 3, 4))], {"axis": 0}, batch),
        ([_in(R0, (None, 3, 4))], {"axis": [0, 2], "keepdims": True}, batch),
        ([_in(R0, (None, 3, 4))], {"axis": 1}, R0),
        ([_in(R0, (None, 3, 4))], {"axis": -1, "keepdims": True}, R0),
        ([_in(R1, (2, None, 4))], {"axis": 0}, R0),  # the batch axis renumbered
        ([_in(R1, (2, None, 4))], {"axis": 0, "keepdims": True}, R1),
        ([_in(R2, (2, 3, None))], {"axis": [0, 1]}, R0),
        ([_in(MEAN, (3, 4))], {"axis": 0}, MEAN if over_batch else C),
        ([_in(SUM, (3, 4))], {}, SUM if over_batch else C),
    ]


SOFTMAX_CASES = [([_in(R0, (None, 5))], {}, R0), ([_in(R0, (None, 5))], {"axis": 0}, C),
                 ([_in(R1, (3, None))], {}, C), ([_in(R1, (2, None, 4))], {"axis": 0}, R1),
                 ([_in(MEAN, (3, 5))], {}, C)]
PAIR_LOSS_CASES = [
    ([_in(R0, (None, 3)), _in(R0, (None, 3))], {}, MEAN),
    ([_in(R1, (4, None)), _in(R1, (4, None))], {}, MEAN),
    ([_in(R0, (None, 3)), _in(FREE, (5, 3))], {}, C),
    ([_in(R0, (None, 3)), _in(R1, (3, None))], {}, C),
    ([_in(MEAN, (4, 3)), _in(FREE, (4, 3))], {}, C),
]

CASES = {
    **{name: UNARY_CASES for name in ("relu", "sigmoid", "exp", "log", "tanh", "square", "sqrt", "abs")},
    "pow": [(ins, {"exponent": 2.0}, out) for ins, _, out in UNARY_CASES],
    "neg": [([_in(R0, (None, 3))], {}, R0), ([_in(MEAN, (3,))], {}, MEAN), ([_in(SUM, ())], {}, SUM)],
    "add": _binary(LINEAR_CASES), "sub": _binary(LINEAR_CASES),
    "mul": _binary(SCALING_CASES), "div": _binary(DIVIDING_CASES),
    "maximum": _binary(NONLINEAR_BINARY), "minimum": _binary(NONLINEAR_BINARY),
    "where": [
        ([_in(R0, (None, 3), "bool"), _in(FREE, (3,)), _in(FREE, ())], {}, R0),
        ([_in(FREE, (3,), "bool"), _in(R0, (None, 3)), _in(FREE, (3,))], {}, R0),
        ([_in(R0, (None, 3), "bool"), _in(R0, (None, 1)), _in(FREE, (3,))], {}, R0),
        ([_in(FREE, (3,), "bool"), _in(MEAN, (3,)), _in(MEAN, (3,))], {}, C),
    ],
    "sum": _reduce_cases(SUM), "mean": _reduce_cases(MEAN), "max": _reduce_cases(None),
    "softmax": SOFTMAX_CASES, "log_softmax": SOFTMAX_CASES,
    "softmax_cross_entropy": [
        ([_in(R0, (None, 4)), _in(R0, (None,), "int64")], {}, MEAN),
        ([_in(R0, (None, 4)), _in(FREE, (5,), "int64")], {}, C),
        ([_in(FREE, (5, 4)), _in(R0, (None,), "int64")], {}, C),
        ([_in(MEAN, (5, 4)), _in(FREE, (5,), "int64")], {}, C),
    ],
    "mse": PAIR_LOSS_CASES, "binary_cross_entropy_with_logits": PAIR_LOSS_CASES,
    "matmul": [
        ([_in(R0, (None, 4)), _in(FREE, (4, 5))], {}, R0),
        ([_in(FREE, (3, 4)), _in(R1, (4, None))], {}, R1),
        ([_in(R1, (3, None)), _in(FREE, (5, 2))], {}, C),  # contracts over the batch
        ([_in(R1, (4, None)), _in(R0, (None, 5))], {}, C),  # transpose(x) @ y
        ([_in(R0, (None, 4)), _in(R1, (4, None))], {}, C),  # every example with every other
        ([_in(R1, (2, None, 4)), _in(FREE, (4, 5))], {}, R1),
        ([_in(R0, (None, 3, 4)), _in(FREE, (4, 5))], {}, R0),
        ([_in(R0, (None, 3, 4)), _in(R0, (None, 4, 5))], {}, R0),  # one matmul per example
        ([_in(R0, (None, 3, 4)), _in(FREE, (1, 4, 5))], {}, R0),
        ([_in(R0, (None, 3, 4)), _in(FREE, (2, 4, 5))], {}, C),
        ([_in(MEAN, (3, 4)), _in(FREE, (4, 5))], {}, MEAN),
        ([_in(FREE, (3, 4)), _in(SUM, (4, 5))], {}, SUM),
        ([_in(MEAN, (3, 4)), _in(MEAN, (4, 5))], {}, C),
        ([_in(MEAN, (3, 4)), _in(R0, (None, 5))], {}, C),
    ],
    "transpose": [
        ([_in(R0, (None, 3))], {}, R1),
        ([_in(R0, (None, 3, 4))], {"perm": [1, 2, 0]}, R2),
        ([_in(R2, (2, 3, None))], {"perm": [2, 0, 1]}, R0),
        ([_in(MEAN, (2, 3))], {}, MEAN),
    ],
    "reshape": [
        ([_in(R0, (None, 3, 4))], {"shape": [-1, 12]}, R0),
        ([_in(R0, (None, 3, 4))], {"shape": [-1, 4, 3]}, R0),
        ([_in(R0, (None,))], {"shape": [-1, 1]}, R0),
        ([_in(R0, (None, 4))], {"shape": [-1, 2]}, C),  # two rows per example
        ([_in(R0, (None, 4))], {"shape": [-1]}, C),
        ([_in(R0, (None, 4))], {"shape": [2, -1]}, C),
        ([_in(R1, (3, None))], {"shape": [-1, 3]}, C),
        ([_in(SUM, (3, 4))], {"shape": [12]}, SUM),
    ],
    "broadcast_to": [
        ([_in(R0, (None, 1))], {"shape": [5, 3]}, C),
        ([_in(MEAN, (1, 3))], {"shape": [4, 3]}, MEAN),
        ([_in(SUM, (3,))], {"shape": [2, 3]}, SUM),
    ],
    "concat": [
        ([_in(R0, (None, 2)), _in(R0, (None, 3))], {"axis": 1}, R0),
        ([_in(R0, (None, 2)), _in(R0, (None, 2))], {"axis": 0}, C),
        ([_in(R0, (None, 2)), _in(FREE, (4, 2))], {"axis": 0}, C),
        ([_in(R0, (None, 2)), _in(FREE, (5, 3))], {"axis": 1}, C),
        ([_in(R1, (2, None)), _in(R1, (3, None))], {"axis": 0}, R1),
        ([_in(MEAN, (3,)), _in(MEAN, (2,))], {}, MEAN),
        ([_in(MEAN, (3,)), _in(FREE, (2,))], {}, MEAN),
        ([_in(SUM, (3,)), _in(SUM, (2,))], {}, SUM),
        ([_in(SUM, (3,)), _in(FREE, (2,))], {}, C),
        ([_in(MEAN, (2, 3)), _in(R0, (None, 3))], {}, C),
    ],
    "slice": [
        ([_in(R0, (None, 5))], {"starts": [1], "ends": [3], "axes": [1]}, R0),
        ([_in(R0, (None, 5))], {"starts": [1], "ends": [3]}, C),  # axes default to 0: the batch
        ([_in(R0, (None, 5))], {"starts": [0], "ends": [I64_MAX], "axes": [0]}, R0),
        ([_in(R0, (None, 5))], {"starts": [0], "ends": [2**31], "axes": [0]}, C),
        ([_in(R0, (None, 5))], {"starts": [-1], "ends": [-I64_MAX], "axes": [0], "steps": [-1]}, C),
        ([_in(R1, (4, None))], {"starts": [1], "ends": [3], "axes": [0]}, R1),
        ([_in(MEAN, (4, 5))], {"starts": [1], "ends": [3]}, MEAN),
    ],
}


# ---- worker/ops/conv.py, norm.py
R3 = rows(3)
_IMG, _W, _B = (None, 3, 5, 5), (4, 3, 3, 3), (4,)
_POOL = {"kernel": [2, 2]}


def _pool_cases(linear, attrs):
    return [
        ([_in(R0, (None, 2, 5, 5))], attrs, R0),
        ([_in(R1, (2, None, 5, 5))], attrs, R1),  # per channel
        ([_in(R2, (2, 2, None, 5))], attrs, C),
        ([_in(R3, (2, 2, 5, None))], attrs, C),
        ([_in(MEAN, (2, 2, 4, 4))], attrs, MEAN if linear else C),
        ([_in(SUM, (2, 2, 4, 4))], attrs, SUM if linear else C),
    ]


def _norm_vectors(c, k=2):
    return [_in(FREE, (c,)) for _ in range(k)]


CASES.update({
    "conv2d": [
        ([_in(R0, _IMG), _in(FREE, _W), _in(FREE, _B)], {}, R0),
        ([_in(R0, _IMG), _in(FREE, _W)], {"stride": [2, 2], "padding": [1, 1], "dilation": [1, 2]}, R0),
        ([_in(R0, (None, 4, 5, 5)), _in(FREE, (4, 2, 3, 3))], {"groups": 2, "auto_pad": 1}, R0),
        ([_in(R1, (2, None, 5, 5)), _in(FREE, _W)], {}, C),  # sums over channels
        ([_in(R2, (2, 3, None, 5)), _in(FREE, _W)], {}, C),  # windows across rows
        ([_in(MEAN, (2, 3, 5, 5)), _in(FREE, _W), _in(FREE, _B)], {}, MEAN),
        ([_in(SUM, (2, 3, 5, 5)), _in(FREE, _W)], {}, SUM),
        ([_in(SUM, (2, 3, 5, 5)), _in(FREE, _W), _in(FREE, _B)], {}, C),  # the bias once per shard
        ([_in(R0, _IMG), _in(MEAN, _W)], {}, C),
        ([_in(R0, _IMG), _in(R0, (None, 3, 3, 3))], {}, C),
        ([_in(R0, _IMG), _in(FREE, _W), _in(SUM, _B)], {}, C),
    ],
    "conv_transpose2d": [
        ([_in(R0, (None, 3, 3, 3)), _in(FREE, (3, 2, 3, 3)), _in(FREE, (2,))], {}, R0),
        ([_in(R0, (None, 3, 3, 3)), _in(FREE, (3, 2, 2, 2))], {"stride": [2, 2], "output_padding": [1, 0]}, R0),
        ([_in(R1, (2, None, 3, 3)), _in(FREE, (3, 2, 3, 3))], {}, C),
        ([_in(R2, (2, 3, None, 3)), _in(FREE, (3, 2, 3, 3))], {}, C),
        ([_in(MEAN, (2, 3, 3, 3)), _in(FREE, (3, 2, 3, 3)), _in(FREE, (2,))], {}, MEAN),
        ([_in(SUM, (2, 3, 3, 3)), _in(FREE, (3, 2, 3, 3))], {}, SUM),
        ([_in(R0, (None, 3, 3, 3)), _in(SUM, (3, 2, 3, 3))], {}, C),
    ],
    "max_pool2d": _pool_cases(False, _POOL) + _pool_cases(False, {"kernel": [3, 2], "stride": [2, 1], "padding": [1, 1]}),
    "avg_pool2d": _pool_cases(True, _POOL) + _pool_cases(True, {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1]}),
    "global_avg_pool2d": _pool_cases(True, {}),
    "global_max_pool2d": _pool_cases(False, {}),
    "batch_norm": [
        # training mode: statistics over the batch couple every example with every other
        ([_in(R0, (None, 3, 2, 2)), *_norm_vectors(3, 4)], {"training": True}, C),
        ([_in(R0, (None, 3)), *_norm_vectors(3, 4)], {"training": True}, C),
        ([_in(R2, (2, 3, None, 2)), *_norm_vectors(3, 4)], {"training": True}, C),
        ([_in(MEAN, (2, 3)), *_norm_vectors(3, 4)], {"training": True}, C),
        # inference: the running statistics are batch-free, each example on its own
        ([_in(R0, (None, 3, 2, 2)), *_norm_vectors(3, 4)], {}, R0),
        ([_in(R0, (None, 3)), *_norm_vectors(3, 4)], {"training": False, "epsilon": 0.1}, R0),
        ([_in(R1, (2, None)), *_norm_vectors(3, 4)], {}, C),
        ([_in(MEAN, (2, 3)), *_norm_vectors(3, 4)], {}, C),
        ([_in(R0, (None, 3)), _in(FREE, (3,)), _in(FREE, (3,)), _in(MEAN, (3,)), _in(FREE, (3,))], {}, C),
    ],
    "layer_norm": [
        ([_in(R0, (None, 4)), _in(FREE, (4,)), _in(FREE, (4,))], {}, R0),
        ([_in(R0, (None, 3, 4)), _in(FREE, (3, 4)), _in(FREE, (3, 4))], {"axis": 1}, R0),
        ([_in(R1, (2, None, 4)), _in(FREE, (4,)), _in(FREE, (4,))], {}, R1),
        ([_in(R1, (3, None)), _in(FREE, (5,)), _in(FREE, (5,))], {}, C),  # normalizes across examples
        ([_in(R0, (None, 3)), _in(FREE, (2, 3)), _in(FREE, (2, 3))], {"axis": 0}, C),
        ([_in(MEAN, (3, 4)), _in(FREE, (4,)), _in(FREE, (4,))], {}, C),
        ([_in(R0, (None, 4)), _in(MEAN, (4,)), _in(FREE, (4,))], {}, C),
    ],
    "group_norm": [
        ([_in(R0, (None, 4, 3, 2)), *_norm_vectors(4)], {"num_groups": 2}, R0),
        ([_in(R0, (None, 6, 4)), *_norm_vectors(6)], {"num_groups": 3}, R0),
        ([_in(R1, (2, None, 3)), *_norm_vectors(4)], {"num_groups": 2}, C),
        ([_in(MEAN, (2, 4, 3)), *_norm_vectors(4)], {"num_groups": 4}, C),
    ],
    "instance_norm": [
        ([_in(R0, (None, 3, 3, 2)), *_norm_vectors(3)], {}, R0),
        ([_in(R2, (2, 3, None)), *_norm_vectors(3)], {}, C),
        ([_in(MEAN, (2, 3, 4)), *_norm_vectors(3)], {}, C),
    ],
    "dropout": [
        ([_in(R0, (None, 4)), _in(R0, (None,), "int64")], {"seed": 7}, R0),  # keyed by the global row
        ([_in(R0, (None, 3, 2)), _in(R0, (None,), "int32")], {"ratio": 0.25}, R0),
        ([_in(R0, (None, 4))], {}, C),  # keyed by the position in the shard
        ([_in(R0, (None, 4)), _in(FREE, (5,), "int64")], {}, C),
        ([_in(R1, (3, None)), _in(FREE, (3,), "int64")], {}, C),
        ([_in(MEAN, (3,))], {}, C),
        ([_in(R0, (None, 4))], {"training": False}, R0),  # the identity
        ([_in(MEAN, (3,))], {"training": False}, MEAN),
        ([_in(R0, (None, 4))], {"ratio": 0.0}, R0),
    ],
})


# ---- worker/ops/math.py
_COMPARE_CASES = [([_in(R0, (None, 3)), _in(FREE, (3,))], {}, R0), ([_in(FREE, (1, 3)), _in(R0, (None, 3))], {}, R0),
                  ([_in(R0, (None, 3)), _in(FREE, (4, 3))], {}, C), ([_in(R1, (2, None)), _in(R1, (2, None))], {}, R1),
                  ([_in(MEAN, (3,)), _in(FREE, (3,))], {}, C), ([_in(R0, (None, 3)), _in(SUM, ())], {}, C)]
_LOGIC_CASES = [([_in(R0, (None, 3), "bool"), _in(FREE, (3,), "bool")], {}, R0),
                ([_in(R0, (None, 3), "bool"), _in(FREE, (4, 3), "bool")], {}, C),
                ([_in(FREE, (2, 1), "bool"), _in(R1, (2, None), "bool")], {}, R1)]
_ZERO_ONE = (0.0, 1.0)


def _arg_cases():
    return [([_in(R0, (None, 3, 4))], {}, C), ([_in(R0, (None, 3, 4))], {"axis": 1}, R0),
            ([_in(R0, (None, 3, 4))], {"axis": -1, "keepdims": True}, R0), ([_in(R1, (2, None, 4))], {}, R0),
            ([_in(R1, (2, None, 4))], {"axis": 0, "keepdims": True}, R1), ([_in(R1, (2, None, 4))], {"axis": 2}, R1),
            ([_in(R2, (2, 3, None))], {"axis": 1}, R1), ([_in(MEAN, (3, 4))], {"axis": 1}, C)]


CASES.update({
    **{name: _COMPARE_CASES for name in ("equal", "greater", "less", "greater_equal", "less_equal")},
    "logical_and": _LOGIC_CASES, "logical_or": _LOGIC_CASES,
    "logical_not": [([_in(R0, (None, 3), "bool")], {}, R0), ([_in(R1, (2, None), "bool")], {}, R1)],
    **{name: UNARY_CASES for name in ("erf", "softplus", "softsign", "hard_swish", "silu", "log1p", "expm1",
                                      "reciprocal", "sign", "floor", "ceil", "round", "selu")},
    "leaky_relu": [(ins, {"alpha": 0.2}, out) for ins, _, out in UNARY_CASES],
    "elu": [(ins, {"alpha": 0.5}, out) for ins, _, out in UNARY_CASES],
    "gelu": UNARY_CASES + [(ins, {"approximate": "tanh"}, out) for ins, _, out in UNARY_CASES],
    "hard_sigmoid": [(ins, {"alpha": 0.3, "beta": 0.4}, out) for ins, _, out in UNARY_CASES],
    "clip": [(ins, {"min": -0.5, "max": 1.0}, out) for ins, _, out in UNARY_CASES]
            + [([_in(MEAN, (3,))], {}, C)],  # even with no bound: clip is not linear
    "cast": [([_in(R0, (None, 3))], {"to": "float32"}, R0), ([_in(R1, (2, None))], {"to": "int64"}, R1),
             ([_in(R0, (None,), "int64")], {"to": "float64"}, R0), ([_in(MEAN, (3,))], {"to": "float64"}, C)],
    "pow": [(ins, {"exponent": 2.0}, out) for ins, _, out in UNARY_CASES] + _binary(NONLINEAR_BINARY),
    "min": _reduce_cases(None), "prod": _reduce_cases(None), "logsumexp": _reduce_cases(None),
    "reduce_l2": _reduce_cases(None),
    # a sum of |x| over the batch axis is a sum of per-example terms; |mean| is not a mean of |.|
    "reduce_l1": [(ins, attrs, SUM if out == C else out) for ins, attrs, out in _reduce_cases(SUM)[:-2]]
                 + [([_in(MEAN, (3, 4))], {"axis": 0}, C), ([_in(SUM, (3, 4))], {}, C)],
    "argmax": _arg_cases(), "argmin": _arg_cases(),
    "matmul": CASES["matmul"] + [
        ([_in(R0, (None, 4)), _in(FREE, (4,))], {}, R0),  # matrix-vector: one dot per example
        ([_in(FREE, (4,)), _in(R1, (4, None))], {}, R0),
        ([_in(R0, (None,)), _in(FREE, (4,))], {}, C),  # the dot contracts over the batch
        ([_in(R0, (None,)), _in(FREE, (4, 5))], {}, C),
        ([_in(FREE, (3, 4)), _in(R0, (None,))], {}, C),
        ([_in(R0, (None, 3, 4)), _in(FREE, (4,))], {}, R0),
        ([_in(FREE, (4,)), _in(R0, (None, 4, 5))], {}, R0),
        ([_in(R1, (2, None, 4)), _in(FREE, (4,))], {}, R1),
        ([_in(MEAN, (4,)), _in(FREE, (4, 5))], {}, MEAN),
        ([_in(FREE, (4,)), _in(SUM, (4,))], {}, SUM),
    ],
    "gemm": [
        ([_in(R0, (None, 4)), _in(FREE, (4, 5)), _in(FREE, (5,))], {}, R0),
        ([_in(R1, (4, None)), _in(FREE, (4, 5)), _in(FREE, (5,))], {"transA": 1}, R0),
        ([_in(R0, (None, 4)), _in(FREE, (4, 5))], {"transA": 0, "alpha": 2.0}, R0),
        ([_in(R1, (3, None)), _in(FREE, (4, 5))], {}, C),  # contracts over the batch
        ([_in(FREE, (3, 4)), _in(R1, (4, None))], {}, R1),
        ([_in(FREE, (3, 4)), _in(R0, (None, 4))], {"transB": 1}, R1),
        ([_in(R0, (None, 4)), _in(FREE, (4, 5)), _in(FREE, (3, 5))], {}, C),  # C by position
        ([_in(R0, (None, 4)), _in(FREE, (4, 5)), _in(R0, (None, 5))], {"beta": 0.5}, R0),
        ([_in(R0, (None, 4)), _in(FREE, (4, 5)), _in(R0, (None, 1))], {}, R0),
        ([_in(R0, (None, 4)), _in(R1, (4, None))], {}, C),
        ([_in(MEAN, (3, 4)), _in(FREE, (4, 5)), _in(FREE, (5,))], {}, MEAN),
        ([_in(SUM, (3, 4)), _in(FREE, (4, 5))], {}, SUM),
        ([_in(SUM, (3, 4)), _in(FREE, (4, 5)), _in(FREE, (5,))], {}, C),  # C once per shard
        ([_in(FREE, (3, 4)), _in(FREE, (4, 5)), _in(MEAN, (3, 5))], {}, MEAN),
        ([_in(MEAN, (3, 4)), _in(FREE, (4, 5)), _in(MEAN, (5,))], {}, MEAN),
        ([_in(MEAN, (3, 4)), _in(MEAN, (4, 5))], {}, C),
        ([_in(R0, (None, 4)), _in(FREE, (4, 5)), _in(MEAN, (5,))], {}, C),
    ],
    "einsum": [
        ([_in(R0, (None, 4)), _in(FREE, (4, 5))], {"equation": "bi,ij->bj"}, R0),
        ([_in(R0, (None, 4)), _in(FREE, (4, 5))], {"equation": "bi,ij->jb"}, R1),
        ([_in(R0, (None, 4)), _in(FREE, (4,))], {"equation": "bi,i->"}, SUM),  # summed over examples
        ([_in(R0, (None, 4)), _in(R0, (None, 4))], {"equation": "bi,bi->b"}, R0),
        ([_in(R0, (None, 4)), _in(R0, (None, 4))], {"equation": "bi,bi->"}, SUM),
        ([_in(R0, (None, 4)), _in(R0, (None, 3))], {"equation": "bi,bj->bij"}, R0),
        ([_in(R0, (None, 4)), _in(R0, (None, 4))], {"equation": "bi,ci->bc"}, C),  # every pair of examples
        ([_in(R0, (None, 4)), _in(FREE, (5, 4))], {"equation": "bi,bi->b"}, C),  # the batch index on a fixed axis
        ([_in(FREE, (3, 4)), _in(R1, (4, None))], {"equation": "ij,jk"}, R1),
        ([_in(R1, (3, None, 4)), _in(FREE, (4, 5))], {"equation": "abi,ij->bja"}, R0),
        ([_in(MEAN, (3, 4)), _in(FREE, (4, 5))], {"equation": "ij,jk->ik"}, MEAN),
        ([_in(FREE, (3, 4)), _in(SUM, (4,))], {"equation": "ij,j->i"}, SUM),
        ([_in(MEAN, (3, 4)), _in(MEAN, (4,))], {"equation": "ij,j->i"}, C),
        ([_in(MEAN, (3, 4)), _in(R0, (None, 4))], {"equation": "ij,bj->bi"}, C),
    ],
})


# ---- worker/ops/indexing.py
from gradwire.worker.ops.indexing import str_attrs_supported as _str_attrs  # noqa: E402

_I64 = "int64"
_CLASS_LOSS_CASES = [
    ([_in(R0, (None, 4)), _in(R0, (None,), _I64)], {}, MEAN),
    ([_in(R0, (None, 4)), _in(R0, (None,), _I64), _in(FREE, (4,))], {}, C),  # divides by the batch's weights
    ([_in(R0, (None, 4)), _in(R0, (None,), _I64)], {"ignore_index": 1}, C),  # by the batch's counted targets
    ([_in(R0, (None, 3, 2, 2)), _in(R0, (None, 2, 2), _I64)], {}, MEAN),
    ([_in(R2, (2, 3, None, 2)), _in(R1, (2, None, 2), _I64)], {}, MEAN),
    ([_in(R2, (2, 3, None, 2)), _in(R2, (2, 2, None), _I64)], {}, C),
    ([_in(R1, (2, None)), _in(R0, (None,), _I64)], {}, C),  # the batch on the class axis
    ([_in(R0, (None, 4)), _in(R0, (None,), _I64), _in(MEAN, (4,))], {}, C),
    ([_in(R0, (None, 4)), _in(R0, (None,), _I64), _in(R0, (None,))], {}, C),
    ([_in(R0, (None, 4)), _in(FREE, (5,), _I64)], {}, C),
    ([_in(FREE, (5, 4)), _in(R0, (None,), _I64)], {}, C),
]
if _str_attrs():
    _CLASS_LOSS_CASES += [
        ([_in(R0, (None, 4)), _in(R0, (None,), _I64), _in(FREE, (4,))], {"reduction": "sum", "ignore_index": 0}, SUM),
        ([_in(R0, (None, 4)), _in(R0, (None,), _I64)], {"reduction": "sum"}, SUM),
        ([_in(R0, (None, 4)), _in(R0, (None,), _I64), _in(FREE, (4,))], {"reduction": "none", "ignore_index": 2}, R0),
        ([_in(R0, (None, 3, 2, 2)), _in(R0, (None, 2, 2), _I64)], {"reduction": "none"}, R0),
        ([_in(R2, (2, 3, None, 2)), _in(R1, (2, None, 2), _I64), _in(FREE, (3,))], {"reduction": "none"}, R1),
        ([_in(R0, (None, 4)), _in(R0, (None,), _I64), _in(FREE, (4,))], {"reduction": "mean"}, C),
        ([_in(R0, (None, 4)), _in(R0, (None,), _I64), _in(SUM, (4,))], {"reduction": "sum"}, C),
    ]
_PAD_CASES = [
    ([_in(R0, (None, 3))], {"pads": [0, 1, 0, 2]}, R0),
    ([_in(R0, (None, 3))], {"pads": [1, 0, 0, 0]}, C),
    ([_in(R0, (None, 3))], {"pads": [0, 0, 1, 0]}, C),
    ([_in(R1, (2, None, 3))], {"pads": [1, 0, 0, 0, 0, 2], "value": 2.0}, R1),
    ([_in(MEAN, (2, 3))], {"pads": [1, 1, 1, 1], "value": 3.0}, MEAN),  # a constant is its own mean
    ([_in(SUM, (2, 3))], {"pads": [1, 1, 1, 1]}, SUM),
    ([_in(SUM, (2, 3))], {"pads": [1, 1, 1, 1], "value": 1.0}, C),  # each shard would add it once
]
if _str_attrs():
    _PAD_CASES += [
        ([_in(R0, (None, 3))], {"pads": [0, 2, 0, 1], "mode": "reflect"}, R0),
        ([_in(R0, (None, 3))], {"pads": [1, 0, 0, 0], "mode": "edge"}, C),
        ([_in(SUM, (2, 3))], {"pads": [1, 1, 1, 1], "mode": "edge"}, SUM),
        ([_in(MEAN, (3, 3))], {"pads": [2, 0, 1, 2], "mode": "reflect"}, MEAN),
    ]

CASES.update({
    "gather": [
        ([_in(FREE, (5, 3)), _in(R0, (None,), _I64)], {}, R0),  # a lookup per example
        ([_in(FREE, (5, 3)), _in(R0, (None, 2), _I64)], {}, R0),
        ([_in(FREE, (3, 5)), _in(R0, (None,), _I64)], {"axis": 1}, R1),
        ([_in(FREE, (3, 5)), _in(R1, (2, None), _I64)], {"axis": -1}, R2),
        ([_in(R0, (None, 4)), _in(FREE, (2,), _I64)], {"axis": 1}, R0),
        ([_in(R1, (3, None, 4)), _in(FREE, (2, 2), _I64)], {"axis": 2}, R1),
        ([_in(R1, (3, None, 4)), _in(FREE, (2, 2), _I64)], {"axis": 0}, R2),
        ([_in(R2, (3, 2, None)), _in(FREE, (), _I64)], {"axis": 0}, R1),
        ([_in(R0, (None, 4)), _in(FREE, (2,), _I64)], {}, C),  # picks examples by position
        ([_in(R0, (None, 4)), _in(R0, (None,), _I64)], {"axis": 1}, C),
        ([_in(MEAN, (5, 3)), _in(FREE, (4,), _I64)], {}, MEAN),
        ([_in(SUM, (5, 3)), _in(FREE, (4,), _I64)], {"axis": 1}, SUM),
        ([_in(MEAN, (5, 3)), _in(R0, (None,), _I64)], {}, C),
    ],
    "embedding": [
        ([_in(FREE, (5, 3)), _in(R0, (None,), _I64)], {}, R0),
        ([_in(FREE, (5, 3)), _in(R0, (None, 4), _I64)], {}, R0),
        ([_in(FREE, (5, 3)), _in(R1, (2, None), _I64)], {}, R1),
        ([_in(R0, (None, 3)), _in(FREE, (4,), _I64)], {}, C),
        ([_in(R1, (5, None)), _in(FREE, (2, 4), _I64)], {}, R2),
        ([_in(SUM, (5, 3)), _in(FREE, (4,), _I64)], {}, SUM),
        ([_in(MEAN, (5, 3)), _in(R0, (None,), _I64)], {}, C),
    ],
    "gather_elements": [
        ([_in(FREE, (3, 4)), _in(R0, (None, 4), _I64)], {}, R0),
        ([_in(FREE, (3, 4)), _in(R0, (None, 4), _I64)], {"axis": 1}, C),  # row i reads the table's row i
        ([_in(R0, (None, 4)), _in(R0, (None, 2), _I64)], {"axis": 1}, R0),
        ([_in(R0, (None, 4)), _in(R0, (None, 4), _I64)], {}, C),
        ([_in(R0, (None, 4)), _in(FREE, (2, 4), _I64)], {"axis": 1}, C),
        ([_in(MEAN, (3, 4)), _in(FREE, (2, 4), _I64)], {}, MEAN),
        ([_in(SUM, (3, 4)), _in(R0, (None, 4), _I64)], {}, C),
    ],
    "one_hot": [
        ([_in(R0, (None,), _I64)], {"depth": 3}, R0),
        ([_in(R0, (None, 2), _I64), _in(FREE, (2,))], {"depth": 4}, R0),
        ([_in(R0, (None, 2), _I64)], {"depth": 4, "axis": 0}, R1),
        ([_in(R1, (2, None), _I64)], {"depth": 4, "axis": 1}, R2),
        ([_in(FREE, (3,), _I64), _in(MEAN, (2,))], {"depth": 3}, MEAN),
        ([_in(FREE, (3,), _I64), _in(SUM, (2,))], {"depth": 3}, SUM),
        ([_in(R0, (None,), _I64), _in(MEAN, (2,))], {"depth": 3}, C),
        ([_in(R0, (None,), _I64), _in(R0, (None,))], {"depth": 3}, C),
    ],
    "flatten": [
        ([_in(R0, (None, 3, 4))], {}, R0),
        ([_in(R0, (None, 1, 4))], {"axis": 2}, R0),
        ([_in(R0, (None, 3, 4))], {"axis": 2}, C),
        ([_in(R0, (None, 3))], {"axis": 0}, C),
        ([_in(R1, (2, None, 4))], {}, C),
        ([_in(MEAN, (2, 3, 4))], {"axis": 2}, MEAN),
    ],
    "squeeze": [
        ([_in(R0, (None, 1, 3))], {"axes": [1]}, R0),
        ([_in(R1, (1, None, 1))], {"axes": [0, 2]}, R0),
        ([_in(R1, (2, None, 1))], {"axes": -1}, R1),
        ([_in(R0, (None, 3))], {"axes": 0}, C),
        ([_in(SUM, (1, 3))], {"axes": 0}, SUM),
        ([_in(MEAN, (3, 1))], {}, MEAN),
    ],
    "unsqueeze": [
        ([_in(R0, (None, 3))], {"axes": [0]}, R1),
        ([_in(R0, (None, 3))], {"axes": [1, -1]}, R0),
        ([_in(R1, (2, None))], {"axes": [0, 3]}, R2),
        ([_in(MEAN, (3,))], {"axes": 0}, MEAN),
    ],
    "pad": _PAD_CASES,
    "split": [
        ([_in(R0, (None, 6))], {"index": 1, "axis": 1, "split": [2, 4]}, R0),
        ([_in(R0, (None, 6))], {"index": 0, "split": [2, 3]}, C),
        ([_in(R1, (4, None))], {"index": 1, "num_outputs": 2}, R1),
        ([_in(MEAN, (4, 6))], {"index": 2, "axis": 1, "num_outputs": 3}, MEAN),
        ([_in(SUM, (4, 6))], {"index": 0, "split": [1, 3]}, SUM),
    ],
    "tile": [
        ([_in(R0, (None, 3))], {"repeats": [1, 2]}, R0),
        ([_in(R0, (None, 3))], {"repeats": [2, 1]}, C),
        ([_in(R1, (2, None))], {"repeats": [3, 1]}, R1),
        ([_in(SUM, (2, 3))], {"repeats": [2, 2]}, SUM),
    ],
    "expand": [
        ([_in(R0, (None, 1))], {"shape": [1, 4]}, R0),
        ([_in(R0, (None, 1))], {"shape": [2, 1, 4]}, R1),
        ([_in(R0, (None, 3))], {"shape": [3]}, R0),
        ([_in(R0, (None, 1))], {"shape": [5, 4]}, C),
        ([_in(MEAN, (3, 1))], {"shape": [2, 3, 4]}, MEAN),
    ],
    "nll_loss": _CLASS_LOSS_CASES + [
        ([_in(MEAN, (5, 4)), _in(FREE, (5,), _I64)], {"ignore_index": 0}, MEAN),  # linear in the scores
        ([_in(SUM, (5, 4)), _in(FREE, (5,), _I64), _in(FREE, (4,))], {}, SUM),
        ([_in(MEAN, (5, 4)), _in(R0, (None,), _I64)], {}, C),
    ],
    "softmax_cross_entropy": CASES["softmax_cross_entropy"] + _CLASS_LOSS_CASES,
})


def test_every_op_has_batch_cases():
    """A new op fails here until its batch rule has cases (and, through the sweep below, is
    checked against its kernel): the default rule is only right for elementwise ops."""
    missing = sorted(set(OPS) - set(CASES))
    assert not missing, f"ops without batch-rule cases in tests/test_batching.py: {missing}"
    assert not set(CASES) - set(OPS)


def test_the_default_rule_is_only_used_by_elementwise_ops(op_samples, op_attrs):
    """An op left with ``batching.elementwise`` must be shaped like one: its output is its
    inputs broadcast together, on every sample."""
    from gradwire.worker.ops.registry import broadcast_dims

    for name, op in OPS.items():
        if op.batch is not batching.elementwise:
            continue
        for sample in op_samples(name):
            specs = [TensorSpec.of(np.asarray(x)) for x in sample.inputs]
            out = op.infer(*specs, **op_attrs(op, sample))
            assert out.shape == broadcast_dims(*(s.shape for s in specs)), \
                f"op {name!r} keeps the default (elementwise) batch rule but is not elementwise"


_TABLE = [(name, i, case) for name, cases in CASES.items() for i, case in enumerate(cases)]


@pytest.mark.parametrize("name,index,case", _TABLE, ids=[f"{n}-{i}" for n, i, _ in _TABLE])
def test_batch_rule(name, index, case, rng):
    inputs, attrs, expected = case
    points, specs = [p for p, _ in inputs], [s for _, s in inputs]
    claim, attrs = _derive(name, points, specs, attrs)
    assert claim == expected, f"{name}{tuple(points)} {attrs}: got {claim!r}, want {expected!r}"
    if claim.kind == "coupled":
        assert claim.why.startswith("node 'n' (op ") and len(claim.why) > 30
    _check_claim(name, claim, points, specs, attrs, rng)


def _points_for(x: np.ndarray):
    out = [FREE] + [rows(k) for k in range(x.ndim) if x.shape[k]]
    return out + [MEAN, SUM] if x.dtype.kind == "f" else out


@pytest.mark.parametrize("name", sorted(OPS))
def test_batch_rule_holds_on_every_sample(name, op_samples, op_attrs, rng):
    """Every mix of points on the op's own samples: whatever the rule claims, the kernel on the
    shards must combine to the kernel on the whole batch."""
    op = OPS[name]
    for sample in op_samples(name):
        xs = [np.asarray(x) for x in sample.inputs]
        attrs = op_attrs(op, sample)
        for points in itertools.product(*[_points_for(x) for x in xs]):
            specs = [TensorSpec(tuple(None if p.kind == "rows" and k == p.axis else d for k, d in enumerate(x.shape)),
                                x.dtype) for p, x in zip(points, xs)]
            try:
                claim, _ = _derive(name, points, specs, sample.attrs)
            except ShapeError:
                continue
            _check_claim(name, claim, points, specs, attrs, rng, bases=xs)


# ---------------------------------------------------------------- the loss's decomposition, locally

F64 = "float64"


def _sum_graph(reduction: str) -> gw.Graph:
    """A loss that sums over the batch: 1 shard and 2 shards differed by 2x under "mean"."""
    g = gw.Graph()
    x, w, b = g.input("x", (None, 3), F64), g.param("w", (3,), F64), g.param("b", (3,), F64)
    g.set_loss(gw.sum(gw.sigmoid(gw.relu(x * w + b)), name="loss"), batch_reduction=reduction)
    return g


def _data(rng, n=37):
    return {"w": rng.normal(size=3), "b": rng.normal(size=3)}, {"x": rng.normal(size=(n, 3))}


def test_a_sum_loss_declared_mean_is_refused(rng):
    params, batch = _data(rng)
    with pytest.raises(GraphError) as err:
        gw.local(shards=2).value_and_grad(_sum_graph("mean"), params, batch)
    message = str(err.value)
    for fragment in ("sum over the batch", "node 'loss'", "op 'sum'", "batch_reduction='mean'", "declare 'sum'"):
        assert fragment in message, message


def test_a_mean_loss_declared_sum_is_refused():
    g = gw.Graph()
    x, y, w = g.input("x", (None, 3)), g.input("y", (None, 2)), g.param("w", (3, 2))
    g.set_loss(gw.mse(x @ w, y, name="fit"), batch_reduction="sum")
    with pytest.raises(GraphError, match=r"mean over the batch \(node 'fit', op 'mse'\).*declare 'mean'"):
        Program(g.graph_def)


def test_a_sum_loss_declared_sum_shards_exactly(rng):
    params, batch = _data(rng)
    program = Program(_sum_graph("sum").graph_def)
    assert program.loss_batching.reduction == "sum"
    assert "node 'loss', op 'sum'" in program.loss_batching.reason
    whole = gw.local().run(_sum_graph("sum"), params, batch)
    h = np.maximum(batch["x"] * params["w"] + params["b"], 0)
    assert whole.loss == pytest.approx(float((1 / (1 + np.exp(-h))).sum()), rel=1e-12)
    for shards in (1, 8):
        loss, grads = gw.local(shards=shards).value_and_grad(_sum_graph("sum"), params, batch)
        np.testing.assert_allclose(loss, whole.loss, rtol=1e-12)
        for name in params:
            np.testing.assert_allclose(grads[name], whole.grads[name], rtol=1e-12, atol=1e-14)


def _coupled_graphs():
    """Losses that couple examples: a softmax across the batch, a batch statistic inside a
    mean, the worst example. Each names the node where the coupling happens."""
    def softmax_over_batch(g, x, w):
        g.set_loss(gw.mean(gw.square(gw.softmax(x @ w, axis=0, name="across"))))
        return "node 'across' (op 'softmax') normalizes along the batch axis"

    def centered(g, x, w):
        h = x @ w
        g.set_loss(gw.mean(gw.square(gw.sub(h, gw.mean(h, axis=0, name="mu"), name="centered"))))
        return "node 'centered' (op 'sub') mixes a mean or sum over the batch with per-example rows"

    def worst(g, x, w):
        g.set_loss(gw.max(gw.sum(gw.square(x @ w), axis=1), name="worst"))
        return "node 'worst' (op 'max') takes a max over the batch axis"

    return {"softmax-over-batch": softmax_over_batch, "batch-statistic": centered, "max-over-batch": worst}


def _coupled(kind: str):
    g = gw.Graph()
    x, w = g.input("x", (None, 4), F64), g.param("w", (4, 3), F64)
    says = _coupled_graphs()[kind](g, x, w)
    return g, says


@pytest.mark.parametrize("kind", sorted(_coupled_graphs()))
def test_a_coupled_loss_runs_unsharded(kind, rng):
    g, says = _coupled(kind)
    lb = Program(g.graph_def).loss_batching
    assert lb.reduction is None
    assert lb.reason.startswith("the loss couples examples: ") and says in lb.reason, lb.reason
    params, batch = {"w": rng.normal(size=(4, 3))}, {"x": rng.normal(size=(37, 4))}
    loss, grads = gw.local().value_and_grad(g, params, batch)
    loss8, grads8 = gw.local(shards=8).value_and_grad(g, params, batch)
    assert loss8 == loss and np.array_equal(grads8["w"], grads["w"])  # bitwise: the very same run


def test_a_coupled_loss_accepts_either_declaration():
    g, _ = _coupled("batch-statistic")
    g.set_loss(g[g.graph_def.loss], batch_reduction="sum")
    assert Program(g.graph_def).loss_batching.reduction is None


def test_the_reason_names_where_a_batch_mean_came_from():
    g, _ = _coupled("batch-statistic")
    reason = Program(g.graph_def).loss_batching.reason
    assert "'mu' a mean over the batch from node 'mu', op 'mean'" in reason, reason
    assert "'matmul" in reason and "per-example rows along axis 0" in reason, reason


def test_a_batch_free_loss_runs_unsharded():
    g = gw.Graph()
    x, w = g.input("x", (4, 3), F64), g.param("w", (3,), F64)  # a known leading dim: passed whole
    g.set_loss(gw.sum(gw.square(x * w)), batch_reduction="sum")
    lb = Program(g.graph_def).loss_batching
    assert (lb.reduction, lb.reason) == (None, "the loss does not depend on the batch")
    assert lb.summary == "unsharded: the loss does not depend on the batch"


def test_a_mean_loss_with_a_batch_free_term_shards(rng):
    """mean_b f_b + R(params) = mean_b (f_b + R): weights n_i/N combine it exactly."""
    g = gw.Graph()
    x, y, w = g.input("x", (None, 3), F64), g.input("y", (None,), "int64"), g.param("w", (3, 4), F64)
    g.set_loss(gw.softmax_cross_entropy(x @ w, y) + 0.1 * gw.sum(w * w))
    lb = Program(g.graph_def).loss_batching
    assert lb.reduction == "mean" and "op 'softmax_cross_entropy'" in lb.reason
    assert lb.summary.startswith("sharded: ") and lb.summary.endswith("n_i/N")
    params, batch = {"w": rng.normal(size=(3, 4))}, {"x": rng.normal(size=(37, 3)), "y": rng.integers(0, 4, 37)}
    loss, grads = gw.local().value_and_grad(g, params, batch)
    loss8, grads8 = gw.local(shards=8).value_and_grad(g, params, batch)
    np.testing.assert_allclose(loss8, loss, rtol=1e-12)
    np.testing.assert_allclose(grads8["w"], grads["w"], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- the plan a server's backend runs


def _job(graph: gw.Graph, batch, shards=8) -> Computation:
    return Computation(Registered("g-test", Program(graph.graph_def), b""), {}, "k", batch, None, (), shards)


def test_job_plan_follows_the_derived_reduction(rng):
    x = {"x": rng.normal(size=(37, 3))}
    mean = gw.Graph()
    mean.set_loss(gw.mean(gw.square(mean.input("x", (None, 3), F64))))
    plan = _job(mean, x).plan()
    assert len(plan) == 8 and sum(s.weight for s in plan) == pytest.approx(1.0)
    assert _job(mean, x).sharding.startswith("sharded: the loss is a mean over the batch")
    assert {s.weight for s in _job(_sum_graph("sum"), x).plan()} == {1.0}
    coupled, _ = _coupled("max-over-batch")
    job = _job(coupled, {"x": rng.normal(size=(37, 4))})
    assert [(s.start, s.stop, s.weight, s.whole) for s in job.plan()] == [(0, 37, 1.0, False)]
    assert job.sharding.startswith("unsharded: the loss couples examples: node 'worst' (op 'max')")
    assert job.rows(job.plan())["x"].shape == (37, 4)


# ---------------------------------------------------------------- remote: the same facts through a server


@pytest.fixture(scope="module")
def address(start_server):
    _, address = start_server(shards=8)
    return address


def test_remote_refuses_a_mis_declared_sum(address, rng):
    params, batch = _data(rng)
    with gw.connect(address) as client, pytest.raises(gw.InvalidGraph) as err:
        client.value_and_grad(_sum_graph("mean"), params, batch)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "node 'loss'" in str(err.value) and "declare 'sum'" in str(err.value)


def test_remote_shards_a_sum_and_runs_a_coupled_loss_whole(address, rng):
    params, batch = _data(rng)
    with gw.connect(address) as client:
        loss, grads, info = client.value_and_grad(_sum_graph("sum"), params, batch, return_info=True)
        assert info["shard_count"] == 8
        local_loss, local_grads = gw.local(shards=8).value_and_grad(_sum_graph("sum"), params, batch)
        np.testing.assert_allclose(loss, local_loss, rtol=1e-12)
        np.testing.assert_allclose(grads["w"], local_grads["w"], rtol=1e-12)
        if "sharding" in info:
            assert info["sharding"].startswith("sharded: the loss is a sum over the batch")
        for kind in sorted(_coupled_graphs()):
            g, says = _coupled(kind)
            p, b = {"w": rng.normal(size=(4, 3))}, {"x": rng.normal(size=(37, 4))}
            loss, grads, info = client.value_and_grad(g, p, b, return_info=True)
            assert info["shard_count"] == 1, kind
            if "sharding" in info:
                assert info["sharding"].startswith("unsharded: ") and says in info["sharding"]
            local_loss, local_grads = gw.local().value_and_grad(g, p, b)
            assert loss == local_loss and np.array_equal(grads["w"], local_grads["w"]), kind


def _whole(name, array) -> pb.TensorChunk:
    return next(tensor_chunks(name, np.asarray(array), 1 << 30))


@pytest.mark.parametrize("method", ["Compute", "ValueAndGrad", "RegisterGraph"])
def test_raw_request_with_a_mis_declared_sum_is_invalid_argument(address, method, rng):
    params, batch = _data(rng, n=4)
    graph = graph_to_proto(_sum_graph("mean").graph_def)
    request = pb.ComputeRequest(header=pb.ComputeHeader(graph=graph),
                                params=[_whole(k, v) for k, v in params.items()],
                                batch=[_whole(k, v) for k, v in batch.items()])
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GradwireStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            if method == "Compute":
                stub.Compute(request, timeout=30)
            elif method == "ValueAndGrad":
                list(stub.ValueAndGrad(iter([request]), timeout=30))
            else:
                stub.RegisterGraph(pb.RegisterGraphRequest(graph=graph), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    for fragment in ("sum over the batch (node 'loss', op 'sum')", "batch_reduction='mean'", "declare 'sum'"):
        assert fragment in details, details


def test_a_fetched_value_that_couples_examples_keeps_the_batch_whole(start_server):
    """x @ x.T mixes every pair of examples: fetched from a sharded request it would come back
    as the shards' diagonal blocks (or fail to concatenate): the request runs whole instead."""
    g = gw.Graph()
    x = g.input("x", (None, 3))
    w = g.param("w", (3,))
    t = gw.matmul(x, gw.transpose(x))
    g.set_loss(gw.sum(x * w), batch_reduction="sum")
    rng = np.random.default_rng(0)
    params, batch = {"w": rng.standard_normal(3).astype(np.float32)}, {"x": rng.standard_normal((5, 3)).astype(np.float32)}
    want = batch["x"] @ batch["x"].T
    local = gw.local(shards=2).run(g, params, batch, fetch=(t.name,))
    np.testing.assert_allclose(local.outputs[t.name], want, rtol=1e-5)
    _, address = start_server(shards=2)
    with gw.connect(address) as client:
        remote = client.run(g, params, batch, fetch=(t.name,))
    np.testing.assert_allclose(remote.outputs[t.name], want, rtol=1e-5)
    assert remote.info["shard_count"] == 1 and "fetched value" in remote.info["sharding"]
    # per-example fetches still shard
    with gw.connect(address) as client:
        per_example = client.run(g, params, batch, fetch=((x * w).name,))
    assert per_example.info["shard_count"] == 2
