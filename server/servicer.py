"""The gRPC servicer, on ``grpc.aio``: handlers are coroutines on one event loop, so a stream
that waits for its client (an upload, a job watcher) holds no thread; CPU work (validation,
compute, encoding) runs in bounded thread pools. See docs/ARCHITECTURE.md, "Threads".

Every handler runs inside ``_unary`` or ``_streaming``, the one place where exceptions
become gRPC statuses (through ``status.STATUS_TABLE``), where the caller's tenant is learnt
(``_Call.authenticate``) and where the per-request log line is written. Handlers pass the
tenant to every store and job-manager call: what another tenant made is NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc

from ..protos import gradwire_pb2 as pb
from ..protos import gradwire_pb2_grpc as pb_grpc
from . import gradients
from .admission import Admission, Holdings, monotonic_deadline
from .auth import DEFAULT_TENANT, Authenticator
from .backend import Backend
from .config import ServerConfig
from .feed import BatchFeed, RequestStream, require_header
from .jobs import JobManager
from .status import JobNotDone, status_for
from .store import GraphStore, SessionStore
from ..worker.budget import check, static_estimate
from ..worker.cancel import CancelToken
from ..worker.codec import Assembler, stream_messages
from ..worker.ops import OPS
from ..worker.validate import GraphError

if TYPE_CHECKING:  # prometheus_client is optional: imported only with --metrics-port
    from .metrics import Metrics

log = logging.getLogger("gradwire.server")
_LABEL = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _label(value: str | None) -> str | None:
    """A client's request id, if it is a plain short label (it goes into log lines)."""
    return value if value and _LABEL.fullmatch(value) else None


class _Call:
    """Per-request bookkeeping for the log line, and the caller's tenant. The request id
    labels the log line and the answer; it never selects data."""

    def __init__(self, method: str, context, metrics: Metrics | None = None):
        self.metrics = metrics
        self._metadata = tuple(context.invocation_metadata() or ())
        metadata = dict(self._metadata)
        self.request_id = _label(metadata.get("gradwire-request-id")) or uuid.uuid4().hex[:12]
        self.method, self.graph_id, self.batch = method, "-", "-"
        self.tenant, self._shown_tenant = DEFAULT_TENANT, None
        self.started = time.perf_counter()

    def authenticate(self, auth: Authenticator) -> None:
        """The tenant of the call's token (``Unauthenticated`` without a known one)."""
        self.tenant = auth.tenant_of(self._metadata)
        self._shown_tenant = self.tenant if auth.enabled else None

    def label(self, header) -> None:
        self.request_id = _label(header.request_id) or self.request_id

    def log(self, status: str) -> None:
        ms = (time.perf_counter() - self.started) * 1e3
        tenant = "" if self._shown_tenant is None else f" tenant={self._shown_tenant}"
        log.info("request=%s method=%s graph=%s batch=%s status=%s ms=%.1f%s",
                 self.request_id, self.method, self.graph_id, self.batch, status, ms, tenant)
        if self.metrics is not None:
            self.metrics.observe_call(self.method, status, ms / 1e3)


