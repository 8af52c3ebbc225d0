"""Train the MLP of examples/mlp.py on scikit-learn's bundled 8x8 digits (no download)
through a gradwire server with the Ray backend, and report held-out accuracy.

    pip install -e ".[examples]" && python examples/digits.py [--backend local|ray] [--server HOST:PORT]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import gradwire as gw
from gradwire.cli.train import follow, load_model, server_address


def digits_split(seed: int = 0, test_fraction: float = 0.2):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixel values 0..16 -> 0..1
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return {"x": x[train], "y": y[train]}, {"x": x[test], "y": y[test]}


def accuracy(graph, params, data) -> float:
    logits = gw.local().run(graph, params, data, fetch=("logits",)).outputs["logits"]
    return float(np.mean(np.argmax(logits, axis=1) == data["y"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server")
    parser.add_argument("--backend", default="ray", choices=["local", "ray"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--shards", type=int, default=2,
                        help="micro-shards per step: one per worker suits batches this small")
    args = parser.parse_args()

    graph, params = load_model(str(Path(__file__).with_name("mlp.py")), seed=0)
    train, test = digits_split()
    start = time.perf_counter()
    with server_address(args.server, args.backend, args.workers) as address, gw.connect(address) as client:
        job = client.submit_job(graph, params, train, gw.optim.Adam(lr=args.lr), batch_size=args.batch_size,
                                epochs=args.epochs, seed=0, shards=args.shards)
        print(f"job {job.job_id} on {address} ({args.backend} backend)")
        losses, last = follow(job)
        trained = job.result()
    elapsed = time.perf_counter() - start
    print(f"{len(train['x'])} training / {len(test['x'])} held-out digits; {last.total_steps} steps on "
          f"{args.backend} backend in {elapsed:.1f}s (incl. server start); final loss {last.loss:.4f}")
    acc = accuracy(graph, trained, test)
    print(f"held-out accuracy {acc:.1%}")
    return 0 if acc >= 0.95 else 1


if __name__ == "__main__":
    raise SystemExit(main())
