"""The public SDK surface: ``import gradwire as gw``, graph building with operator sugar,
one function per op, build-time errors and the local engine."""

from __future__ import annotations

import numpy as np
import pytest

import gradwire as gw
from gradwire.worker.ops import OPS
from gradwire.worker.spec import TensorSpec


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_readme_snippet():
    rng = np.random.default_rng(0)
    n = 16
    X = rng.normal(size=(n, 784)).astype(np.float32)
    Y = rng.integers(0, 10, size=n)
    W0 = (rng.normal(size=(784, 10)) * 0.01).astype(np.float32)
    b0 = np.zeros(10, np.float32)

    g = gw.Graph()
    x = g.input("x", shape=(None, 784))
    y = g.input("y", shape=(None,), dtype="int64")
    W = g.param("W", shape=(784, 10))
    b = g.param("b", shape=(10,))
    g.set_loss(gw.softmax_cross_entropy(x @ W + b, y))
    engine = gw.local()
    loss, grads = engine.value_and_grad(g, params={"W": W0, "b": b0}, batch={"x": X, "y": Y})

    assert type(loss) is float
    assert set(grads) == {"W", "b"}
    for name, p in (("W", W0), ("b", b0)):
        assert grads[name].shape == p.shape and grads[name].dtype == np.float32
    # against a float64 NumPy reference
    z = X.astype(np.float64) @ W0 + b0
    P = _softmax(z)
    ref_loss = float(np.mean(-np.log(P[np.arange(n), Y])))
    d = (P - np.eye(10)[Y]) / n
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grads["W"], X.T.astype(np.float64) @ d, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["b"], d.sum(axis=0), rtol=1e-4, atol=1e-6)


def test_defaults_are_float32():
    g = gw.Graph()
    assert g.input("x", shape=(None, 3)).dtype == np.float32
    assert g.param("W", shape=(3,)).dtype == np.float32
    assert g.const(1.5).dtype == np.float32
    assert g.input("i", shape=(None,), dtype="int64").dtype == np.int64
    assert g["x"].shape == (None, 3)


# ------------------------------------------------------------------ operator sugar

SUGAR = [
    ("x + y", lambda x, y: x + y, lambda X, Y: X + Y, {"x": lambda X, Y: 1.0, "y": lambda X, Y: 1.0}),
    ("x - y", lambda x, y: x - y, lambda X, Y: X - Y, {"x": lambda X, Y: 1.0, "y": lambda X, Y: -1.0}),
    ("x * y", lambda x, y: x * y, lambda X, Y: X * Y, {"x": lambda X, Y: Y, "y": lambda X, Y: X}),
    ("x / y", lambda x, y: x / y, lambda X, Y: X / Y, {"x": lambda X, Y: 1 / Y, "y": lambda X, Y: -X / Y**2}),
    ("-x", lambda x, y: -x, lambda X, Y: -X, {"x": lambda X, Y: -1.0}),
    ("2.0 - x", lambda x, y: 2.0 - x, lambda X, Y: 2.0 - X, {"x": lambda X, Y: -1.0}),
    ("x / 3", lambda x, y: x / 3, lambda X, Y: X / 3, {"x": lambda X, Y: 1 / 3}),
    ("1 / x", lambda x, y: 1 / x, lambda X, Y: 1 / X, {"x": lambda X, Y: -1 / X**2}),
    ("x + 1", lambda x, y: x + 1, lambda X, Y: X + 1, {"x": lambda X, Y: 1.0}),
    ("3 * x", lambda x, y: 3 * x, lambda X, Y: 3 * X, {"x": lambda X, Y: 3.0}),
    ("x * 0.5", lambda x, y: x * 0.5, lambda X, Y: X * 0.5, {"x": lambda X, Y: 0.5}),
    ("1.5 + x", lambda x, y: 1.5 + x, lambda X, Y: 1.5 + X, {"x": lambda X, Y: 1.0}),
    ("x - 4", lambda x, y: x - 4, lambda X, Y: X - 4, {"x": lambda X, Y: 1.0}),
    ("x ** 3", lambda x, y: x ** 3, lambda X, Y: X ** 3, {"x": lambda X, Y: 3 * X ** 2}),
    ("array * x", lambda x, y: np.full(4, 2.0) * x, lambda X, Y: 2.0 * X, {"x": lambda X, Y: 2.0}),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("text,build,value,derivs", SUGAR, ids=[s[0] for s in SUGAR])
def test_operator_sugar(text, build, value, derivs, dtype):
    rng = np.random.default_rng(1)
    X = rng.uniform(0.5, 2.0, size=(3, 4)).astype(dtype)
    Y = rng.uniform(0.5, 2.0, size=(4,)).astype(dtype)
    g = gw.Graph()
    x = g.input("x", shape=(None, 4), dtype=dtype)
    y = g.input("y", shape=(4,), dtype=dtype)
    out = build(x, y)
    assert isinstance(out, gw.Value) and out.dtype == np.dtype(dtype) and out.shape == (None, 4)
    g.set_loss(gw.sum(out), batch_reduction="sum")
    g.fetch(out)
    result = gw.local().run(g, {}, {"x": X, "y": Y}, wrt=("x", "y"))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-13, atol=1e-14)
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    np.testing.assert_allclose(result.outputs[out.name], value(X64, Y64), **tol)
    for name, ref in (("x", X64), ("y", Y64)):
        grad = result.input_grads[name]
        assert grad.dtype == np.dtype(dtype) and grad.shape == ref.shape
        d = derivs.get(name)
        # y broadcasts over the batch: its gradient sums over it
        want = np.zeros(ref.shape) if d is None else np.broadcast_to(d(X64, Y64), X.shape)
        if name == "y" and d is not None:
            want = want.sum(axis=0)
        np.testing.assert_allclose(grad, want, **tol, err_msg=f"{text}: d/d{name}")


