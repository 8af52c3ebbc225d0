"""Training-job workload ``train_jobs``: server-side jobs (``client.submit_job``) in examples/s,
every row a ratio against a baseline measured in the same run.

(a) digits MLP 64-64-10 (relu, softmax cross-entropy), batch 64, SGD, 1797x64 examples
    (scikit-learn's ``load_digits`` when installed, else a seeded synthetic set of that size):
    jobs on a local-backend server, on a Ray-backend server (2 workers x 1 CPU, 1 BLAS thread;
    the server's default shards and shards=2), and with ``placement="auto"`` / ``"ray"`` when the
    server has that setting (``ServerConfig`` field or ``submit_job`` argument, looked up at run
    time; skipped rows otherwise), against a hand-written NumPy SGD loop on the same batches in
    the same order (the server's seeded per-epoch permutation, rows sorted), a PyTorch loop and
    Ray Train + PyTorch DDP (gloo, 2 workers x 1 thread) where installed ("unavailable" rows
    otherwise). Floors: ``gw.local()`` + the SGD rule as an in-process loop; a job on a graph
    of one tiny node (the job machinery without compute) on each server; a Ray no-op actor
    task's round trip and a task taking and returning a parameter-sized dict.
(b) MLP 784-512-512-10 (``workloads_core.mlp_graph``), batch 8192, synthetic: a job on a Ray
    server with N workers x 1 CPU x 1 BLAS thread for N in ``worker_counts()`` (1, 2, 4, ... up
    to the cores, or ``GRADWIRE_BENCH_WORKERS``), against the ideal reference: N plain spawned
    processes, each the hand-written NumPy forward/backward of its 1/N of the batch with one
    BLAS thread, gradients summed by the parent through shared memory, SGD applied there; and
    Ray Train + DDP where installed. 2 warm-up steps per job, 20 timed steps per variant.
(c) per step, for every job: the coordinator's (server process's) CPU ms and the bytes it
    hands to Ray and gets back.

How it measures. Every server runs in its own child process (``_server_child``: one fresh
server per variant, its own job_dir in this run's temp folder, 127.0.0.1, port 0; a Ray
server starts its own Ray on loopback with ``num_cpus = workers x worker_cpus``, no dashboard;
stopped by its handle, SIGTERM then SIGKILL by pid if it does not answer). In that process a
thin hook on the job's event log records, at every step, the wall clock, the process's CPU
time (all threads: gRPC, the job loop, Ray's core worker) and two counters wrapped around
Ray's serializer: bytes serialized into Ray (``ray.put`` and task arguments, inlined or
through the object store) and bytes deserialized out of it (task results, gets). Its
``/proc/self/io`` (rchar, wchar) is read at the window's two ends too (JSON only): it counts
file reads and writes but no socket ``send``/``sendmsg`` (gRPC, Ray's RPCs), and large Ray
objects cross in shared memory, so it shows next to nothing; hence the counters. A job's rate is its examples
over the wall time between the end of its warm-up steps (a digits job: its first epoch) and
its last step, so submission, upload and the final checkpoint stay out. Without the hook (the
server's job code changed), rates fall back to submit->result and CPU to the whole job.

Variants that share a server run interleaved with the baseline (seeded Latin-square round
orders); each job's ratio is against the NumPy loop runs interleaved with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before anything imports ray

import numpy as np  # noqa: E402

from .registry import Config, Row, row, workload  # noqa: E402
from .timing import median, round_orders, summarize, time_once  # noqa: E402
from .workloads_core import softmax_cross_entropy_numpy  # noqa: E402
from .workloads_service import ms_list, scaled_repeats, timed  # noqa: E402

NAME = "train_jobs"
AUTO_TARGET = 0.7  # (a) job, placement auto: examples/s / the NumPy loop's, at least
DDP_TARGET_A = 1.0  # (a) job, placement ray, 2 workers / Ray Train + DDP, at least
SPEEDUP_TARGET = 1.7  # (b) job 2 workers / job 1 worker, at least
IDEAL_TARGET = 0.9  # (b) job 2 workers / ideal 2 processes, at least
DDP_TARGET_B = 1.05  # (b) job 2 workers / Ray Train + DDP, at least

A_BATCH, A_LR, A_SIZES = 64, 0.05, (64, 64, 10)
A_WORKERS = 2
A_ROUNDS = 3  # runs per variant (scaled by --repeats / 24)
A_JOB_SECONDS, A_LOOP_SECONDS = 2.0, 0.3  # how long one timed run lasts (after its warm-up epoch)
B_BATCH, B_QUICK_BATCH, B_LR = 8192, 256, 0.01
B_ROWS_PER_BATCH = 2  # dataset rows = 2 batches; epochs repeat it
B_WARM, B_STEPS, B_ROUNDS = 2, 10, 2  # per job: warm-up steps, timed steps; jobs per variant
FLOOR_CALLS = 200
NO_RAY_ENV = "GRADWIRE_BENCH_TRAIN_JOBS_NO_RAY"  # "1": skip every Ray variant (the smoke test)


# ---------------------------------------------------------------- data, models, references


def digits_data(seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """1797 x 64 float32 in [0, 1] and int64 labels: scikit-learn's digits, else synthetic."""
    try:
        from sklearn.datasets import load_digits

        d = load_digits()
        return {"x": (d.data / 16.0).astype(np.float32), "y": d.target.astype(np.int64)}, "sklearn load_digits"
    except ImportError:
        rng = np.random.default_rng(seed)
        centers = rng.uniform(0, 1, size=(10, 64)).astype(np.float32)
        y = rng.integers(0, 10, size=1797)
        x = np.clip(centers[y] + 0.3 * rng.standard_normal((1797, 64)).astype(np.float32), 0, 1)
        return {"x": x.astype(np.float32), "y": y.astype(np.int64)}, "synthetic (no scikit-learn), seed 0"


def _mlp(inputs: int, hidden: int, classes: int):
    """relu MLP under softmax cross-entropy: the digits example's model."""
    import gradwire as gw

    g = gw.Graph()
    x, y = g.input("x", shape=(None, inputs)), g.input("y", shape=(None,), dtype="int64")
    w1, b1 = g.param("w1", shape=(inputs, hidden)), g.param("b1", shape=(hidden,))
    w2, b2 = g.param("w2", shape=(hidden, classes)), g.param("b2", shape=(classes,))
    g.set_loss(gw.softmax_cross_entropy(gw.relu(x @ w1 + b1) @ w2 + b2, y))
    return g


def digits_model(seed: int = 0):
    d0, d1, d2 = A_SIZES
    rng = np.random.default_rng(seed)
    params = {"w1": (rng.normal(size=(d0, d1)) * np.sqrt(2 / d0)).astype(np.float32), "b1": np.zeros(d1, np.float32),
              "w2": (rng.normal(size=(d1, d2)) * np.sqrt(1 / d1)).astype(np.float32), "b2": np.zeros(d2, np.float32)}
    return _mlp(d0, d1, d2), params


def tiny_model():
    """The job machinery's floor: loss = mean(x * w), one parameter, one feature."""
    import gradwire as gw

    g = gw.Graph()
    x, w = g.input("x", shape=(None, 1)), g.param("w", shape=(1,))
    g.set_loss(gw.mean(x * w))
    return g, {"w": np.ones(1, np.float32)}


