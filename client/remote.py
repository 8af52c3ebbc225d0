"""The remote client: ``gw.connect(address)`` behaves like ``gw.local()`` over gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from .errors import NotFound
from .graph import Graph, GraphCache
from .transport import DEFAULT_MAX_MESSAGE_BYTES, TlsOptions, Transport
from ..protos import gradwire_pb2 as pb
from ..worker.codec import (
    DEFAULT_CHUNK_BYTES, Assembler, assemble, graph_id_of_proto, graph_to_proto, one_message, stream_messages,
)
from ..worker.engine import Result
from ..worker.graph import GraphDef


@dataclass
class RemoteResult(Result):
    """A server's answer: the engine's ``Result`` plus where and how long it ran."""

    run_info: pb.RunInfo = field(default_factory=pb.RunInfo, repr=False)
    graph_id: str = ""

    @cached_property
    def info(self) -> dict[str, Any]:
        """``run_info`` as plain Python (built on first use: most calls never read it)."""
        return _info(self.run_info)


def _info(msg: pb.RunInfo) -> dict[str, Any]:
    return {
        "backend": msg.backend,
        "shard_count": msg.shard_count,
        "server_pid": msg.server_pid,
        "phase_ms": dict(msg.phase_ms),
        "sharding": msg.sharding,  # "sharded: ..." or "unsharded: <why>"
        "warnings": list(msg.warnings),  # e.g. a loss that is not finite
        "estimated_peak_bytes": msg.estimated_peak_bytes,
        "estimated_flops": msg.estimated_flops,
        "placement": msg.placement,  # "ray: ..." or "local: ..." (a Ray backend's choice), with its figures
        "estimated_ms": msg.estimated_ms,
        "shards": [{"index": s.index, "start": s.start, "stop": s.stop, "worker": s.worker, "node": s.node,
                    "pid": s.pid, "ms": s.ms, "attempts": s.attempts} for s in msg.shards],
    }


def _detached(info: pb.RunInfo) -> pb.RunInfo:
    """A copy that does not keep the whole received response (tensor bytes included) alive."""
    copy = pb.RunInfo()
    copy.CopyFrom(info)
    return copy


def _declared_outputs(graph) -> tuple[str, ...] | None:
    """The values a graph always returns besides its gradients; None if only its id is known."""
    if isinstance(graph, str):
        return None
    return tuple((graph.graph_def if isinstance(graph, Graph) else graph).outputs)


def _arrays(values: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in values.items()}


def _wire_form(graph_def: GraphDef) -> tuple[pb.Graph, str]:
    proto = graph_to_proto(graph_def)
    return proto, graph_id_of_proto(proto)


class Client:
    def __init__(self, address: str, timeout: float | None = 30.0, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, shards: int = 0, max_attempts: int = 5,
                 placement: str = "", tls: bool = False, ca: str | None = None, cert: str | None = None,
                 key: str | None = None, token: str | None = None):
        """``shards`` (0: the server's plan) and ``placement`` ("": the server's; "auto", "ray"
        or "local") apply to every request of this client. ``tls=True`` (implied by ``ca``,
        ``cert`` or ``key``) speaks TLS, trusting the CA bundle ``ca`` (else the system's
        roots); ``cert`` and ``key`` present a client certificate (mutual TLS). ``token`` (else
        the ``GRADWIRE_TOKEN`` environment variable) is sent as ``authorization: Bearer TOKEN``
        with every call, to a server started with ``--auth-tokens``."""
        secure = tls or any(x is not None for x in (ca, cert, key))
        self.transport = Transport(address, timeout, max_message_bytes, max_attempts,
                                   tls=TlsOptions(ca, cert, key) if secure else None, token=token)
        self.chunk_bytes, self.shards, self.placement = chunk_bytes, shards, placement
        self._graphs: GraphCache[tuple[pb.Graph, str]] = GraphCache(_wire_form)  # each graph's wire form and id
        self._registered: set[str] = set()

    # ------------------------------------------------------------------ graphs

    def register(self, graph: Graph | GraphDef) -> str:
        proto, graph_id = self._graphs.get(graph)
        response = self.transport.call("RegisterGraph", lambda: pb.RegisterGraphRequest(graph=proto))
        self._registered.add(response.graph_id)
        return response.graph_id

    def _graph_ref(self, graph: Graph | GraphDef | str) -> dict[str, Any]:
        """Send a graph whole the first time, by id afterwards."""
        if isinstance(graph, str):
            return {"graph_id": graph}
        proto, graph_id = self._graphs.get(graph)
        return {"graph_id": graph_id} if graph_id in self._registered else {"graph": proto}

    def _with_graph(self, graph, send):
        """``send(ref)``, re-sending the whole graph once if the server has forgotten it."""
        ref = self._graph_ref(graph)
        try:
            out = send(ref)
        except NotFound:
            if "graph_id" not in ref or isinstance(graph, str):
                raise
            self._registered.discard(ref["graph_id"])
            out = send(self._graph_ref(graph))
        if not isinstance(graph, str):
            self._registered.add(self._graphs.get(graph)[1])
        return out

    # ------------------------------------------------------------------ gradients

    def run(self, graph: Graph | GraphDef | str, params: dict[str, Any] | None, batch: dict[str, Any], *,
            wrt=None, input_grads=(), fetch=(), shards: int | None = None, session_id: str = "",
            session_param_bytes: int = 0, graph_outputs: tuple[str, ...] | None = None,
            timeout: float | None = None) -> RemoteResult:
        params = _arrays(params or {})
        batch = _arrays(batch)

        # One message each way (a unary call) only when the answer is known to be small too:
        # gradients are as large as the parameters (a session's live on the server); fetched
        # values and the graph's own outputs are of unknown size, as is a graph known by id.
        outputs = graph_outputs if session_id else _declared_outputs(graph)
        param_bytes = sum(a.nbytes for a in params.values())
        request_bytes = param_bytes + sum(a.nbytes for a in batch.values())
        response_bytes = param_bytes + session_param_bytes
        small = (request_bytes + response_bytes <= self.chunk_bytes // 2 and outputs == ()
                 and not fetch and not input_grads)

        def send(ref):
            header = pb.ComputeHeader(**({} if session_id else ref), session_id=session_id, wrt=wrt or (),
                                      input_grads=input_grads, fetch=fetch,
                                      shards=self.shards if shards is None else shards, placement=self.placement)
            tensors = {"params": params, "batch": batch}
            if small:  # one message each way: a unary call halves gRPC's per-call overhead
                request = one_message(pb.ComputeRequest, {"header": header}, tensors)
                return [self.transport.call("Compute", lambda: request, timeout=timeout)]
            return self.transport.call(
                "ValueAndGrad", lambda: stream_messages(pb.ComputeRequest, {"header": header}, tensors, self.chunk_bytes,
                                                        row_interleave=("batch",)),  # shards start as rows arrive
                stream_in=True, stream_out=True, timeout=timeout)

        messages = send({}) if session_id else self._with_graph(graph, send)
        assembler = Assembler()
        summary = None
        for message in messages:
            if message.HasField("summary"):
                summary = message.summary
            assembler.add_message(message, ("grads", "input_grads", "outputs"))
        return RemoteResult(summary.loss, assembler.result("grads"), assembler.result("input_grads"),
                            assembler.result("outputs"), run_info=_detached(summary.info), graph_id=summary.graph_id)

    def value_and_grad(self, graph: Graph | GraphDef | str, params: dict[str, Any], batch: dict[str, Any],
                       return_info: bool = False):
        """``(loss, grads)`` exactly as ``gw.local()``; with ``return_info`` also the run's
        placement and timing (shards, workers, nodes, per-phase milliseconds)."""
        result = self.run(graph, params, batch)
        return (result.loss, result.grads, result.info) if return_info else (result.loss, result.grads)

    # ------------------------------------------------------------------ sessions

    def session(self, graph: Graph | GraphDef | str, params: dict[str, Any]) -> "Session":
        params = _arrays(params)

        def send(ref):
            return self.transport.call(
                "CreateSession",
                lambda: stream_messages(pb.SessionRequest, {"header": pb.SessionHeader(**ref)},
                                        {"params": params}, self.chunk_bytes),
                stream_in=True)

        info = self._with_graph(graph, send)
        return Session(self, info.session_id, info.graph_id, info.version,
                       {k: v.nbytes for k, v in params.items()}, _declared_outputs(graph))

    def ops(self) -> list[dict[str, Any]]:
        response = self.transport.call("ListOps", pb.ListOpsRequest)
        return [{"name": op.name, "arity": None if op.arity < 0 else op.arity, "doc": op.doc,
                 "differentiable": list(op.differentiable), "broadcast": op.broadcast,
                 "attrs": {a.name: {"kind": a.kind, "required": a.required, "default": a.default,
                                    "value_field": a.value_field} for a in op.attrs}}
                for op in response.ops]

    # ------------------------------------------------------------------ training jobs

    def submit_job(self, graph: Graph | GraphDef | str, params: dict[str, Any], data: dict[str, Any] | str,
                   optimizer, batch_size: int, epochs: int = 1, seed: int = 0, checkpoint_every: int = 0,
                   shards: int = 0, name: str = "", placement: str = "", loss: str | None = None,
                   label: str = "y"):
        """Start a training job on the server (data uploaded, or a dataset path the server
        can read); returns a ``TrainingJob`` to watch, cancel and collect. ``placement``
        ("auto", "ray" or "local"; "": the server's) says where a Ray backend runs its steps.
        ``graph`` may be an ONNX model (a path ending in .onnx or a ModelProto) with ``loss`` chosen
        by name on its output and the batch input ``label``; then ``params`` may be None (its
        initializers)."""
        from .jobs import submit_job

        if loss is not None:
            from .onnx_io import training_graph

            graph, initializers = training_graph(graph, loss, label)
            params = initializers if params is None else params
        return submit_job(self, graph, params, data, optimizer, batch_size, epochs, seed, checkpoint_every,
                          shards, name, placement or self.placement)

    def job(self, job_id: str):
        from .jobs import TrainingJob
        return TrainingJob(self, job_id)

    def jobs(self) -> list[dict[str, Any]]:
        from .jobs import list_jobs
        return list_jobs(self)

    @property
    def bytes_sent(self) -> int:
        return self.transport.bytes_sent

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Session:
    """A graph whose parameters live on the server: each step ships only the batch."""

    def __init__(self, client: Client, session_id: str, graph_id: str, version: int,
                 param_bytes: dict[str, int] | None = None, outputs: tuple[str, ...] | None = None):
        self.client, self.session_id, self.graph_id, self.version = client, session_id, graph_id, version
        self._param_bytes = dict(param_bytes or {})  # the size of the gradients to expect
        self._outputs = outputs  # the graph's declared outputs (None: unknown)

    def run(self, batch: dict[str, Any], **kwargs) -> RemoteResult:
        return self.client.run(self.graph_id, None, batch, session_id=self.session_id,
                               session_param_bytes=sum(self._param_bytes.values()), graph_outputs=self._outputs,
                               **kwargs)

    def value_and_grad(self, batch: dict[str, Any], return_info: bool = False):
        result = self.run(batch)
        return (result.loss, result.grads, result.info) if return_info else (result.loss, result.grads)

    def update(self, params: dict[str, Any]) -> int:
        """Replace some or all parameters; returns the session's new version."""
        arrays = _arrays(params)
        header = pb.SessionHeader(session_id=self.session_id)
        info = self.client.transport.call(
            "UpdateSession",
            lambda: stream_messages(pb.SessionRequest, {"header": header}, {"params": arrays},
                                    self.client.chunk_bytes),
            stream_in=True)
        self.version = info.version
        self._param_bytes.update((k, v.nbytes) for k, v in arrays.items())
        return self.version

    def params(self) -> dict[str, np.ndarray]:
        messages = self.client.transport.call("GetSessionParams", lambda: pb.SessionRef(session_id=self.session_id),
                                              stream_out=True)
        return assemble(messages, "params")

    def close(self) -> None:
        """Free the session's parameters on the server (also when a ``with`` block ends)."""
        self.client.transport.call("CloseSession", lambda: pb.SessionRef(session_id=self.session_id))

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(address: str = "127.0.0.1:50051", timeout: float | None = 30.0, **kwargs) -> Client:
    return Client(address, timeout, **kwargs)