def test_sugar_builds_the_expected_ops():
    g = gw.Graph()
    x = g.input("x", shape=(2, 2), dtype="float64")
    W = g.param("W", shape=(2, 2), dtype="float64")
    cases = {"add": x + W, "sub": 2.0 - x, "mul": 3 * x, "div": 1 / x, "matmul": x @ W, "neg": -x,
             "pow": x ** 2, "transpose": x.T}
    for op, value in cases.items():
        node = next(n for n in g.graph_def.nodes if n.name == value.name)
        assert node.op == op
    sub = next(n for n in g.graph_def.nodes if n.name == cases["sub"].name)
    assert sub.inputs[1] == "x" and g.graph_def.constants[sub.inputs[0]] == 2.0
    div = next(n for n in g.graph_def.nodes if n.name == cases["div"].name)
    assert div.inputs[1] == "x" and g.graph_def.constants[div.inputs[0]] == 1.0
    # scalar constants take the graph values' dtype and are shared
    assert all(g.graph_def.constants[n].dtype == np.float64 for n in g.graph_def.constants)
    before = len(g.graph_def.constants)
    x + 2.0
    assert len(g.graph_def.constants) == before


def test_matmul_sugar_value_and_grad():
    rng = np.random.default_rng(2)
    g = gw.Graph()
    x = g.input("x", shape=(None, 3), dtype="float64")
    W = g.param("W", shape=(3, 2), dtype="float64")
    g.set_loss(gw.sum(x @ W), batch_reduction="sum")
    X, W0 = rng.normal(size=(4, 3)), rng.normal(size=(3, 2))
    loss, grads = gw.local().value_and_grad(g, {"W": W0}, {"x": X})
    assert loss == pytest.approx(float((X @ W0).sum()), rel=1e-14)
    np.testing.assert_allclose(grads["W"], X.sum(axis=0)[:, None] * np.ones((1, 2)), rtol=1e-14)


# ------------------------------------------------------------------ one function per op


def test_every_op_is_a_gw_function():
    for name in OPS:
        fn = getattr(gw, name, None)
        assert callable(fn), f"gw.{name} is missing"
        assert name in gw.__all__
        assert fn.__name__ == name and name in fn.__doc__


@pytest.mark.parametrize("name", sorted(OPS))
def test_gw_function_builds_its_op(name, op_samples, op_attrs):
    op = OPS[name]
    sample = op_samples(name)[0]
    g = gw.Graph()
    values = [g.param(f"p{i}", shape=np.shape(a), dtype=np.asarray(a).dtype.name) for i, a in enumerate(sample.inputs)]
    out = getattr(gw, name)(*values, **sample.attrs, name="out")
    node = g.graph_def.nodes[-1]
    assert out.name == node.name == "out" and node.op == name and node.inputs == tuple(v.name for v in values)
    attrs = op_attrs(op, sample)
    assert out.spec == op.infer(*[TensorSpec.of(np.asarray(a)) for a in sample.inputs], **attrs)


def test_gw_sum_axis_and_keepdims():
    rng = np.random.default_rng(4)
    g = gw.Graph()
    x = g.input("x", shape=(None, 3, 4), dtype="float64")
    a = gw.sum(x, axis=1)
    b = gw.sum(x, axis=(0, 2), keepdims=True)
    c = gw.sum(x, axis=-1, keepdims=False)
    d = gw.sum(x)
    assert a.shape == (None, 4) and b.shape == (1, 3, 1) and c.shape == (None, 3) and d.shape == ()
    g.set_loss(gw.sum(a) + gw.sum(b * 2.0) + gw.sum(c) + d, batch_reduction="sum")
    g.fetch(a, b, c, d)
    X = rng.normal(size=(5, 3, 4))
    result = gw.local().run(g, {}, {"x": X}, wrt=("x",))
    np.testing.assert_allclose(result.outputs[a.name], X.sum(axis=1), rtol=1e-14)
    np.testing.assert_allclose(result.outputs[b.name], X.sum(axis=(0, 2), keepdims=True), rtol=1e-14)
    np.testing.assert_allclose(result.outputs[c.name], X.sum(axis=-1), rtol=1e-14)
    np.testing.assert_allclose(result.outputs[d.name], X.sum(), rtol=1e-14)
    np.testing.assert_allclose(result.input_grads["x"], np.full(X.shape, 5.0), rtol=1e-14)


