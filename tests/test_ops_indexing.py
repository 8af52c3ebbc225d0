"""Focused checks of worker/ops/indexing.py and the class-indexed losses: scatter-adds that
accumulate duplicates, pad modes against np.pad, split pieces, and nll_loss /
softmax_cross_entropy against a hand-written reference of PyTorch's definitions (weights,
ignore_index, rank-4 scores, every reduction), through the kernels and through the engine."""

from __future__ import annotations

import numpy as np
import pytest

import gradwire as gw
from gradwire.worker.engine import ExecutionError, Program
from gradwire.worker.graph import Node
from gradwire.worker.ops import OPS
from gradwire.worker.ops.indexing import str_attrs_supported
from gradwire.worker.spec import TensorSpec
from gradwire.worker.validate import GraphError, normalize_attrs

F64 = "float64"
needs_str = pytest.mark.skipif(not str_attrs_supported(), reason="the validator takes no str attributes yet")


def _run(name, *xs, **attrs):
    """The op's forward with its attributes normalized as the engine would."""
    node = Node("n", name, tuple(f"x{i}" for i in range(len(xs))), attrs)
    return OPS[name].forward(*xs, **normalize_attrs(node))


def _grads(name, g, *xs, **attrs):
    op = OPS[name]
    node = Node("n", name, tuple(f"x{i}" for i in range(len(xs))), attrs)
    attrs = normalize_attrs(node)
    y = op.forward(*xs, **attrs)
    needs = [d and np.asarray(x).dtype.kind == "f" for d, x in zip(op.differentiable(len(xs)), xs)]
    return op.input_grads(needs, g, y, list(xs), attrs)


def _adjoint(name, x, rng, **attrs):
    """A linear op's VJP is its transpose: <A x, g> == <x, A^T g>."""
    y = _run(name, x, **attrs)
    g = rng.normal(size=y.shape)
    (gx,) = _grads(name, g, x, **attrs)
    assert gx.shape == x.shape
    assert np.sum(y * g) == pytest.approx(np.sum(x * gx), rel=1e-12)
    return y, gx


# ---------------------------------------------------------------- gather, embedding, gather_elements


def test_gather_duplicates_accumulate_and_negative_indices_count_from_the_end(rng):
    data = rng.normal(size=(4, 3))
    idx = np.array([[0, 2], [2, -2]])  # row 2 three times (-2 is row 2)
    y = _run("gather", data, idx)
    np.testing.assert_array_equal(y, data[[[0, 2], [2, 2]]])
    (gd, gi) = _grads("gather", np.ones(y.shape), data, idx)
    assert gi is None
    np.testing.assert_array_equal(gd, np.array([1, 0, 3, 0])[:, None] * np.ones((4, 3)))


def test_gather_along_another_axis_matches_np_take(rng):
    data = rng.normal(size=(2, 5, 3))
    idx = np.array([[4, 0], [-1, 4]], dtype=np.int32)
    y = _run("gather", data, idx, axis=1)
    np.testing.assert_array_equal(y, np.take(data, idx % 5, axis=1))
    assert y.shape == (2, 2, 2, 3)
    g = rng.normal(size=y.shape)
    (gd, _) = _grads("gather", g, data, idx, axis=1)
    want = np.zeros_like(data)
    for a in range(2):
        for b in range(2):
            want[:, idx[a, b] % 5, :] += g[:, a, b, :]
    np.testing.assert_allclose(gd, want, rtol=1e-14)


@pytest.mark.parametrize("bad", [4, -5])
def test_gather_out_of_range_is_an_execution_error(bad):
    g = gw.Graph()
    table, ids = g.param("table", (4, 3), F64), g.input("ids", (None,), "int64")
    g.set_loss(gw.sum(gw.gather(table, ids, name="pick")), batch_reduction="sum")
    with pytest.raises(ExecutionError, match=r"node 'pick' \(op 'gather'\): indices must lie in \[-4, 4\).*" + str(bad)):
        gw.local().run(g, {"table": np.ones((4, 3))}, {"ids": np.array([0, bad])})