def batch_rows(n: int, batch: int, seed: int, step: int, cache: dict) -> np.ndarray:
    """The server's order: epoch e is ``default_rng([seed, e]).permutation(n)``, step i of it
    takes rows [i*B, (i+1)*B) of that order, sorted."""
    epoch, index = divmod(step, math.ceil(n / batch))
    if cache.get("epoch") != epoch:
        cache["epoch"], cache["order"] = epoch, np.random.default_rng([seed, epoch]).permutation(n)
    return np.sort(cache["order"][index * batch:(index + 1) * batch])


def step_sizes(n: int, batch: int, first: int, last: int) -> int:
    """Examples in steps first+1 .. last (1-based step numbers, as the job's events count)."""
    per_epoch = math.ceil(n / batch)
    return sum(min(batch, n - ((s - 1) % per_epoch) * batch) for s in range(first + 1, last + 1))


def _digits_grads(p: dict, x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    """relu(x @ w1 + b1) @ w2 + b2 under mean softmax cross-entropy, by hand."""
    z1 = x @ p["w1"] + p["b1"]
    h1 = np.maximum(z1, 0)
    loss, d = softmax_cross_entropy_numpy(h1 @ p["w2"] + p["b2"], y)
    dh1 = (d @ p["w2"].T) * (z1 > 0)
    return loss, {"w1": x.T @ dh1, "b1": dh1.sum(axis=0), "w2": h1.T @ d, "b2": d.sum(axis=0)}


def numpy_sgd(params: dict, data: dict, batch: int, epochs: int, lr: float, seed: int = 0) -> tuple[dict, int]:
    """The hand-written loop: the job's batch order, forward, backward and SGD by hand."""
    p = {k: v.copy() for k, v in params.items()}
    x_all, y_all = data["x"], data["y"]
    n, cache, examples = len(x_all), {}, 0
    for step in range(math.ceil(n / batch) * epochs):
        rows = batch_rows(n, batch, seed, step, cache)
        _, g = _digits_grads(p, x_all[rows], y_all[rows])
        p = {k: p[k] - np.float32(lr) * g[k] for k in p}
        examples += len(rows)
    return p, examples


def engine_sgd(graph, params: dict, data: dict, batch: int, epochs: int, lr: float, seed: int = 0) -> tuple[dict, int]:
    """The same loop with ``gw.local()`` for the gradients and gradwire's SGD rule: what a
    job's step costs in-process, with no server, job thread or event log around it."""
    import gradwire as gw

    engine, opt = gw.local(), gw.optim.SGD(lr=lr)
    p, state = dict(params), opt.init(params)
    x_all, y_all = data["x"], data["y"]
    n, cache, examples = len(x_all), {}, 0
    for step in range(math.ceil(n / batch) * epochs):
        rows = batch_rows(n, batch, seed, step, cache)
        _, grads = engine.value_and_grad(graph, p, {"x": x_all[rows], "y": y_all[rows]})
        p, state = opt.update(p, grads, state)
        examples += len(rows)
    return p, examples


def torch_sgd_fn(params: dict, data: dict, batch: int, lr: float, seed: int = 0) -> Callable[[int], int]:
    """A PyTorch loop on the same model, batches and SGD: ``run(epochs) -> examples``."""
    import torch

    x_all, y_all = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    n = len(data["x"])

    def run(epochs: int) -> int:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one process, one thread, as the NumPy loop and the job's in-process steps
        try:
            return _run(epochs)
        finally:
            torch.set_num_threads(threads)

    def _run(epochs: int) -> int:
        tp = [torch.from_numpy(params[k].copy()).requires_grad_(True) for k in ("w1", "b1", "w2", "b2")]
        opt = torch.optim.SGD(tp, lr=lr)
        w1, b1, w2, b2 = tp
        cache, examples = {}, 0
        for step in range(math.ceil(n / batch) * epochs):
            rows = torch.from_numpy(batch_rows(n, batch, seed, step, cache))
            loss = torch.nn.functional.cross_entropy(torch.relu(x_all[rows] @ w1 + b1) @ w2 + b2, y_all[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            examples += len(rows)
        return examples

    return run


# ---------------------------------------------------------------- placement (a job API the server may gain)


def placement_support() -> dict[str, bool]:
    """Whether this checkout has a job placement setting: a ``ServerConfig.placement`` field
    (``--placement auto|ray|local``) and/or a ``placement`` argument of ``submit_job``."""
    from ..client.remote import Client
    from ..server.config import ServerConfig

    return {"server": "placement" in {f.name for f in dataclasses.fields(ServerConfig)},
            "client": "placement" in inspect.signature(Client.submit_job).parameters}


# ---------------------------------------------------------------- the server process


def _proc_io() -> dict[str, int]:
    try:
        with open("/proc/self/io") as f:
            return {k: int(v) for k, v in (line.split(":") for line in f) if k in ("rchar", "wchar")}
    except OSError:
        return {}


class _Counters:
    """Bytes through Ray's serializer in this process, and per-step samples of training jobs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ser = self.deser = self.ser_n = self.deser_n = 0
        self.steps: dict[str, list] = {}
        self.io_at = 0  # the step (besides a job's last) at which to read /proc/self/io

    def snapshot(self) -> dict[str, Any]:
        return {"wall": time.perf_counter(), "cpu": time.process_time(), "ser": self.ser, "deser": self.deser,
                "ser_n": self.ser_n, "deser_n": self.deser_n, "io": _proc_io()}

    def install_ray(self) -> bool:
        """Wrap ``SerializationContext.serialize`` (``ray.put`` and every task argument) and
        ``deserialize_objects`` (gets, task results) to count their bytes."""
        try:
            from ray._private.serialization import SerializationContext as ctx
        except ImportError:
            return False
        serialize, deserialize = getattr(ctx, "serialize", None), getattr(ctx, "deserialize_objects", None)
        if serialize is None or deserialize is None:
            return False
        counters = self

        def counted_serialize(self, value):
            out = serialize(self, value)
            with counters.lock:
                counters.ser += int(getattr(out, "total_bytes", 0))
                counters.ser_n += 1
            return out

        def counted_deserialize(self, serialized, *args, **kwargs):
            size = 0
            for item in serialized:
                data = item[0] if isinstance(item, tuple) else getattr(item, "data", None)
                size += 0 if data is None else len(data)
            with counters.lock:
                counters.deser += size
                counters.deser_n += len(serialized)
            return deserialize(self, serialized, *args, **kwargs)

        ctx.serialize, ctx.deserialize_objects = counted_serialize, counted_deserialize
        return True

    def install_job_hook(self) -> bool:
        """After each step's event is logged, record (step, wall, cpu, bytes in, bytes out, io)."""
        from ..server import jobs as server_jobs

        cls = getattr(server_jobs, "JobRun", None)
        emit = getattr(cls, "emit", None)
        if emit is None:
            return False
        counters = self

        def recorded_emit(self, event, *args, **kwargs):
            out = emit(self, event, *args, **kwargs)
            try:  # a measurement must never break the job it measures
                if isinstance(event, dict) and event.get("state") == "running":
                    step = event.get("step")
                    io = _proc_io() if step in (counters.io_at, event.get("total_steps")) else None
                    counters.steps.setdefault(self.spec.job_id, []).append(
                        (step, time.perf_counter(), time.process_time(), counters.ser, counters.deser, io,
                         counters.deser_n))
            except Exception:  # noqa: BLE001 - the job's rate then falls back to submit -> result
                pass
            return out

        cls.emit = recorded_emit
        return True


def _ray_floor(calls: int, floats: int) -> dict[str, list[float]]:
    """Round trips of a no-op actor task, and of a task that takes a ``floats``-element
    float32 dict and returns it (a step's parameters in, gradients out), on this server's Ray."""
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def noop(self):
            return None

        def echo(self, params):
            return params

    actor = Echo.remote()
    try:
        ray.get(actor.noop.remote(), timeout=120)
        params = {"w": np.zeros(floats, np.float32)}
        out: dict[str, list[float]] = {"noop": [], "echo": []}
        for _ in range(10):
            ray.get(actor.echo.remote(params))
        for _ in range(calls):
            out["noop"].append(time_once(lambda: ray.get(actor.noop.remote())))
            out["echo"].append(time_once(lambda: ray.get(actor.echo.remote(params))))
        return out
    finally:
        ray.kill(actor)


def _server_child() -> None:
    """The child process: one server from the JSON config on stdin's first line; answers one
    JSON line per command on the original stdout (everything else printed goes to stderr)."""
    import signal

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj) -> None:
        proto.write(json.dumps(obj) + "\n")

    config = json.loads(sys.stdin.readline())
    counters = _Counters()
    counted = counters.install_ray() if config.get("backend") == "ray" else False
    hooked = counters.install_job_hook()
    from ..server.app import create_server
    from ..server.config import ServerConfig

    import tempfile

    config.setdefault("job_dir", tempfile.mkdtemp(prefix="gradwire-bench-jobs-"))  # one server per job folder
    server, port = create_server(ServerConfig(**config))

    def on_term(*_):
        server.stop(0)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    send({"port": port, "pid": os.getpid(), "ray_counted": counted, "hooked": hooked,
          "workers": len(getattr(server.backend, "workers", []) or [])})
    try:
        for line in sys.stdin:
            cmd, *args = line.split()
            if cmd == "stats":
                send(counters.snapshot())
            elif cmd == "io_at":
                counters.io_at = int(args[0])
                send({})
            elif cmd == "steps":
                send(counters.steps.pop(args[0], []))
            elif cmd == "ray_floor":
                send(_ray_floor(int(args[0]), int(args[1])))
            elif cmd == "stop":
                break
            else:
                send({"error": f"unknown command {cmd!r}"})
    finally:
        server.stop(0)
        send({"stopped": True})


class ServerProcess:
    """A gradwire server in a child process (``_server_child``) on 127.0.0.1."""

    def __init__(self, job_dir: str, start_timeout: float = 180.0, **config: Any):
        config = {"host": "127.0.0.1", "port": 0, "job_dir": job_dir, **config}
        Path(job_dir).mkdir(parents=True, exist_ok=True)
        self.stderr_path = Path(job_dir) / "server.stderr"
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from gradwire.bench.workloads_jobs import _server_child; _server_child()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1)
        try:
            self.proc.stdin.write(json.dumps(config) + "\n")
            self.proc.stdin.flush()
            hello = self._read(start_timeout)
        except BaseException:
            self.close()
            raise
        self.port, self.pid = hello["port"], hello["pid"]
        self.ray_counted, self.hooked = hello["ray_counted"], hello["hooked"]
        self.address = f"127.0.0.1:{self.port}"

    def _read(self, timeout: float):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self._stderr.flush()
            tail = self.stderr_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"server process {self.proc.pid} did not answer "
                               f"(exit status {self.proc.poll()}); its stderr ends:\n{tail}")
        return json.loads(line)

    def ask(self, *words: Any, timeout: float = 300.0):
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        """Stop the server (which shuts down a Ray it started); by its pid if it hangs."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=20)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                stream.close()
        self._stderr.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- one job, measured


@dataclasses.dataclass
class JobRun:
    examples_per_s: float
    step_ms: float  # mean wall ms per timed step
    step_s: list[float]  # each timed step's wall seconds (empty without the hook)
    cpu_ms: float | None  # coordinator CPU ms per timed step
    ser_bytes: float | None  # bytes serialized into Ray per timed step
    deser_bytes: float | None  # bytes deserialized from Ray per timed step
    io: dict[str, float]  # /proc/self/io rchar, wchar per timed step
    setup_ser_bytes: float | None  # bytes into Ray from submission through the warm-up steps
    objects_out: float | None  # objects deserialized from Ray per timed step (task results, gets)
    e2e_s: float
    steps: int
    timed_steps: int
    source: str  # "hook": the server's per-step records; "e2e": submit -> result
    params: dict
    placement: str = ""  # where the server says the steps ran, and why (JobInfo.placement)


def run_job(server: ServerProcess, client, graph, params: dict, data: dict | str, n: int, batch: int,
            epochs: int, warm: int, lr: float, shards: int = 0, placement: str | None = None) -> JobRun:
    import gradwire as gw

    extra = {"placement": placement} if placement is not None and placement_support()["client"] else {}
    server.ask("io_at", warm)
    before = server.ask("stats")
    t0 = time.perf_counter()
    job = client.submit_job(graph, params, data, gw.optim.SGD(lr=lr), batch_size=batch, epochs=epochs, seed=0,
                            shards=shards, **extra)
    final = job.result()
    e2e = time.perf_counter() - t0
    after = server.ask("stats")
    try:
        where = str(job.info().get("placement", ""))
    except Exception:  # noqa: BLE001 - an older server: no such field
        where = ""
    records = sorted(server.ask("steps", job.job_id) or [], key=lambda r: r[0])
    total = math.ceil(n / batch) * epochs
    if len(records) >= 2 and records[-1][0] == total and records[0][0] <= warm < total:
        start = next(r for r in records if r[0] >= warm)
        end = records[-1]
        k = end[0] - start[0]
        walls = {r[0]: r[1] for r in records}
        step_s = [walls[s] - walls[s - 1] for s in range(start[0] + 1, end[0] + 1) if s - 1 in walls]
        elapsed = end[1] - start[1]
        io = {key: (end[5][key] - start[5][key]) / k for key in ("rchar", "wchar")
              if start[5] and end[5] and key in start[5]}
        return JobRun(step_sizes(n, batch, start[0], end[0]) / elapsed, elapsed / k * 1e3, step_s,
                      (end[2] - start[2]) / k * 1e3, (end[3] - start[3]) / k, (end[4] - start[4]) / k, io,
                      start[3] - before["ser"], (end[6] - start[6]) / k if len(end) > 6 else None, e2e, total, k,
                      "hook", final, where)
    k = total
    io = {key: (after["io"][key] - before["io"][key]) / k for key in ("rchar", "wchar") if key in before["io"]}
    return JobRun(step_sizes(n, batch, 0, total) / e2e, e2e / k * 1e3, [], (after["cpu"] - before["cpu"]) / k * 1e3,
                  (after["ser"] - before["ser"]) / k, (after["deser"] - before["deser"]) / k, io, None,
                  (after["deser_n"] - before["deser_n"]) / k, e2e, total, k, "e2e", final, where)


def _kib(n: float | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _c_notes(r: JobRun, counted: bool) -> str:
    ray = (f"into Ray {_kib(r.ser_bytes)}/step (puts + task args), out of Ray {_kib(r.deser_bytes)}/step in "
           f"{r.objects_out or 0:.1f} objects (results)" if counted else "no Ray: 0 B through an object store")
    setup = f"; submission + warm-up put {_kib(r.setup_ser_bytes)} into Ray" if counted and r.setup_ser_bytes else ""
    return (f"coordinator CPU {r.cpu_ms:.2f} ms/step ({r.cpu_ms / r.step_ms:.0%} of a step's wall); {ray}{setup}; "
            f"over {r.timed_steps} steps ({r.source})")


def _c_row(name: str, r: JobRun, counted: bool, batch_bytes: int) -> Row:
    return row(f"{NAME}/c {name}", target="info",
               notes=_c_notes(r, counted) + f"; the step's batch is {_kib(batch_bytes)}",
               cpu_ms_per_step=r.cpu_ms, ray_in_bytes_per_step=r.ser_bytes, ray_out_bytes_per_step=r.deser_bytes,
               io_bytes_per_step=r.io, setup_ray_in_bytes=r.setup_ser_bytes, step_ms=r.step_ms, source=r.source)


def _epochs_for(step_ms: float, steps_per_epoch: int, seconds: float, lo: int = 2, hi: int = 400) -> int:
    """A run of about ``seconds`` after its warm-up epoch."""
    return int(min(hi, max(lo, 1 + math.ceil(seconds * 1e3 / max(step_ms * steps_per_epoch, 1e-6)))))


@contextlib.contextmanager
def _frozen() -> Iterator[None]:
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _no_ray() -> bool:
    return os.environ.get(NO_RAY_ENV, "").strip() not in ("", "0")


def _unavailable(name: str, what: str) -> Row:
    return row(f"{NAME}/{name}", notes=f"unavailable: {what}", passed=None)


def _have(module: str) -> str | None:
    """None if ``module`` imports, else why not."""
    try:
        __import__(module)
        return None
    except Exception as exc:  # noqa: BLE001 - ray.train raises ImportError subclasses and others
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"


# ---------------------------------------------------------------- Ray Train + DDP


def _ddp_loop(config: dict) -> None:
    """A Ray Train worker: the MLP under DDP (gloo), this rank's contiguous part of each step's
    batch, 1 intra-op thread; reports each step's wall seconds (DDP's all-reduce included)."""
    import torch
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    sizes, acts = config["sizes"], config["acts"]
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(acts):
            layers.append({"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}[acts[i]]())
    model = ray.train.torch.prepare_model(torch.nn.Sequential(*layers))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    if config.get("synthetic"):
        rng = np.random.default_rng(config["seed"])
        x_np = rng.standard_normal((config["n"], sizes[0])).astype(np.float32)
        y_np = rng.integers(0, sizes[-1], size=config["n"]).astype(np.int64)
    else:
        x_np, y_np = np.asarray(config["x"], np.float32), np.asarray(config["y"], np.int64)
    x_all, y_all = torch.from_numpy(x_np), torch.from_numpy(y_np)
    n, batch, cache, times = len(x_np), config["batch"], {}, []
    for step in range(config["steps"]):
        rows = batch_rows(n, batch, 0, step, cache)
        a, b = rank * len(rows) // world, (rank + 1) * len(rows) // world
        t = time.perf_counter()
        part = torch.from_numpy(rows[a:b])
        loss = torch.nn.functional.cross_entropy(model(x_all[part]), y_all[part])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    out = {"step_s": times, "rows": [len(batch_rows(n, batch, 0, s, {})) for s in range(config["steps"])]}
    if rank == 0:  # Ray Train 2 keeps only metrics reported with a checkpoint: hand them over by file
        Path(config["out"]).write_text(json.dumps(out))
    ray.train.report(out)


def ray_train_ddp(tmp: str, workers: int, loop_config: dict) -> dict:
    """``TorchTrainer`` on a fresh loopback Ray (``num_cpus = workers + 1``: one for Ray
    Train's own controller/trainer actor), ``workers`` x 1 CPU, gloo; the rank-0 step times."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = not ray.is_initialized()
    if started:
        import logging

        ray.init(address="local", num_cpus=workers + 1, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level=logging.WARNING, log_to_driver=False)
    try:
        out_file = Path(tempfile.mkdtemp(prefix="ddp-", dir=tmp)) / "rank0.json"  # one node: workers write here
        loop_config = {**loop_config, "out": str(out_file)}
        trainer = TorchTrainer(_ddp_loop, train_loop_config=loop_config, torch_config=TorchConfig(backend="gloo"),
                               scaling_config=ScalingConfig(num_workers=workers, use_gpu=False,
                                                            resources_per_worker={"CPU": 1}),
                               run_config=RunConfig(storage_path=tmp, name="ddp"))
        metrics = trainer.fit().metrics or json.loads(out_file.read_text())
        return {"step_s": list(metrics["step_s"]), "rows": list(metrics["rows"])}
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- (b) the ideal reference


def _ideal_train_worker(conn, rank: int, n_workers: int, batch: int, names: dict) -> None:
    """One plain process: its contiguous 1/N of the batch, forward+backward by hand (1 BLAS
    thread), its weighted gradients written into shared memory, one step per message."""
    from multiprocessing import shared_memory

    from threadpoolctl import threadpool_info, threadpool_limits

    from .workloads_core import mlp_data, mlp_numpy

    limiter = threadpool_limits(limits=1)  # noqa: F841 - for the process's lifetime
    params0, data = mlp_data(batch, 0)
    a, b = rank * batch // n_workers, (rank + 1) * batch // n_workers
    part = {k: np.ascontiguousarray(v[a:b]) for k, v in data.items()}
    del data
    shms, params, grads = [], {}, {}
    for k, v in params0.items():
        for store, key in ((params, f"p-{k}"), (grads, f"g{rank}-{k}")):
            shm = shared_memory.SharedMemory(name=names[key])
            shms.append(shm)
            store[k] = np.ndarray(v.shape, v.dtype, buffer=shm.buf)
    weight = np.float32((b - a) / batch)
    mlp_numpy(params, part)  # warm-up: first touch, BLAS
    conn.send(("ready", os.getpid(), [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]))
    while conn.recv() is not None:
        t = time.perf_counter()
        loss, g = mlp_numpy(params, part)
        for k, v in g.items():
            np.multiply(v, weight, out=grads[k])
        conn.send((time.perf_counter() - t, loss))
    del params, grads
    for shm in shms:
        shm.close()
    conn.close()


class IdealTrainPool:
    """N spawned processes; ``step()``: all compute their part, the parent sums the gradients
    in shared memory and applies SGD to the shared parameters. No framework, no transport."""

    def __init__(self, n_workers: int, batch: int, lr: float):
        from multiprocessing import shared_memory

        from .workloads_core import mlp_data
        from .workloads_ray import start_children

        params0, _ = mlp_data(1, 0)
        self.lr = np.float32(lr)
        self.shms: list = []
        self.params: dict[str, np.ndarray] = {}
        self.grads: list[dict[str, np.ndarray]] = [{} for _ in range(n_workers)]
        names = {}
        self.conns, self.procs = [], []
        try:
            for k, v in params0.items():
                for i, (store, key) in enumerate([(self.params, f"p-{k}")] +
                                                 [(self.grads[r], f"g{r}-{k}") for r in range(n_workers)]):
                    shm = shared_memory.SharedMemory(create=True, size=max(1, v.nbytes))
                    self.shms.append(shm)
                    names[key] = shm.name
                    store[k] = np.ndarray(v.shape, v.dtype, buffer=shm.buf)
                    store[k][...] = v if i == 0 else 0
            ready = start_children(n_workers, _ideal_train_worker, lambda rank: (rank, n_workers, batch, names),
                                   "gradwire-bench-ideal-train", self.conns, self.procs)
        except BaseException:
            self.close()
            raise
        self.blas_threads = [r[2] for r in ready]
        self.compute_s: list[list[float]] = []

    def step(self) -> None:
        for c in self.conns:
            c.send(1)
        self.compute_s.append([c.recv()[0] for c in self.conns])
        for k, p in self.params.items():
            total = self.grads[0][k] if len(self.grads) == 1 else np.add(self.grads[0][k], self.grads[1][k])
            for g in self.grads[2:]:
                total += g[k]
            p -= self.lr * total

    def close(self) -> None:
        from .workloads_ray import stop_children

        stop_children(self.conns, self.procs)
        self.params, self.grads = {}, []
        for shm in self.shms:
            with contextlib.suppress(Exception):
                shm.close()
                shm.unlink()
        self.shms = []

    def __enter__(self) -> "IdealTrainPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- the workload


@workload(NAME)
def train_jobs(cfg: Config) -> list[Row]:
    """Training jobs in examples/s: (a) digits on each placement vs NumPy/PyTorch/Ray Train,
    (b) a large MLP on N Ray workers vs N plain processes, (c) the coordinator's cost per step."""
    tmp = tempfile.mkdtemp(prefix="gradwire-bench-train-jobs-")
    rows: list[Row] = []
    try:
        for part, fn in (("a", _part_a), ("b", _part_b)):
            try:
                rows += fn(cfg, tmp)
            except Exception as exc:  # noqa: BLE001 - one part failing must not hide the other's rows
                import traceback

                cfg.log(traceback.format_exc())
                rows.append(row(f"{NAME}/{part} error", passed=False, notes=f"{type(exc).__name__}: {exc}"[:400]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _part_a(cfg: Config, tmp: str) -> list[Row]:
    log = cfg.log
    data, source = digits_data()
    graph, params0 = digits_model()
    tiny_graph, tiny_params = tiny_model()
    tiny_data = {"x": np.random.default_rng(1).standard_normal((len(data["x"]), 1)).astype(np.float32)}
    n, batch = len(data["x"]), A_BATCH
    spe = math.ceil(n / batch)
    rounds = scaled_repeats(cfg, NAME, A_ROUNDS, floor=1)
    gate = not cfg.quick
    support = placement_support()
    has_placement = support["server"] or support["client"]
    log(f"[{NAME}] (a) digits {n}x64 ({source}), MLP 64-64-10, batch {batch} ({spe} steps/epoch), SGD lr {A_LR}; "
        f"{rounds} run(s) per variant; placement setting: server {support['server']}, client {support['client']}")
    rows: list[Row] = []
    c_rows: list[Row] = []

    # ---- in-process loops: NumPy (the baseline), gw.local() + SGD (a floor), PyTorch
    np_epochs = 2 if cfg.quick else _epochs_for(time_once(lambda: numpy_sgd(params0, data, batch, 2, A_LR)) * 1e3
                                               / (2 * spe), spe, A_LOOP_SECONDS)
    eng_epochs = 2 if cfg.quick else _epochs_for(
        time_once(lambda: engine_sgd(graph, params0, data, batch, 2, A_LR)) * 1e3 / (2 * spe), spe, A_LOOP_SECONDS)
    loops: dict[str, Callable[[], Any]] = {
        "numpy": lambda: numpy_sgd(params0, data, batch, np_epochs, A_LR),
        "engine": lambda: engine_sgd(graph, params0, data, batch, eng_epochs, A_LR),
    }
    epochs_of = {"numpy": np_epochs, "engine": eng_epochs}
    torch_missing = _have("torch")
    if torch_missing is None:
        torch_run = torch_sgd_fn(params0, data, batch, A_LR)
        epochs_of["torch"] = 2 if cfg.quick else _epochs_for(time_once(lambda: torch_run(2)) * 1e3 / (2 * spe), spe,
                                                             A_LOOP_SECONDS)
        loops["torch"] = lambda: torch_run(epochs_of["torch"])
    samples = timed(loops, repeats=max(3, rounds), warmup=1)
    loop_eps = {k: n * epochs_of[k] / median(v) for k, v in samples.items()}
    np_params, _ = numpy_sgd(params0, data, batch, 2, A_LR)
    per_step = {k: [s / (spe * epochs_of[k]) for s in v] for k, v in samples.items()}  # seconds per step
    np_eps_all = [n * np_epochs / s for s in samples["numpy"]]
    np_step_all = list(per_step["numpy"])

    # ---- the servers: one per variant, its runs interleaved with NumPy-loop runs
    variants: list[dict] = [{"key": "local", "label": "local backend", "config": {"backend": "local"}}]
    ray_config = {"backend": "ray", "workers": A_WORKERS, "worker_cpus": 1, "blas_threads": 1}
    ray_skip = "skipped: " + NO_RAY_ENV + "=1" if _no_ray() else None
    base_ray = dict(ray_config, **({"placement": "ray"} if support["server"] else {}))
    variants.append({"key": "ray", "label": f"ray {A_WORKERS}w x 1t" + (", placement=ray" if has_placement else ""),
                     "config": base_ray, "placement": "ray" if has_placement else None, "ray": True,
                     "extra_shards": A_WORKERS})
    if has_placement:
        variants.append({"key": "auto", "label": f"placement=auto (ray {A_WORKERS}w x 1t)",
                         "config": dict(ray_config, **({"placement": "auto"} if support["server"] else {})),
                         "placement": "auto", "ray": True, "extra_shards": 1})
    results: dict[str, dict] = {}
    for v in variants:
        if v.get("ray") and ray_skip:
            results[v["key"]] = {"skipped": ray_skip}
            continue
        results[v["key"]] = _a_block(cfg, tmp, v, graph, params0, data, tiny_graph, tiny_params, tiny_data, rounds,
                                     np_epochs)
        np_eps_all += results[v["key"]]["np_eps"]
        np_step_all += [n / (e * spe) for e in results[v["key"]]["np_eps"]]  # a run's seconds per step

    # ---- Ray Train + DDP
    ddp_missing = _have("torch") or _have("ray.train")
    ddp_eps = None
    if ddp_missing is None and not ray_skip:
        try:
            steps = spe * (2 if cfg.quick else 1 + max(2, epochs_of["numpy"] // 20))
            out = ray_train_ddp(tmp, A_WORKERS, {"sizes": list(A_SIZES), "acts": ["relu"], "lr": A_LR, "batch": batch,
                                                 "steps": steps, "x": data["x"], "y": data["y"]})
            ddp_eps = sum(out["rows"][spe:]) / sum(out["step_s"][spe:])  # as the jobs': examples / window
            ddp_stats = summarize(out["step_s"][spe:])
        except Exception as exc:  # noqa: BLE001 - report, go on
            ddp_missing = f"failed: {type(exc).__name__}: {exc}"[:300]

    # ---- rows
    np_eps = median(np_eps_all)
    np_step_ms = median(np_step_all) * 1e3
    rows.append(row(f"{NAME}/a numpy SGD loop (hand-written)", stats=summarize(np_step_all), ratio=1.0,
                    notes=f"baseline; {np_eps:,.0f} examples/s over all its runs ({np_step_ms * 1e3:.0f} us/step); "
                          f"{np_epochs} epochs per run",
                    examples_per_s=np_eps, step_ms=np_step_ms, samples_ms=[round(t * 1e3, 4) for t in np_step_all]))
    if "torch" in loop_eps:
        rows.append(row(f"{NAME}/a pytorch SGD loop", stats=summarize(per_step["torch"]),
                        ratio=loop_eps["torch"] / loop_eps["numpy"],
                        notes=f"ratio = ex/s / numpy loop's (interleaved); {loop_eps['torch']:,.0f} examples/s; "
                              f"torch.set_num_threads(1), autograd, torch.optim.SGD",
                        examples_per_s=loop_eps["torch"]))
    else:
        rows.append(_unavailable("a pytorch SGD loop", f"torch is not installed ({torch_missing})"))
    if ddp_eps is not None:
        rows.append(row(f"{NAME}/a ray train + ddp {A_WORKERS}w x 1t (gloo)", stats=ddp_stats, ratio=ddp_eps / np_eps,
                        notes=f"ratio = ex/s / numpy loop's; {ddp_eps:,.0f} examples/s (rank 0's step times after "
                              f"its first epoch, all-reduce included; Ray Train's start-up left out, as the jobs' "
                              f"submission)", examples_per_s=ddp_eps))
    else:
        rows.append(_unavailable(f"a ray train + ddp {A_WORKERS}w x 1t (gloo)", ray_skip or ddp_missing))

    for v in variants:
        res = results[v["key"]]
        name = f"{NAME}/a job, {v['label']}"
        if "skipped" in res:
            rows.append(row(name, notes=res["skipped"], passed=None))
            continue
        job, ratio = res["job"], res["ratio"]
        target, passed, why = None, None, ""
        if v["key"] == "auto":
            target, passed = f">= {AUTO_TARGET:g}", ratio >= AUTO_TARGET if gate else None
        elif v["key"] == "local" and not has_placement:
            target, passed = f">= {AUTO_TARGET:g} (auto's)", ratio >= AUTO_TARGET if gate else None
            why = ("; stands in for placement=auto (absent from this server): the in-process placement auto "
                   "would pick for a model this small; ")
        diff = max(float(np.max(np.abs(res["params"][k] - np_params[k]))) for k in np_params) if "params" in res \
            else float("nan")
        rows.append(row(name, stats=res["stats"], ratio=ratio, target=target, passed=passed,
                        notes=f"ratio = ex/s / numpy loop's (interleaved with it){why}; {job['eps']:,.0f} "
                              f"examples/s, {job['step_ms']:.3f} ms/step after the first epoch; submit->result "
                              f"{job['e2e_eps']:,.0f} ex/s; {job['epochs']} epochs; 2-epoch params vs numpy loop "
                              f"max|diff| {diff:.1e}" + (f"; placed {res['run'].placement}" if res["run"].placement else ""),
                        examples_per_s=job["eps"], step_ms=job["step_ms"], e2e_examples_per_s=job["e2e_eps"],
                        placement=res["run"].placement))
        if "shards_job" in res:
            sj = res["shards_job"]
            what = "one shard per worker" if v["extra_shards"] > 1 else "one shard: one engine call per step"
            rows.append(row(f"{name}, shards={v['extra_shards']} (info)", stats=sj["stats"], ratio=sj["ratio"],
                            notes=f"ratio = ex/s / numpy loop's; {what} (the row above: the server's own shard "
                                  f"plan); {sj['eps']:,.0f} examples/s, {sj['step_ms']:.3f} ms/step"
                                  + (f"; placed {sj['run'].placement}" if sj["run"].placement else ""),
                            examples_per_s=sj["eps"], step_ms=sj["step_ms"]))
        if v["key"] == "ray":
            if ddp_eps is not None:
                r = job["eps"] / ddp_eps
                rows.append(row(f"{NAME}/a job, {v['label']} / ray train + ddp", ratio=r, target=f">= {DDP_TARGET_A:g}",
                                passed=r >= DDP_TARGET_A if gate else None,
                                notes=f"ratio = job ex/s / DDP ex/s ({ddp_eps:,.0f})"))
            else:
                rows.append(row(f"{NAME}/a job, {v['label']} / ray train + ddp", target=f">= {DDP_TARGET_A:g}", passed=None,
                                notes=f"not measured: Ray Train + DDP unavailable ({ray_skip or ddp_missing})"))
        c_rows.append(_c_row(f"a job, {v['label']}", res["run"], bool(v.get("ray")) and res["counted"],
                             batch * (64 * 4 + 8)))
    if not has_placement:
        for p in ("auto", "ray"):
            rows.append(row(f"{NAME}/a job, placement={p}", target=f">= {AUTO_TARGET if p == 'auto' else DDP_TARGET_A:g}"
                                                                   + ("" if p == "auto" else " x ddp"), passed=None,
                            notes="skipped: ServerConfig has no placement field and submit_job no placement "
                                  "argument in this checkout" + (" (the ray-backend job above is what placement=ray "
                                                                 "would run)" if p == "ray" else "")))

    # ---- floors
    rows.append(row(f"{NAME}/a floor: gw.local() + SGD rule in-process", stats=summarize(per_step["engine"]),
                    ratio=loop_eps["engine"] / loop_eps["numpy"],
                    notes=f"ratio = ex/s / numpy loop's: what a job step costs with no server around it; "
                          f"{loop_eps['engine']:,.0f} examples/s ({batch / loop_eps['engine'] * 1e6:.0f} us/step "
                          f"vs numpy {np_step_ms * 1e3:.0f})", examples_per_s=loop_eps["engine"]))
    for v in variants:
        res = results[v["key"]]
        if "tiny" not in res:
            continue
        t = res["tiny"]
        rows.append(row(f"{NAME}/a floor: job on a 1-node graph, {v['label']}", stats=t["stats"],
                        ratio=np_step_ms / t["step_ms"],
                        notes=f"ratio = numpy step / this step: the most any job on this server can reach vs the "
                              f"numpy loop with free compute; {t['step_ms']:.3f} ms/step ({t['eps']:,.0f} ex/s); "
                              f"coordinator CPU {t['run'].cpu_ms:.2f} ms/step", step_ms=t["step_ms"],
                        cpu_ms_per_step=t["run"].cpu_ms))
        if "ray_floor" in res:
            fl = res["ray_floor"]
            per_step = res["run"].objects_out
            for key, label in (("noop", "no-op actor task round trip"),
                               ("echo", f"actor task, {_kib(res['param_bytes'])} params in, same out")):
                st = summarize(fl[key])
                rows.append(row(f"{NAME}/a floor: ray {label}", stats=st, ratio=np_step_ms / st["median_ms"],
                                notes=f"ratio = numpy step / this round trip; a job step on this server fetches "
                                      f"{per_step or 0:.1f} task results (the server's shard plan, "
                                      f"{A_WORKERS} workers)", samples_ms=ms_list(fl[key])))
    return rows + c_rows


def _a_block(cfg: Config, tmp: str, v: dict, graph, params0, data, tiny_graph, tiny_params, tiny_data,
             rounds: int, np_epochs: int) -> dict:
    """One server for variant ``v``: its job (and extra-shards job), the 1-node job and the
    NumPy loop, interleaved; Ray floors on Ray servers."""
    import gradwire as gw

    n, batch = len(data["x"]), A_BATCH
    spe = math.ceil(n / batch)
    log = cfg.log
    t0 = time.perf_counter()
    with ServerProcess(os.path.join(tmp, f"a-{v['key']}"), **v["config"]) as server, \
            gw.connect(server.address, timeout=600) as client:
        up = time.perf_counter() - t0
        placement = v.get("placement")
        jobs: dict[str, Callable[[int], JobRun]] = {
            "job": lambda e: run_job(server, client, graph, params0, data, n, batch, e, spe, A_LR, 0, placement),
            "tiny": lambda e: run_job(server, client, tiny_graph, tiny_params, tiny_data, n, batch, e, spe, A_LR, 0,
                                      placement),
        }
        if v.get("extra_shards"):
            jobs["shards_job"] = lambda e: run_job(server, client, graph, params0, data, n, batch, e, spe, A_LR,
                                                   v["extra_shards"], placement)
        # warm-up runs (2 epochs), also sizing each variant's runs to about A_JOB_SECONDS
        epochs: dict[str, int] = {}
        first_params = None
        for key, fn in jobs.items():
            r = fn(2)
            if key == "job":
                first_params = r.params
            epochs[key] = 2 if cfg.quick else _epochs_for(r.step_ms, spe, A_JOB_SECONDS)
        log(f"[{NAME}] (a) {v['label']}: server pid {server.pid} up in {up:.1f}s; epochs per run {epochs}; "
            f"step hook {server.hooked}, Ray counters {server.ray_counted}")
        names = list(jobs) + ["numpy"]
        out: dict[str, list] = {k: [] for k in names}
        with _frozen():
            for order in round_orders(names, rounds):
                for key in order:
                    if key == "numpy":
                        out["numpy"].append(n * np_epochs / time_once(
                            lambda: numpy_sgd(params0, data, batch, np_epochs, A_LR)))
                    else:
                        out[key].append(jobs[key](epochs[key]))
                gc.collect()
        res: dict[str, Any] = {"np_eps": out["numpy"], "counted": server.ray_counted, "params": first_params}
        if v["key"] == "ray":
            fl_calls = 20 if cfg.quick else FLOOR_CALLS
            res["ray_floor"] = server.ask("ray_floor", fl_calls, sum(p.size for p in params0.values()))
            res["param_bytes"] = sum(p.nbytes for p in params0.values())
    np_med = median(out["numpy"])
    for key in jobs:
        runs: list[JobRun] = out[key]
        eps = [r.examples_per_s for r in runs]
        best = runs[sorted(range(len(runs)), key=lambda i: eps[i])[len(runs) // 2]]  # the median run
        entry = {"eps": median(eps), "step_ms": median([r.step_ms for r in runs]),
                 "e2e_eps": median([step_sizes(n, batch, 0, r.steps) / r.e2e_s for r in runs]),
                 "stats": summarize([r.step_ms / 1e3 for r in runs]), "ratio": median(eps) / np_med,
                 "epochs": epochs[key], "run": best}
        if key == "job":
            res.update(job=entry, stats=entry["stats"], ratio=entry["ratio"], run=best)
        else:
            res[key] = entry
    log(f"[{NAME}] (a) {v['label']}: job {res['job']['eps']:,.0f} ex/s ({res['job']['step_ms']:.3f} ms/step), numpy "
        f"{np_med:,.0f} ex/s, ratio {res['ratio']:.3f}; 1-node job {res['tiny']['step_ms']:.3f} ms/step")
    return res


def _part_b(cfg: Config, tmp: str) -> list[Row]:
    import gradwire as gw
    from .workloads_core import mlp_data, mlp_graph
    from .workloads_ray import worker_counts

    log = cfg.log
    batch = B_QUICK_BATCH if cfg.quick else B_BATCH
    warm, steps, rounds = (1, 2, 1) if cfg.quick else (B_WARM, B_STEPS, B_ROUNDS)
    n = batch * B_ROWS_PER_BATCH
    spe = B_ROWS_PER_BATCH
    epochs = math.ceil((warm + steps) / spe)
    total = epochs * spe
    gate = not cfg.quick
    counts = worker_counts()
    if _no_ray():
        return [row(f"{NAME}/b mlp 784-512-512-10 jobs", notes=f"skipped: {NO_RAY_ENV}=1", passed=None)]
    params0, data = mlp_data(n, 0)
    graph = mlp_graph()
    data_dir = Path(tmp) / "b-data"  # outside every job_dir; the servers may read datasets here
    data_dir.mkdir()
    data_path = data_dir / "mlp.npz"
    np.savez(data_path, **data)
    del data
    from ..server.config import ServerConfig

    roots = {"data_roots": str(data_dir)} if "data_roots" in {f.name for f in dataclasses.fields(ServerConfig)} else {}
    param_bytes = sum(p.nbytes for p in params0.values())
    log(f"[{NAME}] (b) MLP 784-512-512-10, batch {batch}, dataset {n} rows at {data_path} (read by the "
        f"server), jobs of {total} steps ({warm} warm-up), {rounds} job(s) per N, workers {counts}; ideal: N "
        f"spawned processes x 1 BLAS thread, gradients summed in shared memory")
    support = placement_support()
    res: dict[int, dict] = {}
    for workers in counts:
        shards = workers * math.ceil(8 / workers)
        config = {"backend": "ray", "workers": workers, "worker_cpus": 1, "blas_threads": 1, "shards": shards,
                  **roots, **({"placement": "ray"} if support["server"] else {})}
        placement = "ray" if support["client"] else None
        t0 = time.perf_counter()
        with ServerProcess(os.path.join(tmp, f"b-{workers}"), **config) as server, \
                gw.connect(server.address, timeout=600) as client, IdealTrainPool(workers, batch, B_LR) as ideal:
            up = time.perf_counter() - t0
            job_runs: list[JobRun] = []
            ideal_s: list[float] = []

            def job():
                job_runs.append(run_job(server, client, graph, params0, str(data_path), n, batch, epochs, warm, B_LR,
                                        0, placement))

            def ideal_run():
                for _ in range(warm):
                    ideal.step()
                ideal.compute_s.clear()
                ideal_s.extend(time_once(ideal.step) for _ in range(steps))

            with _frozen():
                for order in round_orders(["job", "ideal"], rounds):
                    for key in order:
                        (job if key == "job" else ideal_run)()
                    gc.collect()
            compute = [max(c) for c in ideal.compute_s]
            counted = server.ray_counted
            threads = ideal.blas_threads
            echo = server.ask("ray_floor", 5 if cfg.quick else 20, sum(p.size for p in params0.values()))["echo"]
        job_s = [s for r in job_runs for s in (r.step_s or [r.step_ms / 1e3] * r.timed_steps)]
        entry = res[workers] = {
            "job_stats": summarize(job_s), "ideal_stats": summarize(ideal_s), "job_s": job_s, "ideal_s": ideal_s,
            "run": sorted(job_runs, key=lambda r: r.step_ms)[len(job_runs) // 2], "counted": counted,
            "compute_ms": median(compute) * 1e3, "threads": threads, "shards": shards, "up": up, "echo": echo,
        }
        entry["job_eps"] = batch / (entry["job_stats"]["median_ms"] / 1e3)
        entry["ideal_eps"] = batch / (entry["ideal_stats"]["median_ms"] / 1e3)
        log(f"[{NAME}] (b) N={workers}: job {entry['job_eps']:,.0f} ex/s ({entry['job_stats']['median_ms']:.0f} "
            f"ms/step), ideal {entry['ideal_eps']:,.0f} ex/s ({entry['ideal_stats']['median_ms']:.0f} ms/step, a "
            f"worker's compute {entry['compute_ms']:.0f} ms); server up in {up:.1f}s; coordinator CPU "
            f"{entry['run'].cpu_ms:.0f} ms/step")

    ddp_missing = _have("torch") or _have("ray.train")
    ddp_eps = None
    if ddp_missing is None and 2 in counts:
        try:
            out = ray_train_ddp(tmp, 2, {"sizes": [784, 512, 512, 10], "acts": ["relu", "sigmoid"], "lr": B_LR,
                                         "batch": batch, "steps": warm + steps * rounds, "synthetic": True, "n": n,
                                         "seed": 0})
            ddp_stats = summarize(out["step_s"][warm:])
            ddp_eps = batch / (ddp_stats["median_ms"] / 1e3)  # as the jobs': a batch per median step
        except Exception as exc:  # noqa: BLE001
            ddp_missing = f"failed: {type(exc).__name__}: {exc}"[:300]

    rows: list[Row] = []
    c_rows: list[Row] = []
    for workers, e in res.items():
        ratio = e["job_eps"] / e["ideal_eps"]
        bound = e["ideal_stats"]["median_ms"] / e["job_stats"]["median_ms"]
        rows.append(row(f"{NAME}/b ideal {workers} process(es) x 1 thread", stats=e["ideal_stats"], ratio=1.0,
                        notes=f"baseline for N={workers}; {e['ideal_eps']:,.0f} examples/s; a process's "
                              f"forward+backward of {batch // workers} rows takes {e['compute_ms']:.0f} ms, the rest "
                              f"is summing and SGD in the parent; BLAS threads {e['threads']}",
                        examples_per_s=e["ideal_eps"], workers=workers, compute_ms=e["compute_ms"],
                        samples_ms=ms_list(e["ideal_s"])))
        is_gate = workers == 2
        cpu_share = e["run"].cpu_ms / e["job_stats"]["median_ms"]
        rows.append(row(f"{NAME}/b job, ray {workers}w x 1t", stats=e["job_stats"], ratio=ratio,
                        target=f">= {IDEAL_TARGET:g}" if is_gate else None,
                        passed=(ratio >= IDEAL_TARGET if gate else None) if is_gate else None,
                        notes=f"ratio = ex/s / ideal {workers}'s (interleaved); {e['job_eps']:,.0f} examples/s; shards "
                              f"{e['shards']}; the coordinator uses {e['run'].cpu_ms:.0f} ms CPU per step "
                              f"({cpu_share:.0%} of a core) next to {workers} worker(s) on {os.cpu_count()} CPUs; "
                              f"(1 / ratio = {1 / bound:.2f}x the ideal's time)"
                              + (f"; placed {e['run'].placement}" if e["run"].placement else ""),
                        examples_per_s=e["job_eps"], workers=workers, samples_ms=ms_list(e["job_s"])))
        c_rows.append(_c_row(f"b job, ray {workers}w x 1t", e["run"], e["counted"], batch * (784 * 4 + 8)))
    if 1 in res and 2 in res:
        sp = res[2]["job_eps"] / res[1]["job_eps"]
        isp = res[2]["ideal_eps"] / res[1]["ideal_eps"]
        rows.append(row(f"{NAME}/b job speedup 1 -> 2 workers", ratio=sp, target=f">= {SPEEDUP_TARGET:g}",
                        passed=sp >= SPEEDUP_TARGET if gate else None,
                        notes=f"ratio = job ex/s at 2 / at 1; the ideal reference's own speedup is {isp:.3f} here",
                        speedup=sp, ideal_speedup=isp))
    else:
        rows.append(row(f"{NAME}/b job speedup 1 -> 2 workers", passed=None,
                        notes=f"not measured: worker counts {counts} lack 1 or 2"))
    if ddp_eps is not None and 2 in res:
        r = res[2]["job_eps"] / ddp_eps
        rows.append(row(f"{NAME}/b ray train + ddp 2w x 1t (gloo)", stats=ddp_stats,
                        ratio=ddp_eps / res[2]["ideal_eps"],
                        notes=f"ratio = ex/s / ideal 2's (measured after the jobs, not interleaved); {ddp_eps:,.0f} "
                              f"examples/s; rank 0's step times after {warm} warm-up steps", examples_per_s=ddp_eps,
                        samples_ms=ms_list(out["step_s"][warm:])))
        rows.append(row(f"{NAME}/b job, ray 2w / ray train + ddp", ratio=r, target=f">= {DDP_TARGET_B:g}",
                        passed=r >= DDP_TARGET_B if gate else None, notes="ratio = job ex/s / DDP ex/s"))
    else:
        rows.append(_unavailable("b ray train + ddp 2w x 1t (gloo)", ddp_missing or "2 workers not measured"))
        rows.append(row(f"{NAME}/b job, ray 2w / ray train + ddp", target=f">= {DDP_TARGET_B:g}", passed=None,
                        notes="not measured: Ray Train + DDP unavailable"))
    for workers, e in res.items():
        st = summarize(e["echo"])
        rows.append(row(f"{NAME}/b floor: ray actor task, {_kib(param_bytes)} params in, same out, N={workers}",
                        stats=st, ratio=st["median_ms"] / e["job_stats"]["median_ms"],
                        notes="ratio = this round trip / a job step: a step's parameters to a worker and its "
                              "gradients back, nothing computed; the coordinator's CPU per step is in the (c) rows",
                        samples_ms=ms_list(e["echo"])))
    return rows + c_rows