# ------------------------------------------------------------------ build-time errors


def test_matmul_with_a_wrong_shaped_param_fails_at_build_time():
    g = gw.Graph()
    x = g.input("x", shape=(None, 784))
    W = g.param("W", shape=(10, 784))
    with pytest.raises(gw.GraphError, match=r"\(op 'matmul'\): inner dimensions differ: \(\?, 784\) @ \(10, 784\)"):
        x @ W
    assert g.graph_def.nodes == []  # nothing half-built is left behind


def test_broadcast_error_names_shapes():
    g = gw.Graph()
    x = g.input("x", shape=(None, 3))
    b = g.param("b", shape=(4,))
    with pytest.raises(gw.GraphError, match=r"node 'add_\d+' \(op 'add'\): shapes \(\?, 3\) and \(4,\) do not broadcast"):
        x + b


def test_builder_rejects_misuse():
    g, other = gw.Graph(), gw.Graph()
    x = g.input("x", shape=(3,))
    with pytest.raises(ValueError, match="already has a value named 'x'"):
        g.param("x", shape=(3,))
    with pytest.raises(ValueError, match="negative dimension"):
        g.param("bad", shape=(-1, 3))
    with pytest.raises(ValueError, match="unsupported dtype"):
        g.param("c", shape=(3,), dtype="complex64")
    y = other.input("y", shape=(3,))
    with pytest.raises(ValueError, match="different graphs"):
        x + y
    with pytest.raises(ValueError, match="is not a value of this graph"):
        g.set_loss(gw.sum(y))
    with pytest.raises(TypeError, match="at least one input must be a graph value"):
        gw.add(1.0, 2.0)
    with pytest.raises(ValueError, match="already has a value named"):
        gw.tanh(x, name="x")


# ------------------------------------------------------------------ the local engine


def test_changing_the_loss_after_a_run_is_honoured():
    rng = np.random.default_rng(5)
    g = gw.Graph()
    x = g.input("x", shape=(None, 3), dtype="float64")
    W = g.param("W", shape=(3,), dtype="float64")
    first = gw.sum(x * W)
    second = gw.sum(gw.tanh(x * W))
    X, W0 = rng.normal(size=(4, 3)), rng.normal(size=3)
    engine = gw.local()
    g.set_loss(first, batch_reduction="sum")
    loss, grads = engine.value_and_grad(g, {"W": W0}, {"x": X})
    np.testing.assert_allclose(grads["W"], X.sum(axis=0), rtol=1e-14)
    g.set_loss(second, batch_reduction="sum")  # same nodes, new loss: the cached analysis must not be reused
    loss, grads = engine.value_and_grad(g, {"W": W0}, {"x": X})
    T = np.tanh(X * W0)
    assert loss == pytest.approx(float(T.sum()), rel=1e-14)
    np.testing.assert_allclose(grads["W"], ((1 - T * T) * X).sum(axis=0), rtol=1e-14)
    g.fetch(first)
    assert set(engine.run(g, {"W": W0}, {"x": X}).outputs) == {first.name}
    # growing the graph after a run is picked up too
    g.set_loss(second + gw.sum(W * W))
    loss, grads = engine.value_and_grad(g, {"W": W0}, {"x": X})
    np.testing.assert_allclose(grads["W"], ((1 - T * T) * X).sum(axis=0) + 2 * W0, rtol=1e-14)


def test_local_engine_accepts_lists_and_graph_defs():
    g = gw.Graph()
    W = g.param("W", shape=(2,), dtype="float64")
    g.set_loss(gw.sum(W * W))
    with gw.local() as engine:
        loss, grads = engine.value_and_grad(g.graph_def, {"W": [1.0, -2.0]}, {})
    assert loss == 5.0
    np.testing.assert_array_equal(grads["W"], [2.0, -4.0])


def test_local_sharded_value_and_grad_keeps_float32():
    rng = np.random.default_rng(6)
    g = gw.Graph()
    x = g.input("x", shape=(None, 5))
    W = g.param("W", shape=(5, 2))
    g.set_loss(gw.mean(gw.square(x @ W)))
    params, batch = {"W": rng.normal(size=(5, 2)).astype(np.float32)}, {"x": rng.normal(size=(9, 5)).astype(np.float32)}
    loss1, g1 = gw.local().value_and_grad(g, params, batch)
    loss4, g4 = gw.local(shards=4).value_and_grad(g, params, batch)
    assert type(loss4) is float and g4["W"].dtype == np.float32
    assert loss4 == pytest.approx(loss1, rel=1e-5)
    np.testing.assert_allclose(g4["W"], g1["W"], rtol=1e-5, atol=1e-6)


def test_result_and_errors_are_exported():
    assert gw.Result is not None and issubclass(gw.LimitError, gw.GraphError)
    assert issubclass(gw.ExecutionError, gw.GraphError) and issubclass(gw.GraphError, ValueError)
    assert isinstance(gw.local(), gw.LocalEngine)
