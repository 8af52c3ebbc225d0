"""ONNX import and export (client/onnx_io.py): round trips, models written with onnx.helper,
gradients against central differences, refusals that name the op and node."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import gradwire as gw  # noqa: E402
from gradwire.client.onnx_io import EXPORTERS, IMPORTERS, OnnxError  # noqa: E402
from gradwire.worker.ops import OPS  # noqa: E402


def _model(nodes, inputs, outputs, inits=(), opset=18, check=True):
    graph = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if check:
        onnx.checker.check_model(model)
    return model


def _mlp(rng, dtype=np.float32):
    g = gw.Graph()
    x = g.input("x", (None, 5), dtype)
    y = g.input("y", (None,), "int64")
    W1, b1 = g.param("W1", (5, 8), dtype), g.param("b1", (8,), dtype)
    W2, b2 = g.param("W2", (8, 3), dtype), g.param("b2", (3,), dtype)
    logits = gw.add(gw.tanh(x @ W1 + b1) @ W2, b2, name="logits")
    g.set_loss(gw.softmax_cross_entropy(logits, y) + 0.01 * gw.sum(gw.square(W1)))
    params = {"W1": rng.normal(size=(5, 8)), "b1": rng.normal(size=8), "W2": rng.normal(size=(8, 3)),
              "b2": rng.normal(size=3)}
    batch = {"x": rng.normal(size=(6, 5)).astype(dtype), "y": rng.integers(0, 3, 6)}
    return g, {k: v.astype(dtype) for k, v in params.items()}, batch


def test_mlp_round_trip_forward_and_gradients(tmp_path):
    rng = np.random.default_rng(0)
    g, params, batch = _mlp(rng)
    model = gw.to_onnx(g, params, tmp_path / "mlp.onnx")
    onnx.checker.check_model(onnx.load(tmp_path / "mlp.onnx"))
    assert {t.name for t in model.graph.initializer} == set(params)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    engine = gw.local()
    want = engine.run(g, params, batch)
    (ref_loss,) = ReferenceEvaluator(model).run(None, batch)
    assert float(ref_loss) == pytest.approx(want.loss, rel=1e-5)

    g2, params2 = gw.from_onnx(tmp_path / "mlp.onnx")
    assert g2.graph_def.inputs["x"].shape == (None, 5)
    for name in params:
        np.testing.assert_array_equal(params2[name], params[name])
    g2.set_loss(g2.value(g.graph_def.loss))
    got = engine.run(g2, params2, batch)
    assert got.loss == want.loss
    for name in params:
        np.testing.assert_array_equal(got.grads[name], want.grads[name])


def test_imported_outputs_are_values_to_build_a_loss_on():
    rng = np.random.default_rng(1)
    g, params, batch = _mlp(rng)
    g.fetch(g.value("logits"))
    g2, params2 = gw.from_onnx(gw.to_onnx(g, params))
    logits = g2.value("logits")
    assert logits.shape == (None, 3)
    g2.set_loss(gw.softmax_cross_entropy(logits, g2.input("labels", (None,), "int64")))
    result = gw.local().run(g2, params2, {**batch, "labels": batch["y"]})
    ref = gw.local().run(g, params, batch).outputs["logits"]
    z = ref - ref.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    assert result.loss == pytest.approx(float(-logp[np.arange(6), batch["y"]].mean()), rel=1e-5)
    with pytest.raises(KeyError, match="nope"):
        g2.value("nope")


# ------------------------------------------------------------------ every exportable op, from its samples


def _exportable():
    return sorted(op for op in EXPORTERS if op in OPS and OPS[op].samples is not None)


@pytest.mark.parametrize("op", _exportable())
def test_op_round_trip(op):
    """gradwire -> ONNX -> gradwire for each op's registry samples: the reference evaluator
    agrees with the engine's forward pass, and the re-imported graph gives the same forward
    values and gradients. Samples in a mode ONNX cannot express (training-mode batch_norm and
    dropout) are refused by the export, by name."""
    rng = np.random.default_rng(0)
    exported = 0
    float_attrs = any(a.kind == "float" for a in OPS[op].attrs.values())
    for k, sample in enumerate(OPS[op].samples(rng)):
        g = gw.Graph()
        xs = [g.input(f"x{i}", np.shape(x), np.asarray(x).dtype) for i, x in enumerate(sample.inputs)]
        y = gw.call(op, *xs, name="y", **sample.attrs)
        if y.dtype.kind == "f":
            w = g.const(rng.uniform(0.5, 1.5, y.shape), dtype=y.dtype)
            g.set_loss(gw.sum(y * w))
        else:  # an integer or bool result: forward only
            g.set_loss(g.const(np.zeros((), np.float64)))
        g.fetch(y)
        batch = {f"x{i}": np.asarray(x) for i, x in enumerate(sample.inputs)}
        wrt = tuple(n for n, x in batch.items() if x.dtype.kind == "f") if y.dtype.kind == "f" else ()
        engine = gw.local()
        want = engine.run(g, {}, batch, wrt=wrt)
        try:
            model = gw.to_onnx(g, {})
        except OnnxError as exc:
            assert f"{op} node 'y'" in str(exc)
            continue
        exported += 1
        try:
            ref = dict(zip([o.name for o in model.graph.output], ReferenceEvaluator(model).run(None, batch)))
        except (ValueError, TypeError):
            # the reference evaluator's own limits (GlobalMaxPool on rank 3, OneHot with
            # float64 values, GatherElements with smaller indices): the re-import still runs
            ref = None
        if ref is not None:  # ONNX float attributes are float32: epsilon, alpha, ... round
            np.testing.assert_allclose(ref["y"], want.outputs["y"], rtol=1e-5, atol=1e-7, err_msg=f"{op} sample {k}")

        g2, params2 = gw.from_onnx(model)
        assert params2 == {}
        g2.set_loss(g2.value(g.graph_def.loss))
        g2.fetch(g2.value("y"))
        got = engine.run(g2, {}, batch, wrt=wrt)
        # bitwise, but for ops with a float attribute (ONNX stores it as float32) and for ops
        # exported as a composition (mse, expm1, ...: other rounding)
        composed = [n.op for n in g2.graph_def.nodes if n.op not in ("mul", "sum")] != [op]
        tol = ({"rtol": 1e-6, "atol": 1e-9} if float_attrs else {"rtol": 1e-12, "atol": 1e-15} if composed
               else {"rtol": 0, "atol": 0})
        np.testing.assert_allclose(got.outputs["y"], want.outputs["y"], **tol, err_msg=f"{op} sample {k}")
        for name in wrt:
            np.testing.assert_allclose(got.input_grads[name], want.input_grads[name], **tol,
                                       err_msg=f"{op} sample {k}, d/d{name}")
    assert exported, f"no sample of {op} exports"


# ------------------------------------------------------------------ models written with onnx.helper


def _central_differences(engine, g, params, batch, eps=1e-6):
    grads = {}
    for name, p in params.items():
        grad = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            up, down = dict(params), dict(params)
            up[name], down[name] = p.copy(), p.copy()
            up[name][i] += eps
            down[name][i] -= eps
            grad[i] = (engine.run(g, up, batch).loss - engine.run(g, down, batch).loss) / (2 * eps)
        grads[name] = grad
    return grads


def test_gemm_mlp_from_onnx_helper_matches_finite_differences():
    rng = np.random.default_rng(2)
    W1, b1 = rng.normal(size=(4, 6)), rng.normal(size=6)  # Gemm with transB: weights stored (out, in)
    W2, b2 = rng.normal(size=(6, 3)), rng.normal(size=3)
    d = TensorProto.DOUBLE
    model = _model(
        [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1, alpha=0.5, beta=2.0),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "W2", "b2"], ["logits"])],
        [helper.make_tensor_value_info("x", d, ["N", 4])],
        [helper.make_tensor_value_info("logits", d, ["N", 3])],
        [numpy_helper.from_array(W1.T.copy(), "W1"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(W2, "W2"), numpy_helper.from_array(b2, "b2")])
    g, params = gw.from_onnx(model)
    assert set(params) == {"W1", "b1", "W2", "b2"} and g.graph_def.inputs["x"].shape == (None, 4)
    g.set_loss(gw.softmax_cross_entropy(g.value("logits"), g.input("y", (None,), "int64")))
    batch = {"x": rng.normal(size=(5, 4)), "y": rng.integers(0, 3, 5)}
    engine = gw.local()
    (logits,) = ReferenceEvaluator(model).run(None, {"x": batch["x"]})
    g.fetch(g.value("logits"))
    result = engine.run(g, params, batch)
    np.testing.assert_allclose(result.outputs["logits"], logits, rtol=1e-12)
    numeric = _central_differences(engine, g, params, batch)
    for name in params:
        np.testing.assert_allclose(result.grads[name], numeric[name], rtol=1e-6, atol=1e-8, err_msg=name)


def test_gemm_falls_back_to_matmul_when_gemm_is_not_registered(monkeypatch):
    rng = np.random.default_rng(3)
    d = TensorProto.DOUBLE
    model = _model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transA=1, alpha=2.0, beta=0.5)],
                   [helper.make_tensor_value_info("x", d, [3, 2])], [helper.make_tensor_value_info("y", d, [2, 4])],
                   [numpy_helper.from_array(rng.normal(size=(3, 4)), "W"), numpy_helper.from_array(rng.normal(size=4), "b")])
    monkeypatch.delitem(OPS, "gemm", raising=False)
    g, params = gw.from_onnx(model)
    assert "gemm" not in {n.op for n in g.graph_def.nodes}
    g.set_loss(gw.sum(g.value("y")))
    g.fetch(g.value("y"))
    x = rng.normal(size=(3, 2))
    got = gw.local().run(g, params, {"x": x}).outputs["y"]
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, {"x": x})[0], rtol=1e-12)


def test_reshape_transpose_softmax_model_matches_finite_differences():
    rng = np.random.default_rng(4)
    d = TensorProto.DOUBLE
    W = rng.normal(size=(6, 6))
    model = _model(
        [helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, 3, 2], np.int64))),
         helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("Reshape", ["h", "shape"], ["h3"]),
         helper.make_node("Transpose", ["h3"], ["t"], perm=[0, 2, 1]),
         helper.make_node("Softmax", ["t"], ["p"], axis=1),
         helper.make_node("ReduceSum", ["p", "axes"], ["s"], keepdims=0),
         helper.make_node("Flatten", ["p"], ["out"], axis=1)],
        [helper.make_tensor_value_info("x", d, ["batch", 6])],
        [helper.make_tensor_value_info("out", d, ["batch", 6]), helper.make_tensor_value_info("s", d, ["batch", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array([1], np.int64), "axes")])
    g, params = gw.from_onnx(model)
    assert set(params) == {"W"}  # the int64 axes initializer stays a constant
    x = rng.normal(size=(4, 6))
    want_out, want_s = ReferenceEvaluator(model).run(None, {"x": x})
    g.fetch(g.value("out"), g.value("s"))
    target = g.input("target", (None, 6), "float64")
    g.set_loss(gw.mse(g.value("out"), target) + gw.mean(g.value("s")))
    batch = {"x": x, "target": rng.uniform(size=(4, 6))}
    engine = gw.local()
    result = engine.run(g, params, batch)
    np.testing.assert_allclose(result.outputs["out"], want_out, rtol=1e-12)
    np.testing.assert_allclose(result.outputs["s"], want_s, rtol=1e-12)
    numeric = _central_differences(engine, g, params, batch)
    np.testing.assert_allclose(result.grads["W"], numeric["W"], rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ sources: trainable, batch dims


def _linear_model(dims=("N", 3)):
    f = TensorProto.FLOAT
    return _model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
                  [helper.make_tensor_value_info("x", f, list(dims))], [helper.make_tensor_value_info("y", f, [dims[0], 2])],
                  [numpy_helper.from_array(np.ones((3, 2), np.float32), "W"),
                   numpy_helper.from_array(np.zeros(2, np.float32), "b")])


def test_trainable_choices():
    g, params = gw.from_onnx(_linear_model(), trainable="none")
    assert params == {} and set(g.graph_def.constants) == {"W", "b"}
    g, params = gw.from_onnx(_linear_model(), trainable={"W"})
    assert set(params) == {"W"} and set(g.graph_def.constants) == {"b"}
    with pytest.raises(ValueError, match="not initializers"):
        gw.from_onnx(_linear_model(), trainable={"nope"})
    with pytest.raises(ValueError, match="trainable"):
        gw.from_onnx(_linear_model(), trainable="all")


def test_batch_dims():
    g, _ = gw.from_onnx(_linear_model(("N", 3)))
    assert g.graph_def.inputs["x"].shape == (None, 3)
    g, _ = gw.from_onnx(_linear_model((1, 3)))
    assert g.graph_def.inputs["x"].shape == (1, 3)
    g, _ = gw.from_onnx(_linear_model((1, 3)), batch_dim="leading")
    assert g.graph_def.inputs["x"].shape == (None, 3)


# ------------------------------------------------------------------ refusals


def test_unsupported_op_is_refused_with_its_name():
    f = TensorProto.FLOAT
    assert "Det" not in IMPORTERS
    model = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Det", ["r"], ["y"], name="det")],
                   [helper.make_tensor_value_info("x", f, [3, 3])], [helper.make_tensor_value_info("y", f, [])])
    with pytest.raises(OnnxError, match=r"ONNX op 'Det' \(node 'det'\): has no gradwire mapping"):
        gw.from_onnx(model)


def test_non_constant_shape_input_is_refused():
    f = TensorProto.FLOAT
    model = _model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="rs")],
                   [helper.make_tensor_value_info("x", f, [2, 3]),
                    helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                   [helper.make_tensor_value_info("y", f, [3, 2])])
    with pytest.raises(OnnxError, match=r"ONNX op 'Reshape' \(node 'rs'\): the target shape .* must be a constant"):
        gw.from_onnx(model)


def test_missing_gradwire_op_is_refused_naming_it(monkeypatch):
    f = TensorProto.FLOAT
    model = _model([helper.make_node("Tanh", ["x"], ["y"], name="t")],
                   [helper.make_tensor_value_info("x", f, [2])], [helper.make_tensor_value_info("y", f, [2])])
    monkeypatch.delitem(OPS, "tanh")
    with pytest.raises(OnnxError, match=r"'Tanh' \(node 't'\): needs gradwire op 'tanh', which is not registered"):
        gw.from_onnx(model)


def test_unsupported_attribute_and_opset_are_refused():
    f = TensorProto.FLOAT
    vi = [helper.make_tensor_value_info("x", f, [2, 3])], [helper.make_tensor_value_info("y", f, [2, 3])]
    model = _model([helper.make_node("Softmax", ["x"], ["y"], name="s", bogus=1)], *vi, check=False)
    with pytest.raises(OnnxError, match=r"'Softmax' \(node 's'\): attribute\(s\) \['bogus'\]"):
        gw.from_onnx(model)
    with pytest.raises(OnnxError, match="opset is 11"):
        gw.from_onnx(helper.make_model(model.graph, opset_imports=[helper.make_opsetid("", 11)]))


def test_export_refuses_an_op_without_mapping(monkeypatch):
    g = gw.Graph()
    x = g.input("x", (None, 3))
    g.set_loss(gw.sum(gw.exp(x)))
    monkeypatch.delitem(EXPORTERS, "exp")
    with pytest.raises(OnnxError, match=r"gradwire op 'exp' \(node 'exp_0'\) has no ONNX mapping"):
        gw.to_onnx(g, {})


def test_an_output_that_renames_another_value_is_a_value_of_its_own():
    f = TensorProto.FLOAT
    model = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"]),
                    helper.make_node("Identity", ["x"], ["z"])],
                   [helper.make_tensor_value_info("x", f, ["N", "M"])],
                   [helper.make_tensor_value_info("y", f, ["N", "M"]), helper.make_tensor_value_info("z", f, ["N", "M"])])
    g, _ = gw.from_onnx(model)
    assert g.value("y").shape == g.value("z").shape == (None, None)
    g.set_loss(gw.mean(g.value("y")) + gw.mean(g.value("z")))
    g.fetch(g.value("y"), g.value("z"))
    x = np.array([[-1.0, 2.0], [3.0, -4.0]], np.float32)
    out = gw.local().run(g, {}, {"x": x}).outputs
    np.testing.assert_array_equal(out["y"], np.maximum(x, 0))
    np.testing.assert_array_equal(out["z"], x)


def test_a_float_initializer_read_as_a_constant_is_not_a_parameter():
    """Clip's bounds are float initializers: with the default trainable="initializers" they
    are read as constants and are not parameters; naming one trainable refuses the node."""
    f = TensorProto.FLOAT
    model = _model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Clip", ["h", "lo", "hi"], ["y"])],
                   [helper.make_tensor_value_info("x", f, ["N", 2])], [helper.make_tensor_value_info("y", f, ["N", 2])],
                   [numpy_helper.from_array(np.eye(2, dtype=np.float32), "W"),
                    numpy_helper.from_array(np.array(-0.5, np.float32), "lo"),
                    numpy_helper.from_array(np.array(0.5, np.float32), "hi")])
    g, params = gw.from_onnx(model)
    assert set(params) == set(g.graph_def.params) == {"W"}
    g.set_loss(gw.mean(g.value("y")))
    g.fetch(g.value("y"))
    x = np.array([[-1.0, 0.25], [2.0, 0.0]], np.float32)
    np.testing.assert_array_equal(gw.local().run(g, params, {"x": x}).outputs["y"], np.clip(x, -0.5, 0.5))
    with pytest.raises(OnnxError, match=r"'Clip' .*min \(input 1, 'lo'\) must be a constant"):
        gw.from_onnx(model, trainable={"W", "lo"})
