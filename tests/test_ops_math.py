"""What the registry-driven checks cannot see about worker/ops/math.py (and the matmul, pow and
max changes): erf's accuracy, empty-axis identities, pow at 0, einsum equations, matmul's 1-D
rules, comparison dtypes and bool conditions made in the graph."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradwire as gw
from gradwire.worker.ops import OPS, ShapeError
from gradwire.worker.ops.math import erf, parse_einsum
from gradwire.worker.spec import TensorSpec


def _grads(name, xs, attrs, g=None):
    op = OPS[name]
    y = np.asarray(op.forward(*xs, **attrs))
    g = np.ones(y.shape, y.dtype) if g is None else g
    return y, op.input_grads([True] * len(xs), g, y, list(xs), attrs)


def _numeric_grad(f, x, eps=1e-6):
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        out[i] = (np.sum(f(x + d)) - np.sum(f(x - d))) / (2 * eps)
    return out


# ------------------------------------------------------------------ erf


def test_erf_matches_math_erf_to_1e12_relative():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-6, 6, 20000), rng.normal(0, 0.3, 5000), np.linspace(-8, 8, 4001),
                        [0.0, -0.0, 0.46875, -0.46875, 4.0, -4.0, 1e-300, 5e-324, 26.0, -26.0, 1e-8]])
    got = erf(x)
    want = np.array([math.erf(v) for v in x])
    rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-300)
    assert rel.max() < 1e-12, (x[rel.argmax()], got[rel.argmax()], want[rel.argmax()])
    assert erf(np.array(np.inf)) == 1.0 and erf(np.array(-np.inf)) == -1.0
    assert np.isnan(erf(np.array([np.nan]))).all()


def test_erf_keeps_float32_and_shape():
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    y = erf(x)
    assert y.dtype == np.float32 and y.shape == (3, 4)
    np.testing.assert_allclose(y, np.reshape([math.erf(v) for v in x.ravel().astype(float)], (3, 4)), rtol=1e-6, atol=1e-7)
    assert erf(np.float64(0.5)).shape == ()


def test_gelu_forms():
    x = np.linspace(-4, 4, 33)
    exact = 0.5 * x * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
    np.testing.assert_allclose(OPS["gelu"].forward(x), exact, rtol=1e-13, atol=1e-15)
    tanh = OPS["gelu"].forward(x, approximate="tanh")
    np.testing.assert_allclose(tanh, exact, atol=2e-3)  # the approximation's own error
    with pytest.raises(ShapeError, match="approximate"):
        OPS["gelu"].infer(TensorSpec((3,), np.dtype("float64")), approximate="exact")


def test_selu_uses_onnx_constants_and_softplus_does_not_overflow():
    y = OPS["selu"].forward(np.array([-1.0, 1.0]))
    np.testing.assert_allclose(y, [1.0507009873554805 * 1.6732632423543772 * (math.exp(-1) - 1), 1.0507009873554805])
    with np.errstate(over="raise", invalid="raise"):
        y = OPS["softplus"].forward(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(y, [0.0, math.log(2), 1000.0])


def test_hard_sigmoid_and_clip_saturate_with_zero_gradient():
    x = np.array([-10.0, 0.0, 10.0])
    y, (gx,) = _grads("hard_sigmoid", [x], {"alpha": 0.2, "beta": 0.5})
    np.testing.assert_array_equal(y, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(gx, [0.0, 0.2, 0.0])
    x = np.array([-2.0, -0.5, 0.0, 1.0, 2.0])
    y, (gx,) = _grads("clip", [x], {"min": -0.5, "max": 1.0})
    np.testing.assert_array_equal(y, [-0.5, -0.5, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(gx, [0.0, 1.0, 1.0, 1.0, 0.0])  # bounds included
    y, (gx,) = _grads("clip", [x], {"min": None, "max": None})
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(gx, np.ones(5))


def test_piecewise_constant_ops_have_zero_gradients():
    x = np.array([-1.5, -0.5, 0.5, 1.5, 2.5])
    for name, want in (("floor", [-2, -1, 0, 1, 2]), ("ceil", [-1, 0, 1, 2, 3]),
                       ("round", [-2, -0, 0, 2, 2]), ("sign", [-1, -1, 1, 1, 1])):
        y, (gx,) = _grads(name, [x], {})
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(gx, np.zeros(5))


# ------------------------------------------------------------------ comparisons, logic, where


@pytest.mark.parametrize("name,fn", [("equal", np.equal), ("greater", np.greater), ("less", np.less),
                                     ("greater_equal", np.greater_equal), ("less_equal", np.less_equal)])
def test_comparisons_give_bool_and_broadcast(name, fn):
    a, b = np.array([[1.0, 2.0, 3.0]], np.float32), np.array([[2.0], [3.0]], np.float32)
    y = OPS[name].forward(a, b)
    assert y.dtype == np.bool_ and y.shape == (2, 3)
    np.testing.assert_array_equal(y, fn(a, b))
    spec = OPS[name].infer(TensorSpec.of(a), TensorSpec.of(b))
    assert spec == TensorSpec((2, 3), np.dtype("bool"))
    assert OPS[name].differentiable(2) == (False, False)
    with pytest.raises(ShapeError, match="dtype mismatch"):
        OPS[name].infer(TensorSpec((3,), np.dtype("float32")), TensorSpec((3,), np.dtype("float64")))
    with pytest.raises(ShapeError):
        OPS[name].infer(TensorSpec((3,), np.dtype("bool")), TensorSpec((3,), np.dtype("bool")))


def test_logic_ops_take_bools_only():
    t, f = np.array([True, True, False, False]), np.array([True, False, True, False])
    np.testing.assert_array_equal(OPS["logical_and"].forward(t, f), [True, False, False, False])
    np.testing.assert_array_equal(OPS["logical_or"].forward(t, f), [True, True, True, False])
    np.testing.assert_array_equal(OPS["logical_not"].forward(t), [False, False, True, True])
    with pytest.raises(ShapeError, match="bool"):
        OPS["logical_and"].infer(TensorSpec((4,), np.dtype("float32")), TensorSpec((4,), np.dtype("bool")))


def test_a_condition_made_in_the_graph_feeds_where_and_gradients_flow_around_it(rng):
    g = gw.Graph()
    x = g.input("x", (None, 3), "float64")
    w = g.param("w", (3,), "float64")
    h = x * w
    mask = gw.logical_and(gw.greater(h, 0.0), gw.logical_not(gw.equal(x, 1.0)))
    assert mask.dtype == np.bool_
    g.set_loss(gw.mean(gw.where(mask, h, gw.leaky_relu(h, alpha=0.1))))
    g.fetch(mask)
    params, batch = {"w": rng.normal(size=3)}, {"x": rng.normal(size=(8, 3))}
    result = gw.local().run(g, params, batch, fetch=(mask.name,))
    hv = batch["x"] * params["w"]
    m = (hv > 0) & (batch["x"] != 1.0)
    assert result.outputs[mask.name].dtype == np.bool_
    np.testing.assert_array_equal(result.outputs[mask.name], m)
    want = np.mean(np.where(m, hv, 0.1 * hv))
    assert result.loss == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(result.grads["w"], np.sum(np.where(m, 1.0, 0.1) * batch["x"], axis=0) / 24,
                               rtol=1e-12)
    # the loss is a mean over per-example rows: it shards, and the shards agree
    loss8, grads8 = gw.local(shards=4).value_and_grad(g, params, batch)
    np.testing.assert_allclose(loss8, result.loss, rtol=1e-12)
    np.testing.assert_allclose(grads8["w"], result.grads["w"], rtol=1e-12)


def test_argmax_argmin_are_int64_and_not_differentiable():
    x = np.array([[1.0, 5.0, 5.0], [7.0, 0.0, -1.0]])
    np.testing.assert_array_equal(OPS["argmax"].forward(x, axis=1), [1, 0])  # the first on ties
    np.testing.assert_array_equal(OPS["argmin"].forward(x, axis=0, keepdims=True), [[0, 1, 1]])
    assert OPS["argmax"].forward(x, axis=1).dtype == np.int64
    spec = OPS["argmax"].infer(TensorSpec((None, 3), np.dtype("float32")), axis=-1, keepdims=False)
    assert spec == TensorSpec((None,), np.dtype("int64"))
    assert OPS["argmax"].differentiable(1) == (False,)
    with pytest.raises(ShapeError, match="size 0"):
        OPS["argmax"].infer(TensorSpec((0, 3), np.dtype("float32")), axis=0)


def test_cast():
    x = np.array([-1.7, 0.2, 2.5])
    y, (gx,) = _grads("cast", [x], {"to": "float32"}, g=np.array([1.0, 2.0, 3.0], np.float32))
    assert y.dtype == np.float32 and gx.dtype == np.float64
    np.testing.assert_array_equal(gx, [1.0, 2.0, 3.0])
    y, (gx,) = _grads("cast", [x], {"to": "int32"})
    np.testing.assert_array_equal(y, [-1, 0, 2])
    assert y.dtype == np.int32
    np.testing.assert_array_equal(gx, np.zeros(3))
    assert OPS["cast"].forward(x, to="bool").dtype == np.bool_
    assert OPS["cast"].infer(TensorSpec((3,), np.dtype("int64")), to="float32").dtype == np.float32
    with pytest.raises(ShapeError, match="'to'"):
        OPS["cast"].infer(TensorSpec((3,), np.dtype("int64")), to="float16")
    # through the engine: a float path cast to float32 and back gets its gradient
    g = gw.Graph()
    w = g.param("w", (3,), "float64")
    g.set_loss(gw.sum(gw.cast(gw.square(gw.cast(w, to="float32")), to="float64")), batch_reduction="sum")
    loss, grads = gw.local().value_and_grad(g, {"w": np.array([1.0, 2.0, 3.0])}, {})
    assert loss == pytest.approx(14.0)
    np.testing.assert_allclose(grads["w"], [2.0, 4.0, 6.0])


# ------------------------------------------------------------------ pow


def test_pow_with_a_tensor_exponent():
    a = np.array([[0.5, 2.0, 3.0]])
    b = np.array([[2.0], [-0.5]])
    g = np.arange(6.0).reshape(2, 3)
    y, (ga, gb) = _grads("pow", [a, b], {}, g=g)
    np.testing.assert_allclose(y, a ** b)
    np.testing.assert_allclose(ga, (g * b * a ** (b - 1)).sum(0, keepdims=True))
    np.testing.assert_allclose(gb, (g * a ** b * np.log(a)).sum(1, keepdims=True))
    assert OPS["pow"].infer(TensorSpec((1, 3), np.dtype("float64")), TensorSpec((2, 1), np.dtype("float64"))) \
        == TensorSpec((2, 3), np.dtype("float64"))
    with pytest.raises(ShapeError, match="not both"):
        OPS["pow"].infer(TensorSpec((3,), np.dtype("float64")), TensorSpec((3,), np.dtype("float64")), exponent=2.0)
    with pytest.raises(ShapeError, match="exponent"):
        OPS["pow"].infer(TensorSpec((3,), np.dtype("float64")))


def test_pow_at_zero():
    a = np.array([0.0, 0.0, 0.0, 2.0])
    b = np.array([0.0, 1.0, 2.5, 0.0])
    with np.errstate(all="raise"):
        y, (ga, gb) = _grads("pow", [a, b], {})
    np.testing.assert_array_equal(y, [1.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(ga, [0.0, 1.0, 0.0, 0.0])  # b a^(b-1), 0 where b == 0 (PyTorch)
    np.testing.assert_array_equal(gb, [0.0, 0.0, 0.0, math.log(2.0)])  # 0 where a == 0
    _, (ga,) = _grads("pow", [np.array([0.0, 3.0])], {"exponent": 0.0})
    np.testing.assert_array_equal(ga, [0.0, 0.0])


def test_pow_through_the_sdk(rng):
    g = gw.Graph()
    a, b = g.param("a", (3,), "float64"), g.param("b", (3,), "float64")
    g.set_loss(gw.sum(gw.pow(a, b) + a ** 2.0), batch_reduction="sum")
    av, bv = rng.uniform(0.5, 2.0, 3), rng.normal(size=3)
    loss, grads = gw.local().value_and_grad(g, {"a": av, "b": bv}, {})
    assert loss == pytest.approx(float(np.sum(av ** bv + av ** 2)))
    np.testing.assert_allclose(grads["a"], bv * av ** (bv - 1) + 2 * av)
    np.testing.assert_allclose(grads["b"], av ** bv * np.log(av))


# ------------------------------------------------------------------ reductions


def test_empty_axis_identities():
    x = np.zeros((0, 3))
    assert OPS["sum"].forward(x, axis=0).tolist() == [0.0, 0.0, 0.0]
    assert OPS["prod"].forward(x, axis=0).tolist() == [1.0, 1.0, 1.0]
    assert OPS["max"].forward(x, axis=0).tolist() == [-np.inf] * 3
    assert OPS["min"].forward(x, axis=0).tolist() == [np.inf] * 3
    assert OPS["logsumexp"].forward(x, axis=0).tolist() == [-np.inf] * 3
    assert OPS["reduce_l1"].forward(x, axis=0).tolist() == [0.0] * 3
    assert OPS["reduce_l2"].forward(x, axis=0).tolist() == [0.0] * 3
    assert OPS["max"].forward(x).shape == () and OPS["max"].forward(x) == -np.inf
    assert OPS["min"].forward(x, axis=[0, 1], keepdims=True).shape == (1, 1)
    assert OPS["max"].forward(x, axis=1).shape == (0,)  # a non-empty axis of an empty tensor
    x32 = np.zeros((2, 0), np.float32)
    assert OPS["max"].forward(x32, axis=1).dtype == np.float32
    for name in ("max", "min", "prod", "logsumexp"):
        y, (gx,) = _grads(name, [x], {"axis": 0})
        assert gx.shape == (0, 3)


def test_prod_gradient_with_zeros():
    x = np.array([[2.0, 3.0, 4.0], [0.0, 3.0, 4.0], [0.0, 0.0, 4.0]])
    y, (gx,) = _grads("prod", [x], {"axis": 1})
    np.testing.assert_array_equal(y, [24.0, 0.0, 0.0])
    np.testing.assert_array_equal(gx, [[12.0, 8.0, 6.0], [12.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(gx, _numeric_grad(lambda v: OPS["prod"].forward(v, axis=1), x), atol=1e-8)


def test_logsumexp_is_stable():
    x = np.array([[1000.0, 1000.0], [-1000.0, -np.inf], [-np.inf, -np.inf]])
    with np.errstate(over="raise"):
        y = OPS["logsumexp"].forward(x, axis=1)
    np.testing.assert_allclose(y, [1000.0 + math.log(2), -1000.0, -np.inf])
    np.testing.assert_allclose(OPS["logsumexp"].forward(x[:2], axis=1, keepdims=True), y[:2, None])
    _, (gx,) = _grads("logsumexp", [x[:2]], {"axis": 1})
    np.testing.assert_allclose(gx, [[0.5, 0.5], [1.0, 0.0]])


def test_norms():
    x = np.array([[3.0, -4.0], [0.0, 0.0]])
    np.testing.assert_array_equal(OPS["reduce_l1"].forward(x, axis=1), [7.0, 0.0])
    np.testing.assert_array_equal(OPS["reduce_l2"].forward(x, axis=1), [5.0, 0.0])
    _, (gx,) = _grads("reduce_l2", [x], {"axis": 1})
    np.testing.assert_allclose(gx, [[0.6, -0.8], [0.0, 0.0]])  # subgradient 0 at a zero norm


# ------------------------------------------------------------------ matmul's 1-D rules


@pytest.mark.parametrize("sa,sb", [((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4,)),
                                   ((4,), (2, 4, 5)), ((2, 1, 3, 4), (4,))])
def test_matmul_follows_numpy_for_1d_operands(sa, sb, rng):
    a, b = rng.normal(size=sa), rng.normal(size=sb)
    op = OPS["matmul"]
    y = op.forward(a, b)
    assert np.shape(y) == np.matmul(a, b).shape
    assert op.infer(TensorSpec.of(a), TensorSpec.of(b)) == TensorSpec.of(np.asarray(y))
    g = rng.normal(size=np.shape(y))
    ga, gb = op.input_grads([True, True], g, np.asarray(y), [a, b], {})
    np.testing.assert_allclose(ga, _numeric_grad(lambda v: g * np.matmul(v, b), a), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(gb, _numeric_grad(lambda v: g * np.matmul(a, v), b), rtol=1e-7, atol=1e-8)


def test_matmul_refuses_scalars_and_mismatched_vectors():
    f = np.dtype("float64")
    with pytest.raises(ShapeError, match="rank >= 1"):
        OPS["matmul"].infer(TensorSpec((), f), TensorSpec((3,), f))
    with pytest.raises(ShapeError, match="inner dimensions"):
        OPS["matmul"].infer(TensorSpec((3,), f), TensorSpec((4, 2), f))
    assert OPS["matmul"].infer(TensorSpec((None, 4), f), TensorSpec((4,), f)) == TensorSpec((None,), f)


def test_matrix_vector_model_shards(rng):
    g = gw.Graph()
    x, w = g.input("x", (None, 4), "float64"), g.param("w", (4,), "float64")
    y = g.input("y", (None,), "float64")
    g.set_loss(gw.mse(gw.matmul(x, w), y))
    params, batch = {"w": rng.normal(size=4)}, {"x": rng.normal(size=(9, 4)), "y": rng.normal(size=9)}
    loss, grads = gw.local().value_and_grad(g, params, batch)
    loss3, grads3 = gw.local(shards=3).value_and_grad(g, params, batch)
    assert loss == pytest.approx(np.mean((batch["x"] @ params["w"] - batch["y"]) ** 2), rel=1e-12)
    np.testing.assert_allclose(loss3, loss, rtol=1e-12)
    np.testing.assert_allclose(grads3["w"], grads["w"], rtol=1e-12)


# ------------------------------------------------------------------ gemm


def test_gemm_matches_onnx(rng):
    a, b, c = rng.normal(size=(4, 3)), rng.normal(size=(5, 4)), rng.normal(size=(3, 1))
    y = OPS["gemm"].forward(a, b, c, alpha=0.5, beta=2.0, transA=1, transB=1)
    np.testing.assert_allclose(y, 0.5 * a.T @ b.T + 2.0 * c)
    f = np.dtype("float64")
    with pytest.raises(ShapeError, match="does not broadcast"):
        OPS["gemm"].infer(TensorSpec((3, 4), f), TensorSpec((4, 5), f), TensorSpec((5, 3), f))
    with pytest.raises(ShapeError, match="inner"):
        OPS["gemm"].infer(TensorSpec((3, 4), f), TensorSpec((3, 5), f))
    with pytest.raises(ShapeError, match="2-D"):
        OPS["gemm"].infer(TensorSpec((4,), f), TensorSpec((4, 5), f))


# ------------------------------------------------------------------ einsum


EQUATIONS = [("ij,jk->ik", (3, 4), (4, 5)), ("bij,bjk->bik", (2, 3, 4), (2, 4, 5)), ("i,i->", (4,), (4,)),
             ("i,j->ji", (3,), (4,)), ("ijl,jk->ki", (3, 4, 2), (4, 5)), ("ij,jkm->mi", (3, 4), (4, 2, 5)),
             ("ij,kj", (3, 4), (5, 4)), ("ab,cd->", (2, 3), (4, 5)), ("bhqd,bhkd->bhqk", (2, 2, 3, 4), (2, 2, 5, 4)),
             ("ij,ij->ij", (3, 4), (3, 4)), ("i ,i->i", (3,), (3,))]


@pytest.mark.parametrize("eq,sa,sb", EQUATIONS)
def test_einsum_matches_numpy_and_its_gradients(eq, sa, sb, rng):
    a, b = rng.normal(size=sa), rng.normal(size=sb)
    op = OPS["einsum"]
    y = np.asarray(op.forward(a, b, equation=eq))
    want = np.einsum(eq.replace(" ", ""), a, b)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    assert op.infer(TensorSpec.of(a), TensorSpec.of(b), equation=eq) == TensorSpec.of(np.asarray(want))
    g = rng.normal(size=y.shape)
    ga, gb = op.input_grads([True, True], g, y, [a, b], {"equation": eq})
    f = eq.replace(" ", "")
    np.testing.assert_allclose(ga, _numeric_grad(lambda v: g * np.einsum(f, v, b), a), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(gb, _numeric_grad(lambda v: g * np.einsum(f, a, v), b), rtol=1e-7, atol=1e-8)
    assert np.asarray(op.forward(a.astype(np.float32), b.astype(np.float32), equation=eq)).dtype == np.float32


@pytest.mark.parametrize("eq,match", [("...ij,jk->...ik", "ellipsis"), ("ii,ij->j", "repeated within one operand"),
                                      ("ij,jk,kl->il", "two operands"), ("ij->ij", "two operands"),
                                      ("ij,jk->iz", "appear in no operand"), ("ij,jk->ii", "repeated"),
                                      ("i1,jk->k", "letters"), ("ij,jk-ik", "malformed")])
def test_einsum_refuses_what_it_does_not_support(eq, match):
    with pytest.raises(ShapeError, match=match):
        parse_einsum(eq)


def test_einsum_checks_ranks_and_sizes():
    f = np.dtype("float64")
    with pytest.raises(ShapeError, match="rank 3"):
        OPS["einsum"].infer(TensorSpec((2, 3, 4), f), TensorSpec((3, 4), f), equation="ij,jk->ik")
    with pytest.raises(ShapeError, match="sizes 4 and 5"):
        OPS["einsum"].infer(TensorSpec((3, 4), f), TensorSpec((5, 2), f), equation="ij,jk->ik")
    assert OPS["einsum"].infer(TensorSpec((None, 4), f), TensorSpec((4, 2), f), equation="bi,ij->jb") \
        == TensorSpec((2, None), f)


def test_einsum_attention_scores_shard_per_example(rng):
    g = gw.Graph()
    q = g.input("q", (None, 3, 4), "float64")
    k = g.param("k", (5, 4), "float64")
    s = gw.einsum(q, k, equation="bqd,kd->bqk")
    g.set_loss(gw.mean(gw.logsumexp(s, axis=-1)))
    params, batch = {"k": rng.normal(size=(5, 4))}, {"q": rng.normal(size=(7, 3, 4))}
    loss, grads = gw.local().value_and_grad(g, params, batch)
    loss3, grads3 = gw.local(shards=3).value_and_grad(g, params, batch)
    sc = np.einsum("bqd,kd->bqk", batch["q"], params["k"])
    assert loss == pytest.approx(np.mean(np.log(np.exp(sc).sum(-1))), rel=1e-12)
    np.testing.assert_allclose(loss3, loss, rtol=1e-12)
    np.testing.assert_allclose(grads3["k"], grads["k"], rtol=1e-12, atol=1e-14)


def test_einsum_on_random_equations_matches_numpy():
    """The kernel is a batched matmul after summing and transposing: every role an index can
    play (batch, contracted, one operand's own, summed within one operand) in random mixes."""
    rng = np.random.default_rng(1)
    letters = "abcdefg"
    for _ in range(300):
        n = rng.integers(1, 7)
        pool = list(rng.permutation(list(letters))[:n])
        sizes = {i: int(rng.integers(1, 4)) for i in pool}
        sa = "".join(rng.permutation(pool)[: rng.integers(0, n + 1)])
        sb = "".join(rng.permutation(pool)[: rng.integers(0, n + 1)])
        used = sorted(set(sa + sb))
        out = "".join(rng.permutation(used)[: rng.integers(0, len(used) + 1)]) if used else ""
        eq = f"{sa},{sb}->{out}"
        a = rng.normal(size=[sizes[i] for i in sa])
        b = rng.normal(size=[sizes[i] for i in sb])
        y = np.asarray(OPS["einsum"].forward(a, b, equation=eq))
        np.testing.assert_allclose(y, np.einsum(eq, a, b), rtol=1e-12, atol=1e-12, err_msg=eq)
        g = rng.normal(size=y.shape)
        ga, gb = OPS["einsum"].input_grads([True, True], g, y, [a, b], {"equation": eq})
        # <g, einsum(a, b)> is bilinear: <ga, a> == <g, y> == <gb, b>
        assert ga.shape == a.shape and gb.shape == b.shape, eq
        assert np.sum(ga * a) == pytest.approx(np.sum(g * y), rel=1e-9, abs=1e-9), eq
        assert np.sum(gb * b) == pytest.approx(np.sum(g * y), rel=1e-9, abs=1e-9), eq


def test_einsum_with_an_empty_dimension():
    a, b = np.zeros((0, 3)), np.ones((3, 2))
    assert OPS["einsum"].forward(a, b, equation="ij,jk->ik").shape == (0, 2)
    np.testing.assert_array_equal(OPS["einsum"].forward(a, b, equation="ij,jk->jk"), np.zeros((3, 2)))


def test_the_sdk_power_operator_takes_graph_values_on_either_side():
    import gradwire as gw

    g = gw.Graph()
    a, b = g.param("a", (3,), "float64"), g.param("b", (3,), "float64")
    g.set_loss(gw.sum(a ** b) + gw.sum(2.0 ** b) + gw.sum(a ** 2))
    av, bv = np.array([1.0, 2.0, 3.0]), np.array([2.0, 1.0, 0.5])
    loss, grads = gw.local().value_and_grad(g, {"a": av, "b": bv}, {})
    assert np.isclose(loss, np.sum(av ** bv) + np.sum(2.0 ** bv) + np.sum(av ** 2))
    np.testing.assert_allclose(grads["a"], bv * av ** (bv - 1) + 2 * av)
    np.testing.assert_allclose(grads["b"], av ** bv * np.log(av) + 2.0 ** bv * np.log(2.0))
