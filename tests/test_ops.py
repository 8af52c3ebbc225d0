"""Registry-driven checks: every op in ``OPS`` is tested through its own ``samples``.

A new op gets gradient, shape-rule, dtype, ``saves`` and purity checks for free; an op
without samples fails ``test_every_op_has_samples``.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from gradwire.worker.ops import OPS, Op, Sample, unbroadcast
from gradwire.worker.spec import TensorSpec

EPS = 1e-6
RTOL = 1e-6
N_DIRECTIONS = 3


def _samples(name: str) -> list[Sample]:
    op = OPS[name]
    if op.samples is None:
        return []
    return list(op.samples(np.random.default_rng(zlib.crc32(name.encode()))))


# One case per (op, sample); an op without samples contributes none here and fails
# test_every_op_has_samples below instead.
CASES = [pytest.param(name, k, id=f"{name}-{k}") for name in sorted(OPS) for k in range(len(_samples(name)))]
OP_NAMES = sorted(OPS)


@pytest.fixture
def case(request, op_attrs, diff_mask):
    """(op, xs, attrs, y, needs) for the parametrized (name, k)."""
    name, k = request.param
    op = OPS[name]
    sample = _samples(name)[k]
    xs = [np.asarray(x) for x in sample.inputs]
    attrs = op_attrs(op, sample)
    y = np.asarray(op.forward(*xs, **attrs))
    return op, xs, attrs, y, diff_mask(op, xs)


def _indirect(cases):
    return pytest.mark.parametrize("case", [pytest.param(p.values, id=p.id) for p in cases], indirect=True)


def _ops_without_samples(ops: dict[str, Op]) -> list[str]:
    bad = []
    for name, op in ops.items():
        if op.samples is None or not list(op.samples(np.random.default_rng(0))):
            bad.append(name)
    return bad


# ------------------------------------------------------------------ table-level contract


def test_every_op_has_samples():
    assert _ops_without_samples(OPS) == []


def test_sample_check_rejects_an_op_without_samples():
    # the check itself must catch both ways of not having samples
    fake = {"tanh": OPS["tanh"]}
    fake["nosamples"] = Op("nosamples", np.negative, lambda x: x, (lambda g, y, x: -g,), None)
    fake["emptysamples"] = Op("emptysamples", np.negative, lambda x: x, (lambda g, y, x: -g,), lambda rng: [])
    assert _ops_without_samples(fake) == ["nosamples", "emptysamples"]


def test_cases_cover_every_op():
    assert {p.values[0] for p in CASES} == set(OPS)


@pytest.mark.parametrize("name", OP_NAMES)
def test_samples_are_float64_and_some_input_is_differentiable(name, diff_mask):
    op = OPS[name]
    for sample in _samples(name):
        xs = [np.asarray(x) for x in sample.inputs]
        assert op.arity is None or len(xs) == op.arity
        for x in xs:
            assert x.dtype in (np.float64, np.int64, np.int32, np.bool_), x.dtype
        assert set(sample.attrs) <= set(op.attrs)
        if not any(op.differentiable(len(xs))):
            continue  # comparisons, logic, argmax: nothing to differentiate (any input dtype)
        assert any(x.dtype == np.float64 for x in xs)
        assert any(diff_mask(op, xs)), f"{name}: no differentiable input in a sample"


@pytest.mark.parametrize("name", [n for n in OP_NAMES if OPS[n].broadcast and OPS[n].arity == 2])
def test_binary_broadcast_ops_sample_differing_shapes(name):
    shapes = [tuple(np.shape(x) for x in s.inputs) for s in _samples(name)]
    assert any(a != b for a, b in shapes), f"{name}: every sample has equal input shapes {shapes}"


def test_broadcast_binary_ops_exist():
    # the test above is vacuous if the table had none
    assert {"add", "mul", "sub", "div"} <= {n for n, op in OPS.items() if op.broadcast and op.arity == 2}


# ------------------------------------------------------------------ per-sample checks


def _dot(a, b) -> float:
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


@_indirect(CASES)
def test_gradient_matches_central_differences(case):
    op, xs, attrs, y, needs = case
    rng = np.random.default_rng(7)

    def f(direction, t):
        moved = [x if v is None else x + t * v for x, v in zip(xs, direction)]
        return _dot(g, op.forward(*moved, **attrs))

    for _ in range(N_DIRECTIONS):
        g = rng.normal(size=y.shape)
        grads = op.input_grads(needs, g, y, xs, attrs)
        assert len(grads) == len(xs)
        for i, (gr, need, x) in enumerate(zip(grads, needs, xs)):
            if not need:
                assert gr is None, f"{op.name}: gradient returned for undifferentiated input {i}"
                continue
            gr = np.asarray(gr)
            assert gr.shape == x.shape, f"{op.name}: grad {i} shape {gr.shape} != input shape {x.shape}"
            assert gr.dtype == x.dtype
        # one direction per differentiable input, then all of them at once
        directions = [[rng.normal(size=x.shape) if j == i else None for j, x in enumerate(xs)]
                      for i in range(len(xs)) if needs[i]]
        directions.append([rng.normal(size=x.shape) if need else None for x, need in zip(xs, needs)])
        for direction in directions:
            analytic = sum(_dot(gr, v) for gr, v in zip(grads, direction) if v is not None)
            numeric = (f(direction, EPS) - f(direction, -EPS)) / (2 * EPS)
            assert abs(analytic - numeric) <= RTOL * max(1.0, abs(numeric)), (
                f"{op.name} attrs={attrs}: <vjp(g), v> = {analytic!r}, finite differences {numeric!r}")


@_indirect(CASES)
def test_shape_rule_matches_forward(case):
    op, xs, attrs, y, _ = case
    spec = op.infer(*[TensorSpec.of(x) for x in xs], **attrs)
    assert spec == TensorSpec.of(y), f"{op.name}: infer says {spec}, forward gave {TensorSpec.of(y)}"


@_indirect(CASES)
def test_shape_rule_with_unknown_batch_dim_is_compatible(case):
    op, xs, attrs, y, _ = case
    specs = [TensorSpec((None,) + x.shape[1:] if x.ndim else (), x.dtype) for x in xs]
    spec = op.infer(*specs, **attrs)
    assert spec.dtype == y.dtype and len(spec.shape) == y.ndim
    assert all(d is None or d == e for d, e in zip(spec.shape, y.shape)), (spec, y.shape)


@_indirect(CASES)
def test_float32_in_float32_out(case):
    op, xs, attrs, y64, needs = case
    xs32 = [x.astype(np.float32) if x.dtype == np.float64 else x for x in xs]
    y = np.asarray(op.forward(*xs32, **attrs))
    # a float64 result comes back float32; another dtype (bool, int64, a cast's target) stays
    want = np.dtype(attrs["to"]) if "to" in attrs else np.float32 if y64.dtype == np.float64 else y64.dtype
    assert y.dtype == want, f"{op.name}: float32 inputs gave {y.dtype}"
    assert op.infer(*[TensorSpec.of(x) for x in xs32], **attrs) == TensorSpec.of(y)
    np.testing.assert_allclose(y, y64, rtol=1e-4, atol=1e-5)
    g64 = np.random.default_rng(3).normal(size=y.shape)
    grads = op.input_grads(needs, g64.astype(np.float32), y, xs32, attrs)
    grads64 = op.input_grads(needs, g64, y64, xs, attrs)
    for i, (gr, gr64) in enumerate(zip(grads, grads64)):
        if gr is None:
            continue
        gr = np.asarray(gr)
        assert gr.dtype == np.float32, f"{op.name}: float32 gradient {i} came back as {gr.dtype}"
        assert gr.shape == xs[i].shape
        np.testing.assert_allclose(gr, gr64, rtol=1e-3, atol=1e-4)


@_indirect(CASES)
def test_vjp_reads_only_what_the_op_saves(case):
    """The engine hands a vjp zero-strided placeholders for values outside ``saves``."""
    op, xs, attrs, y, needs = case
    if op.saves is None:
        pytest.skip("saves everything")
    g = np.random.default_rng(5).normal(size=y.shape)
    expected = op.input_grads(needs, g, y, xs, attrs)

    def placeholder(a):
        return np.broadcast_to(np.zeros((), a.dtype), a.shape)

    y_ph = y if "y" in op.saves else placeholder(y)
    xs_ph = [x if i in op.saves else placeholder(x) for i, x in enumerate(xs)]
    got = op.input_grads(needs, g, y_ph, xs_ph, attrs)
    for e, r in zip(expected, got):
        if e is None:
            assert r is None
        else:
            np.testing.assert_array_equal(r, e, err_msg=f"{op.name} reads a value it does not save")


@_indirect(CASES)
def test_kernels_do_not_mutate_their_arguments(case):
    # the engine passes one gradient array to several vjps (add sends g to both inputs)
    op, xs, attrs, y, needs = case
    g = np.random.default_rng(11).normal(size=y.shape)
    before = [x.copy() for x in xs], y.copy(), g.copy()
    op.forward(*xs, **attrs)
    op.input_grads(needs, g, y, xs, attrs)
    for x, x0 in zip(xs, before[0]):
        np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, before[1])
    np.testing.assert_array_equal(g, before[2])


@_indirect(CASES)
def test_vjp_is_linear_in_g(case):
    op, xs, attrs, y, needs = case
    rng = np.random.default_rng(13)
    g1, g2 = rng.normal(size=y.shape), rng.normal(size=y.shape)
    a = op.input_grads(needs, g1, y, xs, attrs)
    b = op.input_grads(needs, g2, y, xs, attrs)
    c = op.input_grads(needs, 2.0 * g1 - 3.0 * g2, y, xs, attrs)
    for ga, gb, gc in zip(a, b, c):
        if ga is not None:
            np.testing.assert_allclose(gc, 2.0 * np.asarray(ga) - 3.0 * np.asarray(gb), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", OP_NAMES)
def test_partial_needs_leave_other_inputs_none(name, op_attrs, diff_mask):
    op = OPS[name]
    sample = _samples(name)[0]
    xs = [np.asarray(x) for x in sample.inputs]
    attrs = op_attrs(op, sample)
    y = np.asarray(op.forward(*xs, **attrs))
    full = diff_mask(op, xs)
    g = np.ones(y.shape)
    all_grads = op.input_grads(full, g, y, xs, attrs)
    for i in range(len(xs)):
        needs = [j == i and full[j] for j in range(len(xs))]
        grads = op.input_grads(needs, g, y, xs, attrs)
        for j, gr in enumerate(grads):
            if needs[j]:
                np.testing.assert_array_equal(gr, all_grads[j])
            else:
                assert gr is None


# ------------------------------------------------------------------ the seed's rules, closed form


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1))])
def test_seed_add_and_mul_rules(shapes, rng):
    a, b = rng.normal(size=shapes[0]), rng.normal(size=shapes[1])
    y_add, y_mul = a + b, a * b
    g = rng.normal(size=y_add.shape)
    ga, gb = OPS["add"].input_grads([True, True], g, y_add, [a, b], {})
    np.testing.assert_array_equal(ga, unbroadcast(g, a.shape))
    np.testing.assert_array_equal(gb, unbroadcast(g, b.shape))
    if shapes[0] == shapes[1]:
        # add passes g through unchanged
        np.testing.assert_array_equal(ga, g)
        np.testing.assert_array_equal(gb, g)
    ga, gb = OPS["mul"].input_grads([True, True], g, y_mul, [a, b], {})
    np.testing.assert_allclose(ga, unbroadcast(g * b, a.shape), rtol=1e-15)
    np.testing.assert_allclose(gb, unbroadcast(g * a, b.shape), rtol=1e-15)
    assert ga.shape == a.shape and gb.shape == b.shape


def test_seed_relu_and_sigmoid_rules(rng):
    x = rng.normal(size=(5, 6))
    x[0, 0] = 0.0  # relu's subgradient at 0 is 0
    g = rng.normal(size=x.shape)
    y = np.asarray(OPS["relu"].forward(x))
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    (gx,) = OPS["relu"].input_grads([True], g, y, [x], {})
    np.testing.assert_array_equal(gx, g * (x > 0))
    assert gx[0, 0] == 0.0
    y = np.asarray(OPS["sigmoid"].forward(x))
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x)), rtol=1e-14)
    (gx,) = OPS["sigmoid"].input_grads([True], g, y, [x], {})
    np.testing.assert_allclose(gx, g * y * (1 - y), rtol=1e-15)


def test_sigmoid_does_not_overflow():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = OPS["sigmoid"].forward(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_array_equal(y, [0.0, 0.5, 1.0])


def test_unbroadcast_sums_stretched_and_added_axes():
    g = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(unbroadcast(g, (3, 1)), g.sum(axis=(0, 2)).reshape(3, 1))
    np.testing.assert_array_equal(unbroadcast(g, ()), g.sum())
    np.testing.assert_array_equal(unbroadcast(g, (4,)), g.sum(axis=(0, 1)))
    assert unbroadcast(g, (2, 3, 4)) is g


def test_softmax_cross_entropy_is_stable_for_huge_logit_gaps():
    logits = np.array([[0.0, 1000.0, -1000.0]], dtype=np.float32)
    labels = np.array([2])
    op = OPS["softmax_cross_entropy"]
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = np.asarray(op.forward(logits, labels))
        (gl, gy) = op.input_grads([True, False], np.float32(1.0), y, [logits, labels], {})
    assert np.isfinite(y) and y == pytest.approx(2000.0)
    assert gy is None
    np.testing.assert_allclose(gl, [[0.0, 1.0, -1.0]], atol=1e-6)


def test_binary_cross_entropy_is_stable_for_large_logits():
    op = OPS["binary_cross_entropy_with_logits"]
    x = np.array([-800.0, 800.0])
    t = np.array([1.0, 0.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = np.asarray(op.forward(x, t))
    assert y == pytest.approx(800.0)


def test_every_op_has_a_doc_string():
    """ListOps and the SDK's functions show it; a new op without one fails here."""
    assert not [name for name, op in OPS.items() if not op.doc.strip()]
