"""One gradient request's path, in four pieces each testable alone:

``decode`` (which graph, whose parameters, which batch) → ``validate`` (every check, the
admission estimate; nothing allocated) → ``compute`` (the backend runs the shards, holding
the request's memory) → ``encode`` (the answer's messages and its run info).

They run in a compute thread; the servicer only reads the stream and maps errors.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..protos import gradwire_pb2 as pb
from .admission import Holdings
from .auth import DEFAULT_TENANT
from .backend import Backend
from .driver import Computation, Outcome
from .config import ServerConfig
from .feed import BatchFeed
from .placement import check_placement, shards_by_cost
from .store import GraphStore, Registered, Session, SessionStore
from ..worker.budget import Budget, check, estimate
from ..worker.cancel import CancelToken
from ..worker.codec import graph_id_of_proto, one_message, stream_messages
from ..worker.engine import ExecutionError
from ..worker.frames import Outgoing
from ..worker.shards import batch_size
from ..worker.validate import GraphError


@dataclass
class Decoded:
    """What a request asks for, its sources resolved (the batch may still be streaming in)."""

    header: pb.ComputeHeader
    reg: Registered
    params: dict[str, np.ndarray]
    params_key: str | None  # a server-made key for a reusable parameter set (a session's), else None
    version: int
    batch: dict[str, np.ndarray]
    feed: BatchFeed | None = None
    phase_ms: dict[str, float] = field(default_factory=dict)
    budget: Budget | None = None  # the admission estimate, once validated


def resolve_graph(header, graphs: GraphStore, tenant: str = DEFAULT_TENANT) -> Registered:
    """The graph a request names, sent whole (registered for ``tenant``) or by an id ``tenant`` registered."""
    ref = header.WhichOneof("graph_ref")
    if ref == "graph":
        return graphs.register(header.graph, tenant)
    if ref == "graph_id":
        return graphs.get(header.graph_id, tenant)
    raise GraphError("the request names no graph (graph or graph_id)")


def resolve_target(header, graphs: GraphStore, sessions: SessionStore,
                   tenant: str = DEFAULT_TENANT) -> tuple[Registered, Session | None]:
    """The graph a request runs and its session (``tenant``'s), if it names one. A session
    request may name its graph too, but only the session's own: never silently run another."""
    if not header.session_id:
        return resolve_graph(header, graphs, tenant), None
    session = sessions.get(header.session_id, tenant)
    ref = header.WhichOneof("graph_ref")
    named = header.graph_id if ref == "graph_id" else graph_id_of_proto(header.graph) if ref == "graph" else None
    if named is not None and named != session.graph.graph_id:
        raise GraphError(f"session {header.session_id!r} runs graph {session.graph.graph_id!r}, but the request "
                         f"names graph {named!r}; send no graph with a session request, or its own")
    return session.graph, session


def decode(header, reg: Registered, session: Session | None, sent_params: dict, batch: dict,
           feed: BatchFeed | None = None) -> Decoded:
    if session is None:
        return Decoded(header, reg, sent_params, None, 0, batch, feed)
    if sent_params:
        raise GraphError("a session request carries no parameters; update the session instead")
    params, version = session.snapshot  # one read: an update may land meanwhile
    return Decoded(header, reg, params, f"{session.session_id}@{version}", version, batch, feed)


def validate(request: Decoded, config: ServerConfig, default_shards: int) -> Computation:
    """Every check a request can fail before it runs; the backend's ``Computation``."""
    t = time.perf_counter()
    header, program = request.header, request.reg.program
    specs = program.bind(request.params, request.batch)  # every check, no allocation
    unknown = sorted({name for name in header.fetch if name not in program.specs})
    if unknown:
        raise GraphError(f"cannot fetch {unknown}: not values of the graph")
    check_placement(header.placement)
    wrt = tuple(header.wrt) or tuple(program.graph.params)
    job = Computation(request.reg, request.params, request.params_key, request.batch, wrt + tuple(header.input_grads),
              tuple(header.fetch), header.shards or default_shards, config.check_finite, request.feed, specs)
    if header.wrt or header.input_grads:
        program.backward_plan(job.wrt)  # rejects unknown names before scheduling
    request.budget = check(estimate(program, specs, job.wrt, job.fetch), config.max_request_memory_bytes,
                           config.max_request_flops)
    job.placement, job.flops = header.placement, request.budget.flops
    if not header.shards and not config.shards:  # nobody chose a plan: one by cost
        job.shards = shards_by_cost(job.flops, default_shards)
    request.phase_ms["validate"] = _ms_since(t)
    return job


def compute(backend: Backend, request: Decoded, job: Computation, holdings: Holdings, cancel: CancelToken,
            config: ServerConfig) -> Outcome:
    """Run the job, its estimated peak memory held for as long as it runs (the tensors the
    request declared are held already)."""
    holdings.reserve(max(0, request.budget.peak_bytes - holdings.reserved), "the request's run", cancel)
    outcome = backend.compute(job, cancel)
    if request.feed is not None:  # the whole stream arrived and checks out (lengths, bools), and the
        request.reg.program.bind(request.params, request.feed.finish())  # late tensors are the graph's too
    if config.check_finite:
        _check_finite_grads(outcome)
    outcome.phase_ms.update(request.phase_ms)
    return outcome


def _check_finite_grads(outcome: Outcome) -> None:
    result = outcome.result
    for group in (result.grads, result.input_grads):
        for name, grad in group.items():
            if grad.dtype.kind == "f" and not np.isfinite(grad).all():
                raise ExecutionError(f"the gradient of {name!r} {grad.dtype.name}{list(grad.shape)} is not finite "
                                     "(NaN or Inf) (--check-finite)")


# ---------------------------------------------------------------- encode


def run_info(backend_name: str, request: Decoded, job: Computation, outcome: Outcome) -> pb.RunInfo:
    warnings = [] if math.isfinite(outcome.result.loss) else [f"the loss is not finite ({outcome.result.loss})"]
    return pb.RunInfo(
        backend=backend_name, shard_count=len(outcome.shards), phase_ms=outcome.phase_ms,
        shards=[pb.ShardInfo(**vars(s)) for s in outcome.shards],  # ShardRecord mirrors ShardInfo
        server_pid=os.getpid(), sharding=job.sharding, warnings=warnings,
        estimated_peak_bytes=request.budget.peak_bytes, estimated_flops=request.budget.flops,
        placement=outcome.placement.describe() if outcome.placement else "",
        estimated_ms=outcome.placement.estimated_ms if outcome.placement else 0.0)


def _groups(outcome: Outcome) -> dict[str, dict[str, np.ndarray]]:
    result = outcome.result
    return {"grads": result.grads, "input_grads": result.input_grads, "outputs": result.outputs}


def _summary(request: Decoded, info: pb.RunInfo, request_id: str, loss: float) -> pb.ComputeSummary:
    return pb.ComputeSummary(loss=loss, graph_id=request.reg.graph_id, request_id=request_id, info=info,
                             session_version=request.version)


def encode_unary(request: Decoded, job: Computation, outcome: Outcome, backend_name: str, request_id: str) -> pb.ComputeResponse:
    """The whole answer in one plain protobuf (a unary call)."""
    t = time.perf_counter()
    message = one_message(pb.ComputeResponse, {}, _groups(outcome))
    outcome.phase_ms["encode"] = _ms_since(t)
    message.summary.CopyFrom(_summary(request, run_info(backend_name, request, job, outcome), request_id, outcome.result.loss))
    return message


def encode_stream(request: Decoded, job: Computation, outcome: Outcome, backend_name: str, request_id: str,
                  chunk_bytes: int):
    """The answer's messages, lazily and one ahead: the summary rides on the last message, so it
    can report the whole encode phase (which includes handing earlier messages to gRPC)."""
    t = time.perf_counter()
    previous = None
    for message in stream_messages(pb.ComputeResponse, {}, _groups(outcome), chunk_bytes):
        if previous is not None:
            yield previous
        previous = message
    previous = previous or Outgoing(pb.ComputeResponse)
    outcome.phase_ms["encode"] = _ms_since(t)
    previous.fields["summary"] = _summary(request, run_info(backend_name, request, job, outcome), request_id,
                                          outcome.result.loss)
    yield previous


def _ms_since(t: float) -> float:
    return (time.perf_counter() - t) * 1e3


def batch_rows(request: Decoded) -> str:
    n = batch_size(request.reg.program, request.batch)
    return "-" if n is None else str(n)
