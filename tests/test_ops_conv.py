"""conv2d, conv_transpose2d, pooling, normalization and dropout against direct (loop-based,
slow, tests only) references; pooling ties; batch_norm train vs eval and its coupling;
dropout masks independent of sharding. The registry-driven gradient checks (tests/test_ops.py)
cover every op's VJPs through its samples; the batch rules are in tests/test_batching.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import gradwire as gw
from gradwire.worker.engine import Program
from gradwire.worker.graph import Node
from gradwire.worker.ops import OPS, ShapeError
from gradwire.worker.ops.conv import _pads
from gradwire.worker.ops.norm import dropout_keep
from gradwire.worker.spec import TensorSpec
from gradwire.worker.validate import normalize_attrs

F64 = "float64"


def _attrs(op, attrs, n_inputs=1):
    return normalize_attrs(Node("n", op, tuple(f"x{i}" for i in range(n_inputs)), dict(attrs)))


def _run(op, *xs, **attrs):
    a = _attrs(op, attrs, len(xs))
    y = OPS[op].forward(*xs, **a)
    assert OPS[op].infer(*[TensorSpec.of(x) for x in xs], **a) == TensorSpec.of(y)
    return y


# ------------------------------------------------------------------ references (direct loops)


def _resolve(x_shape, k, attrs):
    s = tuple(attrs.get("stride") or k)
    d = tuple(attrs.get("dilation", (1, 1)))
    return s, d, _pads(x_shape[2:], k, s, attrs.get("padding", (0, 0)), d, attrs.get("auto_pad", 0))


def _padded(x, pads, value=0.0):
    t, left, b, r = pads
    return np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)), constant_values=value)


def ref_conv2d(x, w, b=None, **attrs):
    n, c, h, wd = x.shape
    co, cg, kh, kw = w.shape
    groups = attrs.get("groups", 1)
    (sh, sw), (dh, dw), pads = _resolve(x.shape, (kh, kw), {"stride": (1, 1), **attrs})
    xp = _padded(x, pads)
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, co, ho, wo))
    per = co // groups
    for ni, o, i, j in itertools.product(range(n), range(co), range(ho), range(wo)):
        gi = o // per
        acc = 0.0
        for ci, p, q in itertools.product(range(cg), range(kh), range(kw)):
            acc += w[o, ci, p, q] * xp[ni, gi * cg + ci, i * sh + p * dh, j * sw + q * dw]
        y[ni, o, i, j] = acc + (0.0 if b is None else b[o])
    return y


def ref_conv_transpose2d(x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                         dilation=(1, 1), groups=1):
    n, ci, h, wd = x.shape
    _, cog, kh, kw = w.shape
    p = tuple(padding)
    t, left, bottom, right = (p[0], p[1], p[0], p[1]) if len(p) == 2 else p
    (sh, sw), (dh, dw), (oh, ow) = stride, dilation, output_padding
    H = (h - 1) * sh - t - bottom + dh * (kh - 1) + oh + 1
    W = (wd - 1) * sw - left - right + dw * (kw - 1) + ow + 1
    y = np.zeros((n, cog * groups, H, W))
    per = ci // groups
    for ni, c, i, j, a, q, o in itertools.product(range(n), range(ci), range(h), range(wd), range(kh), range(kw),
                                                  range(cog)):
        r, s = i * sh + a * dh - t, j * sw + q * dw - left
        if 0 <= r < H and 0 <= s < W:
            y[ni, (c // per) * cog + o, r, s] += x[ni, c, i, j] * w[c, o, a, q]
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def _windows(x, kind, kernel, **attrs):
    """Each output's window as a list of (value, (row, col) or None for padding)."""
    kh, kw = kernel
    (sh, sw), (dh, dw), (t, left, b, r) = _resolve(x.shape, kernel, attrs)
    h, w = x.shape[2:]
    ho = (h + t + b - dh * (kh - 1) - 1) // sh + 1
    wo = (w + left + r - dw * (kw - 1) - 1) // sw + 1
    for i, j in itertools.product(range(ho), range(wo)):
        cells = []
        for p, q in itertools.product(range(kh), range(kw)):
            rr, cc = i * sh + p * dh - t, j * sw + q * dw - left
            cells.append((rr, cc) if 0 <= rr < h and 0 <= cc < w else None)
        yield i, j, cells, (ho, wo)


