"""The shard driver: how one computation's shards are scheduled, whatever runs them.

Planning, deadlines, waiting for rows, ordered collection, retry bookkeeping, combining,
shard records and phase timing live here, once. A backend is a ``Pool``: it submits a block
of consecutive shards to one of its workers, waits for submitted blocks, collects a block's
answer and replaces a lost worker. So scheduling is testable without Ray, and a new backend
is only its calls.

The unit of work is an aligned block of 2^k consecutive shards (``aligned_blocks``), a
subtree of ``tree_sum``'s fixed pairing, so block sums combined in order give the very same
bits as shard by shard, for any worker count, order of completion or retry.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .status import DeadlineExceeded, WorkersUnavailable
from .store import Registered
from ..worker.cancel import Cancelled, CancelToken
from ..worker.engine import Result
from ..worker.shards import (
    Shard, aligned_blocks, combine, plan_rows, plan_shards, shard_batch, unshardable_fetch)


@dataclass
class Computation:
    """One run of a graph on a batch: what a backend needs (a gradient request, a job's step)."""

    graph: Registered
    params: dict[str, np.ndarray]
    # a server-made key for a parameter set that later computations reuse (a session's id@version);
    # None: this computation's own parameters, cached nowhere. Never a client-chosen id.
    params_key: str | None
    batch: dict[str, np.ndarray]
    wrt: tuple[str, ...] | None
    fetch: tuple[str, ...]
    shards: int
    check_finite: bool = False
    feed: Any = None  # a BatchFeed while the batch is still streaming in; None: complete
    specs: Any = None  # the whole batch's concrete specs (``Program.bind``), when already known
    examples: int | None = None  # the batch's rows when ``batch`` is not on this process (a job step on Ray)
    placement: str = ""  # requested: "", "auto", "ray" or "local" (a Ray backend's choice)
    flops: float = 0.0  # the admission estimate of its floating-point work
    _plan: list[Shard] | None = field(default=None, repr=False)

    def rows_ready(self, stop: int) -> bool:
        return self.feed is None or self.feed.rows_ready(stop)

    def wait_rows(self, stop: int, timeout: float | None = None) -> bool:
        """Block until the batch's first ``stop`` rows have arrived (False on timeout)."""
        return self.feed is None or self.feed.wait_rows(stop, timeout)

    def plan(self) -> list[Shard]:
        """The shards, once: ``WHOLE`` when nothing is batched, one whole-batch shard when the
        loss does not decompose over the batch (``Program.loss_batching``)."""
        if self._plan is None:
            program = self.graph.program
            self._plan = plan_shards(program, self.batch, self.shards, self.fetch) if self.examples is None else \
                plan_rows(program, self.examples, self.shards, self.fetch)
        return self._plan

    @property
    def sharding(self) -> str:
        """Why the batch is (not) cut, for ``RunInfo.sharding``: "sharded: ..." or "unsharded: ..."."""
        program = self.graph.program
        reason = program.loss_batching.reduction is not None and unshardable_fetch(program, self.fetch)
        return f"unsharded: {reason}" if reason else program.loss_batching.summary

    def rows(self, shards: list[Shard]) -> dict[str, np.ndarray]:
        """The rows a block of consecutive shards covers (views)."""
        if shards[0].whole:
            return self.batch
        return shard_batch(self.graph.program, self.batch, shards[0].start, shards[-1].stop)


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
    placement: Any = None  # a placement.Placement, where the backend chose one


class WorkerLost(Exception):
    """A pool's worker died (or never answered) with a block: the block runs again elsewhere."""


class Pool(Protocol):
    """What a backend does for the driver."""

    def slots(self) -> list[int]:
        """Worker indices, each as often as blocks may be queued at it at once."""

    def block_size(self, n_shards: int, fetching: bool) -> int:
        """Shards per block (a power of two)."""

    def prepare(self, computation: Computation) -> Any:
        """Per-computation state shared by its blocks (e.g. object refs)."""

    def submit(self, state: Any, computation: Computation, block: int, shards: list[Shard], worker: int,
               cancel: CancelToken) -> Any:
        """Start ``shards`` (block number ``block``) on ``worker``; a handle for ``wait``."""

    def wait(self, handles: list, timeout: float) -> list:
        """The handles among ``handles`` whose blocks have finished (within ``timeout`` s)."""

    def collect(self, handle) -> tuple[Result, list[dict]]:
        """A finished block's combined result and one info dict per shard (worker, node, pid,
        ms). Raises ``WorkerLost``, ``Cancelled`` (the block stopped at its token) or the error
        the block raised."""

    def replace(self, state: Any, worker: int, handle) -> None:
        """Replace the worker that lost ``handle``'s block (if no one has yet)."""

    def cancel(self, handles: list) -> None:
        """Stop these blocks (they were abandoned)."""


def drive(pool: Pool, computation: Computation, cancel: CancelToken, max_retries: int) -> Outcome:
    """Run every shard of ``computation`` on ``pool``: blocks start as their rows arrive and a
    worker slot frees up, a lost block re-runs (at most ``max_retries`` times), and the answer
    is combined in shard order. ``cancel`` ends it all (``DeadlineExceeded``)."""
    t0 = time.perf_counter()
    plan = computation.plan()
    fetching = bool(computation.fetch or computation.graph.program.graph.outputs)
    blocks = [plan[a:b] for a, b in aligned_blocks(len(plan), pool.block_size(len(plan), fetching))]
    state = pool.prepare(computation)
    t1 = time.perf_counter()
    run = _Run(pool, computation, cancel, blocks, state, max_retries)
    results = run.all()
    t2 = time.perf_counter()
    result = combine(results, computation.graph.program)  # block sums in order: the same bits as shard by shard
    return Outcome(result, run.records, {"schedule": (t1 - t0) * 1e3, "compute": (t2 - t1) * 1e3,
                                         "reduce": (time.perf_counter() - t2) * 1e3})


class _Run:
    """The bookkeeping of one ``drive``: pending blocks, free slots, blocks in flight."""

    def __init__(self, pool: Pool, computation: Computation, cancel: CancelToken, blocks: list[list[Shard]],
                 state: Any, max_retries: int):
        self.pool, self.computation, self.cancel, self.blocks, self.state = pool, computation, cancel, blocks, state
        self.max_retries = max_retries
        self.pending = deque(range(len(blocks)))
        self.idle = deque(pool.slots())  # a worker holds up to its pipeline depth: no idle round trip
        self.inflight: dict[Any, tuple[int, int]] = {}  # handle -> (block, worker)
        self.attempts = [0] * len(blocks)
        self.results: list = [None] * len(blocks)
        self.records: list = [None] * sum(len(b) for b in blocks)

    def all(self) -> list[Result]:
        while self.pending or self.inflight:
            self._check()
            self._start_ready()
            for handle in self._wait():
                self._collect(handle)
        return self.results

    def _check(self) -> None:
        if self.cancel.cancelled:
            self._abandon(DeadlineExceeded("the call ended (deadline or cancellation); outstanding shards cancelled"))

    def _start_ready(self) -> None:
        while self.pending and self.idle and self.computation.rows_ready(self.blocks[self.pending[0]][-1].stop):
            block, worker = self.pending.popleft(), self.idle.popleft()
            self.attempts[block] += 1
            handle = self.pool.submit(self.state, self.computation, block, self.blocks[block], worker, self.cancel)
            self.inflight[handle] = (block, worker)

    def _wait(self) -> list:
        remaining = self.cancel.remaining()
        timeout = 0.05 if remaining is None else max(0.0, min(0.05, remaining))
        if self.inflight:
            ready = self.pool.wait(list(self.inflight), timeout)
        else:  # nothing running: the next block's rows are still streaming in
            ready = []
            self.computation.wait_rows(self.blocks[self.pending[0]][-1].stop, timeout=timeout)
        self._check()
        return ready

    def _collect(self, handle) -> None:
        block, worker = self.inflight.pop(handle)
        try:
            result, infos = self.pool.collect(handle)
        except WorkerLost:
            self.pool.replace(self.state, worker, handle)
            self.idle.append(worker)
            if self.attempts[block] > self.max_retries:
                shards = self.blocks[block]
                self._abandon(WorkersUnavailable(f"shards {shards[0].index}..{shards[-1].index} failed on "
                                                 f"{self.attempts[block]} workers in a row; giving up"))
            self.pending.appendleft(block)
            return
        except Cancelled as exc:  # the block saw the deadline first: the computation's end, not a fault
            self.cancel.cancel(f"a shard stopped: {exc}")
            self._check()
        except BaseException as exc:  # deterministic (a retry would fail the same way) or unexpected
            self._abandon(exc)
        self.results[block] = result
        for shard, info in zip(self.blocks[block], infos):
            self.records[shard.index] = ShardRecord(shard.index, shard.start, shard.stop, info["worker"],
                                                    info["node"], info["pid"], info["ms"], self.attempts[block])
        self.idle.append(worker)

    def _abandon(self, exc: BaseException):
        self.pool.cancel(list(self.inflight))
        raise exc
