"""Core workloads: the engine against hand-written NumPy (and PyTorch where installed)."""

from __future__ import annotations


import numpy as np

from .registry import Config, Row, row, workload
from .timing import (
    blas_info,
    blas_threads,
    describe_pools,
    interleaved,
    median,
    mib,
    peak_memory,
    summarize,
)

# ---------------------------------------------------------------- mlp

MLP_SIZES = (784, 512, 512, 10)
MLP_BATCH = 8192
MLP_QUICK_BATCH = 256
MLP_TIME_TARGET = 1.10  # engine median / hand-written NumPy median
MLP_MEMORY_TARGET = 1.3  # engine peak extra bytes / hand-written NumPy peak extra bytes
MLP_RTOL = 1e-4
PARAM_NAMES = ("W1", "b1", "W2", "b2", "W3", "b3")


def mlp_data(batch: int, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Float32 parameters (scaled-normal weights, small biases) and a random batch."""
    rng = np.random.default_rng(seed)
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(MLP_SIZES[:-1], MLP_SIZES[1:]), start=1):
        params[f"W{i}"] = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        params[f"b{i}"] = (0.01 * rng.standard_normal(fan_out)).astype(np.float32)
    batch = {
        "x": rng.standard_normal((batch, MLP_SIZES[0])).astype(np.float32),
        "y": rng.integers(0, MLP_SIZES[-1], size=batch).astype(np.int64),
    }
    return params, batch


def mlp_graph():
    """The MLP built with the SDK, exactly as a user would."""
    import gradwire as gw

    d0, d1, d2, d3 = MLP_SIZES
    g = gw.Graph()
    x = g.input("x", shape=(None, d0))
    y = g.input("y", shape=(None,), dtype="int64")
    W1, b1 = g.param("W1", shape=(d0, d1)), g.param("b1", shape=(d1,))
    W2, b2 = g.param("W2", shape=(d1, d2)), g.param("b2", shape=(d2,))
    W3, b3 = g.param("W3", shape=(d2, d3)), g.param("b3", shape=(d3,))
    h1 = gw.relu(x @ W1 + b1)
    h2 = gw.sigmoid(h1 @ W2 + b2)
    g.set_loss(gw.softmax_cross_entropy(h2 @ W3 + b3, y))
    return g


def softmax_cross_entropy_numpy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient w.r.t. the logits, (softmax - onehot) / n."""
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(s[:, 0]) - shifted[rows, y]))
    dlogits = e / s
    dlogits[rows, y] -= 1
    dlogits /= n
    return loss, dlogits


def mlp_numpy(params: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    """Hand-written forward + backward of the same net, written the way one normally would:
    plain NumPy expressions, no in-place tricks, no gradient for x."""
    W1, b1, W2, b2, W3, b3 = (params[k] for k in PARAM_NAMES)
    x, y = batch["x"], batch["y"]
    # forward
    z1 = x @ W1 + b1
    h1 = np.maximum(z1, 0)
    z2 = h1 @ W2 + b2
    h2 = 1 / (1 + np.exp(-z2))
    logits = h2 @ W3 + b3
    loss, dlogits = softmax_cross_entropy_numpy(logits, y)
    # backward
    dW3 = h2.T @ dlogits
    db3 = dlogits.sum(axis=0)
    dz2 = (dlogits @ W3.T) * h2 * (1 - h2)
    dW2 = h1.T @ dz2
    db2 = dz2.sum(axis=0)
    dz1 = (dz2 @ W2.T) * (z1 > 0)
    dW1 = x.T @ dz1
    db1 = dz1.sum(axis=0)
    return loss, {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2, "W3": dW3, "b3": db3}


def mlp_torch_fn(params: dict[str, np.ndarray], batch: dict[str, np.ndarray]):
    """PyTorch autograd on the same net (float32); returns a zero-argument callable."""
    import torch

    tp = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in params.items()}
    x, y = torch.from_numpy(batch["x"]), torch.from_numpy(batch["y"])
    plist = [tp[k] for k in PARAM_NAMES]

    def step():
        W1, b1, W2, b2, W3, b3 = plist
        h1 = torch.relu(x @ W1 + b1)
        h2 = torch.sigmoid(h1 @ W2 + b2)
        loss = torch.nn.functional.cross_entropy(h2 @ W3 + b3, y)
        grads = torch.autograd.grad(loss, plist)
        return float(loss.detach()), dict(zip(PARAM_NAMES, grads))

    return step


