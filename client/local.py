"""Local single-node mode: the engine in this process, no server, no Ray."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from .graph import Graph, GraphCache
from ..worker.engine import Program, Result
from ..worker.graph import GraphDef
from ..worker.shards import run_sharded


class LocalEngine:
    """``value_and_grad`` in-process. ``shards`` > 1 runs the cluster's micro-shard plan, so
    the answer matches a server using the same shard count bit for bit."""

    def __init__(self, shards: int = 1, check_finite: bool = False, cache_size: int = 32,
                 blas_threads: int | None = None):
        self.shards = shards
        # BLAS results depend on its thread count: pin it (as Ray workers do) to match them bitwise
        self.blas_threads = blas_threads
        self.check_finite = check_finite
        # a Graph is re-analysed after every builder change (see GraphCache)
        self._programs: GraphCache[Program] = GraphCache(Program, cache_size)

    def program(self, graph: Graph | GraphDef) -> Program:
        return self._programs.get(graph)

    def run(self, graph: Graph | GraphDef, params: dict[str, Any], batch: dict[str, Any], *,
            wrt=None, fetch=()) -> Result:
        program = self.program(graph)
        with threadpool_limits(self.blas_threads) if self.blas_threads else nullcontext():
            return run_sharded(program, _arrays(params), _arrays(batch), self.shards,
                               wrt=wrt, fetch=tuple(fetch), check_finite=self.check_finite)

    def value_and_grad(self, graph: Graph | GraphDef, params: dict[str, Any], batch: dict[str, Any]):
        """``(loss, grads)``: the loss as a float and one gradient per parameter, shaped and
        typed like it (zeros for a parameter the loss does not depend on)."""
        result = self.run(graph, params, batch)
        return result.loss, result.grads

    def close(self) -> None:
        self._programs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _arrays(values: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in values.items()}


def local(shards: int = 1, check_finite: bool = False, blas_threads: int | None = None) -> LocalEngine:
    return LocalEngine(shards=shards, check_finite=check_finite, blas_threads=blas_threads)