def ref_pool(x, kind, kernel, count_include_pad=False, **attrs):
    out = None
    for i, j, cells, shape in _windows(x, kind, kernel, **attrs):
        if out is None:
            out = np.zeros(x.shape[:2] + shape)
        real = [c for c in cells if c is not None]
        vals = np.stack([x[:, :, r, c] for r, c in real], axis=-1)
        if kind == "max":
            out[:, :, i, j] = vals.max(axis=-1)  # padding is -inf
        else:
            out[:, :, i, j] = vals.sum(axis=-1) / (len(cells) if count_include_pad else len(real))
    return out


def ref_max_pool_grad(x, g, kernel, **attrs):
    dx = np.zeros_like(x)
    for i, j, cells, _ in _windows(x, "max", kernel, **attrs):
        real = [c for c in cells if c is not None]
        for ni, ci in itertools.product(range(x.shape[0]), range(x.shape[1])):
            vals = [x[ni, ci, r, c] for r, c in real]
            r, c = real[int(np.argmax(vals))]  # the first maximum in window order
            dx[ni, ci, r, c] += g[ni, ci, i, j]
    return dx


# ------------------------------------------------------------------ conv2d

CONV_CASES = [
    ((2, 3, 7, 6), (4, 3, 3, 3), {}),
    ((1, 2, 7, 8), (3, 2, 3, 2), {"stride": [2, 3]}),
    ((2, 2, 6, 6), (2, 2, 3, 3), {"padding": [1, 2]}),
    ((1, 2, 6, 7), (2, 2, 2, 3), {"padding": [0, 1, 2, 0], "stride": [2, 1]}),
    ((1, 3, 9, 8), (2, 3, 3, 2), {"dilation": [2, 3], "padding": [2, 1]}),
    ((2, 4, 6, 6), (6, 2, 3, 3), {"groups": 2, "padding": [1, 1]}),
    ((1, 6, 5, 5), (6, 1, 3, 3), {"groups": 6, "stride": [2, 2], "padding": [1, 1]}),  # depthwise
    ((1, 4, 8, 7), (4, 1, 2, 3), {"groups": 4, "dilation": [2, 2], "stride": [2, 1], "padding": [1, 1, 0, 2]}),
    ((1, 2, 7, 6), (3, 2, 3, 3), {"auto_pad": 1, "stride": [2, 2]}),
    ((1, 2, 6, 5), (3, 2, 2, 4), {"auto_pad": 2, "stride": [2, 1]}),
    ((1, 2, 6, 5), (3, 2, 2, 2), {"auto_pad": 1, "dilation": [2, 2]}),
    ((1, 2, 6, 5), (3, 2, 3, 3), {"auto_pad": 3, "padding": [5, 5]}),  # VALID ignores padding
]


@pytest.mark.parametrize("xs,ws,attrs", CONV_CASES, ids=[str(c[2]) for c in CONV_CASES])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_matches_the_direct_sum(xs, ws, attrs, bias, rng):
    x, w = rng.normal(size=xs), rng.normal(size=ws)
    b = rng.normal(size=ws[0]) if bias else None
    args = (x, w, b) if bias else (x, w)
    y = _run("conv2d", *args, **attrs)
    np.testing.assert_allclose(y, ref_conv2d(x, w, b, **attrs), rtol=1e-12, atol=1e-12)
    y32 = _run("conv2d", *[a.astype(np.float32) for a in args], **attrs)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y, rtol=1e-4, atol=1e-4)


