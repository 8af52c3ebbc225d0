"""gradwire demo: the main job on one machine. Starts a coordinator on the embedded
default settings (loopback, an OS-chosen port), connects the SDK to it, computes an MLP's
loss and gradients remotely, checks them against the local engine, then trains a few
SGD steps through a server-side session (steps ship batches; updates ship parameters)."""

from __future__ import annotations

import time

import numpy as np

import gradwire as gw
from . import ArgumentParser, UsageError


def mlp(inputs: int = 64, hidden: int = 128, classes: int = 10) -> gw.Graph:
    g = gw.Graph()
    x = g.input("x", shape=(None, inputs))
    y = g.input("y", shape=(None,), dtype="int64")
    w1, b1 = g.param("w1", shape=(inputs, hidden)), g.param("b1", shape=(hidden,))
    w2, b2 = g.param("w2", shape=(hidden, classes)), g.param("b2", shape=(classes,))
    logits = gw.add(gw.relu(x @ w1 + b1) @ w2, b2, name="logits")
    g.set_loss(gw.softmax_cross_entropy(logits, y))
    return g


def synthetic_data(rng: np.random.Generator, n: int, inputs: int = 64, classes: int = 10):
    """Separable clusters, made on the spot: the demo needs no download."""
    centers = rng.normal(size=(classes, inputs)).astype(np.float32) * 2
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(size=(n, inputs)).astype(np.float32)
    return x, y


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="gradwire demo", description=__doc__)
    parser.add_argument("--backend", default="local", choices=["local", "ray"], help="where the server computes")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (--backend ray)")
    parser.add_argument("--steps", type=int, default=20, help="SGD steps through a session")
    parser.add_argument("--lr", type=float, default=0.5, help="SGD learning rate")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.steps < 0:
        parser.error("--workers must be at least 1 and --steps 0 or more")

    from gradwire.server.app import create_server
    from gradwire.server.config import ServerConfig
    from gradwire.server.job_store import private_job_dir

    rng = np.random.default_rng(0)
    graph = mlp()
    params = {name: (rng.normal(size=spec.shape) * 0.1).astype(spec.dtype)
              for name, spec in graph.graph_def.params.items()}
    x, y = synthetic_data(rng, 4096)
    with private_job_dir() as job_dir:  # its server's jobs are this command's alone
        try:
            started = create_server(ServerConfig(port=0, backend=args.backend, workers=args.workers, job_dir=job_dir))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot start a server here: {exc}") from None
        return _demo(started, graph, params, x, y, args, rng)


def _demo(started, graph, params, x, y, args, rng) -> int:
    server, port = started
    try:
        with gw.connect(f"127.0.0.1:{port}") as client:
            print(f"server on 127.0.0.1:{port} (backend={args.backend})")
            loss, grads, info = client.value_and_grad(graph, params, {"x": x, "y": y}, return_info=True)
            local_loss, local_grads = gw.local(shards=info["shard_count"]).value_and_grad(
                graph, params, {"x": x, "y": y})
            print(f"loss {loss:.6f} over {len(x)} examples in {info['shard_count']} shards "
                  f"(local engine: {local_loss:.6f})")
            for name, grad in grads.items():
                diff = np.abs(grad - local_grads[name]).max()
                print(f"  grad {name:3s} {str(grad.shape):12s} norm {np.linalg.norm(grad):.6f}  max |remote-local| {diff:.1e}")

            session = client.session(graph, params)
            sent = client.bytes_sent
            start = time.perf_counter()
            for step in range(1, args.steps + 1):
                batch = rng.integers(0, len(x), size=256)
                loss, grads = session.value_and_grad({"x": x[batch], "y": y[batch]})
                params = {k: v - args.lr * grads[k] for k, v in params.items()}
                session.update(params)
                if step == 1 or step % 5 == 0:
                    print(f"  step {step:3d}  loss {loss:.4f}")
            elapsed = time.perf_counter() - start
            logits = gw.local().run(graph, params, {"x": x, "y": y}, fetch=("logits",)).outputs["logits"]
            accuracy = np.mean(np.argmax(logits, axis=1) == y)
            print(f"{args.steps} session steps in {elapsed:.2f}s, {(client.bytes_sent - sent) / 1e6:.1f} MB sent; "
                  f"training accuracy {accuracy:.1%}")
    finally:
        server.stop(0)
    return 0

