"""The thin shell a Ray actor wraps around the engine (the class is made remote by the
server's Ray backend, so this module imports without Ray and tests run it directly).

A worker caches programs by graph id and parameter sets by key, so a graph or a
parameter version crosses to a worker once, not once per shard or per step.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np

from gradwire.worker.codec import graph_from_bytes
from gradwire.worker.engine import Program, Result
from gradwire.worker.lru import LruCache
from gradwire.worker.shards import combine, shard_batch


class ShardWorker:
    def __init__(self, name: str, blas_threads: int = 1, cache_size: int = 16):
        self.name = name
        self.blas_threads = blas_threads
        # Pin BLAS to this worker's share of cores so N workers don't oversubscribe N cores.
        from threadpoolctl import threadpool_limits

        self._blas_limit = threadpool_limits(limits=blas_threads)
        self._programs: LruCache[str, Program] = LruCache(cache_size)
        self._params: LruCache[str, dict[str, np.ndarray]] = LruCache(cache_size)

    def identity(self) -> dict:
        node = ""
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - outside Ray there is no node id
            node = socket.gethostname()
        return {"worker": self.name, "pid": os.getpid(), "node": node}

    def run_shards(self, graph_id: str, graph_ref: list, params_key: str, params_ref: list,
                   batch: dict[str, np.ndarray], bounds: list[tuple[int, int]], weights: list[float],
                   wrt, fetch, check_finite: bool, limits) -> tuple[Result, list[dict]]:
        """Consecutive shards of one request (``batch`` holds exactly their rows; ``bounds``
        are their row ranges in the whole batch), combined as the driver would combine them:
        an aligned block of shards is a subtree of the fixed summation tree. ``graph_ref`` and
        ``params_ref`` hold an object ref in a list so Ray resolves them only on a cache miss."""
        program = self._programs.get_or_make(graph_id, lambda: Program(graph_from_bytes(_resolve(graph_ref[0])), limits))
        params = self._params.get_or_make(params_key, lambda: _resolve(params_ref[0]))
        base = bounds[0][0]
        results, infos = [], []
        for (start, stop), weight in zip(bounds, weights):
            t = time.perf_counter()
            rows = batch if start == stop == 0 else shard_batch(program, batch, start - base, stop - base)
            results.append(program.run(params, rows, wrt=wrt, fetch=fetch, loss_scale=weight,
                                       check_finite=check_finite))
            infos.append({**self.identity(), "ms": (time.perf_counter() - t) * 1e3})
        return combine(results, program), infos


def _resolve(value):
    try:
        import ray

        if isinstance(value, ray.ObjectRef):
            return ray.get(value)
    except ImportError:  # pragma: no cover
        pass
    return value
