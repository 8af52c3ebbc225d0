"""Train a small CNN on scikit-learn's bundled 8x8 digits (no download) as a gradwire training
job, and report held-out accuracy (the target: >= 98%).

    pip install -e ".[examples]" && python examples/cnn_digits.py [--backend local|ray] [--server HOST:PORT]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gradwire as gw
from gradwire.cli.train import follow, server_address
from digits import accuracy, digits_split  # examples/digits.py, beside this file


def digits_images(seed: int = 0, test_fraction: float = 0.2):
    """examples/digits.py's split, each image as (1, 8, 8): NCHW."""
    return tuple({"x": part["x"].reshape(-1, 1, 8, 8), "y": part["y"]} for part in digits_split(seed, test_fraction))


def cnn(seed: int = 0, c1: int = 16, c2: int = 32):
    """conv 3x3 -> relu -> max-pool 2 -> conv 3x3 -> relu -> max-pool 2 -> linear (logits)."""
    g = gw.Graph()
    x, y = g.input("x", (None, 1, 8, 8)), g.input("y", (None,), "int64")
    rng = np.random.default_rng(seed)
    shapes = {"w1": (c1, 1, 3, 3), "b1": (c1,), "w2": (c2, c1, 3, 3), "b2": (c2,), "wf": (c2 * 2 * 2, 10),
              "bf": (10,)}
    fan_in = {"w1": 9, "w2": 9 * c1, "wf": c2 * 4}
    params = {k: (rng.normal(size=s) * np.sqrt(2 / fan_in[k])).astype(np.float32) if k in fan_in
              else np.zeros(s, np.float32) for k, s in shapes.items()}
    p = {k: g.param(k, s) for k, s in shapes.items()}
    h = gw.max_pool2d(gw.relu(gw.conv2d(x, p["w1"], p["b1"], padding=[1, 1])), kernel=[2, 2])  # (c1, 4, 4)
    h = gw.max_pool2d(gw.relu(gw.conv2d(h, p["w2"], p["b2"], padding=[1, 1])), kernel=[2, 2])  # (c2, 2, 2)
    logits = gw.add(gw.reshape(h, shape=[-1, c2 * 4]) @ p["wf"], p["bf"], name="logits")
    g.set_loss(gw.softmax_cross_entropy(logits, y))
    return g, params


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server")
    parser.add_argument("--backend", default="local", choices=["local", "ray"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    graph, params = cnn()
    train, test = digits_images()
    start = time.perf_counter()
    with server_address(args.server, args.backend, args.workers) as address, gw.connect(address) as client:
        job = client.submit_job(graph, params, train, gw.optim.Adam(lr=args.lr), batch_size=args.batch_size,
                                epochs=args.epochs, seed=0)
        print(f"job {job.job_id} on {address} ({args.backend} backend)")
        _, last = follow(job)
        trained = job.result()
    elapsed = time.perf_counter() - start
    acc = accuracy(graph, trained, test)
    print(f"{len(train['x'])} training / {len(test['x'])} held-out digits; {last.total_steps} steps in "
          f"{elapsed:.1f}s; held-out accuracy {acc:.1%}")
    return 0 if acc >= 0.98 else 1


if __name__ == "__main__":
    raise SystemExit(main())
