"""Training jobs: steps run data-parallel on the backend, the optimizer is applied here.

A job is a thread that owns its parameters and optimizer state; it keeps running when its
client disconnects. Everything needed to resume it lives in its directory under
``job_dir``: the graph, the dataset (uploaded ones are stored), the initial parameters,
an append-only event log and atomic checkpoints (params, optimizer state, step and the
position in the seeded data order). After a restart, unfinished jobs resume from their
last checkpoint and end bitwise identical to an uninterrupted run.

A job belongs to the tenant that submitted it (``job.json`` records it; a job.json from
before tenants belongs to the default tenant): other tenants neither list nor find it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import shutil
import stat
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..protos import gradwire_pb2 as pb
from .admission import Admission
from .auth import DEFAULT_TENANT
from .backend import Backend
from .placement import check_placement, shards_by_cost
from .job_steps import StepPlan, Steps
from .job_store import compact_events, lock_job_dir, prune_finished
from .status import JobNotDone, NotFound, PermissionDenied, StillResuming
from .store import GraphStore, Registered, check_params, new_id
from ..worker.cancel import CancelToken
from ..worker.optim import from_config, optimizer_from_json
from ..worker.budget import estimate
from ..worker.jobdata import BatchOrder
from ..worker.spec import TensorSpec
from ..worker.validate import GraphError, LimitError, infer

log = logging.getLogger("gradwire.server")
FINAL_STATES = ("done", "failed", "cancelled")
EVENTS_WRITE_S = 0.5  # how often a running job appends its new events to events.jsonl


@dataclass
class JobSpec:
    """What a submission fixed; stored as job.json."""

    job_id: str
    graph_id: str
    optimizer: dict
    batch_size: int
    epochs: int
    seed: int
    checkpoint_every: int
    shards: int
    data_path: str
    name: str = ""
    placement: str = ""  # requested: "", "auto", "ray" or "local"
    tenant: str = DEFAULT_TENANT  # the owner (job.json files without it are the default tenant's)


def _regular_file(path: Path | str) -> Path:
    """``path`` if it is a regular file: a FIFO or a device would block or never end a read."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError("not a regular file (FIFOs, devices and sockets are refused)")
    return Path(path)


