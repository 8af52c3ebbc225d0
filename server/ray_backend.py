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
from dataclasses import dataclass, field

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
# ray.cancel of an actor task still queued at its actor is not honoured then: the driver
# retries it every cancellation_retry_ms (2 s by default), so the task would start and run
# that long unflagged. Read by this process's core worker when it joins (ray.init).
os.environ.setdefault("RAY_cancellation_retry_ms", "100")

import ray  # noqa: E402
from ray.exceptions import (  # noqa: E402
    GetTimeoutError, RayActorError, RayTaskError, TaskCancelledError, WorkerCrashedError)

from .backend import LocalBackend  # noqa: E402
from .driver import Computation, Outcome, WorkerLost, drive  # noqa: E402
from .job_steps import LocalSteps, StepPlan, Steps  # noqa: E402
from .placement import Placement, Planner, measure_flops_per_ms, measure_round_trip_ms  # noqa: E402
from .config import ServerConfig  # noqa: E402
from ..worker.cancel import Cancelled, CancelToken  # noqa: E402
from ..worker.ray_worker import ShardWorker, Stopped  # noqa: E402
from ..worker.lru import LruCache  # noqa: E402
from ..worker.validate import GraphError  # noqa: E402

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
    # address="local": always a new cluster here, never one a `ray start` left on this machine;
    # with Ray's token authentication on explicitly (Ray then makes a token in ~/.ray/auth_token)
    use_token_auth()
    ray.init(address="local", num_cpus=config.workers * config.worker_cpus, include_dashboard=False,
             _node_ip_address="127.0.0.1", logging_level=logging.WARNING, log_to_driver=False)
    return True


def use_token_auth(environ=os.environ) -> str:
    """Turn Ray's token authentication on for a cluster this process starts, unless the user
    chose a mode (``RAY_AUTH_MODE``): set explicitly, Ray enforces it without warning about it
    on every start. Ray's own ports then refuse callers without the token, and gradwire binds
    the cluster to 127.0.0.1 (``_node_ip_address``) besides."""
    mode = environ.setdefault("RAY_AUTH_MODE", "token")
    if environ is os.environ:
        # Ray read its config when imported: re-read it, as Ray's own enabling of token auth does
        ray._raylet.Config.initialize("")
    return mode


class RayBackend:
    name = "ray"
    inline = True  # a tiny computation the planner keeps in this process may run on the event loop
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
        # this process computes what placement keeps here with the workers' BLAS threads: the same bits
        from threadpoolctl import threadpool_limits

        self._blas_limit = threadpool_limits(limits=config.blas_threads)
        self.local = LocalBackend()
        self.planner = Planner(config.placement, config.workers, measure_flops_per_ms(),
                               measure_round_trip_ms(lambda: ray.get(self.workers[0].identity.remote())))
        log.info("placement %s: %.0f MFLOP/s here, a worker round trip %.2f ms", config.placement,
                 self.planner.flops_per_ms / 1e3, self.planner.round_trip_ms)
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

    def block_size(self, n_shards: int, fetching: bool) -> int:
        """Shards per task: enough tasks to keep every worker's pipeline full, and no more,
        since each task costs a round trip, an object-store put and a gradient-sized result.
        Fetched outputs are stacked per shard, so requests with fetches go shard by shard."""
        if fetching:
            return 1
        slots = max(1, len(self.workers) * self.config.pipeline_depth)
        block = 1
        while block * 2 * slots <= n_shards:
            block *= 2
        return block

    def _params_ref(self, job: Computation) -> tuple[str, ray.ObjectRef, bool]:
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

    def compute(self, computation: Computation, cancel: CancelToken) -> Outcome:
        placement = self.planner.place(computation.flops, computation.placement)
        if placement.where == "local":
            outcome = self.local.compute(computation, cancel)
        else:
            outcome = drive(self, computation, cancel, self.config.max_retries)
        outcome.placement = placement
        return outcome

    def job_steps(self, plan: StepPlan) -> Steps:
        placement = self.planner.place(plan.flops, plan.placement)
        if placement.where == "local":
            return LocalSteps(plan, self.local, placement)
        return RaySteps(self, plan, placement)

    # ------------------------------------------------------------------ driver.Pool

    def slots(self) -> list[int]:
        return [w for _ in range(self.config.pipeline_depth) for w in range(len(self.workers))]

    def prepare(self, computation: Computation) -> "_Refs":
        graph = computation.graph
        graph_ref = self._graph_refs.get_or_make(graph.graph_id, lambda: ray.put(graph.proto_bytes))
        params_key, params_ref, reuse = self._params_ref(computation)
        return _Refs(graph_ref, params_key, params_ref, reuse)

    def submit(self, refs: "_Refs", computation: Computation, block: int, shards: list, worker: int,
               cancel: CancelToken):
        if block not in refs.rows:  # a block's rows are put once, when they are in; retries reuse them
            refs.rows[block] = ray.put(computation.rows(shards))
        handle = self.workers[worker]
        ref = handle.run_shards.remote(
            computation.graph.graph_id, [refs.graph], refs.params_key, [refs.params], refs.rows[block], shards,
            computation.wrt, computation.fetch, computation.check_finite, computation.graph.program.limits,
            _wall(cancel), refs.reuse)
        refs.handles[ref] = handle
        return ref

    def wait(self, handles: list, timeout: float) -> list:
        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        return ready

    def collect(self, ref) -> tuple:
        try:
            value = ray.get(ref, timeout=60)
        except TaskCancelledError:  # only we cancel our tasks, and only to end the computation
            raise Cancelled("the computation was cancelled") from None
        except _LOST + (GetTimeoutError,):
            raise WorkerLost from None
        except RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
            raise (cause if isinstance(cause, (Cancelled, GraphError)) else exc) from None
        if isinstance(value, Stopped):  # the task saw the deadline (its clock may run a bit ahead)
            raise Cancelled(value.reason, value.deadline_passed)
        return value

    def replace(self, refs: "_Refs", worker: int, ref) -> None:
        self._replace(worker, refs.handles[ref])

    def cancel(self, handles: list) -> None:
        for ref in handles:
            ray.cancel(ref)  # flags the task: running, it stops at its next node; queued, as it starts

    def close(self) -> None:
        for worker in self.workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers = []
        if self._owns_ray:
            ray.shutdown()


