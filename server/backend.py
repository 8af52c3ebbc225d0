"""Backends run a validated computation's shards. The servicer sees only this interface, so
the in-process and Ray backends are interchangeable (``--backend local|ray``); both are
``driver.Pool``s, scheduled by the one shard driver."""

from __future__ import annotations

import os
from typing import Protocol

from .driver import Computation, Outcome, drive
from .job_steps import LocalSteps, StepPlan, Steps
from .placement import LOCAL
from ..worker.cancel import CancelToken
from ..worker.engine import Result
from ..worker.shards import Shard, run_block


class Backend(Protocol):
    name: str
    default_shards: int  # micro-shards per computation when neither the request nor the config says

    def compute(self, computation: Computation, cancel: CancelToken) -> Outcome:
        """Run every shard; stop (``DeadlineExceeded``) when ``cancel`` fires."""

    def job_steps(self, plan: StepPlan) -> Steps:
        """Where a training job's steps run, its data put there once."""

    def close(self) -> None: ...


class LocalBackend:
    """Shards run one after another in the server process, on the same plan as Ray's: a pool of
    one worker whose blocks are single shards, run as they are submitted (so a streamed
    batch's first shard runs while later rows arrive)."""

    name = "local"
    default_shards = 1  # sequential shards buy nothing in one process; 1 matches gw.local()
    inline = True  # a tiny computation may run on the server's event loop (it never blocks on anything)

    def compute(self, computation: Computation, cancel: CancelToken) -> Outcome:
        return drive(self, computation, cancel, max_retries=0)

    def job_steps(self, plan: StepPlan) -> LocalSteps:
        return LocalSteps(plan, self, LOCAL)

    # ------------------------------------------------------------------ driver.Pool

    def slots(self) -> list[int]:
        return [0]

    def block_size(self, n_shards: int, fetching: bool) -> int:
        return 1

    def prepare(self, computation: Computation) -> None:
        return None

    def submit(self, state, computation: Computation, block: int, shards: list[Shard], worker: int,
               cancel: CancelToken) -> "_Done":
        specs = computation.specs if len(computation.plan()) == 1 else None  # the whole batch, bound already
        try:
            result, ms = run_block(computation.graph.program, computation.params, computation.rows(shards), shards,
                                   wrt=computation.wrt, fetch=computation.fetch, check_finite=computation.check_finite,
                                   specs=specs, cancel=cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the driver by collect
            return _Done(None, [], exc)
        return _Done(result, [{"worker": "local", "node": "local", "pid": os.getpid(), "ms": m} for m in ms])

    def wait(self, handles: list, timeout: float) -> list:
        return handles  # submit ran them

    def collect(self, handle: "_Done") -> tuple[Result, list[dict]]:
        if handle.error is not None:
            raise handle.error
        return handle.result, handle.infos

    def replace(self, state, worker: int, handle) -> None:
        pass

    def cancel(self, handles: list) -> None:
        pass

    def close(self) -> None:
        pass


class _Done:
    """A block the local pool has run: its result, or the error it raised."""

    __slots__ = ("result", "infos", "error")

    def __init__(self, result: Result | None, infos: list[dict], error: BaseException | None = None):
        self.result, self.infos, self.error = result, infos, error
