"""gradwire against PyTorch autograd on the same float64 graphs: losses and every gradient
agree to 1e-10 (the two differ only in summation order)."""

from __future__ import annotations

import numpy as np
import pytest

import gradwire as gw

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL, ATOL = 1e-10, 1e-12


def _t(a, grad=False):
    return torch.tensor(np.asarray(a), requires_grad=grad)


def _compare(result, loss_t, params_t, inputs_t=None):
    loss_t.backward()
    assert result.loss == pytest.approx(loss_t.item(), rel=RTOL, abs=ATOL)
    assert set(result.grads) == set(params_t)
    for name, p in params_t.items():
        got = result.grads[name]
        assert got.dtype == np.float64 and got.shape == tuple(p.shape)
        np.testing.assert_allclose(got, p.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)
    for name, p in (inputs_t or {}).items():
        np.testing.assert_allclose(result.input_grads[name], p.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


# ------------------------------------------------------------------ MLP with softmax cross-entropy

SIZES = (20, 16, 12, 5)
BATCH = 32


def _mlp_graph():
    g = gw.Graph()
    x = g.input("x", shape=(None, SIZES[0]), dtype="float64")
    y = g.input("y", shape=(None,), dtype="int64")
    W1 = g.param("W1", shape=SIZES[0:2], dtype="float64")
    b1 = g.param("b1", shape=SIZES[1:2], dtype="float64")
    W2 = g.param("W2", shape=SIZES[1:3], dtype="float64")
    b2 = g.param("b2", shape=SIZES[2:3], dtype="float64")
    W3 = g.param("W3", shape=SIZES[2:4], dtype="float64")
    b3 = g.param("b3", shape=SIZES[3:4], dtype="float64")
    h1 = gw.relu(x @ W1 + b1)
    h2 = gw.sigmoid(h1 @ W2 + b2)
    g.set_loss(gw.softmax_cross_entropy(h2 @ W3 + b3, y))
    return g


def _mlp_data():
    rng = np.random.default_rng(42)
    params = {}
    for i, (a, b) in enumerate(zip(SIZES, SIZES[1:]), start=1):
        params[f"W{i}"] = rng.normal(size=(a, b)) / np.sqrt(a)
        params[f"b{i}"] = rng.normal(size=b) * 0.1
    batch = {"x": rng.normal(size=(BATCH, SIZES[0])), "y": rng.integers(0, SIZES[-1], size=BATCH)}
    return params, batch


def _mlp_torch(params, batch):
    p = {k: _t(v, grad=True) for k, v in params.items()}
    x = _t(batch["x"], grad=True)
    h1 = torch.relu(x @ p["W1"] + p["b1"])
    h2 = torch.sigmoid(h1 @ p["W2"] + p["b2"])
    loss = F.cross_entropy(h2 @ p["W3"] + p["b3"], _t(batch["y"]))
    return loss, p, x


@pytest.mark.parametrize("shards", [1, 4, 5])
def test_mlp_softmax_cross_entropy_matches_torch(shards):
    params, batch = _mlp_data()
    result = gw.local(shards=shards).run(_mlp_graph(), params, batch, wrt=(*params, "x"))
    loss_t, p, x = _mlp_torch(params, batch)
    _compare(result, loss_t, p, {"x": x})


def test_mlp_value_and_grad_matches_torch():
    params, batch = _mlp_data()
    loss, grads = gw.local().value_and_grad(_mlp_graph(), params, batch)
    loss_t, p, _ = _mlp_torch(params, batch)
    loss_t.backward()
    assert isinstance(loss, float) and loss == pytest.approx(loss_t.item(), rel=RTOL)
    for k in params:
        np.testing.assert_allclose(grads[k], p[k].grad.numpy(), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ losses, softmax family, max, concat, slice, where


def _mixed_graph():
    g = gw.Graph()
    x = g.input("x", shape=(None, 6), dtype="float64")
    t = g.input("t", shape=(None, 4), dtype="float64")
    u = g.input("u", shape=(None, 4), dtype="float64")
    mask = g.input("mask", shape=(None, 4), dtype="bool")
    W = g.param("W", shape=(6, 8), dtype="float64")
    V = g.param("V", shape=(8, 4), dtype="float64")
    h = gw.tanh(x @ W)
    a = gw.slice(h, starts=[0], ends=[4], axes=[1])
    b = gw.slice(h, starts=[1], ends=[8], axes=[1], steps=[2])
    c = gw.concat(a * b, a - b, axis=1)
    z = c @ V
    ls = gw.log_softmax(z, axis=-1)
    sm = gw.softmax(z, axis=1)
    w = gw.where(mask, ls, sm)
    m = gw.max(w, axis=1)
    top = gw.max(z, axis=[1], keepdims=True)  # per example: the loss stays a per-example mean
    loss = (gw.mse(z, t) + gw.binary_cross_entropy_with_logits(z, u) + gw.mean(m)
            + gw.mean(gw.sum(sm * ls, axis=1)) + 0.1 * gw.mean(top))
    g.set_loss(loss)
    return g


def _mixed_data():
    rng = np.random.default_rng(7)
    n = 12
    params = {"W": rng.normal(size=(6, 8)) / 2, "V": rng.normal(size=(8, 4))}
    batch = {"x": rng.normal(size=(n, 6)), "t": rng.normal(size=(n, 4)), "u": rng.uniform(size=(n, 4)),
             "mask": rng.uniform(size=(n, 4)) > 0.5}
    return params, batch


@pytest.mark.parametrize("shards", [1, 3])
def test_losses_softmax_max_concat_slice_where_match_torch(shards):
    params, batch = _mixed_data()
    result = gw.local(shards=shards).run(_mixed_graph(), params, batch, wrt=("W", "V", "x", "u"))
    p = {k: _t(v, grad=True) for k, v in params.items()}
    x, u = _t(batch["x"], grad=True), _t(batch["u"], grad=True)
    t, mask = _t(batch["t"]), _t(batch["mask"])
    h = torch.tanh(x @ p["W"])
    a, b = h[:, 0:4], h[:, 1:8:2]
    z = torch.cat([a * b, a - b], dim=1) @ p["V"]
    ls, sm = torch.log_softmax(z, dim=-1), torch.softmax(z, dim=1)
    m = torch.where(mask, ls, sm).amax(dim=1)
    loss = (F.mse_loss(z, t) + F.binary_cross_entropy_with_logits(z, u) + m.mean()
            + (sm * ls).sum(dim=1).mean() + 0.1 * z.amax(dim=(1,), keepdim=True).mean())
    _compare(result, loss, p, {"x": x, "u": u})


# ------------------------------------------------------------------ the remaining elementwise and shape ops


def test_remaining_ops_match_torch():
    g = gw.Graph()
    x = g.input("x", shape=(None, 3, 4), dtype="float64")
    P = g.param("P", shape=(4,), dtype="float64")
    Q = g.param("Q", shape=(3, 4), dtype="float64")
    e = gw.exp(x * 0.3)
    d = gw.log(e + 1.0) / gw.sqrt(gw.square(x) + 1.0)
    pw = gw.pow(gw.abs(x - P) + 0.5, exponent=1.5)
    mixed = gw.maximum(d, Q) + gw.minimum(pw, -Q) - 2.0 / (pw + 1.0)
    r = gw.reshape(gw.transpose(mixed, perm=[0, 2, 1]), shape=[-1, 12])
    bt = gw.broadcast_to(P, shape=[3, 4])
    g.set_loss(gw.mean(r * r) + gw.sum(bt * Q) + gw.mean(gw.neg(gw.sub(Q, x))) + gw.sum(gw.transpose(Q) @ Q))

    rng = np.random.default_rng(3)
    params = {"P": rng.normal(size=4), "Q": rng.normal(size=(3, 4))}
    batch = {"x": rng.normal(size=(5, 3, 4))}
    result = gw.local().run(g, params, batch, wrt=("P", "Q", "x"))

    p = {k: _t(v, grad=True) for k, v in params.items()}
    xt = _t(batch["x"], grad=True)
    e = torch.exp(xt * 0.3)
    d = torch.log(e + 1.0) / torch.sqrt(xt * xt + 1.0)
    pw = torch.pow(torch.abs(xt - p["P"]) + 0.5, 1.5)
    mixed = torch.maximum(d, p["Q"]) + torch.minimum(pw, -p["Q"]) - 2.0 / (pw + 1.0)
    r = mixed.permute(0, 2, 1).reshape(-1, 12)
    bt = p["P"].broadcast_to(3, 4)
    loss = (r * r).mean() + (bt * p["Q"]).sum() + (-(p["Q"] - xt)).mean() + (p["Q"].T @ p["Q"]).sum()
    _compare(result, loss, p, {"x": xt})


# ---------------------------------------------------------------- convolutions over random geometries


def _geometry(rng, transpose: bool) -> dict:
    groups = int(rng.choice([1, 2]))
    return {"groups": groups, "cin": groups * int(rng.integers(1, 4)), "cout": groups * int(rng.integers(1, 5)),
            "kernel": tuple(int(k) for k in rng.integers(1, 4, 2)), "stride": tuple(int(s) for s in rng.integers(1, 3, 2)),
            "dilation": tuple(int(d) for d in rng.integers(1, 3, 2)),
            "padding": tuple(int(p) for p in rng.integers(0, 2 if transpose else 3, 2)),
            "size": tuple(int(s) for s in rng.integers(1, 9, 2)), "n": int(rng.integers(1, 4))}


def _conv_case(rng, transpose: bool):
    """A random conv2d or conv_transpose2d (stride, dilation, padding, groups, output_padding) and
    torch's answer, or None where torch refuses the geometry too."""
    geo = _geometry(rng, transpose)
    cin, cout, groups = geo["cin"], geo["cout"], geo["groups"]
    x = rng.normal(size=(geo["n"], cin) + geo["size"])
    w = rng.normal(size=(cin, cout // groups) + geo["kernel"] if transpose else (cout, cin // groups) + geo["kernel"])
    b = rng.normal(size=cout)
    attrs = {"stride": list(geo["stride"]), "padding": list(geo["padding"]), "dilation": list(geo["dilation"]),
             "groups": groups}
    if transpose:
        attrs["output_padding"] = [int(rng.integers(0, s)) for s in geo["stride"]]
    ts = {k: _t(a, grad=True) for k, a in (("x", x), ("w", w), ("b", b))}
    torch_op = F.conv_transpose2d if transpose else F.conv2d
    try:
        y = torch_op(ts["x"], ts["w"], ts["b"], **{k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()})
    except RuntimeError:  # e.g. the kernel does not fit the padded input
        return None
    return {"x": x, "w": w, "b": b}, attrs, ts, y


@pytest.mark.parametrize("transpose", [False, True], ids=["conv2d", "conv_transpose2d"])
def test_convolutions_match_torch_over_random_geometries(transpose):
    rng = np.random.default_rng(7)
    checked = 0
    while checked < 60:
        case = _conv_case(rng, transpose)
        if case is None:
            continue
        arrays, attrs, ts, y = case
        weights = rng.normal(size=tuple(y.shape))
        g = gw.Graph()
        v = {k: g.param(k, a.shape, "float64") for k, a in arrays.items()}
        op = gw.conv_transpose2d if transpose else gw.conv2d
        g.set_loss(gw.sum(op(v["x"], v["w"], v["b"], **attrs) * g.const(weights, "float64")))
        result = gw.local().run(g, arrays, {})
        _compare(result, (y * _t(weights)).sum(), ts)
        checked += 1
