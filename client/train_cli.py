"""``gradwire train`` and ``gradwire jobs``: training jobs from the command line.

A model file is Python defining ``build(seed) -> (gw.Graph, params)``; the data file is a
``.npz`` whose arrays are named after the graph's inputs. Without ``--server`` the job runs
on a server started here on the embedded defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import runpy
import sys
import time

import numpy as np

import gradwire as gw

OPTIMIZERS = {"sgd": gw.optim.SGD, "adam": gw.optim.Adam, "adamw": gw.optim.AdamW}


def load_model(path: str, seed: int):
    namespace = runpy.run_path(path)
    if "build" not in namespace:
        raise SystemExit(f"{path}: a model file must define build(seed) -> (gw.Graph, params)")
    return namespace["build"](seed)


@contextlib.contextmanager
def server_address(address: str | None, backend: str, workers: int):
    """The given server, or one started in this process for the duration."""
    if address:
        yield address
        return
    from gradwire.server.app import create_server
    from gradwire.server.config import ServerConfig
    from gradwire.server.job_store import private_job_dir

    with private_job_dir() as job_dir:  # its jobs are this command's: never another server's folder
        server, port = create_server(ServerConfig(port=0, backend=backend, workers=workers, job_dir=job_dir))
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(0)


def follow(job, total_hint: int | None = None):
    """Print progress (a tqdm bar when available) and return the losses by step."""
    losses: list[tuple[int, float]] = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency; stay usable without it
        tqdm = None
    bar = None
    last = None
    for event in job.watch():
        last = event
        if event.state == "running":
            losses.append((event.step, event.loss))
            if tqdm is not None:
                if bar is None:
                    bar = tqdm(total=event.total_steps, unit="step", dynamic_ncols=True, file=sys.stderr)
                bar.n = event.step
                bar.set_postfix(loss=f"{event.loss:.4f}", ex_s=f"{event.examples_per_s:,.0f}", refresh=False)
                bar.refresh()
    if bar is not None:
        bar.close()
    return losses, last


def plot_losses(losses, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'gradwire[plot]'); no loss curve written")
        return False
    steps, values = zip(*losses) if losses else ((), ())
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, values)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("gradwire training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradwire train", description=__doc__)
    parser.add_argument("--server", help="host:port of a coordinator (default: start one here)")
    parser.add_argument("--backend", default="local", choices=["local", "ray"], help="for a server started here")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers, for a server started here")
    parser.add_argument("--model", required=True, help="Python file defining build(seed) -> (graph, params)")
    parser.add_argument("--data", required=True, help=".npz with one array per graph input")
    parser.add_argument("--remote-data", action="store_true", help="the server reads --data itself (no upload)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--momentum", type=float, default=None, help="sgd only")
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--shards", type=int, default=0, help="micro-shards per step (0: server default)")
    parser.add_argument("--out", default="params.npz")
    parser.add_argument("--plot", default="loss.png", help="loss-curve PNG (needs matplotlib); '' for none")
    args = parser.parse_args(argv)

    settings = {"lr": args.lr}
    if args.momentum is not None:
        settings["momentum"] = args.momentum
    if args.weight_decay is not None:
        settings["weight_decay"] = args.weight_decay
    optimizer = OPTIMIZERS[args.optimizer](**settings)
    graph, params = load_model(args.model, args.seed)
    if args.remote_data:
        data = args.data
    else:
        with np.load(args.data, allow_pickle=False) as archive:
            data = {k: archive[k] for k in archive.files if k in graph.graph_def.inputs}

    with server_address(args.server, args.backend, args.workers) as address, \
            gw.connect(address, timeout=600) as client:
        start = time.perf_counter()
        job = client.submit_job(graph, params, data, optimizer, batch_size=args.batch_size, epochs=args.epochs,
                                seed=args.seed, checkpoint_every=args.checkpoint_every, shards=args.shards)
        print(f"job {job.job_id} on {address}")
        losses, last = follow(job)
        if last is None or last.state != "done":
            print(f"job ended {last.state if last else 'without news'}: {last.message if last else ''}")
            return 1
        trained = job.result()
        elapsed = time.perf_counter() - start
    np.savez(args.out, **trained)
    rate = last.total_steps * args.batch_size / elapsed
    print(f"done: {last.total_steps} steps, {args.epochs} epochs in {elapsed:.1f}s (~{rate:,.0f} examples/s); "
          f"final loss {losses[-1][1]:.4f}; parameters -> {args.out}")
    if args.plot and plot_losses(losses, args.plot):
        print(f"loss curve -> {args.plot}")
    return 0


def jobs_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradwire jobs", description="list, watch, cancel or remove training jobs")
    parser.add_argument("action", nargs="?", default="list", choices=["list", "watch", "cancel", "rm"],
                        help="rm removes a finished job and its folder (default: list)")
    parser.add_argument("job_id", nargs="?")
    parser.add_argument("--server", default="127.0.0.1:50051")
    args = parser.parse_args(argv)
    with gw.connect(args.server) as client:
        if args.action == "list":
            for job in client.jobs():
                print(f"{job['job_id']}  {job['state']:9s}  step {job['step']}/{job['total_steps']}  "
                      f"loss {job['loss']:.4f}  {job['name']}")
            return 0
        if not args.job_id:
            parser.error(f"{args.action} needs a job id")
        job = client.job(args.job_id)
        if args.action == "cancel":
            print(job.cancel()["state"])
            return 0
        if args.action == "rm":
            print(f"removed {job.delete()['job_id']}")
            return 0
        _, last = follow(job)
        print(f"job {args.job_id}: {last.state if last else 'unknown'}")
        return 0