def _compare(ref: tuple[float, dict], got: tuple[float, dict], rtol: float) -> tuple[bool, float, str]:
    """allclose of loss and every gradient; atol is rtol times the gradient's largest entry,
    so entries that are ~0 by cancellation do not fail on float32 rounding alone.
    Returns (ok, worst |got - ref| / max|ref| over all tensors, the tensor where it is)."""
    (ref_loss, ref_g), (loss, grads) = ref, got
    ok = bool(np.isclose(loss, ref_loss, rtol=rtol, atol=0))
    worst, where = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30), "loss"
    for k in PARAM_NAMES:
        a, b = np.asarray(grads[k], dtype=np.float64), np.asarray(ref_g[k], dtype=np.float64)
        scale = float(np.abs(b).max()) or 1.0
        ok &= a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=rtol * scale))
        err = float(np.abs(a - b).max()) / scale
        if err > worst:
            worst, where = err, k
    return ok, worst, where


def _ms(seconds: list[float]) -> list[float]:
    return [round(s * 1e3, 3) for s in seconds]


def _alone_row(variants, cfg: Config, common: dict) -> Row:
    """Each variant timed back to back on its own: interleaved with NumPy's calls, torch's
    OpenMP threads meet OpenBLAS's threads still spinning (on 2 cores torch slowed ~1.6x)."""
    alone = {name: median(interleaved({name: fn}, repeats=cfg.repeats, warmup=cfg.warmup)[name]) * 1e3
             for name, fn in variants.items()}
    return row("mlp/run alone: engine vs torch", ratio=alone["engine"] / alone["torch"],
               notes=f"medians run alone: engine {alone['engine']:.1f} ms, numpy {alone['numpy']:.1f} ms, "
                     f"torch {alone['torch']:.1f} ms; ratio = engine / torch", **common)


