"""Where a training job's steps run and how their data gets there.

A backend hands the job manager a ``Steps`` for each job: ``run(step, params, cancel)``
computes one step's loss and gradients, through the one shard driver, on the same shard plan
wherever it runs, so the bits depend neither on the place nor on the worker count.

* ``LocalSteps``: in this process. The job's data stays here; the next step's rows are
  gathered in a helper thread while the current step computes.
* Ray (``server/ray_backend.py``, ``RaySteps``): the dataset enters the object store once per
  job and each worker keeps it; a step puts only the parameters (once) and sends each worker
  the step number with its block of shards; the worker gathers its rows itself.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .driver import Computation, Outcome, Pool, drive
from .placement import Placement
from .store import Registered
from ..worker.cancel import CancelToken
from ..worker.jobdata import BatchOrder, gather


PREFETCH_BYTES = 256 << 10  # a step's rows from which gathering them ahead pays (measured: a hand-off ~50 µs)


@dataclass(frozen=True)
class StepPlan:
    """What a job fixes for all of its steps."""

    reg: Registered
    data: dict[str, np.ndarray]
    order: BatchOrder
    shards: int
    check_finite: bool
    total_steps: int
    placement: str = ""  # requested: "", "auto", "ray" or "local"
    flops: float = 0.0  # one step's estimated floating-point work


class Steps(Protocol):
    placement: Placement

    def run(self, step: int, params: dict[str, np.ndarray], cancel: CancelToken) -> Outcome: ...

    def close(self) -> None: ...


class LocalSteps:
    def __init__(self, plan: StepPlan, pool: Pool, placement: Placement):
        self.plan, self.pool, self.placement = plan, pool, placement
        self._gatherer = ThreadPoolExecutor(1, thread_name_prefix="gradwire-rows")
        self._permutations: dict = {}  # epoch -> order; one gather at a time touches it
        self._next: tuple[int, Future] | None = None

    def _rows(self, step: int) -> dict[str, np.ndarray]:
        return gather(self.plan.data, self.plan.order.rows(step, self._permutations))

    def _batch(self, step: int) -> dict[str, np.ndarray]:
        """This step's rows (gathered ahead if it was foreseen), and the next step's started when
        a gather is worth a thread's hand-off (for a small batch the hand-off costs more)."""
        if self._next is not None and self._next[0] == step:
            batch = self._next[1].result()
        else:
            batch = self._rows(step)
        following = step + 1
        ahead = following < self.plan.total_steps and sum(a.nbytes for a in batch.values()) >= PREFETCH_BYTES
        self._next = (following, self._gatherer.submit(self._rows, following)) if ahead else None
        return batch

    def run(self, step: int, params: dict[str, np.ndarray], cancel: CancelToken) -> Outcome:
        plan = self.plan
        computation = Computation(plan.reg, params, None, self._batch(step), None, (), plan.shards, plan.check_finite)
        return drive(self.pool, computation, cancel, max_retries=0)

    def close(self) -> None:
        self._gatherer.shutdown(wait=False, cancel_futures=True)