@dataclass
class _Refs:
    """One computation's object refs: its graph, its parameter set, each block's rows."""

    graph: ray.ObjectRef
    params_key: str
    params: ray.ObjectRef
    reuse: bool
    rows: dict = field(default_factory=dict)
    handles: dict = field(default_factory=dict)  # task ref -> the actor handle that ran it


class RaySteps:
    """A training job's steps on the workers: its dataset put into the object store once (each
    worker fetches it once and keeps it), then per step one put of the parameters and one task
    per worker, which gathers its own rows (``ShardWorker.run_job_step``)."""

    def __init__(self, backend: RayBackend, plan: StepPlan, placement: Placement):
        self.backend, self.plan, self.placement = backend, plan, placement
        self.data_ref = ray.put(plan.data)
        self.key = f"d-{uuid.uuid4().hex}"  # the workers' name for this job's data
        self.step = 0

    def run(self, step: int, params: dict, cancel: CancelToken) -> Outcome:
        plan = self.plan
        rows = min(plan.order.batch_size, plan.order.n_examples - (step % plan.order.steps_per_epoch) *
                   plan.order.batch_size)
        self.step = step
        computation = Computation(plan.reg, params, None, {}, None, (), plan.shards, plan.check_finite, examples=rows)
        outcome = drive(_StepPool(self), computation, cancel, self.backend.config.max_retries)
        outcome.placement = self.placement
        return outcome

    def close(self) -> None:
        self.data_ref = None  # the object store frees the dataset


class _StepPool:
    """The driver's pool for one job step: one slot and one block of shards per worker."""

    def __init__(self, steps: RaySteps):
        self.steps, self.backend = steps, steps.backend

    def slots(self) -> list[int]:
        return list(range(len(self.backend.workers)))

    def block_size(self, n_shards: int, fetching: bool) -> int:
        block = 1  # the smallest aligned block that needs no more blocks than workers
        while -(-n_shards // block) > len(self.backend.workers):
            block *= 2
        return block

    def prepare(self, computation: Computation) -> _Refs:
        graph = computation.graph
        graph_ref = self.backend._graph_refs.get_or_make(graph.graph_id, lambda: ray.put(graph.proto_bytes))
        return _Refs(graph_ref, "", ray.put(computation.params), False)  # one put per step

    def submit(self, refs: _Refs, computation: Computation, block: int, shards: list, worker: int,
               cancel: CancelToken):
        steps, handle = self.steps, self.backend.workers[worker]
        ref = handle.run_job_step.remote(
            steps.key, [steps.data_ref], steps.plan.order, steps.step, computation.graph.graph_id, [refs.graph],
            refs.params, shards, computation.check_finite, computation.graph.program.limits, _wall(cancel))
        refs.handles[ref] = handle
        return ref

    def wait(self, handles: list, timeout: float) -> list:
        return self.backend.wait(handles, timeout)

    def collect(self, ref) -> tuple:
        return self.backend.collect(ref)

    def replace(self, refs: _Refs, worker: int, ref) -> None:
        self.backend.replace(refs, worker, ref)

    def cancel(self, handles: list) -> None:
        self.backend.cancel(handles)


def _wall(cancel: CancelToken) -> float | None:
    """The token's deadline as wall-clock time: what processes on every node share."""
    return None if cancel.deadline is None else time.time() + (cancel.deadline - time.monotonic())