@workload("mlp")
def mlp(cfg: Config) -> list[Row]:
    """MLP 784-512-512-10 (relu, sigmoid, softmax CE), float32: one value_and_grad per call."""
    import gradwire as gw

    n = MLP_QUICK_BATCH if cfg.quick else MLP_BATCH
    params, batch = mlp_data(n)
    graph = mlp_graph()
    engine = gw.local()

    def run_engine():
        return engine.value_and_grad(graph, params, batch)

    def run_numpy():
        return mlp_numpy(params, batch)

    variants = {"engine": run_engine, "numpy": run_numpy}

    threads = blas_threads()
    torch_note = ""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure just skips the variant
        torch = None
        torch_note = f"torch unavailable ({type(exc).__name__}: {exc})"
    if torch is not None:
        if threads:
            torch.set_num_threads(threads)
        run_torch = mlp_torch_fn(params, batch)
        variants["torch"] = run_torch
        torch_note = f"torch {torch.__version__}, set_num_threads={torch.get_num_threads()}"

    cfg.log(f"[mlp] batch={n} sizes={'-'.join(map(str, MLP_SIZES))} float32, "
            f"repeats={cfg.repeats} warmup={cfg.warmup}, numpy {np.__version__}")
    for line in describe_pools(blas_info()):
        cfg.log(f"[mlp] threadpool: {line}")
    cfg.log(f"[mlp] {torch_note}")

    # correctness, once: the comparison is only honest if all variants compute the same thing
    ref = run_numpy()
    eng_ok, eng_err, eng_where = _compare(ref, run_engine(), MLP_RTOL)
    cfg.log(f"[mlp] check engine vs numpy: loss {ref[0]:.6f}, allclose(rtol={MLP_RTOL:g}) "
            f"{'OK' if eng_ok else 'MISMATCH'}, worst |diff|/max|ref| = {eng_err:.2e} ({eng_where})")
    checks = [row("mlp/check engine==numpy", target=f"allclose rtol {MLP_RTOL:g}", passed=eng_ok,
                  notes=f"worst |diff|/max|ref| {eng_err:.1e} ({eng_where})", worst_rel_err=eng_err)]
    if "torch" in variants:
        # Informational only: a different BLAS rounds z1 = x @ W1 + b1 differently, and an
        # entry within ~1e-7 of 0 flips the relu mask, moving a W1/b1 gradient entry by a
        # whole term. With batch 8192 that happens (about one entry in 4M); no bug either way.
        t_ok, t_err, t_where = _compare(ref, variants["torch"](), MLP_RTOL)
        cfg.log(f"[mlp] check torch vs numpy (informational): allclose(rtol={MLP_RTOL:g}) "
                f"{'OK' if t_ok else 'differs'}, worst |diff|/max|ref| = {t_err:.2e} ({t_where})")
        checks.append(row("mlp/check torch~numpy", target="info",
                          notes=f"allclose {'yes' if t_ok else 'no'}; worst |diff|/max|ref| {t_err:.1e} ({t_where})"
                                + ("" if t_ok else "; relu-mask flips near 0"),
                          allclose=t_ok, worst_rel_err=t_err))

    samples = interleaved(variants, repeats=cfg.repeats, warmup=cfg.warmup)
    stats = {k: summarize(v) for k, v in samples.items()}
    base = stats["numpy"]["median_ms"]

    def paired(name: str) -> float:
        # median over rounds of (variant / numpy) in the same round: robust to slow drift
        return median([a / b for a, b in zip(samples[name], samples["numpy"])])

    mem_engine = peak_memory(run_engine)
    mem_numpy = peak_memory(run_numpy)
    mem_ratio = mem_engine / mem_numpy

    common = {"batch": n, "threads": threads}
    gate = not cfg.quick  # a --quick run is a smoke test: its timings decide nothing

    def verdict(ratio: float, target: float) -> bool | None:
        return ratio <= target if gate else None

    rows = [
        row("mlp/numpy (hand-written)", stats=stats["numpy"], ratio=1.0,
            notes=f"baseline; BLAS threads={threads}", samples_ms=_ms(samples["numpy"]), **common),
        row("mlp/engine", stats=stats["engine"], ratio=stats["engine"]["median_ms"] / base,
            target=MLP_TIME_TARGET, passed=verdict(stats["engine"]["median_ms"] / base, MLP_TIME_TARGET),
            notes=f"engine median / numpy median; per-round paired {paired('engine'):.3f}",
            paired_ratio=paired("engine"), samples_ms=_ms(samples["engine"]), **common),
    ]
    if "torch" in stats:
        rows.append(row("mlp/torch autograd", stats=stats["torch"], ratio=stats["torch"]["median_ms"] / base,
                        notes=f"torch median / numpy median; paired {paired('torch'):.3f}; "
                              f"torch threads={torch.get_num_threads()}",
                        paired_ratio=paired("torch"), torch_threads=torch.get_num_threads(),
                        samples_ms=_ms(samples["torch"]), **common))
        rows.append(_alone_row(variants, cfg, common))
    else:
        rows.append(row("mlp/torch autograd", notes=torch_note))
    rows.append(row("mlp/peak memory", ratio=mem_ratio, target=MLP_MEMORY_TARGET,
                    passed=verdict(mem_ratio, MLP_MEMORY_TARGET),
                    notes=f"engine {mib(mem_engine):.1f} MiB / numpy {mib(mem_numpy):.1f} MiB (tracemalloc)",
                    engine_peak_bytes=mem_engine, numpy_peak_bytes=mem_numpy, **common))
    return rows + checks
