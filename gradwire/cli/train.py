"""gradwire train and gradwire jobs: training jobs from the command line.

A model file is Python defining build(seed) -> (gw.Graph, params); the data file is a
.npz whose arrays are named after the graph's inputs. Without --server the job runs
on a server started here on the embedded defaults.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
import time
import zipfile

import numpy as np

import gradwire as gw
from gradwire.client.onnx_io import LOSSES
from . import ArgumentParser, UsageError

PROGRESS_EVERY = float(os.environ.get("GRADWIRE_PROGRESS_EVERY", "5"))  # seconds between lines when not a terminal
RATE_AFTER = 1.0  # seconds watched before a rate is shown (a first rate over a few ms means nothing)
FINAL_RATE_AFTER = 0.2  # the same for the line of the last step


def load_model(path: str, seed: int, loss: str | None = None, label: str = "y", output: str | None = None):
    """``(graph, params)`` from a Python model file (``build(seed)``) or an ONNX model, whose
    loss is ``loss`` applied to its output (the first, or ``output``) and the input ``label``."""
    if not os.path.isfile(path):
        raise UsageError(f"--model {path}: no such file" if not os.path.exists(path) else f"--model {path}: not a file")
    if path.endswith(".onnx"):
        return _onnx_model(path, loss, label, output)
    namespace = runpy.run_path(path)
    if not callable(namespace.get("build")):
        raise UsageError(f"--model {path}: a model file must define build(seed) -> (gw.Graph, params)")
    return namespace["build"](seed)


def _onnx_model(path: str, loss: str | None, label: str, output: str | None):
    from gradwire.client.onnx_io import training_graph

    if loss not in LOSSES:
        raise UsageError(f"--model {path}: an ONNX model needs --loss, one of {', '.join(LOSSES)}")
    return training_graph(path, loss, label, output)


def load_data(path: str, inputs) -> dict:
    if not os.path.isfile(path):
        raise UsageError(f"--data {path}: no such file" if not os.path.exists(path) else f"--data {path}: not a file")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"--data {path}: not a .npz archive (numpy.savez writes one)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files if k in inputs}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise UsageError(f"--data {path}: cannot read it as .npz: {exc}") from None


def _optimizer_settings() -> dict[str, dict]:
    """Every registered optimizer's setting but lr: ``{setting: {"kind": ..., "takers": [names]}}``."""
    found: dict[str, dict] = {}
    for name in sorted(gw.optim.OPTIMIZERS):
        for setting, kind in gw.optim.settings(name).items():
            if setting != "lr":
                found.setdefault(setting, {"kind": kind, "takers": []})["takers"].append(name)
    return found


def add_optimizer_arguments(parser) -> None:
    """--optimizer, --lr and one flag per setting of the registered optimizers (gw.optim)."""
    parser.add_argument("--optimizer", default="adam", choices=sorted(gw.optim.OPTIMIZERS), help="update rule")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (> 0)")
    every = len(gw.optim.OPTIMIZERS)
    for setting, about in _optimizer_settings().items():
        flag, pair = f"--{setting.replace('_', '-')}", about["kind"] == "pair"
        scope = "" if len(about["takers"]) == every else f"{', '.join(about['takers'])} only; "
        if about["kind"] == "bool":
            parser.add_argument(flag, action="store_true", default=None, help=f"{scope}off unless given")
        else:
            parser.add_argument(flag, type=float, default=None, nargs=2 if pair else None,
                                metavar=("B1", "B2") if pair else None, help=f"{scope}default: the optimizer's")


def make_optimizer(args):
    chosen = gw.optim.settings(args.optimizer)
    settings = {"lr": args.lr}
    for setting, about in _optimizer_settings().items():
        value = getattr(args, setting)
        if value is None:
            continue
        if setting not in chosen:
            raise UsageError(f"--{setting.replace('_', '-')} is not a setting of --optimizer {args.optimizer} "
                             f"(only of {', '.join(about['takers'])})")
        settings[setting] = value
    try:
        return gw.optim.OPTIMIZERS[args.optimizer](**settings)
    except (ValueError, TypeError) as exc:  # e.g. a negative learning rate
        raise UsageError(f"--optimizer {args.optimizer}: {exc}") from None


def unreachable(address: str, exc: Exception, started_here: bool = False) -> UsageError:
    where = "the server started here" if started_here else f"--server {address}"
    return UsageError(f"cannot reach a gradwire server at {address} ({where}): {exc}")


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
        try:
            server, port = create_server(ServerConfig(port=0, backend=backend, workers=workers, job_dir=job_dir))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot start a server here (--backend {backend}): {exc}") from None
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(0)