def resolve_data_path(path: str, roots: tuple[str, ...], job_dir: Path) -> str:
    """The real path of a client's ``data_path``: a regular ``.npz`` or ``.npy`` file inside one
    of the data roots (after symlinks) and outside the job folder (other jobs' uploads). Every
    refusal reads the same, so it tells nothing of what exists on the server's disk."""
    refusal = PermissionDenied(
        f"data_path {path!r} is not a regular .npz or .npy file inside the server's data roots "
        f"({', '.join(map(repr, roots))})" if roots else
        f"data_path {path!r}: this server reads no datasets by path (it has no --data-root); upload the data")
    if not roots:
        raise refusal
    try:
        real = os.path.realpath(path)
        inside = any(_within(real, os.path.realpath(root)) for root in roots)
        if not inside or _within(real, os.path.realpath(job_dir)) or not real.endswith((".npz", ".npy")):
            raise refusal
        if not stat.S_ISREG(os.stat(real).st_mode):
            raise refusal
    except (OSError, ValueError):
        raise refusal from None
    return real


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def load_dataset(path: str) -> dict[str, np.ndarray]:
    """The arrays of a dataset: a ``.npz`` file (read into memory) or a directory of
    ``NAME.npy`` files (memory-mapped, so datasets larger than memory work). Only regular
    files are read."""
    try:
        if os.path.isdir(path):
            files = sorted(Path(path).glob("*.npy"))
            if not files:
                raise ValueError("the directory holds no .npy files")
            # plain ndarray views of the maps: np.memmap's Python __getitem__ costs each step's gather
            return {f.stem: np.load(_regular_file(f), mmap_mode="r", allow_pickle=False).view(np.ndarray)
                    for f in files}
        loaded = np.load(_regular_file(path), allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            raise ValueError("a bare .npy holds one unnamed array; give a .npz or a directory of NAME.npy files")
        with loaded as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise GraphError(f"cannot read dataset {path!r}: {exc}") from None
    not_arrays = sorted(name for name, value in arrays.items() if not isinstance(value, np.ndarray))
    if not_arrays:  # np.load hands out a member that is no .npy file as raw bytes
        raise GraphError(f"cannot read dataset {path!r}: member(s) {not_arrays} are not .npy arrays")
    return arrays


def save_dataset(directory: Path, data: dict[str, np.ndarray]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in data.items():
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            raise GraphError(f"dataset array name {name!r} must be letters, digits, '_', '.' or '-'")
        np.save(directory / f"{name}.npy", array, allow_pickle=False)


def check_dataset(reg: Registered, data: dict[str, np.ndarray], batch_size: int) -> int:
    """The number of examples; ``GraphError`` naming whatever does not fit the graph."""
    inputs = reg.program.graph.inputs
    if set(data) != set(inputs):
        raise GraphError(f"dataset arrays {sorted(data)} do not match the graph's inputs {sorted(inputs)}")
    sizes = {}
    for name, spec in inputs.items():
        array = data[name]
        if not spec.shape or spec.shape[0] is not None:
            raise GraphError(f"input {name!r} {spec} has no batch (None) leading dimension to iterate over")
        if array.dtype != spec.dtype or array.ndim != len(spec.shape) or any(
            d is not None and d != e for d, e in zip(spec.shape[1:], array.shape[1:])
        ):
            raise GraphError(f"dataset array {name!r} is {array.dtype.name}{list(array.shape)}; "
                             f"the graph's input is {spec}")
        sizes[name] = array.shape[0]
    if len(set(sizes.values())) != 1:
        raise GraphError(f"dataset arrays differ in length: {sizes}")
    n = next(iter(sizes.values()))
    if batch_size < 1 or batch_size > n:
        raise GraphError(f"batch_size {batch_size} must be between 1 and the dataset size {n}")
    return n


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")  # unique: no two writers share one
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: a reader sees the old checkpoint or the new one


def _flatten_state(params: dict, opt_state: dict, meta: dict) -> dict[str, np.ndarray]:
    out = {f"param/{k}": v for k, v in params.items()}
    for key, value in opt_state.items():
        if isinstance(value, dict):
            out.update({f"state/{key}/{k}": v for k, v in value.items()})
            meta.setdefault("state_dicts", []).append(key)
        else:
            meta.setdefault("state_scalars", {})[key] = value
    out["meta"] = np.array(json.dumps(meta))
    return out


def _unflatten_state(archive) -> tuple[dict, dict, dict]:
    meta = json.loads(str(archive["meta"]))
    params = {k[6:]: archive[k] for k in archive.files if k.startswith("param/")}
    state: dict = dict(meta.get("state_scalars", {}))
    for key in meta.get("state_dicts", []):
        prefix = f"state/{key}/"
        state[key] = {k[len(prefix):]: archive[k] for k in archive.files if k.startswith(prefix)}
    return params, state, meta


@dataclass
class JobRun:
    spec: JobSpec
    reg: Registered
    data: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    directory: Path
    n_examples: int
    opt_state: dict | None = None
    step: int = 0
    state: str = "queued"
    error: str = ""
    loss: float = float("nan")
    events: list = field(default_factory=list)
    cancel_requested: bool = False
    token: CancelToken | None = None  # the running step's: cancelled by CancelJob and by shutdown
    changed: threading.Condition = field(default_factory=threading.Condition)
    _waiters: list = field(default_factory=list)  # (event loop, asyncio.Event) of async watchers
    _unwritten: list = field(default_factory=list)  # events not yet appended to events.jsonl
    _written_at: float = 0.0
    placement: str = ""  # where the steps run and why

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_examples / self.spec.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.spec.epochs

    def info(self) -> pb.JobInfo:
        return pb.JobInfo(job_id=self.spec.job_id, state=self.state, step=self.step, total_steps=self.total_steps,
                          epoch=self.step // max(1, self.steps_per_epoch), loss=self.loss, error=self.error,
                          graph_id=self.spec.graph_id, name=self.spec.name, placement=self.placement)

    def emit(self, event: dict, durable: bool = False) -> None:
        """Record an event; the log file is appended in batches (every ``EVENTS_WRITE_S``, at
        checkpoints and state changes: ``durable``), not once per step."""
        self._unwritten.append(event)
        if durable or time.monotonic() - self._written_at > EVENTS_WRITE_S:
            self.write_events()
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()
            waiters = list(self._waiters)
        for loop, ready in waiters:
            loop.call_soon_threadsafe(ready.set)

    def write_events(self) -> None:
        if self._unwritten:
            with open(self.directory / "events.jsonl", "a") as f:
                f.write("".join(json.dumps(e) + "\n" for e in self._unwritten))
            self._unwritten.clear()
        self._written_at = time.monotonic()

    async def wait_for_events(self, seen: int, timeout: float) -> None:
        """Return once the job has more than ``seen`` events, or after ``timeout`` s; holds no thread."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self.changed:
            if len(self.events) > seen:
                return
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1].wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            with self.changed:
                self._waiters.remove(waiter)


def _step_flops(reg: Registered, batch_size: int) -> float:
    """The estimated floating-point work of one step of ``batch_size`` rows."""
    program = reg.program
    sources = {name: TensorSpec(tuple(batch_size if d is None else d for d in spec.shape), spec.dtype)
               for name, spec in program.graph.sources().items()}
    try:
        specs, _ = infer(program.graph, program.order, sources, program.limits)
    except GraphError:  # a graph only some batch sizes fit (the steps check their own): no estimate
        return 0.0
    return estimate(program, specs).flops


class JobManager:
    def __init__(self, job_dir: str, backend: Backend, graphs: GraphStore, default_shards: int,
                 check_finite: bool = False, admission: Admission | None = None, max_running: int = 4,
                 max_steps: int = 10_000_000, data_roots: tuple[str, ...] = (), keep_finished: int = 100):
        self.root = Path(job_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.backend, self.graphs = backend, graphs
        self.default_shards, self.check_finite = default_shards, check_finite
        self.jobs: dict[str, JobRun] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        # jobs share the compute slots with requests (a step holds one) and run at most
        # `max_running` at a time; the others stay queued
        self.admission = admission or Admission(max_concurrent=1 << 20, memory_budget=1 << 62)
        self._running = threading.BoundedSemaphore(max_running)
        self.max_steps = max_steps
        self.data_roots = tuple(data_roots)
        self.keep_finished = keep_finished
        self.shards_by_cost = False  # True: a job that names no shard count gets one by cost
        self.observe = None  # called with each step's outcome (metrics), when set
        self._folder_lock = lock_job_dir(self.root)  # one server per job folder
        self._resumed = threading.Event()  # cleared while resume_all reads the folder's jobs
        self._resumed.set()

    # ------------------------------------------------------------------ submission

    def submit(self, header: pb.JobHeader, reg: Registered, params: dict[str, np.ndarray],
               uploaded: dict[str, np.ndarray], tenant: str = DEFAULT_TENANT) -> JobRun:
        optimizer = optimizer_from_json(header.optimizer_json)
        check_placement(header.placement)
        if header.epochs < 1:
            raise GraphError(f"epochs must be >= 1, got {header.epochs}")
        check_params(reg.program, params, partial=False)
        if header.data_path and uploaded:
            raise GraphError("give either data_path or uploaded data, not both")
        data_path = resolve_data_path(header.data_path, self.data_roots, self.root) if header.data_path else ""
        data = load_dataset(data_path) if data_path else uploaded
        n = check_dataset(reg, data, header.batch_size)
        total_steps = math.ceil(n / header.batch_size) * header.epochs
        shards = int(header.shards) or (self.default_shards if not self.shards_by_cost else
                                        shards_by_cost(_step_flops(reg, int(header.batch_size)), self.default_shards))
        if total_steps > self.max_steps:
            raise LimitError(f"the job asks for {total_steps} steps ({header.epochs} epochs of "
                             f"{math.ceil(n / header.batch_size)}); the limit is {self.max_steps} (--max-job-steps)")

        job_id = new_id("j-")
        directory = self.root / job_id
        directory.mkdir()
        if not data_path:
            data_path = str(directory / "data")
            save_dataset(Path(data_path), data)
            data = load_dataset(data_path)  # memory-mapped from now on
        (directory / "graph.pb").write_bytes(reg.proto_bytes)
        _save_npz_atomic(directory / "params0.npz", params)
        spec = JobSpec(job_id, reg.graph_id, optimizer, int(header.batch_size), int(header.epochs),
                       int(header.seed), int(header.checkpoint_every), shards,
                       data_path, header.name, header.placement, tenant)
        (directory / "job.json").write_text(json.dumps(spec.__dict__))
        run = JobRun(spec, reg, data, dict(params), directory, n)
        self._start(run)
        return run

    def resume_all(self) -> None:
        self._resumed.clear()
        try:
            self._resume_all()
        finally:
            self._resumed.set()

    def _resume_all(self) -> None:
        """Restart every job whose directory says it did not finish."""
        for job_json in sorted(self.root.glob("j-*/job.json")):
            directory = job_json.parent
            if (directory / "final.npz").exists() or (directory / "state").exists() and \
                    (directory / "state").read_text() in FINAL_STATES:
                self._load_finished(directory)
                continue
            try:
                self._resume(directory)
            except Exception:  # noqa: BLE001 - one broken job must not stop the server
                log.exception("cannot resume job in %s", directory)

    def _load(self, directory: Path) -> JobRun:
        spec = JobSpec(**json.loads((directory / "job.json").read_text()))
        reg = self.graphs.register(pb.Graph.FromString((directory / "graph.pb").read_bytes()), spec.tenant)
        data = load_dataset(spec.data_path)
        with np.load(directory / "params0.npz", allow_pickle=False) as archive:
            params = {k: archive[k] for k in archive.files}
        run = JobRun(spec, reg, data, params, directory, check_dataset(reg, data, spec.batch_size))
        events_file = directory / "events.jsonl"
        if events_file.exists():
            run.events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
        return run

    def _load_finished(self, directory: Path) -> None:
        run = self._load(directory)
        run.state = (directory / "state").read_text() if (directory / "state").exists() else "done"
        if (directory / "final.npz").exists():
            with np.load(directory / "final.npz", allow_pickle=False) as archive:
                run.params, run.opt_state, meta = _unflatten_state(archive)
                run.step = meta["step"]
        run.loss = run.events[-1]["loss"] if run.events else float("nan")
        with self._lock:
            self.jobs[run.spec.job_id] = run

    def _resume(self, directory: Path) -> None:
        run = self._load(directory)
        checkpoint = directory / "checkpoint.npz"
        if checkpoint.exists():
            with np.load(checkpoint, allow_pickle=False) as archive:
                run.params, run.opt_state, meta = _unflatten_state(archive)
            run.step = meta["step"]
        # events after the checkpoint will be produced again
        run.events = [e for e in run.events if e["step"] <= run.step and e["state"] == "running"]
        (directory / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in run.events))
        log.info("resuming job %s at step %d", run.spec.job_id, run.step)
        self._start(run)

    def _start(self, run: JobRun) -> None:
        with self._lock:
            self.jobs[run.spec.job_id] = run
        thread = threading.Thread(target=self._run, args=(run,), name=f"job-{run.spec.job_id}", daemon=True)
        self._threads.append(thread)
        thread.start()

    # ------------------------------------------------------------------ the training loop

    def _run(self, run: JobRun) -> None:
        """The job's thread: queued until one of the running places is free, then its steps."""
        while not self._running.acquire(timeout=0.1):
            if run.cancel_requested:
                self._set_state(run, "cancelled")
                return
            if self._stopping.is_set():
                return
        try:
            self._train(run)
        finally:
            self._running.release()

    def _train(self, run: JobRun) -> None:
        spec = run.spec
        optimizer = from_config(spec.optimizer)
        resumed = run.opt_state is not None
        if not resumed:
            run.opt_state = optimizer.init(run.params)
        try:
            steps = self.backend.job_steps(self._step_plan(run))
        except Exception as exc:  # noqa: BLE001 - e.g. the dataset does not fit the object store
            log.exception("job %s cannot start", spec.job_id)
            run.error = f"cannot start: {exc}"
            self._set_state(run, "failed")
            return
        run.placement = steps.placement.describe()
        self._set_state(run, "running", f"resumed from step {run.step}" if resumed else "")
        started, started_step = time.perf_counter(), run.step
        try:
            self._steps(run, steps, optimizer, started, started_step)
        finally:
            steps.close()

    def _steps(self, run: JobRun, steps: Steps, optimizer, started: float, started_step: int) -> None:
        spec = run.spec
        try:
            while run.step < run.total_steps:
                if run.cancel_requested:
                    self._set_state(run, "cancelled")
                    return
                if self._stopping.is_set():
                    return  # server shutdown: the last checkpoint resumes it
                outcome = self._step(steps, run)
                run.params, run.opt_state = optimizer.update(run.params, outcome.result.grads, run.opt_state)
                run.step += 1
                run.loss = outcome.result.loss
                self._progress(run, started, started_step)
                if spec.checkpoint_every and run.step % spec.checkpoint_every == 0:
                    self._checkpoint(run, "checkpoint.npz")
            self._checkpoint(run, "final.npz")
            self._set_state(run, "done")
        except Exception as exc:  # noqa: BLE001 - a failed job reports, the server goes on
            if self._stopping.is_set():
                return
            if run.cancel_requested:  # the backend gave up its step because we cancelled it
                self._set_state(run, "cancelled")
                return
            log.exception("job %s failed", spec.job_id)
            run.error = str(exc)
            self._set_state(run, "failed")

    def _step_plan(self, run: JobRun) -> StepPlan:
        spec = run.spec
        order = BatchOrder(spec.seed, run.n_examples, spec.batch_size)
        return StepPlan(run.reg, run.data, order, spec.shards, self.check_finite, run.total_steps,
                        spec.placement, _step_flops(run.reg, spec.batch_size))

    def _step(self, steps: Steps, run: JobRun):
        """One step's compute, holding a compute slot like any request (waiting for it)."""
        # a flag the engine checks per node; CancelJob and stop() set it (a probe per node costs more)
        cancel = run.token = CancelToken()
        if run.cancel_requested or self._stopping.is_set():
            cancel.cancel("the job was cancelled or the server is stopping")
        self.admission.wait_slot(cancel)
        try:
            outcome = steps.run(run.step, run.params, cancel)
        finally:
            self.admission.give_slot()
        if self.observe is not None:
            self.observe(outcome)
        return outcome

    def _progress(self, run: JobRun, started: float, started_step: int) -> None:
        spec = run.spec
        elapsed = time.perf_counter() - started
        rate = (run.step - started_step) * spec.batch_size / elapsed if elapsed > 0 else 0.0
        eta = (run.total_steps - run.step) * spec.batch_size / rate if rate else 0.0
        run.emit({"step": run.step, "epoch": (run.step - 1) // run.steps_per_epoch, "loss": run.loss,
                  "examples_per_s": rate, "eta_s": eta, "state": "running", "total_steps": run.total_steps})

    def _checkpoint(self, run: JobRun, name: str) -> None:
        run.write_events()  # the log holds every event up to the checkpoint it may resume from
        _save_npz_atomic(run.directory / name, _flatten_state(run.params, run.opt_state, {"step": run.step}))

    def _set_state(self, run: JobRun, state: str, message: str = "") -> None:
        run.state = state
        if state in FINAL_STATES:
            (run.directory / "state").write_text(state)
        run.emit({"step": run.step, "epoch": run.step // max(1, run.steps_per_epoch), "loss": run.loss,
                  "examples_per_s": 0.0, "eta_s": 0.0, "state": state, "total_steps": run.total_steps,
                  "message": message or run.error or (run.placement if state == "running" else "")}, durable=True)
        if state in FINAL_STATES:
            self._retire(run)

    def _retire(self, run: JobRun) -> None:
        """A finished job's log is compacted and the oldest finished jobs beyond
        ``keep_finished`` are removed (the events in memory stay for its watchers)."""
        compact_events(run.directory / "events.jsonl")
        for job_id in prune_finished(self.root, self.keep_finished, FINAL_STATES):
            with self._lock:
                self.jobs.pop(job_id, None)
            log.info("job %s removed (--keep-finished %d)", job_id, self.keep_finished)

    def delete(self, job_id: str, tenant: str = DEFAULT_TENANT) -> JobRun:
        """Remove a finished job and its folder (``gradwire jobs rm``)."""
        run = self.get(job_id, tenant)
        if run.state not in FINAL_STATES:
            raise JobNotDone(f"job {job_id!r} is {run.state}; cancel it before removing it")
        with self._lock:
            self.jobs.pop(job_id, None)
        shutil.rmtree(run.directory, ignore_errors=True)
        return run

    # ------------------------------------------------------------------ queries

    def get(self, job_id: str, tenant: str = DEFAULT_TENANT) -> JobRun:
        with self._lock:
            run = self.jobs.get(job_id)
        if run is None and not self._resumed.is_set():
            raise StillResuming(f"job {job_id!r} is not known yet: the server is resuming its jobs; retry")
        if run is None or run.spec.tenant != tenant:  # another tenant's job: as if it did not exist
            raise NotFound(f"unknown job id {job_id!r}")
        return run

    def cancel(self, job_id: str, tenant: str = DEFAULT_TENANT) -> JobRun:
        run = self.get(job_id, tenant)
        run.cancel_requested = True
        if run.token is not None:
            run.token.cancel("the job was cancelled")
        return run

    def list(self, tenant: str = DEFAULT_TENANT) -> list[JobRun]:
        """``tenant``'s jobs (UNAVAILABLE, retryable, until the folder's jobs are all resumed)."""
        if not self._resumed.is_set():
            raise StillResuming("the server is resuming its jobs; retry")
        return [run for run in self._all() if run.spec.tenant == tenant]

    def all_runs(self) -> list[JobRun]:
        """Every tenant's jobs (for metrics)."""
        return self._all()

    def _all(self) -> list[JobRun]:
        with self._lock:
            return list(self.jobs.values())

    async def watch(self, job_id: str, after_step: int, tenant: str = DEFAULT_TENANT, poll: float = 0.5,
                    batch_every: float = 0.05):
        """Events of steps after ``after_step``, then live ones, until the job ends. A watcher
        wakes at most every ``batch_every`` s and sends what came meanwhile: a fast job with
        hundreds of watchers must not keep the event loop from answering other calls."""
        run = self.get(job_id, tenant)
        sent = 0
        while not self._stopping.is_set():
            await run.wait_for_events(sent, poll)
            await asyncio.sleep(batch_every)
            with run.changed:
                fresh = run.events[sent:]
            sent += len(fresh)
            for event in fresh:
                if event["step"] > after_step or event["state"] != "running":
                    yield event
                if event["state"] in FINAL_STATES:
                    return

    def stop(self) -> None:
        self._stopping.set()
        for run in self._all():
            if run.token is not None:
                run.token.cancel("the server is stopping")
        for thread in self._threads:
            thread.join(timeout=30)
        self._folder_lock.close()  # the folder is free for the next server