class GradwireServicer(pb_grpc.GradwireServicer):
    """Handlers over the stores, the job manager and the backend they are given."""

    def __init__(self, config: ServerConfig, backend: Backend, graphs: GraphStore, sessions: SessionStore,
                 jobs: JobManager, admission: Admission, auth: Authenticator | None = None,
                 metrics: Metrics | None = None):
        self.config, self.backend = config, backend
        self.auth = auth or Authenticator()  # none: every caller is the default tenant
        self.metrics = metrics
        self.graphs, self.sessions, self.jobs, self.admission = graphs, sessions, jobs, admission
        self.default_shards = config.shards or backend.default_shards
        # compute threads: one per slot, so an admitted request never queues for a thread
        self.compute_pool = ThreadPoolExecutor(config.max_concurrent, thread_name_prefix="gradwire-compute")
        # registration, dataset reads and other bounded CPU work off the event loop
        self.light_pool = ThreadPoolExecutor(4, thread_name_prefix="gradwire-light")

    def close(self) -> None:
        self.compute_pool.shutdown(wait=False, cancel_futures=True)
        self.light_pool.shutdown(wait=True, cancel_futures=True)  # short tasks: wait, leave no thread

    # ------------------------------------------------------------------ error mapping

    def _failure(self, call: _Call, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        code = status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.error("request=%s internal error", call.request_id, exc_info=exc)
            message = f"internal error ({type(exc).__name__}); request id {call.request_id}"
        else:
            message = _clipped(str(exc))
        call.log(code.name)
        return code, message

    async def _unary(self, method: str, context, fn):
        call = _Call(method, context, self.metrics)
        try:
            call.authenticate(self.auth)
            response = await fn(call)
        except asyncio.CancelledError:
            call.log(_ended_status(context))
            raise
        except Exception as exc:  # noqa: BLE001 - mapped through the status table
            await context.abort(*self._failure(call, exc))
        call.log("OK")
        return response

    async def _streaming(self, method: str, context, fn):
        call = _Call(method, context, self.metrics)
        try:
            call.authenticate(self.auth)
            async for message in fn(call):
                yield message
        except asyncio.CancelledError:
            call.log(_ended_status(context))
            raise
        except Exception as exc:  # noqa: BLE001 - mapped through the status table
            await context.abort(*self._failure(call, exc))
        call.log("OK")

    # ------------------------------------------------------------------ threads

    async def _light(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.light_pool, functools.partial(fn, *args))

    async def _compute(self, holdings: Holdings, cancel: CancelToken, fn, *args):
        """``fn(*args)`` in a compute thread; the request's holdings are released when it
        returns, not when the call ends: a cancelled call's thread stops within one node."""
        def work():
            try:
                return fn(*args)
            finally:
                holdings.release()
        future = self.compute_pool.submit(work)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancel.cancel("the call was cancelled or its deadline passed")
            if future.cancel():  # it never started, so nothing else will release what it holds
                holdings.release()
            raise

    def _assembler(self, holdings: Holdings) -> Assembler:
        """An assembler that charges each tensor to the memory budget as it is declared."""
        return Assembler(self.config.max_tensor_elements, self.config.max_request_bytes,
                         reserve=lambda nbytes, what: holdings.reserve(nbytes, what))

    def _admitted(self, context) -> tuple[Holdings, CancelToken]:
        """A compute slot (or RESOURCE_EXHAUSTED) and the call's cancellation token."""
        holdings = self.admission.holdings()
        holdings.take_slot()
        return holdings, CancelToken(monotonic_deadline(context.time_remaining()))

    # ------------------------------------------------------------------ graphs

    async def RegisterGraph(self, request, context):
        async def run(call):
            reg = await self._light(self._register, request.graph, call.tenant)
            call.graph_id = reg.graph_id
            return pb.RegisterGraphResponse(graph_id=reg.graph_id, num_nodes=len(reg.program.order))
        return await self._unary("RegisterGraph", context, run)

    def _register(self, graph, tenant: str):
        """A validated graph, ``tenant``'s from now on; one whose shapes are all known is
        refused already if a run of it would exceed the request limits."""
        reg = self.graphs.register(graph, tenant)
        budget = static_estimate(reg.program)
        if budget is not None:
            check(budget, self.config.max_request_memory_bytes, self.config.max_request_flops)
        return reg

    # ------------------------------------------------------------------ gradients

    async def Compute(self, request, context):
        async def run(call):
            call.label(require_header(request).header)  # a malformed request raises here, before it holds anything
            holdings, cancel = self._admitted(context)
            if not _inline_candidate(request):
                return await self._compute(holdings, cancel, self._compute_unary, call, request, holdings, cancel)
            handed_off = False
            try:  # a tiny request: prepared here on the loop, computed here if it is tiny too
                decoded, job = self._prepare_unary(call, request, holdings)
                if not self._runs_inline(job):
                    handed_off = True  # the compute thread releases what the request holds
                    return await self._compute(holdings, cancel, self._finish_unary, call, decoded, job, holdings,
                                               cancel)
                return self._finish_unary(call, decoded, job, holdings, cancel)
            finally:
                if not handed_off:
                    holdings.release()
        return await self._unary("Compute", context, run)

    def _runs_inline(self, job) -> bool:
        """Computed on the event loop: estimated tiny, and placed in this process (a thread
        hand-off costs 0.1-0.2 ms, more than such a computation; a Ray one waits for workers)."""
        if job.flops > INLINE_FLOPS or not getattr(self.backend, "inline", False):
            return False
        planner = getattr(self.backend, "planner", None)
        return planner is None or planner.place(job.flops, job.placement).where == "local"

    def _compute_unary(self, call: _Call, request, holdings: Holdings, cancel: CancelToken):
        decoded, job = self._prepare_unary(call, request, holdings)
        return self._finish_unary(call, decoded, job, holdings, cancel)

    def _prepare_unary(self, call: _Call, request, holdings: Holdings):
        t = time.perf_counter()
        header = request.header
        reg, session = gradients.resolve_target(header, self.graphs, self.sessions, call.tenant)
        call.graph_id = reg.graph_id
        assembler = self._assembler(holdings)
        assembler.add_message(request, ("params", "batch"))
        decoded = gradients.decode(header, reg, session, assembler.result("params"), assembler.result("batch"))
        decoded.phase_ms["decode"] = gradients._ms_since(t)
        job = gradients.validate(decoded, self.config, self.default_shards)
        call.batch = gradients.batch_rows(decoded)
        return decoded, job

    def _finish_unary(self, call: _Call, decoded, job, holdings: Holdings, cancel: CancelToken):
        outcome = self._observed(gradients.compute(self.backend, decoded, job, holdings, cancel, self.config))
        return gradients.encode_unary(decoded, job, outcome, self.backend.name, call.request_id)

    async def ValueAndGrad(self, request_iterator, context):
        async for message in self._streaming("ValueAndGrad", context,
                                             functools.partial(self._value_and_grad, request_iterator, context)):
            yield message

    async def _value_and_grad(self, requests, context, call: _Call):
        stream = RequestStream(requests, self.config.idle_timeout)
        first = await stream.first()  # no slot is held before the header has arrived
        call.label(first.header)
        holdings, cancel = self._admitted(context)
        feed = BatchFeed(first, stream, self._assembler(holdings)).start()
        try:
            decoded, job, outcome = await self._compute(holdings, cancel, self._compute_streamed, call, first.header,
                                                        feed, holdings, cancel)
        finally:
            feed.stop()
        for message in gradients.encode_stream(decoded, job, outcome, self.backend.name, call.request_id,
                                               self.config.chunk_bytes):
            yield message

    def _compute_streamed(self, call: _Call, header, feed: BatchFeed, holdings: Holdings, cancel: CancelToken):
        t = time.perf_counter()
        reg, session = gradients.resolve_target(header, self.graphs, self.sessions, call.tenant)
        call.graph_id = reg.graph_id
        feed.expect(reg.program.graph.inputs)
        decoded = gradients.decode(header, reg, session, feed.params(), feed.batch(), feed)
        decoded.phase_ms["decode"] = gradients._ms_since(t)
        job = gradients.validate(decoded, self.config, self.default_shards)
        call.batch = gradients.batch_rows(decoded)
        return decoded, job, self._observed(gradients.compute(self.backend, decoded, job, holdings, cancel,
                                                              self.config))

    def _observed(self, outcome):
        if self.metrics is not None:
            self.metrics.observe_outcome(outcome)
        return outcome

    # ------------------------------------------------------------------ sessions

    async def _read_params(self, requests, holdings: Holdings, fields=("params",)):
        """The header and the assembled tensors of a whole stream (sessions, jobs)."""
        stream = RequestStream(requests, self.config.idle_timeout)
        first = await stream.first()
        assembler = self._assembler(holdings)
        await stream.read_into(first, assembler, fields)
        return first.header, assembler

    async def CreateSession(self, request_iterator, context):
        async def run(call):
            with_holdings = self.admission.holdings()
            try:
                header, assembler = await self._read_params(request_iterator, with_holdings)
                reg = await self._light(gradients.resolve_graph, header, self.graphs, call.tenant)
                call.graph_id = reg.graph_id
                session = self.sessions.create(reg, assembler.result("params"), call.tenant)
            finally:
                with_holdings.release()
            return pb.SessionInfo(session_id=session.session_id, graph_id=reg.graph_id, version=session.version)
        return await self._unary("CreateSession", context, run)

    async def UpdateSession(self, request_iterator, context):
        async def run(call):
            with_holdings = self.admission.holdings()
            try:
                header, assembler = await self._read_params(request_iterator, with_holdings)
                session = self.sessions.update(header.session_id, assembler.result("params"), call.tenant)
            finally:
                with_holdings.release()
            call.graph_id = session.graph.graph_id
            return pb.SessionInfo(session_id=session.session_id, graph_id=session.graph.graph_id,
                                  version=session.version)
        return await self._unary("UpdateSession", context, run)

    async def GetSessionParams(self, request, context):
        async def run(call):
            session = self.sessions.get(request.session_id, call.tenant)
            call.graph_id = session.graph.graph_id
            params, version = session.snapshot
            info = pb.SessionInfo(session_id=session.session_id, graph_id=session.graph.graph_id, version=version)
            for message in stream_messages(pb.ParamsChunk, {"info": info}, {"params": params}, self.config.chunk_bytes):
                yield message
        async for message in self._streaming("GetSessionParams", context, run):
            yield message

    async def CloseSession(self, request, context):
        async def run(call):
            self.sessions.close(request.session_id, call.tenant)
            return pb.CloseSessionResponse()
        return await self._unary("CloseSession", context, run)

    # ------------------------------------------------------------------ training jobs

    async def SubmitJob(self, request_iterator, context):
        async def run(call):
            with_holdings = self.admission.holdings()
            try:
                header, assembler = await self._read_params(request_iterator, with_holdings, ("params", "data"))
                reg = await self._light(gradients.resolve_graph, header, self.graphs, call.tenant)
                call.graph_id = reg.graph_id
                # a dataset read is bounded in time: the handler answers even if the disk does not
                job = await asyncio.wait_for(
                    self._light(self.jobs.submit, header, reg, assembler.result("params"), assembler.result("data"),
                                call.tenant),
                    self.config.dataset_read_timeout)
            except asyncio.TimeoutError:
                raise GraphError(f"reading the job's dataset took more than "
                                           f"{self.config.dataset_read_timeout:g} s; refused") from None
            finally:
                with_holdings.release()
            return job.info()
        return await self._unary("SubmitJob", context, run)

    async def WatchJob(self, request, context):
        async def run(call):
            async for event in self.jobs.watch(request.job_id, request.after_step, call.tenant):
                yield pb.JobEvent(**event)
        async for message in self._streaming("WatchJob", context, run):
            yield message

    async def GetJobResult(self, request, context):
        async def run(call):
            job = self.jobs.get(request.job_id, call.tenant)
            if job.state != "done":
                raise JobNotDone(f"job {request.job_id!r} is {job.state}" + (f": {job.error}" if job.error else ""))
            info = pb.SessionInfo(graph_id=job.spec.graph_id, version=job.step)
            for message in stream_messages(pb.ParamsChunk, {"info": info}, {"params": job.params},
                                           self.config.chunk_bytes):
                yield message
        async for message in self._streaming("GetJobResult", context, run):
            yield message

    async def CancelJob(self, request, context):
        async def run(call):
            return self.jobs.cancel(request.job_id, call.tenant).info()
        return await self._unary("CancelJob", context, run)

    async def DeleteJob(self, request, context):
        async def run(call):
            return (await self._light(self.jobs.delete, request.job_id, call.tenant)).info()
        return await self._unary("DeleteJob", context, run)

    async def ListJobs(self, request, context):
        async def run(call):
            _wellformed(request)
            return pb.ListJobsResponse(jobs=[j.info() for j in self.jobs.list(call.tenant)])
        return await self._unary("ListJobs", context, run)

    # ------------------------------------------------------------------ introspection

    async def ListOps(self, request, context):
        async def run(call):
            _wellformed(request)
            return list_ops()
        return await self._unary("ListOps", context, run)


@functools.lru_cache(maxsize=1)
def list_ops() -> pb.ListOpsResponse:
    # the AttrValue field each attribute kind takes (docs/WIRE.md); "": a kind without one (a test fails)
    value_fields = {"int": "i", "float": "f", "bool": "b", "str": "s", "ints": "ints", "axes": "ints|i"}
    return pb.ListOpsResponse(ops=[
        pb.OpInfo(name=op.name, arity=-1 if op.arity is None else op.arity, doc=op.doc,
                  differentiable=op.differentiable(op.arity or 1), broadcast=op.broadcast,
                  attrs=[pb.AttrInfo(name=k, kind=a.kind, required=a.required,
                                     default="" if a.required else repr(a.default),
                                     value_field=value_fields.get(a.kind, "")) for k, a in op.attrs.items()])
        for op in OPS.values()
    ])


def _wellformed(request) -> None:
    """For handlers that read nothing of their request: malformed bytes are still refused
    (the decoder's stand-in raises INVALID_ARGUMENT on any read)."""
    request.DESCRIPTOR  # noqa: B018 - the read is the check


# gRPC drops a status whose trailer exceeds 8 KiB; it percent-encodes every byte of the
# message outside printable ASCII as three
MAX_STATUS_WIRE_BYTES = 4096
INLINE_BYTES = 64 << 10  # a unary request this small is prepared on the event loop ...
INLINE_FLOPS = 2e6  # ... and computed there when its estimate is this small (about a millisecond)


def _inline_candidate(request) -> bool:
    # small requests reach the handler as plain protobufs (frames leaves them to protobuf)
    return isinstance(request, pb.ComputeRequest) and request.ByteSize() <= INLINE_BYTES


def _clipped(message: str) -> str:
    """Messages quote client-chosen names: keep them short enough to reach the client."""
    kept, size = 0, 0
    for ch in message:
        size += 1 if " " <= ch <= "~" and ch != "%" else 3 * len(ch.encode("utf-8", "replace"))
        if size > MAX_STATUS_WIRE_BYTES - 64:  # room for the note
            return f"{message[:kept]}... ({len(message) - kept} more characters)"
        kept += 1
    return message


def _ended_status(context) -> str:
    """How a call that was cut short ended: its deadline passed, or the client went away."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