class Rate:
    """Steps per second since watching began (``step`` the job's step then). None until the
    span is long enough to mean something: a rate over the first few ms, or over events
    replayed in a burst, would read thousands of steps per second."""

    def __init__(self, step: int = 0, since: float | None = None):
        # since: when the job was submitted (its every step was then still to come)
        self.start = (time.monotonic() if since is None else since, step)
        self.whole_job = since is not None

    def __call__(self, step: int, now: float, final: bool = False) -> float | None:
        t0, s0 = self.start
        enough = (0.0 if self.whole_job else FINAL_RATE_AFTER) if final else RATE_AFTER
        return (step - s0) / (now - t0) if now - t0 >= enough and now > t0 and step > s0 else None


def _describe(event, rate: float | None) -> str:
    parts = [f"step {event.step}/{event.total_steps}", f"epoch {event.epoch}", f"loss {event.loss:.4f}"]
    if rate is not None:
        parts.append(f"{rate:,.1f} step/s")
        if event.examples_per_s:
            parts.append(f"{event.examples_per_s:,.0f} examples/s")
        if event.eta_s:
            parts.append(f"eta {event.eta_s:,.0f}s")
    return "  ".join(parts)


def follow(job, stream=None, submitted: float | None = None):
    """Print progress and return the losses by step and the last event: a tqdm bar on a
    terminal, else one line every PROGRESS_EVERY seconds and one for the last step.
    ``submitted``: the time.monotonic() the job was submitted at, if it was just now."""
    stream = stream or sys.stderr
    losses: list[tuple[int, float]] = []
    tqdm = None
    if stream.isatty():
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency; stay usable without it
            tqdm = None
    bar = last = running = None
    shown = None
    rate = Rate(job.last_step, submitted)
    printed_at = time.monotonic()
    for event in job.watch():
        last = event
        if event.state != "running":
            continue
        running = event
        losses.append((event.step, event.loss))
        now = time.monotonic()
        steps_per_s = rate(event.step, now, final=event.step >= event.total_steps)
        if tqdm is not None:
            if bar is None:
                bar = tqdm(total=event.total_steps, initial=event.step, unit="step", dynamic_ncols=True, file=stream,
                           bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
            bar.n = event.step
            bar.set_postfix_str(_describe(event, steps_per_s).split("  ", 2)[2], refresh=False)
            bar.refresh()
        elif now - printed_at >= PROGRESS_EVERY or event.step >= event.total_steps:
            print(_describe(event, steps_per_s), file=stream, flush=True)
            printed_at, shown = now, event.step
    if bar is not None:
        bar.close()
    elif running is not None and shown != running.step:  # the last step seen, if not printed yet
        print(_describe(running, rate(running.step, time.monotonic(), final=True)), file=stream, flush=True)
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


def train_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gradwire train", description=__doc__)
    parser.add_argument("--server", metavar="HOST:PORT", help="a running coordinator (default: start one here)")
    parser.add_argument("--backend", default="local", choices=["local", "ray"], help="for a server started here")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers, for a server started here")
    parser.add_argument("--model", required=True, metavar="FILE",
                        help="Python file defining build(seed) -> (graph, params), or an ONNX model (.onnx)")
    parser.add_argument("--loss", choices=LOSSES, default=None,
                        help="for an ONNX model: the loss on its output and --label")
    parser.add_argument("--label", default="y", help="for an ONNX model: the name of the labels input")
    parser.add_argument("--output", default=None, help="for an ONNX model: which output the loss reads "
                                                       "(default: its first)")
    parser.add_argument("--data", required=True, metavar="FILE", help=".npz with one array per graph input")
    parser.add_argument("--remote-data", action="store_true",
                        help="the server reads --data itself, under its --data-root (no upload)")
    parser.add_argument("--epochs", type=int, default=5, help="passes over the data")
    parser.add_argument("--batch-size", type=int, default=256, help="examples per step")
    add_optimizer_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="of build(seed) and of the batch order")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints on the server")
    parser.add_argument("--shards", type=int, default=0, help="micro-shards per step (0: the server's default plan)")
    parser.add_argument("--out", default="params.npz", metavar="PATH", help="where the trained parameters go")
    parser.add_argument("--plot", default=None, metavar="PATH",
                        help="write the loss curve here as a PNG (needs matplotlib; default: no plot)")
    parser.add_argument("--force", action="store_true", help="let --plot overwrite an existing file")
    return parser


