"""Training workload (issue 5): the digits MLP trained as a server-side job on the Ray backend
against a plain hand-written NumPy training loop of the same model, optimizer and batches.

``train_digits``: ``examples/mlp.py``'s ``build()`` (64-64-10, relu, softmax cross-entropy)
on scikit-learn's bundled 8x8 digits (``examples/digits.py``'s ``digits_split``), Adam,
batch 64, a few epochs, through a server with the Ray backend and 2 workers. The gradwire
time runs from ``client.submit_job`` to ``job.result()`` returning the trained parameters;
the NumPy loop visits the same batches in the same order (the server's seeded per-epoch
permutation) with the same Adam formulas. Throughput is ``steps * batch_size / seconds`` for
both. Also reported: the held-out accuracy of the gradwire-trained parameters, and the
server loop's own rate (its last progress event), which leaves out submission and upload.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before anything imports ray

import numpy as np  # noqa: E402

from .registry import Config, Row, row, workload  # noqa: E402
from .timing import median, summarize  # noqa: E402
from .workloads_core import softmax_cross_entropy_numpy  # noqa: E402
from .workloads_service import ms_list, paired_ratio, scaled_repeats, timed  # noqa: E402

TRAIN_TARGET = 0.7  # gradwire examples/s / hand-written NumPy examples/s, at least
TRAIN_BATCH = 64
TRAIN_EPOCHS = 10
TRAIN_QUICK_EPOCHS = 1
TRAIN_LR = 3e-3
TRAIN_REPEATS = 3  # whole training runs per variant
TRAIN_WORKERS = 2


def _examples_dir() -> Path | None:
    import gradwire

    here = Path(gradwire.__file__).resolve().parent.parent / "examples"
    return here if (here / "mlp.py").is_file() and (here / "digits.py").is_file() else None


def _load_examples(directory: Path):
    """``build`` from examples/mlp.py and ``digits_split`` from examples/digits.py."""
    import runpy

    build = runpy.run_path(str(directory / "mlp.py"))["build"]
    digits_split = runpy.run_path(str(directory / "digits.py"))["digits_split"]
    return build, digits_split


# ---------------------------------------------------------------- the hand-written reference


def _forward_backward(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    """relu(x @ w1 + b1) @ w2 + b2 under mean softmax cross-entropy, by hand."""
    z1 = x @ p["w1"] + p["b1"]
    h1 = np.maximum(z1, 0)
    loss, d = softmax_cross_entropy_numpy(h1 @ p["w2"] + p["b2"], y)
    dh1 = (d @ p["w2"].T) * (z1 > 0)
    return loss, {"w1": x.T @ dh1, "b1": dh1.sum(axis=0), "w2": h1.T @ d, "b2": d.sum(axis=0)}


def numpy_train(params: dict[str, np.ndarray], data: dict[str, np.ndarray], batch_size: int, epochs: int,
                lr: float, seed: int = 0, betas=(0.9, 0.999), eps: float = 1e-8) -> tuple[dict, int, float]:
    """The plain loop: the server's batch order (``default_rng([seed, epoch]).permutation``,
    rows sorted), Adam as ``torch.optim.Adam``; returns (params, steps, last loss)."""
    x_all, y_all = data["x"], data["y"]
    n = len(x_all)
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2 = betas
    step, loss = 0, float("nan")
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for start in range(0, n, batch_size):
            rows = np.sort(order[start:start + batch_size])
            loss, g = _forward_backward(p, x_all[rows], y_all[rows])
            step += 1
            c1, c2 = 1 - b1 ** step, 1 - b2 ** step
            for k in p:
                m[k] = b1 * m[k] + (1 - b1) * g[k]
                v2[k] = b2 * v2[k] + (1 - b2) * (g[k] * g[k])
                denom = np.sqrt(v2[k]) / math.sqrt(c2) + eps
                p[k] = (p[k] - (lr / c1) * (m[k] / denom)).astype(p[k].dtype, copy=False)
    return p, step, loss


def _accuracy(params: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> float:
    h = np.maximum(data["x"] @ params["w1"] + params["b1"], 0)
    return float(np.mean(np.argmax(h @ params["w2"] + params["b2"], axis=1) == data["y"]))


# ---------------------------------------------------------------- the workload


@workload("train_digits")
def train_digits(cfg: Config) -> list[Row]:
    """Digits MLP: a Ray-backend training job (submit -> result) vs a hand-written NumPy loop."""
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:
        return [row("train_digits/skipped", notes=f"scikit-learn is not installed ({exc}); no digits data")]
    directory = _examples_dir()
    if directory is None:
        return [row("train_digits/skipped", notes="examples/mlp.py and examples/digits.py not found")]

    import gradwire as gw
    from .workloads_ray import ray_server

    build, digits_split = _load_examples(directory)
    graph, params0 = build(seed=0)
    train, test = digits_split()
    epochs = TRAIN_QUICK_EPOCHS if cfg.quick else TRAIN_EPOCHS
    repeats = scaled_repeats(cfg, "train_digits", TRAIN_REPEATS, floor=1)
    n = len(train["x"])
    steps = math.ceil(n / TRAIN_BATCH) * epochs
    examples = steps * TRAIN_BATCH
    optimizer = gw.optim.Adam(lr=TRAIN_LR)
    trained: dict[str, dict] = {}
    loop_rates: dict[str, list[float]] = {}
    job_steps: dict[str, int] = {}

    t0 = time.perf_counter()
    with ray_server(workers=TRAIN_WORKERS, blas_threads=1) as (server, address), gw.connect(address) as client:
        started = time.perf_counter() - t0
        default_shards = server.config.shards

        def run_job(key: str, shards: int):
            def run():
                job = client.submit_job(graph, params0, train, optimizer, batch_size=TRAIN_BATCH, epochs=epochs,
                                        seed=0, shards=shards)
                last_rate, last = 0.0, None
                for event in job.watch():
                    last = event
                    if event.state == "running":
                        last_rate = event.examples_per_s
                out = job.result()
                if last is None or last.state != "done":
                    raise RuntimeError(f"training job ended {last.state if last else 'without events'}: "
                                       f"{last.message if last else ''}")
                trained[key], job_steps[key] = out, last.step
                loop_rates.setdefault(key, []).append(last_rate)
                return out
            return run

        def run_numpy():
            p, s, _ = numpy_train(params0, train, TRAIN_BATCH, epochs, TRAIN_LR)
            trained["numpy"], job_steps["numpy"] = p, s
            return p

        variants = {"gradwire": run_job("gradwire", 0), "numpy": run_numpy}
        if TRAIN_WORKERS != default_shards:
            variants["gradwire_sw"] = run_job("gradwire_sw", TRAIN_WORKERS)
        cfg.log(f"[train_digits] {n} training / {len(test['x'])} held-out digits, batch {TRAIN_BATCH}, {epochs} "
                f"epoch(s) = {steps} steps, Adam lr {TRAIN_LR:g}; Ray server ({TRAIN_WORKERS} workers) up in "
                f"{started:.1f}s; {repeats} run(s) per variant interleaved after 1 warm-up run each")
        samples = timed(variants, repeats=repeats, warmup=1)

    stats = {k: summarize(v) for k, v in samples.items()}
    eps = {k: examples / (s["median_ms"] / 1e3) for k, s in stats.items()}
    acc = {k: _accuracy(p, test) for k, p in trained.items()}
    diff = max(float(np.max(np.abs(trained["gradwire"][k] - trained["numpy"][k]))) for k in params0)
    steps_ok = all(s == steps for s in job_steps.values())
    gate = not cfg.quick
    ratio = eps["gradwire"] / eps["numpy"]
    rows = [
        row("train_digits/numpy loop (hand-written)", stats=stats["numpy"], ratio=1.0,
            notes=f"baseline; {eps['numpy']:,.0f} examples/s; {steps} steps x batch {TRAIN_BATCH}; held-out "
                  f"accuracy {acc['numpy']:.1%}", examples_per_s=eps["numpy"], accuracy=acc["numpy"],
            samples_ms=ms_list(samples["numpy"])),
        row(f"train_digits/gradwire job (ray {TRAIN_WORKERS}w, shards={default_shards})", stats=stats["gradwire"],
            ratio=ratio, target=f">= {TRAIN_TARGET:g}", passed=(ratio >= TRAIN_TARGET and steps_ok) if gate else None,
            notes=f"ratio = gradwire ex/s / numpy ex/s; {eps['gradwire']:,.0f} examples/s submit->result; server "
                  f"loop alone {median(loop_rates['gradwire']):,.0f} ex/s "
                  f"({TRAIN_BATCH / median(loop_rates['gradwire']) * 1e3:.1f} ms/step); paired "
                  f"{1 / paired_ratio(samples['gradwire'], samples['numpy']):.4f}",
            examples_per_s=eps["gradwire"], loop_examples_per_s=median(loop_rates["gradwire"]),
            samples_ms=ms_list(samples["gradwire"])),
    ]
    if "gradwire_sw" in stats:
        r = eps["gradwire_sw"] / eps["numpy"]
        rows.append(row(f"train_digits/gradwire job (shards={TRAIN_WORKERS}, info)", stats=stats["gradwire_sw"],
                        ratio=r, notes=f"one shard per worker; {eps['gradwire_sw']:,.0f} examples/s; server loop "
                                       f"alone {median(loop_rates['gradwire_sw']):,.0f} ex/s",
                        examples_per_s=eps["gradwire_sw"], loop_examples_per_s=median(loop_rates["gradwire_sw"]),
                        samples_ms=ms_list(samples["gradwire_sw"])))
    rows.append(row("train_digits/held-out accuracy (gradwire)", target="info",
                    notes=f"{acc['gradwire']:.1%} after {epochs} epoch(s) (numpy loop {acc['numpy']:.1%}); max "
                          f"|param diff| vs numpy loop {diff:.1e}; steps {job_steps}",
                    accuracy=acc["gradwire"], numpy_accuracy=acc["numpy"], max_param_diff=diff))
    return rows
