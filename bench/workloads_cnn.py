"""A small CNN's step (issue 13): two 3x3 conv layers of 32 and 64 channels, ReLU, 2x2 max-pool,
a linear layer; 32x32x3 inputs, batch 128, float32, forward and backward. gw.local() against a
hand-written NumPy im2col reference (target <= 1.1x) and PyTorch CPU with the same threads
(target <= 1.5x; unavailable when torch is not installed), peak memory beside each.

Two floor rows explain the gap to PyTorch, measured in the same run: the step's GEMMs alone
(what BLAS needs, in the layouts gradwire uses) and gradwire's convolution kernels alone (forward,
dw of both layers and the second layer's dx: im2col gathers, the GEMMs and col2im), as if every
other op (ReLU, pooling, bias, the loss) were free."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view as swv

from .registry import Config, Row, row, workload
from .timing import median, peak_memory, summarize
from .workloads_service import paired_ratio, scaled_repeats, timed

NUMPY_TARGET, TORCH_TARGET = 1.1, 1.5


def _problem(n: int, c1: int = 32, c2: int = 64):
    import gradwire as gw

    F = np.float32
    rng = np.random.default_rng(0)
    params = {"w1": (rng.normal(size=(c1, 3, 3, 3)) * 0.2).astype(F), "b1": np.zeros(c1, F),
              "w2": (rng.normal(size=(c2, c1, 3, 3)) * 0.05).astype(F), "b2": np.zeros(c2, F),
              "wf": (rng.normal(size=(c2 * 8 * 8, 10)) * 0.02).astype(F)}
    batch = {"x": rng.normal(size=(n, 3, 32, 32)).astype(F), "y": rng.integers(0, 10, n).astype(np.int64)}
    g = gw.Graph()
    x, y = g.input("x", (None, 3, 32, 32)), g.input("y", (None,), "int64")
    p = {k: g.param(k, v.shape) for k, v in params.items()}
    h = gw.max_pool2d(gw.relu(gw.conv2d(x, p["w1"], p["b1"], padding=[1, 1])), kernel=[2, 2])
    h = gw.max_pool2d(gw.relu(gw.conv2d(h, p["w2"], p["b2"], padding=[1, 1])), kernel=[2, 2])
    g.set_loss(gw.softmax_cross_entropy(gw.reshape(h, shape=[-1, c2 * 8 * 8]) @ p["wf"], y))
    return g, params, batch


# ---------------------------------------------------------------- the hand-written reference

def conv_f(x, w, b):
    n, c, hh, ww = x.shape; co = w.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = swv(xp, (3, 3), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5).reshape(n * hh * ww, c * 9)
    out = (cols @ w.reshape(co, -1).T + b).reshape(n, hh, ww, co).transpose(0, 3, 1, 2)
    return out, cols

def conv_b(g, x, w, cols):
    n, c, hh, ww = x.shape; co = w.shape[0]
    gm = g.transpose(0, 2, 3, 1).reshape(-1, co)
    dw = (gm.T @ cols).reshape(w.shape); db = gm.sum(0)
    dcols = (gm @ w.reshape(co, -1)).reshape(n, hh, ww, c, 3, 3)
    dxp = np.zeros((n, c, hh + 2, ww + 2), x.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, :, i:i + hh, j:j + ww] += dcols[..., i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, 1:-1, 1:-1], dw, db

def pool_f(x):
    n, c, hh, ww = x.shape
    r = x.reshape(n, c, hh // 2, 2, ww // 2, 2)
    y = r.max(axis=(3, 5))
    return y, r

def pool_b(g, r, y):
    m = (r == y[:, :, :, None, :, None])
    # first max only
    flat = m.transpose(0, 1, 2, 4, 3, 5).reshape(*y.shape, 4)
    first = np.argmax(flat, -1)
    oh = (np.arange(4) == first[..., None]) * g[..., None]
    return oh.reshape(*y.shape, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(r.shape[0], r.shape[1], y.shape[2] * 2, y.shape[3] * 2)

def ref(P, B):
    x, yl = B["x"], B["y"]
    a1, c1 = conv_f(x, P["w1"], P["b1"]); r1 = np.maximum(a1, 0); p1, q1 = pool_f(r1)
    a2, c2 = conv_f(p1, P["w2"], P["b2"]); r2 = np.maximum(a2, 0); p2, q2 = pool_f(r2)
    n = x.shape[0]
    f = p2.reshape(n, -1); z = f @ P["wf"]
    z = z - z.max(1, keepdims=True); e = np.exp(z); s = e / e.sum(1, keepdims=True)
    loss = -np.log(s[np.arange(n), yl]).mean()
    dz = s.copy(); dz[np.arange(n), yl] -= 1; dz /= n
    gwf = f.T @ dz; df = (dz @ P["wf"].T).reshape(p2.shape)
    dr2 = pool_b(df, q2, p2) * (a2 > 0)
    dp1, gw2, gb2 = conv_b(dr2, p1, P["w2"], c2)
    dr1 = pool_b(dp1, q1, p1) * (a1 > 0)
    _, gw1, gb1 = conv_b(dr1, x, P["w1"], c1)
    return loss, {"w1": gw1, "b1": gb1, "w2": gw2, "b2": gb2, "wf": gwf}



def _torch_step(params, batch):
    try:
        import torch
    except ImportError:
        return None
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    x, y = torch.tensor(batch["x"]), torch.tensor(batch["y"])

    def step():
        for v in tp.values():
            v.grad = None
        h = torch.nn.functional.conv2d(x, tp["w1"], tp["b1"], padding=1).relu()
        h = torch.nn.functional.max_pool2d(h, 2)
        h = torch.nn.functional.conv2d(h, tp["w2"], tp["b2"], padding=1).relu()
        h = torch.nn.functional.max_pool2d(h, 2)
        loss = torch.nn.functional.cross_entropy(h.reshape(h.shape[0], -1) @ tp["wf"], y)
        loss.backward()
        return loss
    return step


def _floors(params, batch):
    """``(gemms, convolutions)``: the step's GEMMs alone, and its convolution kernels alone."""
    from ..worker.ops.conv import _channel_cols, _conv, _conv_dw, _conv_dx

    s, d, pads, one = (1, 1), (1, 1), (1, 1, 1, 1), 1
    x1 = batch["x"]
    n = x1.shape[0]
    w1, w2 = params["w1"], params["w2"]
    x2 = np.zeros((n, w1.shape[0], x1.shape[2] // 2, x1.shape[3] // 2), x1.dtype)  # after the first pool
    g1 = np.ones((n, w1.shape[0]) + x1.shape[2:], x1.dtype)
    g2 = np.ones((n, w2.shape[0]) + x2.shape[2:], x1.dtype)
    cols1, cols2 = (_channel_cols(x, w.shape[2:], s, d, pads, one)[0] for x, w in ((x1, w1), (x2, w2)))
    mats = [(w.reshape(1, 1, w.shape[0], -1), c, g.reshape(n, 1, w.shape[0], -1))
            for w, c, g in ((w1, cols1, g1), (w2, cols2, g2))]

    def gemms():
        for wm, cols, gm in mats:
            np.matmul(wm, cols)  # forward
            np.matmul(gm, cols.transpose(0, 1, 3, 2))  # dw, before the sum over examples
        wm, _, gm = mats[1]
        np.matmul(wm.transpose(0, 1, 3, 2), gm)  # the second layer's dx, before col2im

    def convolutions():
        for x, w, g in ((x1, w1, g1), (x2, w2, g2)):
            _conv(x, w, s, d, pads, one)
            _conv_dw(x, g, w.shape, s, d, pads, one)
        _conv_dx(g2, w2, x2.shape, s, d, pads, one)

    return gemms, convolutions


@workload("cnn")
def cnn(cfg: Config) -> list[Row]:
    import gradwire as gw

    n = 16 if cfg.quick else 128
    g, params, batch = _problem(n, *((8, 16) if cfg.quick else (32, 64)))
    engine = gw.local()
    loss, grads = engine.value_and_grad(g, params, batch)
    ref_loss, ref_grads = ref(params, batch)
    worst = max(float(np.abs(grads[k] - ref_grads[k]).max() / (np.abs(ref_grads[k]).max() + 1e-30)) for k in params)
    variants = {"gradwire": lambda: engine.value_and_grad(g, params, batch), "numpy": lambda: ref(params, batch)}
    variants["floor_gemms"], variants["floor_convolutions"] = _floors(params, batch)
    torch_step = _torch_step(params, batch)
    if torch_step is not None:
        variants["torch"] = torch_step
    repeats = scaled_repeats(cfg, "cnn", 12, floor=3)
    samples = timed(variants, repeats, max(1, cfg.warmup))
    if torch_step is not None:  # interleaved, torch's threads meet OpenBLAS's still spinning: alone, too
        samples["torch_alone"] = timed({"torch": torch_step}, repeats, max(1, cfg.warmup))["torch"]
    memory = {name: peak_memory(fn) for name, fn in variants.items() if not name.startswith("floor")}
    rows = [row("cnn/numpy im2col reference", stats=summarize(samples["numpy"]), peak_bytes=memory["numpy"],
                notes=f"batch {n}; gradwire's gradients within {worst:.1e} of it (relative)"),
            row("cnn/gradwire vs numpy", stats=summarize(samples["gradwire"]), peak_bytes=memory["gradwire"],
                ratio=paired_ratio(samples["gradwire"], samples["numpy"]), target=NUMPY_TARGET,
                notes=f"peak {memory['gradwire'] / 1e6:.0f} MB vs {memory['numpy'] / 1e6:.0f} MB")]
    if torch_step is None:
        rows.append(row("cnn/gradwire vs torch", notes="unavailable: torch is not installed"))
    else:
        rows.append(row("cnn/gradwire vs torch, interleaved", stats=summarize(samples["torch"]),
                        ratio=paired_ratio(samples["gradwire"], samples["torch"]),
                        notes="rounds interleaved with the NumPy variants, whose BLAS threads still spin "
                              "beside torch's; torch's peak memory is not traced by tracemalloc"))
        rows.append(row("cnn/gradwire vs torch run alone", stats=summarize(samples["torch_alone"]),
                        ratio=median(samples["gradwire"]) / median(samples["torch_alone"]), target=TORCH_TARGET,
                        notes="torch's steps back to back after the interleaved rounds; ratio of medians"))
    baseline = "torch_alone" if torch_step is not None else "gradwire"
    for key, what in (("floor_gemms", "the step's GEMMs alone"),
                      ("floor_convolutions", "gradwire's convolution kernels alone (im2col, GEMMs, col2im)")):
        rows.append(row(f"cnn/floor: {what}", stats=summarize(samples[key]),
                        ratio=median(samples[key]) / median(samples[baseline]),
                        notes=f"ratio = this / {'torch run alone' if torch_step is not None else 'a gradwire step'}; "
                              "every other op free"))
    return rows
