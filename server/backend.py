"""Backends run a validated request's shards. The servicer sees only this interface, so
the in-process and Ray backends are interchangeable (``--backend local|ray``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from gradwire.worker.cancel import CancelToken
from gradwire.worker.engine import Result
from gradwire.worker.shards import batch_size, combine, shard_batch, shard_plan, shard_weight
from gradwire.server.store import Registered


@dataclass
class Job:
    graph: Registered
    params: dict[str, np.ndarray]
    # a server-made key for a parameter set that later requests reuse (a session's id@version);
    # None: this request's own parameters, cached nowhere. Never a client-chosen id.
    params_key: str | None
    batch: dict[str, np.ndarray]
    wrt: tuple[str, ...] | None
    fetch: tuple[str, ...]
    shards: int
    check_finite: bool = False
    feed: Any = None  # a BatchFeed while the batch is still streaming in; None: complete
    specs: Any = None  # the whole batch's concrete specs (``Program.bind``), when already known

    def rows_ready(self, stop: int) -> bool:
        return self.feed is None or self.feed.rows_ready(stop)

    def wait_rows(self, stop: int, timeout: float | None = None) -> bool:
        """Block until the batch's first ``stop`` rows have arrived (False on timeout)."""
        return self.feed is None or self.feed.wait_rows(stop, timeout)

    def plan(self) -> list[tuple[int, int, float]]:
        """(start, stop, weight) per shard; one whole-batch shard when nothing is batched or
        the loss does not decompose over the batch (``Program.loss_batching``)."""
        program = self.graph.program
        n = batch_size(program, self.batch)
        if n is None:
            return [(0, 0, 1.0)]
        return [(a, b, shard_weight(program, n, a, b)) for a, b in shard_plan(program, n, self.shards)]

    @property
    def sharding(self) -> str:
        """Why the batch is (not) cut, for ``RunInfo.sharding``: "sharded: ..." or "unsharded: ..."."""
        return self.graph.program.loss_batching.summary

    def shard(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if start == stop == 0:
            return self.batch
        return shard_batch(self.graph.program, self.batch, start, stop)


@dataclass
class ShardRecord:
    index: int
    start: int
    stop: int
    worker: str
    node: str
    pid: int
    ms: float
    attempts: int = 1


@dataclass
class Outcome:
    result: Result
    shards: list[ShardRecord]
    phase_ms: dict[str, float] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    default_shards: int  # micro-shards per request when neither the request nor the config says

    def compute(self, job: Job, cancel: CancelToken) -> Outcome:
        """Run every shard of ``job``; stop (``Cancelled``) when ``cancel`` fires."""

    def close(self) -> None: ...


class LocalBackend:
    """Shards run one after another in the server process, on the same plan as Ray's."""

    name = "local"
    default_shards = 1  # sequential shards buy nothing in one process; 1 matches gw.local()

    def compute(self, job: Job, cancel: CancelToken) -> Outcome:
        program = job.graph.program
        results, records = [], []
        t0 = time.perf_counter()
        plan = job.plan()
        specs = job.specs if len(plan) == 1 else None  # one shard: the whole batch, bound already
        for index, (start, stop, weight) in enumerate(plan):
            cancel.check()
            job.wait_rows(stop)
            t = time.perf_counter()
            results.append(program.run(job.params, job.shard(start, stop), wrt=job.wrt, fetch=job.fetch,
                                       loss_scale=weight, check_finite=job.check_finite, specs=specs,
                                       cancel=cancel))
            records.append(ShardRecord(index, start, stop, "local", "local", os.getpid(),
                                       (time.perf_counter() - t) * 1e3))
        t1 = time.perf_counter()
        result = combine(results, program)
        return Outcome(result, records, {"schedule": 0.0, "compute": (t1 - t0) * 1e3,
                                         "reduce": (time.perf_counter() - t1) * 1e3})

    def close(self) -> None:
        pass
