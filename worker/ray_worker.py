"""The thin shell a Ray actor wraps around the engine (the class is made remote by the
server's Ray backend, so this module imports without Ray and tests run it directly).

A worker caches programs by graph id and parameter sets by key, so a graph or a
parameter version crosses to a worker once, not once per shard or per step. Every key is
made by the server (a graph's content hash; one fresh key per parameter set the driver
puts), never chosen by a client, so a key always names the one value it was made for.

A task stops within one node's time when its request ends: its cancellation token asks Ray
whether the task was cancelled (``ray.cancel`` only sets a flag on a running task of a
regular actor) and carries the request's deadline. A stopped task returns ``Stopped``
rather than raising: Ray logs an error, traceback and all, for every failed task whose
result nobody fetches, and the driver fetches none once it has given up on the request.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .cancel import Cancelled, CancelToken
from .codec import graph_from_bytes
from .engine import Program, Result
from .jobdata import BatchOrder, gather
from .lru import LruCache
from .shards import Shard, run_block

_JOBS_KEPT = 4  # datasets of this many training jobs stay on a worker
_ONE_SHOT_SETS = 2  # a request's own parameter set serves only its tasks: keep the last few, not 16


@dataclass(frozen=True)
class Stopped:
    """A task's result when its request ended under it (deadline or cancellation)."""

    reason: str
    deadline_passed: bool = False


class ShardWorker:
    def __init__(self, name: str, blas_threads: int = 1, cache_size: int = 16):
        self.name = name
        self.blas_threads = blas_threads
        # Pin BLAS to this worker's share of cores so N workers don't oversubscribe N cores.
        from threadpoolctl import threadpool_limits

        self._blas_limit = threadpool_limits(limits=blas_threads)
        self._programs: LruCache[str, Program] = LruCache(cache_size)
        self._params: LruCache[str, dict[str, np.ndarray]] = LruCache(cache_size)  # reusable sets (sessions, ...)
        self._one_shot: LruCache[str, dict[str, np.ndarray]] = LruCache(_ONE_SHOT_SETS)  # a plain request's
        # training jobs' datasets, by the driver's key for the job: fetched once, kept for the job's life
        self._datasets: LruCache[str, tuple[dict[str, np.ndarray], dict]] = LruCache(_JOBS_KEPT)
        self.counts = {"datasets_fetched": 0, "job_tasks": 0}  # what a job's steps cost this worker

    def identity(self) -> dict:
        node = ""
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - outside Ray there is no node id
            node = socket.gethostname()
        return {"worker": self.name, "pid": os.getpid(), "node": node}

    def run_shards(self, graph_id: str, graph_ref: list, params_key: str, params_ref: list,
                   batch: dict[str, np.ndarray], shards: list[Shard],
                   wrt, fetch, check_finite: bool, limits, deadline: float | None = None,
                   reuse: bool = True) -> tuple[Result, list[dict]] | Stopped:
        """Consecutive shards of one request (``batch`` holds exactly their rows), combined as
        the driver would combine them (``shards.run_block``):
        an aligned block of shards is a subtree of the fixed summation tree. ``graph_ref`` and
        ``params_ref`` hold an object ref in a list so Ray resolves them only on a cache miss.
        ``params_key`` is the driver's key for exactly that parameter set; ``reuse`` False:
        only this request uses it. ``deadline`` is the request's, as wall-clock time
        (``time.time()``: what processes on different nodes share); past it, or once Ray
        cancels the task, the shard stops before its next node and the task returns ``Stopped``."""
        cancel = task_token(deadline)
        try:
            return self._run_shards(cancel, graph_id, graph_ref, params_key, params_ref, batch, shards,
                                    wrt, fetch, check_finite, limits, reuse)
        except Cancelled as exc:
            return Stopped(str(exc), exc.deadline_passed)

    def _run_shards(self, cancel: CancelToken, graph_id, graph_ref, params_key, params_ref, batch, shards,
                    wrt, fetch, check_finite, limits, reuse) -> tuple[Result, list[dict]]:
        cancel.check()  # cancelled while it was queued, or the deadline passed on the way
        program = self._program(graph_id, graph_ref, limits)
        cache = self._params if reuse else self._one_shot
        params = cache.get_or_make(params_key, lambda: _resolve(params_ref[0]))
        result, ms = run_block(program, params, batch, shards, wrt=wrt, fetch=fetch, check_finite=check_finite,
                               cancel=cancel)
        identity = self.identity()
        return result, [{**identity, "ms": m} for m in ms]


    def run_job_step(self, job_key: str, data_ref: list, order: BatchOrder, step: int, graph_id: str,
                     graph_ref: list, params: dict[str, np.ndarray], shards: list[Shard], check_finite: bool,
                     limits, deadline: float | None = None) -> tuple[Result, list[dict]] | Stopped:
        """A block of shards of a training job's step: the worker gathers its rows of the step
        from the job's dataset (fetched through ``data_ref`` once per job, then kept) in the
        seeded order, so a step brings it only the step number and the parameters (which Ray
        resolves zero-copy from the node's object store)."""
        cancel = task_token(deadline)
        try:
            cancel.check()
            program = self._program(graph_id, graph_ref, limits)
            self.counts["job_tasks"] += 1
            data, permutations = self._datasets.get_or_make(job_key, lambda: self._fetch_dataset(data_ref))
            rows = order.rows(step, permutations)[shards[0].start:shards[-1].stop]
            result, ms = run_block(program, params, gather(data, rows), shards, check_finite=check_finite,
                                   cancel=cancel)
        except Cancelled as exc:
            return Stopped(str(exc), exc.deadline_passed)
        identity = self.identity()
        return result, [{**identity, "ms": m} for m in ms]

    def _fetch_dataset(self, data_ref: list) -> tuple[dict[str, np.ndarray], dict]:
        self.counts["datasets_fetched"] += 1
        return _resolve(data_ref[0]), {}

    def stats(self) -> dict:
        return dict(self.counts)

    def _program(self, graph_id: str, graph_ref: list, limits) -> Program:
        return self._programs.get_or_make(
            graph_id, lambda: Program(graph_from_bytes(_resolve(graph_ref[0]), limits), limits))


def task_token(deadline: float | None) -> CancelToken:
    """A token for one task: the wall-clock ``deadline`` on this process's monotonic clock,
    and, inside a Ray task, a probe of Ray's cancellation flag (outside Ray: no probe)."""
    local = None if deadline is None else time.monotonic() + (deadline - time.time())
    return CancelToken(local, probe=_ray_cancelled())


def _ray_cancelled() -> Callable[[], bool] | None:
    """``is_canceled`` of the running Ray task (about 0.5 µs a call: cheap enough for every
    node), or None outside a Ray worker process."""
    ray = sys.modules.get("ray")  # a Ray worker process has imported it; anywhere else: no task
    if ray is None or not ray.is_initialized():
        return None
    try:
        context = ray.get_runtime_context()
        context.is_canceled()  # raises on a driver or in an async actor
    except Exception:  # noqa: BLE001 - no task to ask about
        return None
    return context.is_canceled


def _resolve(value):
    try:
        import ray

        if isinstance(value, ray.ObjectRef):
            return ray.get(value)
    except ImportError:  # pragma: no cover
        pass
    return value