def test_embedding_gradient_counts_repeated_ids_and_shards_per_example(rng):
    g = gw.Graph()
    w = g.param("w", (6, 3), F64)
    ids, labels = g.input("ids", (None, 2), "int64"), g.input("y", (None,), "int64")
    v = g.param("v", (3, 4), F64)
    h = gw.sum(gw.embedding(w, ids), axis=1)  # (n, 3): the bag of each example's ids
    g.set_loss(gw.softmax_cross_entropy(h @ v, labels))
    assert Program(g.graph_def).loss_batching.reduction == "mean"
    params = {"w": rng.normal(size=(6, 3)), "v": rng.normal(size=(3, 4))}
    batch = {"ids": rng.integers(0, 3, size=(13, 2)), "y": rng.integers(0, 4, size=13)}  # ids 3..5 unused
    loss, grads = gw.local().value_and_grad(g, params, batch)
    loss4, grads4 = gw.local(shards=4).value_and_grad(g, params, batch)
    np.testing.assert_allclose(loss4, loss, rtol=1e-12)
    np.testing.assert_allclose(grads4["w"], grads["w"], rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(grads["w"][3:], 0)
    # the plain count: d sum(embedding) / d w = how often each row was looked up
    (gw_,) = _grads("embedding", np.ones((5, 3)), params["w"], np.array([1, 1, 4, 1, 0]))[:1]
    np.testing.assert_array_equal(gw_[:, 0], [1, 3, 0, 0, 1, 0])


def test_gather_elements_matches_take_along_axis_and_scatters_back(rng):
    data = rng.normal(size=(3, 4))
    idx = np.array([[0, 2, 2, -1], [1, 1, 0, 2]])
    y = _run("gather_elements", data, idx)
    np.testing.assert_array_equal(y, np.take_along_axis(data, idx % 3, axis=0))
    (gd, _) = _grads("gather_elements", np.ones(y.shape), data, idx)
    np.testing.assert_array_equal(gd, [[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 2]])  # column 3: row 2 twice
    # ONNX's example: axis 1 with fewer indices than data along the other axis
    d = np.array([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(_run("gather_elements", d, np.array([[1, 0, 2]]), axis=0), [[4, 2, 9]])
    np.testing.assert_array_equal(_run("gather_elements", d[:2, :2], np.array([[0, 0], [1, 0]]), axis=1),
                                  [[1, 1], [5, 4]])
    with pytest.raises(ValueError, match="indices must lie in"):
        _run("gather_elements", d, np.array([[3, 0, 0]]))


# ---------------------------------------------------------------- one_hot


def test_one_hot_follows_onnx():
    y = _run("one_hot", np.array([0, 2, -1, 3, -4]), depth=3)
    np.testing.assert_array_equal(y, [[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0], [0, 0, 0]])  # out of range: all off
    assert y.dtype == np.float32
    assert OPS["one_hot"].differentiable(1) and _grads("one_hot", np.ones((5, 3)), np.arange(5), depth=3) == [None]
    y = _run("one_hot", np.array([[1, 0]]), np.array([-1.0, 5.0]), depth=2, axis=0)
    np.testing.assert_array_equal(y, [[[-1, 5]], [[5, -1]]])
    gi, gv = _grads("one_hot", np.arange(4.0).reshape(2, 1, 2), np.array([[1, 0]]), np.array([-1.0, 5.0]),
                    depth=2, axis=0)
    assert gi is None
    np.testing.assert_array_equal(gv, [0 + 3, 1 + 2])  # off positions (0, 3), on positions (1, 2)


@needs_str
def test_one_hot_dtype_attribute():
    assert _run("one_hot", np.array([1]), depth=2, dtype="float64").dtype == np.float64
    with pytest.raises(Exception, match="dtype must be"):
        gw.one_hot(gw.Graph().input("i", (3,), "int64"), depth=2, dtype="int8")


# ---------------------------------------------------------------- pad


@pytest.mark.parametrize("pads", [[1, 0, 2, 3], [0, 2, 0, 1], [2, 2, 2, 2]])
def test_pad_constant_matches_np_pad_and_slices_back(pads, rng):
    x = rng.normal(size=(3, 4))
    _adjoint("pad", x, rng, pads=pads)  # linear with value 0; the value only shifts it
    y = _run("pad", x, pads=pads, value=-1.5)
    want = np.pad(x, [(pads[0], pads[2]), (pads[1], pads[3])], constant_values=-1.5)
    np.testing.assert_array_equal(y, want)


@needs_str
@pytest.mark.parametrize("mode", ["reflect", "edge"])
@pytest.mark.parametrize("shape,pads", [((3, 4), [2, 1, 1, 3]), ((2, 3, 4), [1, 0, 2, 0, 2, 3]), ((4,), [3, 3])])
def test_pad_reflect_and_edge_match_np_pad_and_fold_back(mode, shape, pads, rng):
    x = rng.normal(size=shape)
    y, gx = _adjoint("pad", x, rng, pads=pads, mode=mode)
    r = len(shape)
    np.testing.assert_array_equal(y, np.pad(x, [(pads[k], pads[k + r]) for k in range(r)], mode=mode))
    # the transpose, column by column of the (linear) pad
    ones = _grads("pad", np.ones(y.shape), x, pads=pads, mode=mode)[0]
    counts = np.zeros(x.size)
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = 1
        counts[i] = _run("pad", e.reshape(shape), pads=pads, mode=mode).sum()
    np.testing.assert_array_equal(ones.ravel(), counts)


@needs_str
def test_pad_refuses_reflect_pads_as_large_as_the_axis_and_unknown_modes():
    g = gw.Graph()
    x = g.input("x", (None, 3), F64)
    with pytest.raises(GraphError, match=r"reflect pads \(0, 3\) on axis 1 must be smaller than its size 3"):
        gw.pad(x, pads=[0, 0, 0, 3], mode="reflect")
    with pytest.raises(GraphError, match="pad mode must be one of"):
        gw.pad(x, pads=[0, 0, 0, 1], mode="wrap")
    with pytest.raises(GraphError, match="2 \\* rank = 4 entries"):
        gw.pad(x, pads=[1, 1])


# ---------------------------------------------------------------- split, tile, expand, flatten, squeeze


def test_split_pieces_reassemble_and_follow_onnx(rng):
    x = rng.normal(size=(3, 7))
    pieces = [_run("split", x, index=i, axis=1, split=[2, 0, 5]) for i in range(3)]
    assert [p.shape for p in pieces] == [(3, 2), (3, 0), (3, 5)]
    np.testing.assert_array_equal(np.concatenate(pieces, axis=1), x)
    # num_outputs: ceil(7 / 4) = 2 per piece, the last smaller
    pieces = [_run("split", x, index=i, axis=-1, num_outputs=4) for i in range(4)]
    assert [p.shape[1] for p in pieces] == [2, 2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(pieces, axis=1), x)
    _, gx = _adjoint("split", x, rng, index=1, axis=1, split=[3, 4])
    assert np.all(gx[:, :3] == 0)
    g = gw.Graph()
    v = g.input("v", (None, 7), F64)
    with pytest.raises(GraphError, match=r"split sizes \[3, 3\] do not add up to the axis size 7"):
        gw.split(v, index=0, axis=1, split=[3, 3])
    with pytest.raises(GraphError, match="piece index 2 is out of range for 2 pieces"):
        gw.split(v, index=2, axis=1, split=[3, 4])
    assert "ONE output" in OPS["split"].doc


def test_tile_and_expand_match_numpy_and_sum_back(rng):
    x = rng.normal(size=(2, 3))
    y, _ = _adjoint("tile", x, rng, repeats=[2, 3])
    np.testing.assert_array_equal(y, np.tile(x, (2, 3)))
    (gx,) = _grads("tile", np.ones(y.shape), x, repeats=[2, 3])
    np.testing.assert_array_equal(gx, np.full(x.shape, 6.0))
    x = rng.normal(size=(3, 1))
    y, _ = _adjoint("expand", x, rng, shape=[2, 1, 4])  # two-way: (3, 1) with (2, 1, 4)
    np.testing.assert_array_equal(y, np.broadcast_to(x, (2, 3, 4)))
    y = _run("expand", rng.normal(size=(2, 1, 3)), shape=[4, 1])
    assert y.shape == (2, 4, 3)


def test_flatten_squeeze_unsqueeze_shapes(rng):
    x = rng.normal(size=(2, 3, 4))
    assert _run("flatten", x).shape == (2, 12)
    assert _run("flatten", x, axis=0).shape == (1, 24)
    assert _run("flatten", x, axis=3).shape == (24, 1)
    assert _run("flatten", x, axis=-2).shape == (2, 12)
    assert _run("squeeze", rng.normal(size=(1, 3, 1)), axes=[0, -1]).shape == (3,)
    assert _run("squeeze", rng.normal(size=(1, 3, 1))).shape == (3,)
    assert _run("unsqueeze", x, axes=[0, -1]).shape == (1, 2, 3, 4, 1)
    assert _run("unsqueeze", x, axes=[1, 3]).shape == (2, 1, 3, 1, 4)
    g = gw.Graph()
    v = g.input("v", (None, 3, 1), F64)
    assert gw.squeeze(v, axes=[-1]).shape == (None, 3)
    with pytest.raises(GraphError, match="cannot squeeze axis 1 of size 3"):
        gw.squeeze(v, axes=[1])
    with pytest.raises(GraphError, match="ambiguous"):
        gw.squeeze(v)


# ---------------------------------------------------------------- nll_loss, softmax_cross_entropy vs PyTorch's definitions


def torch_nll_loss(logp, target, weight=None, ignore_index=-100, reduction="mean"):
    """torch.nn.functional.nll_loss, written out: class axis 1, one term per target."""
    c = logp.shape[1]
    flat = np.moveaxis(logp, 1, -1).reshape(-1, c)
    t = target.reshape(-1)
    w = np.ones(c) if weight is None else weight
    losses, total_weight = np.zeros(t.size), 0.0
    for n in range(t.size):
        if t[n] == ignore_index:
            continue
        losses[n] = -w[t[n]] * flat[n, t[n]]
        total_weight += w[t[n]]
    if reduction == "none":
        return losses.reshape(target.shape)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / total_weight if total_weight else np.nan


def torch_cross_entropy(logits, target, **kw):
    z = logits - logits.max(axis=1, keepdims=True)
    return torch_nll_loss(z - np.log(np.exp(z).sum(axis=1, keepdims=True)), target, **kw)


def _loss_inputs(rng, rank):
    shape = {2: (7, 4), 3: (3, 4, 5), 4: (2, 4, 3, 2)}[rank]
    logits = rng.normal(size=shape)
    target = rng.integers(0, 4, size=shape[:1] + shape[2:])
    target.flat[::3] = -100  # every third target ignored
    return logits, target, rng.uniform(0.2, 3.0, 4)


REDUCTIONS = ["mean", "sum", "none"]


def _kw(reduction):
    return {} if reduction == "mean" else {"reduction": reduction}


@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_losses_match_pytorch_definitions(rank, reduction, weighted, ignore, rng):
    if reduction != "mean" and not str_attrs_supported():
        pytest.skip("the validator takes no str attributes yet")
    logits, target, weight = _loss_inputs(rng, rank)
    if not ignore:
        target = np.where(target == -100, 1, target)
    kw = {"weight": weight if weighted else None, "ignore_index": -100, "reduction": reduction}
    extra = (weight,) if weighted else ()
    attrs = {**_kw(reduction), **({"ignore_index": -100} if ignore else {})}
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(_run("nll_loss", logp, target, *extra, **attrs), torch_nll_loss(logp, target, **kw),
                               rtol=1e-12)
    got = _run("softmax_cross_entropy", logits, target, *extra, **attrs)
    np.testing.assert_allclose(got, torch_cross_entropy(logits, target, **kw), rtol=1e-12)
    assert OPS["softmax_cross_entropy"].infer(*map(TensorSpec.of, (logits, target, *extra)),
                                              **normalize_attrs(Node("n", "softmax_cross_entropy",
                                                                     ("a", "b", "c")[:2 + weighted], attrs))) \
        == TensorSpec.of(np.asarray(got))
    # gradients (logits and class weights) against central differences of the reference
    g = np.random.default_rng(1).normal(size=np.shape(got))
    grads = _grads("softmax_cross_entropy", g, logits, target, *extra, **attrs)
    assert grads[1] is None

    def f(z, w):
        return float(np.sum(g * torch_cross_entropy(z, target, **{**kw, "weight": w if weighted else None})))

    v, u, eps = rng.normal(size=logits.shape), rng.normal(size=4), 1e-6
    numeric = (f(logits + eps * v, weight) - f(logits - eps * v, weight)) / (2 * eps)
    assert np.sum(grads[0] * v) == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    if weighted:
        numeric = (f(logits, weight + eps * u) - f(logits, weight - eps * u)) / (2 * eps)
        assert np.sum(grads[2] * u) == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_softmax_cross_entropy_defaults_are_unchanged(rng):
    logits, labels = rng.normal(size=(6, 4)), rng.integers(0, 4, 6)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    assert _run("softmax_cross_entropy", logits, labels) == pytest.approx(-logp[np.arange(6), labels].mean(), rel=1e-14)
    (gl, gy) = OPS["softmax_cross_entropy"].input_grads([True, False], 1.0, None, [logits, labels], {})
    np.testing.assert_allclose(gl, (np.exp(logp) - np.eye(4)[labels]) / 6, rtol=1e-12)


def test_all_targets_ignored_gives_nan_as_pytorch():
    y = _run("nll_loss", np.zeros((2, 3)), np.array([-100, -100]), ignore_index=-100)
    assert np.isnan(y)


def test_labels_out_of_range_are_refused_but_ignored_ones_may_be_anything():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values in \[0, 3\]"):
        _run("nll_loss", np.zeros((2, 3)), np.array([0, 3]))
    assert _run("nll_loss", np.zeros((2, 3)), np.array([0, 77]), ignore_index=77) == 0.0


def test_weight_must_match_the_classes():
    g = gw.Graph()
    x, y = g.input("x", (None, 4), F64), g.input("y", (None,), "int64")
    with pytest.raises(GraphError, match=r"class weights must have shape \(4,\), got \(3,\)"):
        gw.nll_loss(x, y, g.param("w", (3,), F64))
    with pytest.raises(GraphError, match="dtype mismatch"):
        gw.nll_loss(x, y, g.param("w32", (4,), "float32"))
    with pytest.raises(GraphError, match=r"differ in spatial dims"):
        gw.softmax_cross_entropy(g.input("z", (None, 4, 3)), g.input("t", (None, 2), "int64"))


# ---------------------------------------------------------------- the losses' batch decomposition, end to end


def _loss_graph(weighted=False, ignore_index=None, reduction="mean", op="softmax_cross_entropy"):
    g = gw.Graph()
    x, y, w = g.input("x", (None, 3, 2), F64), g.input("y", (None, 2), "int64"), g.param("w", (3, 3), F64)
    logits = gw.transpose(gw.matmul(gw.transpose(x, perm=[0, 2, 1]), w), perm=[0, 2, 1])  # (n, 3 classes, 2)
    extra = [g.const(np.array([0.5, 2.0, 1.0]), F64)] if weighted else []
    if op == "nll_loss":
        logits = gw.log_softmax(logits, axis=1)
    attrs = {"ignore_index": ignore_index, **_kw(reduction)}
    loss = gw.call(op, logits, y, *extra, name="xent", **attrs)
    if reduction == "none":
        loss = gw.sum(loss)
    g.set_loss(loss, batch_reduction="sum" if reduction != "mean" else "mean")
    return g


@pytest.mark.parametrize("op", ["softmax_cross_entropy", "nll_loss"])
@pytest.mark.parametrize("weighted,ignore_index,reduction,sharded", [
    (False, None, "mean", "mean"),
    (True, None, "mean", None),
    (False, -100, "mean", None),
    (True, -100, "sum", "sum"),
    (True, -100, "none", "sum"),
])
def test_loss_sharding_follows_weights_and_ignore_index(op, weighted, ignore_index, reduction, sharded, rng):
    if reduction != "mean" and not str_attrs_supported():
        pytest.skip("the validator takes no str attributes yet")
    g = _loss_graph(weighted, ignore_index, reduction, op)
    lb = Program(g.graph_def).loss_batching
    assert lb.reduction == sharded, lb.reason
    if sharded is None:
        assert "node 'xent'" in lb.reason and "divides by a sum over the whole batch" in lb.reason, lb.reason
    params = {"w": rng.normal(size=(3, 3))}
    y = rng.integers(0, 3, size=(11, 2))
    if ignore_index is not None:
        y[::4, 0] = ignore_index
    batch = {"x": rng.normal(size=(11, 3, 2)), "y": y}
    loss, grads = gw.local().value_and_grad(g, params, batch)
    loss4, grads4 = gw.local(shards=4).value_and_grad(g, params, batch)
    np.testing.assert_allclose(loss4, loss, rtol=1e-12)
    np.testing.assert_allclose(grads4["w"], grads["w"], rtol=1e-10, atol=1e-14)
    logits = np.einsum("ncd,ce->ned", batch["x"], params["w"])
    want = torch_cross_entropy(logits, y, weight=np.array([0.5, 2.0, 1.0]) if weighted else None,
                               ignore_index=-100 if ignore_index is None else ignore_index, reduction=reduction)
    assert loss == pytest.approx(float(np.sum(want)), rel=1e-12)
