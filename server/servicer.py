"""The gRPC servicer: decode -> validate -> schedule on the backend -> encode.

Every handler runs inside ``_call``, the one place where exceptions become gRPC statuses
(through ``status.STATUS_TABLE``) and where the per-request log line is written.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator

import grpc

from gradwire.protos import gradwire_pb2 as pb
from gradwire.protos import gradwire_pb2_grpc as pb_grpc
from gradwire.server.backend import Backend, Job
from gradwire.server.config import ServerConfig
from gradwire.server.feed import BatchFeed, first_request, messages_from
from gradwire.server.jobs import JobManager
from gradwire.server.status import JobNotDone, Overloaded, status_for
from gradwire.server.store import GraphStore, Registered, SessionStore
from gradwire.worker.cancel import CancelToken
from gradwire.worker.codec import Assembler, one_message, stream_messages
from gradwire.worker.frames import Outgoing
from gradwire.worker.ops import OPS
from gradwire.worker.shards import batch_size
from gradwire.worker.validate import GraphError

log = logging.getLogger("gradwire.server")


class _Call:
    """Per-request bookkeeping for the log line."""

    def __init__(self, method: str, context: grpc.ServicerContext):
        metadata = dict(context.invocation_metadata() or ())
        self.request_id = metadata.get("gradwire-request-id") or uuid.uuid4().hex[:12]
        self.method, self.graph_id, self.batch = method, "-", "-"
        self.started = time.perf_counter()

    def log(self, status: str) -> None:
        ms = (time.perf_counter() - self.started) * 1e3
        log.info("request=%s method=%s graph=%s batch=%s status=%s ms=%.1f",
                 self.request_id, self.method, self.graph_id, self.batch, status, ms)


class GradwireServicer(pb_grpc.GradwireServicer):
    def __init__(self, config: ServerConfig, backend: Backend):
        self.config, self.backend = config, backend
        self.graphs = GraphStore(config.limits, config.max_graphs)
        self.sessions = SessionStore(config.max_sessions)
        self._slots = threading.BoundedSemaphore(config.max_concurrent)
        self.default_shards = config.shards or backend.default_shards
        self.jobs = JobManager(config.job_dir, backend, self.graphs, self.default_shards, config.check_finite)

    # ------------------------------------------------------------------ error mapping

    def _fail(self, call: _Call, context: grpc.ServicerContext, exc: BaseException):
        code = status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("request=%s internal error", call.request_id)
            message = f"internal error ({type(exc).__name__}); request id {call.request_id}"
        else:
            message = str(exc)
        call.log(code.name)
        context.abort(code, message)

    def _unary(self, method: str, context, fn):
        call = _Call(method, context)
        try:
            response = fn(call)
        except Exception as exc:  # noqa: BLE001 - mapped through the status table
            self._fail(call, context, exc)
        call.log(_ended_status(context))
        return response

    def _streaming(self, method: str, context, fn) -> Iterator:
        call = _Call(method, context)
        try:
            yield from fn(call)
        except Exception as exc:  # noqa: BLE001 - mapped through the status table
            self._fail(call, context, exc)
        call.log(_ended_status(context))

    # ------------------------------------------------------------------ graphs

    def RegisterGraph(self, request, context):
        def run(call):
            reg = self.graphs.register(request.graph)
            call.graph_id = reg.graph_id
            return pb.RegisterGraphResponse(graph_id=reg.graph_id, num_nodes=len(reg.program.order))
        return self._unary("RegisterGraph", context, run)

    def _resolve(self, header) -> Registered:
        ref = header.WhichOneof("graph_ref")
        if ref == "graph":
            return self.graphs.register(header.graph)
        if ref == "graph_id":
            return self.graphs.get(header.graph_id)
        raise GraphError("the request names no graph (graph or graph_id)")

    def _read_stream(self, requests, tensor_fields: tuple[str, ...], context=None):
        """The first message's header and the stream's assembled tensors."""
        first = first_request(requests, context)
        assembler = Assembler(self.config.max_tensor_elements, self.config.max_request_bytes)
        for message in messages_from(first, requests, context):
            assembler.add_message(message, tensor_fields)
        return first.header, assembler

    # ------------------------------------------------------------------ gradients

    def ValueAndGrad(self, request_iterator, context):
        return self._streaming("ValueAndGrad", context, lambda call: self._value_and_grad(call, request_iterator, context))

    def Compute(self, request, context):
        def run(call):
            (response,) = self._value_and_grad(call, iter((request,)), context, inline=True)
            return response
        return self._unary("Compute", context, run)

    def _value_and_grad(self, call: _Call, requests, context, inline: bool = False):
        if not self._slots.acquire(blocking=False):
            raise Overloaded(f"server is at its limit of {self.config.max_concurrent} concurrent requests")
        try:
            phases: dict[str, float] = {}
            t = time.perf_counter()
            first = first_request(requests, context)
            header = first.header
            session = self.sessions.get(header.session_id) if header.session_id else None
            reg = session.graph if session is not None else self._resolve(header)
            assembler = Assembler(self.config.max_tensor_elements, self.config.max_request_bytes)
            if inline:  # a unary call: this one message is the whole request
                feed = None
                assembler.add_message(first, ("params", "batch"))
                sent_params, batch = assembler.result("params"), assembler.result("batch")
            else:  # the batch streams in while shards already run (see feed.py)
                feed = BatchFeed(first, requests, assembler, context).start(reg.program.graph.inputs)
                sent_params, batch = feed.params(), feed.batch()
            version = 0
            if session is not None:
                params, version = session.snapshot  # one read: an update may land meanwhile
                params_key = f"{session.session_id}@{version}"
                if sent_params:
                    raise GraphError("a session request carries no parameters; update the session instead")
            else:
                params, params_key = sent_params, call.request_id
            call.graph_id = reg.graph_id
            program = reg.program
            phases["decode"] = _ms_since(t)

            t = time.perf_counter()
            specs = program.bind(params, batch)  # every check, no allocation
            n = batch_size(program, batch)
            call.batch = str(n)
            unknown = sorted({name for name in header.fetch if name not in program.specs})
            if unknown:
                raise GraphError(f"cannot fetch {unknown}: not values of the graph")
            wrt = tuple(header.wrt) or tuple(program.graph.params)
            job = Job(reg, params, params_key, batch, wrt + tuple(header.input_grads), tuple(header.fetch),
                      header.shards or self.default_shards, self.config.check_finite, feed, specs)
            if header.wrt or header.input_grads:
                program.backward_plan(job.wrt)  # rejects unknown names before scheduling
            phases["validate"] = _ms_since(t)

            cancel = CancelToken(_deadline(context), probe=lambda: not context.is_active())
            outcome = self.backend.compute(job, cancel)
            phases.update(outcome.phase_ms)
            if feed is not None:  # the whole stream arrived and checks out (lengths, bools), and the
                program.bind(params, feed.finish())  # tensors declared after validation are the graph's too
        finally:
            self._slots.release()
        t = time.perf_counter()
        result = outcome.result
        groups = {"grads": result.grads, "input_grads": result.input_grads, "outputs": result.outputs}
        if inline:  # a unary call: every tensor whole in the one answer
            previous = one_message(pb.ComputeResponse, {}, groups)
        else:  # lazily, one message ahead: the summary rides on the last message, so it can
            # report the whole encode phase (which includes handing earlier messages to gRPC)
            previous = None
            for message in stream_messages(pb.ComputeResponse, {}, groups, self.config.chunk_bytes):
                if previous is not None:
                    yield previous
                previous = message
            previous = previous or Outgoing(pb.ComputeResponse)
        phases["encode"] = _ms_since(t)
        info = pb.RunInfo(
            backend=self.backend.name, shard_count=len(outcome.shards), phase_ms=phases,
            shards=[pb.ShardInfo(**vars(s)) for s in outcome.shards],  # ShardRecord mirrors ShardInfo
            server_pid=os.getpid(),
        )
        summary = pb.ComputeSummary(loss=result.loss, graph_id=reg.graph_id, request_id=call.request_id, info=info,
                                    session_version=version)
        if inline:
            previous.summary.CopyFrom(summary)
        else:
            previous.fields["summary"] = summary
        yield previous

    # ------------------------------------------------------------------ sessions

    def CreateSession(self, request_iterator, context):
        def run(call):
            header, assembler = self._read_stream(request_iterator, ("params",), context)
            reg = self._resolve(header)
            call.graph_id = reg.graph_id
            session = self.sessions.create(reg, assembler.result("params"))
            return pb.SessionInfo(session_id=session.session_id, graph_id=reg.graph_id, version=session.version)
        return self._unary("CreateSession", context, run)

    def UpdateSession(self, request_iterator, context):
        def run(call):
            header, assembler = self._read_stream(request_iterator, ("params",), context)
            session = self.sessions.update(header.session_id, assembler.result("params"))
            call.graph_id = session.graph.graph_id
            return pb.SessionInfo(session_id=session.session_id, graph_id=session.graph.graph_id,
                                  version=session.version)
        return self._unary("UpdateSession", context, run)

    def GetSessionParams(self, request, context):
        def run(call):
            session = self.sessions.get(request.session_id)
            call.graph_id = session.graph.graph_id
            params, version = session.snapshot
            info = pb.SessionInfo(session_id=session.session_id, graph_id=session.graph.graph_id, version=version)
            yield from stream_messages(pb.ParamsChunk, {"info": info}, {"params": params}, self.config.chunk_bytes)
        return self._streaming("GetSessionParams", context, run)

    def CloseSession(self, request, context):
        def run(call):
            self.sessions.close(request.session_id)
            return pb.CloseSessionResponse()
        return self._unary("CloseSession", context, run)

    # ------------------------------------------------------------------ training jobs

    def SubmitJob(self, request_iterator, context):
        def run(call):
            header, assembler = self._read_stream(request_iterator, ("params", "data"))
            reg = self._resolve(header)
            call.graph_id = reg.graph_id
            job = self.jobs.submit(header, reg, assembler.result("params"), assembler.result("data"))
            return job.info()
        return self._unary("SubmitJob", context, run)

    def WatchJob(self, request, context):
        def run(call):
            for event in self.jobs.watch(request.job_id, request.after_step, context.is_active):
                yield pb.JobEvent(**event)
        return self._streaming("WatchJob", context, run)

    def GetJobResult(self, request, context):
        def run(call):
            job = self.jobs.get(request.job_id)
            if job.state != "done":
                raise JobNotDone(f"job {request.job_id!r} is {job.state}" + (f": {job.error}" if job.error else ""))
            info = pb.SessionInfo(graph_id=job.spec.graph_id, version=job.step)
            yield from stream_messages(pb.ParamsChunk, {"info": info}, {"params": job.params}, self.config.chunk_bytes)
        return self._streaming("GetJobResult", context, run)

    def CancelJob(self, request, context):
        return self._unary("CancelJob", context, lambda call: self.jobs.cancel(request.job_id).info())

    def ListJobs(self, request, context):
        return self._unary("ListJobs", context,
                           lambda call: pb.ListJobsResponse(jobs=[j.info() for j in self.jobs.list()]))

    # ------------------------------------------------------------------ introspection

    def ListOps(self, request, context):
        return self._unary("ListOps", context, lambda call: list_ops())


def list_ops() -> pb.ListOpsResponse:
    return pb.ListOpsResponse(ops=[
        pb.OpInfo(name=op.name, arity=-1 if op.arity is None else op.arity, doc=op.doc,
                  differentiable=op.differentiable(op.arity or 1),
                  attrs=[pb.AttrInfo(name=k, kind=a.kind, required=a.required,
                                     default="" if a.required else repr(a.default)) for k, a in op.attrs.items()])
        for op in OPS.values()
    ])


def _ended_status(context: grpc.ServicerContext) -> str:
    """How a call that the handler finished really ended: the client may be gone already."""
    if context.is_active():
        return "OK"
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


def _ms_since(t: float) -> float:
    return (time.perf_counter() - t) * 1e3


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
