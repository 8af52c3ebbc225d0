"""The Ray backend: a request's micro-shards run on a pool of Ray actors.

Scheduling is dynamic (a worker gets its next shard when it returns one, so faster workers
take more) and results are combined in shard order, so the answer is bitwise the same for
any worker count or retry. A shard whose worker dies re-runs elsewhere (bounded); a shard
that fails deterministically fails the request at once.

Caches are keyed only by what the server derives: a graph by its content hash, a parameter
set by a fresh key per ``ray.put``. A job's ``params_key`` (a session's ``id@version``, or
None for a request's own parameters) only finds an earlier put of the very same parameter
object, so whatever key reaches here, no request computes with another's parameters.

When the request's deadline passes or it is cancelled, no new task starts and in-flight
ones are cancelled; each task also carries the deadline (as wall-clock time) and polls
Ray's cancellation flag, so a running shard stops within one node's time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
# ray.cancel of an actor task still queued at its actor is not honoured then: the driver
# retries it every cancellation_retry_ms (2 s by default), so the task would start and run
# that long unflagged. Read by this process's core worker when it joins (ray.init).
os.environ.setdefault("RAY_cancellation_retry_ms", "100")

import ray  # noqa: E402
from ray.exceptions import (  # noqa: E402
    GetTimeoutError, RayActorError, RayTaskError, TaskCancelledError, WorkerCrashedError)

from gradwire.server.backend import Job, Outcome, ShardRecord  # noqa: E402
from gradwire.server.config import ServerConfig  # noqa: E402
from gradwire.server.status import DeadlineExceeded, WorkersUnavailable  # noqa: E402
from gradwire.worker.cancel import Cancelled, CancelToken  # noqa: E402
from gradwire.worker.ray_worker import ShardWorker, Stopped  # noqa: E402
from gradwire.worker.lru import LruCache  # noqa: E402
from gradwire.worker.shards import aligned_blocks, combine  # noqa: E402
from gradwire.worker.validate import GraphError  # noqa: E402

log = logging.getLogger("gradwire.server")
_LOST = (RayActorError, WorkerCrashedError, ray.exceptions.ObjectLostError, ray.exceptions.NodeDiedError,
         ray.exceptions.OutOfMemoryError)
_STARTUP_TIMEOUT_S = 120.0  # for the pool's actors to start (e.g. not enough CPUs in the cluster)


def init_ray(config: ServerConfig) -> bool:
    """Join the configured cluster, or start one on loopback. True if we started it."""
    if ray.is_initialized():
        return False
    if config.ray_address:
        ray.init(address=config.ray_address, logging_level=logging.WARNING, log_to_driver=False)
        return False
    # address="local": always a new cluster here, never one a `ray start` left on this machine
    ray.init(address="local", num_cpus=config.workers * config.worker_cpus, include_dashboard=False,
             _node_ip_address="127.0.0.1", logging_level=logging.WARNING, log_to_driver=False)
    return True


class RayBackend:
    name = "ray"
    default_shards = 8  # enough to balance load over a few workers; independent of their number

    def __init__(self, config: ServerConfig):
        self.config = config
        self._owns_ray = init_ray(config)
        self._actor_cls = ray.remote(ShardWorker)
        self._lock = threading.Lock()  # concurrent requests share the pool (and replace its workers)
        self.replaced = 0
        self.workers = [self._spawn(i) for i in range(config.workers)]
        try:  # fail fast if they cannot start (an actor that cannot be placed would wait forever)
            ray.get([w.identity.remote() for w in self.workers], timeout=_STARTUP_TIMEOUT_S)
        except GetTimeoutError:
            self.close()
            raise RuntimeError(
                f"{config.workers} Ray workers of {config.worker_cpus} CPU each did not start within "
                f"{_STARTUP_TIMEOUT_S:.0f}s; the cluster has {ray.cluster_resources().get('CPU', 0)} CPUs") from None
        self._graph_refs: LruCache[str, ray.ObjectRef] = LruCache(64)
        # params_key -> (the parameter object put, the key workers cache it by, its ref)
        self._param_refs: LruCache[str, tuple[dict, str, ray.ObjectRef]] = LruCache(4)

    def _spawn(self, index: int):
        return self._actor_cls.options(
            num_cpus=self.config.worker_cpus, max_restarts=0, scheduling_strategy="SPREAD",
        ).remote(f"worker-{index}", self.config.blas_threads)

    def worker_identities(self) -> list[dict]:
        return ray.get([w.identity.remote() for w in self.workers])

    def _replace(self, index: int, dead) -> None:
        """Replace worker ``index`` if it is still the ``dead`` handle: when concurrent requests
        both saw it die, only the first replaces it (the second must not kill the replacement)."""
        with self._lock:
            if self.workers[index] is not dead:
                return
            try:
                ray.kill(dead, no_restart=True)
            except Exception:  # noqa: BLE001 - it is gone already
                pass
            self.workers[index] = self._spawn(index)
            self.replaced += 1
        log.warning("worker-%d lost; replaced", index)

    def _block_size(self, n_shards: int, fetch: tuple[str, ...]) -> int:
        """Shards per task: enough tasks to keep every worker's pipeline full, and no more,
        since each task costs a round trip, an object-store put and a gradient-sized result.
        Fetched outputs are stacked per shard, so requests with fetches go shard by shard."""
        if fetch:
            return 1
        slots = max(1, len(self.workers) * self.config.pipeline_depth)
        block = 1
        while block * 2 * slots <= n_shards:
            block *= 2
        return block

    def _params_ref(self, job: Job) -> tuple[str, ray.ObjectRef, bool]:
        """The key workers cache the job's parameter set by, its object ref, and whether
        workers should keep it for later requests. A reusable set (``params_key`` not None:
        a session version) is put once; the cached put is taken only if it was made from
        this very parameter object, so a key that is not what it claims can at worst cost
        a put. Every put gets its own worker key, so a worker never holds two sets under one."""
        if job.params_key is not None:
            hit = self._param_refs.get(job.params_key)
            if hit is not None and hit[0] is job.params:
                return hit[1], hit[2], True
        worker_key, ref = f"p-{uuid.uuid4().hex}", ray.put(job.params)
        if job.params_key is not None:
            self._param_refs.put(job.params_key, (job.params, worker_key, ref))
        return worker_key, ref, job.params_key is not None

    def compute(self, job: Job, cancel: CancelToken) -> Outcome:
        deadline = cancel.deadline
        # what every task is told: the same instant on the wall clock, which all nodes share
        wall_deadline = None if deadline is None else time.time() + (deadline - time.monotonic())
        t0 = time.perf_counter()
        plan = job.plan()
        fetched = job.fetch or job.graph.program.graph.outputs
        units = aligned_blocks(len(plan), self._block_size(len(plan), fetched))
        graph_ref = self._graph_refs.get_or_make(job.graph.graph_id, lambda: ray.put(job.graph.proto_bytes))
        params_key, params_ref, reuse = self._params_ref(job)
        unit_refs: list = [None] * len(units)  # each unit's rows are put once, when they are in; retries reuse it
        t1 = time.perf_counter()

        def rows(unit: int) -> tuple[int, int]:
            first, last = units[unit]
            return plan[first][0], plan[last - 1][1]

        pending = deque(range(len(units)))
        # Each worker holds up to `pipeline_depth` units, so it starts the next one while the
        # driver is still collecting the last: no idle round trip in between.
        idle = deque(w for _ in range(self.config.pipeline_depth) for w in range(len(self.workers)))
        inflight: dict[ray.ObjectRef, tuple[int, int, object]] = {}
        attempts = [0] * len(units)
        results: list = [None] * len(units)
        records: list = [None] * len(plan)

        def abandon(exc: BaseException):
            for ref in inflight:
                ray.cancel(ref)  # flags the task: running, it stops at its next node; queued, as it starts
            raise exc

        def ended() -> DeadlineExceeded:
            return DeadlineExceeded("the call ended (deadline or cancellation); outstanding shards cancelled")

        while pending or inflight:
            if cancel.cancelled:  # e.g. the call ended while its request was decoded: start nothing
                abandon(ended())
            while pending and idle and job.rows_ready(rows(pending[0])[1]):
                unit, worker = pending.popleft(), idle.popleft()
                if unit_refs[unit] is None:
                    unit_refs[unit] = ray.put(job.shard(*rows(unit)))
                attempts[unit] += 1
                first, last = units[unit]
                handle = self.workers[worker]
                ref = handle.run_shards.remote(
                    job.graph.graph_id, [graph_ref], params_key, [params_ref], unit_refs[unit],
                    [plan[i][:2] for i in range(first, last)], [plan[i][2] for i in range(first, last)],
                    job.wrt, job.fetch, job.check_finite, job.graph.program.limits, wall_deadline, reuse)
                inflight[ref] = (unit, worker, handle)
            wait = 0.05
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            if inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=wait)
            else:  # nothing running: the next unit's rows are still streaming in
                ready = []
                job.wait_rows(rows(pending[0])[1], timeout=wait)
            if cancel.cancelled:
                abandon(ended())
            for ref in ready:
                unit, worker, handle = inflight.pop(ref)
                try:
                    value = ray.get(ref, timeout=60)
                except TaskCancelledError:  # only we cancel our tasks, and only to end the request
                    abandon(ended())
                except _LOST + (GetTimeoutError,):
                    self._replace(worker, handle)
                    idle.append(worker)
                    if attempts[unit] > self.config.max_retries:
                        first, last = units[unit]
                        abandon(WorkersUnavailable(f"shards {first}..{last - 1} failed on {attempts[unit]} "
                                                   "workers in a row; giving up"))
                    pending.appendleft(unit)
                    continue
                except RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
                    if isinstance(cause, Cancelled):  # as Stopped, should a Cancelled ever escape a task
                        cancel.cancel(f"a shard stopped: {cause}")
                        abandon(ended())
                    if isinstance(cause, GraphError):  # deterministic: a retry would fail the same way
                        abandon(cause)
                    abandon(exc)  # unexpected: fail the request, but cancel its other shards first
                if isinstance(value, Stopped):  # the task saw the deadline (its clock may run a bit
                    cancel.cancel(f"a shard stopped: {value.reason}")  # ahead): the request's end, not a fault
                    abandon(ended())
                result, infos = value
                results[unit] = result
                for i, info in zip(range(*units[unit]), infos):
                    start, stop, _ = plan[i]
                    records[i] = ShardRecord(i, start, stop, info["worker"], info["node"], info["pid"],
                                             info["ms"], attempts[unit])
                idle.append(worker)
        t2 = time.perf_counter()
        result = combine(results, job.graph.program)  # block sums in order: the same bits as shard by shard
        return Outcome(result, records, {"schedule": (t1 - t0) * 1e3, "compute": (t2 - t1) * 1e3,
                                         "reduce": (time.perf_counter() - t2) * 1e3})

    def close(self) -> None:
        for worker in self.workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers = []
        if self._owns_ray:
            ray.shutdown()