def test_same_padding_keeps_ceil_of_input_over_stride(rng):
    for h, s, k in itertools.product((5, 6, 7), (1, 2, 3), (1, 2, 3)):
        y = _run("conv2d", rng.normal(size=(1, 1, h, h)), rng.normal(size=(1, 1, k, k)), auto_pad=1, stride=[s, s])
        assert y.shape[2:] == (-(-h // s),) * 2


def test_conv2d_shape_errors():
    f = TensorSpec((None, 4, 8, 8), np.dtype(F64))
    infer = OPS["conv2d"].infer
    assert infer(f, TensorSpec((6, 2, 3, 3), np.dtype(F64)), **_attrs("conv2d", {"groups": 2}, 2)).shape == (None, 6, 6, 6)
    for w_shape, attrs in [((6, 3, 3, 3), {}), ((5, 2, 3, 3), {"groups": 2}), ((6, 4, 9, 3), {}),
                           ((6, 4, 3, 3), {"stride": [0, 1]}), ((6, 4, 3, 3), {"padding": [1, 1, 1]}),
                           ((6, 4, 3, 3), {"auto_pad": 7})]:
        with pytest.raises(ShapeError):
            infer(f, TensorSpec(w_shape, np.dtype(F64)), **_attrs("conv2d", attrs, 2))


def test_conv2d_flops_rule():
    x, w = TensorSpec((8, 6, 10, 10), np.dtype(F64)), TensorSpec((4, 3, 3, 3), np.dtype(F64))
    attrs = _attrs("conv2d", {"groups": 2, "padding": [1, 1]}, 2)
    out = OPS["conv2d"].infer(x, w, **attrs)
    assert OPS["conv2d"].flops(out, x, w, **attrs) == 2 * 8 * 4 * 10 * 10 * (6 // 2) * 3 * 3


# ------------------------------------------------------------------ conv_transpose2d

TRANSPOSE_CASES = [
    ((2, 3, 3, 4), (3, 2, 3, 3), {}),
    ((1, 2, 3, 3), (2, 3, 3, 2), {"stride": [2, 3], "output_padding": [1, 2]}),
    ((1, 2, 4, 3), (2, 2, 3, 3), {"stride": [2, 2], "padding": [1, 1]}),
    ((1, 2, 3, 4), (2, 1, 2, 3), {"padding": [0, 1, 1, 0], "dilation": [2, 1]}),
    ((2, 4, 3, 3), (4, 3, 2, 2), {"groups": 2, "stride": [2, 1], "output_padding": [1, 0]}),
]


@pytest.mark.parametrize("xs,ws,attrs", TRANSPOSE_CASES, ids=[str(c[2]) for c in TRANSPOSE_CASES])
def test_conv_transpose2d_matches_the_direct_scatter(xs, ws, attrs, rng):
    x, w = rng.normal(size=xs), rng.normal(size=ws)
    b = rng.normal(size=ws[1] * attrs.get("groups", 1))
    y = _run("conv_transpose2d", x, w, b, **attrs)
    full = _attrs("conv_transpose2d", attrs, 3)
    np.testing.assert_allclose(y, ref_conv_transpose2d(x, w, b, **full), rtol=1e-12, atol=1e-12)


def test_conv_transpose2d_is_the_adjoint_of_conv2d(rng):
    """<conv2d(x, w), y> = <x, conv_transpose2d(y, w)> with the same geometry."""
    attrs = {"stride": [2, 2], "padding": [1, 1], "dilation": [1, 2], "groups": 2}
    x, w = rng.normal(size=(2, 4, 9, 9)), rng.normal(size=(6, 2, 3, 3))
    y = _run("conv2d", x, w, **attrs)
    v = rng.normal(size=y.shape)
    xt = _run("conv_transpose2d", v, w, **attrs)
    assert xt.shape == x.shape
    assert np.sum(y * v) == pytest.approx(np.sum(x * xt), rel=1e-12)


# ------------------------------------------------------------------ pooling

POOL_CASES = [
    ({"kernel": [2, 2]}, (2, 3, 6, 6)),
    ({"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1]}, (1, 2, 7, 6)),
    ({"kernel": [3, 2], "stride": [1, 2], "padding": [1, 0, 0, 1]}, (1, 2, 5, 6)),
    ({"kernel": [2, 2], "stride": [1, 1], "dilation": [2, 2], "padding": [1, 1]}, (1, 1, 6, 6)),
    ({"kernel": [3, 3], "stride": [2, 2], "auto_pad": 1}, (1, 2, 6, 5)),
]


@pytest.mark.parametrize("attrs,shape", POOL_CASES, ids=[str(c[0]) for c in POOL_CASES])
def test_pooling_matches_the_direct_windows(attrs, shape, rng):
    x = rng.normal(size=shape)
    np.testing.assert_allclose(_run("max_pool2d", x, **attrs), ref_pool(x, "max", **attrs), rtol=1e-14)
    for include in (False, True):
        np.testing.assert_allclose(_run("avg_pool2d", x, count_include_pad=include, **attrs),
                                   ref_pool(x, "avg", count_include_pad=include, **attrs), rtol=1e-13)
    y = _run("max_pool2d", x, **attrs)
    g = rng.normal(size=y.shape)
    (dx,) = OPS["max_pool2d"].input_grads([True], g, y, [x], _attrs("max_pool2d", attrs))
    np.testing.assert_allclose(dx, ref_max_pool_grad(x, g, **attrs), rtol=1e-14)


def test_max_pool_ties_send_the_gradient_to_the_first_maximum():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 2:, 2:] = [[5.0, 7.0], [7.0, 7.0]]  # window (1, 1): max 7 at (2, 3), (3, 2), (3, 3)
    attrs = _attrs("max_pool2d", {"kernel": [2, 2]})
    y = OPS["max_pool2d"].forward(x, **attrs)
    np.testing.assert_array_equal(y[0, 0], [[0.0, 0.0], [0.0, 7.0]])
    (dx,) = OPS["max_pool2d"].input_grads([True], np.ones_like(y), y, [x], attrs)
    want = np.zeros((4, 4))
    want[0, 0] = want[0, 2] = want[2, 0] = 1.0  # all-zero windows: their first element
    want[2, 3] = 1.0
    np.testing.assert_array_equal(dx[0, 0], want)
    # overlapping windows add up where each picks the same element
    attrs = _attrs("max_pool2d", {"kernel": [2, 2], "stride": [1, 1]})
    y = OPS["max_pool2d"].forward(x, **attrs)
    (dx,) = OPS["max_pool2d"].input_grads([True], np.ones_like(y), y, [x], attrs)
    assert dx.sum() == y.size and dx[0, 0, 2, 3] == 2.0
    # global max: the first maximum too
    (dg,) = OPS["global_max_pool2d"].input_grads([True], np.ones((1, 1, 1, 1)), np.full((1, 1, 1, 1), 7.0), [x], {})
    assert dg[0, 0, 2, 3] == 1.0 and dg.sum() == 1.0


def test_max_pool_padding_never_wins():
    x = -np.ones((1, 1, 3, 3))
    y = _run("max_pool2d", x, kernel=[2, 2], stride=[2, 2], padding=[1, 1])
    np.testing.assert_array_equal(y, -np.ones((1, 1, 2, 2)))
    spec = TensorSpec((1, 1, 6, 6), np.dtype(F64))
    for attrs in ({"kernel": [2, 2], "padding": [2, 0]}, {"kernel": [2, 2], "dilation": [2, 1], "padding": [3, 0]}):
        with pytest.raises(ShapeError, match="at most"):  # a window of padding only
            OPS["max_pool2d"].infer(spec, **_attrs("max_pool2d", attrs))


def test_global_pools(rng):
    x = rng.normal(size=(2, 3, 4, 5))
    np.testing.assert_allclose(_run("global_avg_pool2d", x), x.mean(axis=(2, 3), keepdims=True), rtol=1e-14)
    np.testing.assert_array_equal(_run("global_max_pool2d", x), x.max(axis=(2, 3), keepdims=True))
    np.testing.assert_allclose(_run("global_avg_pool2d", x), _run("avg_pool2d", x, kernel=[4, 5]), rtol=1e-14)


# ------------------------------------------------------------------ normalization


def _bn_inputs(rng, shape):
    c = shape[1]
    return (rng.normal(size=shape) * 3 + 1, rng.uniform(0.5, 1.5, c), rng.normal(size=c),
            rng.normal(size=c), rng.uniform(0.5, 2.0, c))


@pytest.mark.parametrize("shape", [(8, 3, 4, 5), (16, 4)])
def test_batch_norm_train_uses_batch_statistics_and_eval_the_running_ones(shape, rng):
    x, scale, bias, mean, var = _bn_inputs(rng, shape)
    axes = (0,) + tuple(range(2, x.ndim))
    bc = (1, -1) + (1,) * (x.ndim - 2)
    train = _run("batch_norm", x, scale, bias, mean, var, training=True, epsilon=1e-3)
    mu, sigma2 = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    np.testing.assert_allclose(train, (x - mu) / np.sqrt(sigma2 + 1e-3) * scale.reshape(bc) + bias.reshape(bc),
                               rtol=1e-12, atol=1e-12)
    # per channel, training output has the bias as its mean and |scale| (nearly) as its std
    np.testing.assert_allclose(train.mean(axis=axes), bias, atol=1e-12)
    ev = _run("batch_norm", x, scale, bias, mean, var)
    np.testing.assert_allclose(ev, (x - mean.reshape(bc)) / np.sqrt(var.reshape(bc) + 1e-5) * scale.reshape(bc)
                               + bias.reshape(bc), rtol=1e-12, atol=1e-12)
    # eval is per example, training is not
    np.testing.assert_allclose(_run("batch_norm", x[:3], scale, bias, mean, var), ev[:3], rtol=1e-14)
    assert not np.allclose(_run("batch_norm", x[:3], scale, bias, mean, var, training=True), train[:3])


def _bn_graph(training: bool):
    g = gw.Graph()
    x = g.input("x", (None, 2, 3, 3), F64)
    w, s, b = g.param("w", (3, 2, 2, 2), F64), g.param("s", (3,), F64), g.param("b", (3,), F64)
    rm, rv = g.const(np.zeros(3), F64), g.const(np.ones(3), F64)
    h = gw.batch_norm(gw.conv2d(x, w), s, b, rm, rv, training=training, name="bn")
    g.set_loss(gw.mean(gw.square(gw.relu(h))))
    return g


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_training_runs_whole_and_eval_shards(training, rng):
    g = _bn_graph(training)
    lb = Program(g.graph_def).loss_batching
    if training:
        assert lb.reduction is None and "node 'bn' (op 'batch_norm')" in lb.reason
        assert "statistics over the batch" in lb.reason
    else:
        assert lb.reduction == "mean"
    params = {"w": rng.normal(size=(3, 2, 2, 2)), "s": rng.uniform(0.5, 1.5, 3), "b": rng.normal(size=3)}
    batch = {"x": rng.normal(size=(10, 2, 3, 3))}
    loss1, grads1 = gw.local().value_and_grad(g, params, batch)
    loss3, grads3 = gw.local(shards=3).value_and_grad(g, params, batch)
    np.testing.assert_allclose(loss3, loss1, rtol=1e-12)
    for k in params:
        np.testing.assert_allclose(grads3[k], grads1[k], rtol=1e-10, atol=1e-13)
    if training:  # the very same (whole) run
        assert loss3 == loss1 and all(np.array_equal(grads3[k], grads1[k]) for k in params)


def test_layer_group_instance_norm_match_their_definitions(rng):
    x = rng.normal(size=(3, 6, 4, 5)) * 2 + 0.5

    def std(v, axes, eps=1e-5):
        return (v - v.mean(axis=axes, keepdims=True)) / np.sqrt(v.var(axis=axes, keepdims=True) + eps)

    s, b = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    np.testing.assert_allclose(_run("layer_norm", x, s, b, axis=2), std(x, (2, 3)) * s + b, rtol=1e-11, atol=1e-12)
    s, b = rng.normal(size=5), rng.normal(size=5)
    np.testing.assert_allclose(_run("layer_norm", x, s, b), std(x, (3,)) * s + b, rtol=1e-11, atol=1e-12)
    s, b = rng.normal(size=6), rng.normal(size=6)
    bc = (1, 6, 1, 1)
    gn = std(x.reshape(3, 3, 2, 4, 5), (2, 3, 4)).reshape(x.shape) * s.reshape(bc) + b.reshape(bc)
    np.testing.assert_allclose(_run("group_norm", x, s, b, num_groups=3), gn, rtol=1e-11, atol=1e-12)
    inorm = std(x, (2, 3)) * s.reshape(bc) + b.reshape(bc)
    np.testing.assert_allclose(_run("instance_norm", x, s, b), inorm, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(_run("group_norm", x, s, b, num_groups=6), inorm, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ dropout


def test_dropout_mask_is_a_function_of_seed_row_and_element():
    shape = (50, 4, 5)
    rows = np.arange(100, 150)
    keep = dropout_keep(shape, rows, 0.3, seed=11)
    assert keep.shape == shape and abs(1 - keep.mean() - 0.3) < 0.03
    np.testing.assert_array_equal(dropout_keep((7, 4, 5), rows[20:27], 0.3, seed=11), keep[20:27])
    np.testing.assert_array_equal(dropout_keep((3, 4, 5), rows[[5, 1, 40]], 0.3, seed=11), keep[[5, 1, 40]])
    assert not np.array_equal(dropout_keep(shape, rows, 0.3, seed=12), keep)
    assert dropout_keep(shape, rows, 0.0, seed=11).all()
    x = np.ones(shape, np.float32)
    y = _run("dropout", x, rows, ratio=0.3, seed=11)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.where(keep, np.float32(1 / 0.7), 0))
    np.testing.assert_array_equal(_run("dropout", x, rows, ratio=0.3, seed=11, training=False), x)


def _dropout_graph(with_rows: bool):
    g = gw.Graph()
    x, w = g.input("x", (None, 6), F64), g.param("w", (6,), F64)
    ins = (x * w, g.input("rows", (None,), "int64")) if with_rows else (x * w,)
    d = gw.dropout(*ins, ratio=0.4, seed=5, name="drop")
    g.set_loss(gw.mean(gw.square(d)))
    g.fetch(d)
    return g


def test_dropout_bits_do_not_depend_on_sharding(rng):
    g = _dropout_graph(True)
    assert Program(g.graph_def).loss_batching.reduction == "mean"
    params = {"w": rng.normal(size=6)}
    batch = {"x": rng.normal(size=(31, 6)), "rows": np.arange(31)}
    one = gw.local(shards=1).run(g, params, batch, fetch=("drop",))
    three = gw.local(shards=3).run(g, params, batch, fetch=("drop",))
    np.testing.assert_array_equal(three.outputs["drop"], one.outputs["drop"])  # the same bits
    np.testing.assert_allclose(three.loss, one.loss, rtol=1e-12)
    np.testing.assert_allclose(three.grads["w"], one.grads["w"], rtol=1e-12, atol=1e-14)
    keep = dropout_keep((31, 6), np.arange(31), 0.4, 5)
    np.testing.assert_array_equal(one.outputs["drop"] != 0, keep)
    # the gradient's zeros are the mask's: w's gradient is sum over examples of 2 d x / (0.6 N)
    d = one.outputs["drop"]
    np.testing.assert_allclose(one.grads["w"], (2 * d * keep * batch["x"] / 0.6).sum(axis=0) / d.size, rtol=1e-12)


def test_dropout_without_row_indices_does_not_shard(rng):
    g = _dropout_graph(False)
    lb = Program(g.graph_def).loss_batching
    assert lb.reduction is None and "dropout needs global row indices" in lb.reason
    params, batch = {"w": rng.normal(size=6)}, {"x": rng.normal(size=(31, 6))}
    one = gw.local(shards=1).run(g, params, batch, fetch=("drop",))
    three = gw.local(shards=3).run(g, params, batch, fetch=("drop",))
    np.testing.assert_array_equal(three.outputs["drop"], one.outputs["drop"])
    assert three.loss == one.loss


# ------------------------------------------------------------------ a small CNN end to end


def _cnn(n_classes=10):
    g = gw.Graph()
    x, y = g.input("x", (None, 3, 8, 8), F64), g.input("y", (None,), "int64")
    w1, b1 = g.param("w1", (4, 3, 3, 3), F64), g.param("b1", (4,), F64)
    w2, b2 = g.param("w2", (6, 4, 3, 3), F64), g.param("b2", (6,), F64)
    s, t = g.param("s", (6,), F64), g.param("t", (6,), F64)
    wf = g.param("wf", (6, n_classes), F64)
    h = gw.max_pool2d(gw.relu(gw.conv2d(x, w1, b1, padding=[1, 1])), kernel=[2, 2])
    h = gw.relu(gw.group_norm(gw.conv2d(h, w2, b2, stride=[2, 2], auto_pad=1), s, t, num_groups=2))
    logits = gw.reshape(gw.global_avg_pool2d(h), shape=[-1, 6]) @ wf
    g.set_loss(gw.softmax_cross_entropy(logits, y))
    return g


def test_a_small_cnn_shards_and_its_gradient_matches_finite_differences(rng):
    g = _cnn()
    params = {"w1": rng.normal(size=(4, 3, 3, 3)) * 0.5, "b1": rng.normal(size=4) * 0.1,
              "w2": rng.normal(size=(6, 4, 3, 3)) * 0.3, "b2": rng.normal(size=6) * 0.1,
              "s": rng.uniform(0.5, 1.5, 6), "t": rng.normal(size=6), "wf": rng.normal(size=(6, 10))}
    batch = {"x": rng.normal(size=(9, 3, 8, 8)), "y": rng.integers(0, 10, 9)}
    loss, grads = gw.local().value_and_grad(g, params, batch)
    loss3, grads3 = gw.local(shards=3).value_and_grad(g, params, batch)
    np.testing.assert_allclose(loss3, loss, rtol=1e-12)
    direction = {k: rng.normal(size=v.shape) for k, v in params.items()}
    eps = 1e-6

    def at(t):
        return gw.local().value_and_grad(g, {k: v + t * direction[k] for k, v in params.items()}, batch)[0]

    numeric = (at(eps) - at(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(grads[k] * direction[k])) for k in params)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    for k in params:
        np.testing.assert_allclose(grads3[k], grads[k], rtol=1e-9, atol=1e-12)