def _check_plot(args) -> str | None:
    """The plot's path, checked before any training: never an existing file without --force."""
    if not args.plot:
        return None
    if os.path.isdir(args.plot):
        raise UsageError(f"--plot {args.plot}: is a folder; name a .png file")
    if os.path.exists(args.plot) and not args.force:
        raise UsageError(f"--plot {args.plot}: the file exists; pass --force to overwrite it")
    folder = os.path.dirname(os.path.abspath(args.plot))
    if not os.path.isdir(folder):
        raise UsageError(f"--plot {args.plot}: no folder {folder}")
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed (pip install 'gradwire[plot]'); no loss curve written")
        return None
    return args.plot


def train_main(argv: list[str] | None = None) -> int:
    parser = train_parser()
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    for name in ("shards", "checkpoint_every"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more, not {getattr(args, name)}")
    optimizer = make_optimizer(args)
    plot = _check_plot(args)
    graph, params = load_model(args.model, args.seed, args.loss, args.label, args.output)
    data = args.data if args.remote_data else load_data(args.data, graph.graph_def.inputs)

    started_here = not args.server
    with server_address(args.server, args.backend, args.workers) as address, \
            gw.connect(address, timeout=600) as client:
        start, submitted = time.perf_counter(), time.monotonic()
        try:
            job = client.submit_job(graph, params, data, optimizer, batch_size=args.batch_size, epochs=args.epochs,
                                    seed=args.seed, checkpoint_every=args.checkpoint_every, shards=args.shards)
        except gw.Unavailable as exc:
            raise unreachable(address, exc, started_here) from None
        print(f"job {job.job_id} on {address}", flush=True)
        try:
            losses, last = follow(job, submitted=submitted)
        except KeyboardInterrupt:
            if started_here:
                print(f"\ngradwire: interrupted: stopping the server this command started; job {job.job_id} "
                      f"stops with it (use gradwire serve and --server for jobs that outlive the command)",
                      file=sys.stderr)
            else:
                print(f"\ngradwire: interrupted: job {job.job_id} keeps running on {address}; re-attach with "
                      f"'gradwire jobs watch {job.job_id} --server {address}' "
                      f"(or stop it: 'gradwire jobs cancel {job.job_id} --server {address}')", file=sys.stderr)
            return 130
        if last is None or last.state != "done":
            print(f"job ended {last.state if last else 'without news'}: {last.message if last else ''}")
            return 1
        trained = job.result()
        elapsed = time.perf_counter() - start
    np.savez(args.out, **trained)
    rate = last.total_steps * args.batch_size / elapsed
    print(f"done: {last.total_steps} steps, {args.epochs} epochs in {elapsed:.1f}s (~{rate:,.0f} examples/s); "
          f"final loss {losses[-1][1]:.4f}; parameters -> {args.out}")
    if plot and plot_losses(losses, plot):
        print(f"loss curve -> {plot}")
    return 0


def jobs_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gradwire jobs", description="List, watch, cancel or remove training jobs.")
    parser.add_argument("action", nargs="?", default="list", choices=["list", "watch", "cancel", "rm"],
                        help="list the jobs; watch, cancel or rm (remove a finished job and its folder) "
                             "job ID (default: list)")
    parser.add_argument("job_id", nargs="?", metavar="ID", help="the job, for watch, cancel and rm")
    parser.add_argument("--server", default="127.0.0.1:50051", metavar="HOST:PORT", help="the coordinator")
    parser.add_argument("--from-start", action="store_true",
                        help="watch: show the job's progress from its first step (default: from its latest)")
    return parser


def jobs_main(argv: list[str] | None = None) -> int:
    parser = jobs_parser()
    args = parser.parse_args(argv)
    if args.action != "list" and not args.job_id:
        parser.error(f"{args.action} needs a job id")
    try:
        with gw.connect(args.server) as client:
            return _jobs(client, args)
    except gw.Unavailable as exc:
        raise unreachable(args.server, exc) from None


def _jobs(client, args) -> int:
    if args.action == "list":
        for job in client.jobs():
            print(f"{job['job_id']}  {job['state']:9s}  step {job['step']}/{job['total_steps']}  "
                  f"loss {job['loss']:.4f}  {job['name']}")
        return 0
    job = client.job(args.job_id)
    if args.action == "cancel":
        print(job.cancel()["state"])
        return 0
    if args.action == "rm":
        print(f"removed {job.delete()['job_id']}")
        return 0
    if not args.from_start:
        job.last_step = job.info()["step"]  # from the latest event on
    try:
        _, last = follow(job)
    except KeyboardInterrupt:
        print(f"\ngradwire: stopped watching; job {args.job_id} keeps running on {args.server}", file=sys.stderr)
        return 130
    print(f"job {args.job_id}: {last.state if last else 'unknown'}")
    return 0
