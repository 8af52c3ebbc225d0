"""A corpus of bad requests against one live server. Each must be answered with the right
status code and a message naming the fault, and the same server must then still answer a
good request. Raw stubs and hand-built messages reach what the SDK would refuse to send."""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

import gradwire as gw
from gradwire.protos import gradwire_pb2 as pb
from gradwire.protos import gradwire_pb2_grpc as pb_grpc
from gradwire.server.backend import LocalBackend
from gradwire.worker.codec import Assembler, graph_id_of_proto, graph_to_proto, stream_messages, tensor_chunks
from gradwire.worker.graph import GraphDef, Node
from gradwire.worker.spec import TensorSpec

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
F32 = np.dtype("float32")


# ---------------------------------------------------------------- the good request


def _base_graph() -> gw.Graph:
    g = gw.Graph()
    x, w, b = g.input("x", (None, 3)), g.param("w", (3,)), g.param("b", (3,))
    g.set_loss(gw.sum(gw.sigmoid(gw.relu(gw.add(gw.mul(x, w, name="mul"), b, name="add"), name="relu")),
                      name="loss"), batch_reduction="sum")
    return g


BASE = graph_to_proto(_base_graph().graph_def)  # nodes: mul, add, relu, sigmoid_*, loss
W, B = np.array([0.5, -1.0, 2.0], np.float32), np.array([0.1, 0.2, -0.3], np.float32)
X = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def _chunk(name, dtype=pb.FLOAT32, shape=(), data=b"", offset=0) -> pb.TensorChunk:
    return pb.TensorChunk(name=name, dtype=dtype, shape=list(shape), data=data, offset=offset)


def _whole(name, array) -> pb.TensorChunk:
    return next(tensor_chunks(name, np.asarray(array), 1 << 30))


GOOD_PARAMS = [_whole("w", W), _whole("b", B)]
GOOD_BATCH = [_whole("x", X)]


def _graph(edit: Callable[[pb.Graph], None]) -> pb.Graph:
    return _graph_of(BASE, edit)


def _graph_of(base: pb.Graph, edit: Callable[[pb.Graph], None]) -> pb.Graph:
    g = pb.Graph()
    g.CopyFrom(base)
    edit(g)
    return g


def _compute(graph: pb.Graph | None = BASE, params=None, batch=None, **header) -> list[pb.ComputeRequest]:
    if graph is not None:
        header["graph"] = graph
    return [pb.ComputeRequest(header=pb.ComputeHeader(**header), params=GOOD_PARAMS if params is None else params,
                              batch=GOOD_BATCH if batch is None else batch)]


def _register(graph: pb.Graph) -> pb.RegisterGraphRequest:
    return pb.RegisterGraphRequest(graph=graph)


def _expected_good_loss() -> float:
    return gw.local().value_and_grad(_base_graph(), {"w": W, "b": B}, {"x": X})[0]  # the local backend plan: 1 shard


# ---------------------------------------------------------------- the corpus


@dataclass
class Case:
    id: str
    build: Callable[[], object]  # the request (unary) or the list of stream messages
    code: grpc.StatusCode
    says: tuple[str, ...]  # substrings of the status message
    method: str = "ValueAndGrad"
    server: dict = field(default_factory=dict)
    timeout: float = 30  # seconds: a request the server chews on for ever fails as DEADLINE_EXCEEDED
    # build(stub) -> (request, more fragments): for requests that need server state first (a session)
    with_stub: bool = False
    xfail: str = ""  # a known server bug: the case is expected to fail (strictly) until it is fixed


def _set_param_spec(g: pb.Graph, name: str, dtype=pb.FLOAT32, shape=()):
    for p in g.params:
        if p.name == name:
            p.spec.CopyFrom(pb.TensorSpec(dtype=dtype, shape=list(shape)))


def _node(g: pb.Graph, name: str) -> pb.Node:
    return next(n for n in g.nodes if n.name == name)


def _broadcast_graph(batched: bool) -> pb.Graph:
    """a + b where a is (2**20, 1) and b is (1, 2**20): an intermediate of 2**40 elements
    (4 TiB of float32), from 8 MB of inputs."""
    a = TensorSpec((None, 1) if batched else (2**20, 1), F32)
    gd = GraphDef(inputs={"a": a} if batched else {}, params={"b": TensorSpec((1, 2**20), F32)} | (
        {} if batched else {"a": a}), nodes=[Node("outer", "add", ("a", "b")), Node("total", "sum", ("outer",))],
        loss="total", batch_reduction="sum")
    return graph_to_proto(gd)


def _sce_graph() -> pb.Graph:
    g = gw.Graph()
    x, y, w = g.input("x", (None, 3)), g.input("y", (None,), "int64"), g.param("w", (3, 5))
    g.set_loss(gw.softmax_cross_entropy(gw.matmul(x, w, name="logits"), y, name="xent"))
    return graph_to_proto(g.graph_def)


def _bool_graph() -> pb.Graph:
    g = gw.Graph()
    x, m, w = g.input("x", (None, 3)), g.input("m", (None, 3), "bool"), g.param("w", (3,))
    g.set_loss(gw.sum(gw.where(m, x * w, x)), batch_reduction="sum")
    return graph_to_proto(g.graph_def)


BOOL_GRAPH = _bool_graph()
SCE_GRAPH = _sce_graph()

# ---- the hostile requests: ranks, hidden huge dims, estimates, jobs, sessions, raw bytes

SERVICE = pb.DESCRIPTOR.services_by_name["Gradwire"]
RANK_65 = [1] * 65
HUGE_BUT_EMPTY = (2**32, 2**32, 0)
GiB = 1 << 30


def _proto(nodes, params=None, inputs=None, loss="l", batch_reduction="mean") -> pb.Graph:
    return graph_to_proto(GraphDef(inputs=inputs or {}, params=params or {}, nodes=list(nodes), loss=loss,
                                   batch_reduction=batch_reduction))


def _reshaped(shape) -> pb.Graph:
    """sum(reshape(w, shape)) of a float32 parameter w of shape (3,): no batch input."""
    return _proto([Node("r", "reshape", ("w",), {"shape": list(shape)}), Node("l", "sum", ("r",))],
                  params={"w": TensorSpec((3,), F32)})


def _concat_doublings(n=31) -> pb.Graph:
    """A float64 scalar reshaped to [1], then concat(v, v) ``n`` times: an ~830-byte request
    whose last value holds 2**31 float64 (16 GiB)."""
    nodes, prev = [Node("r", "reshape", ("p",), {"shape": [1]})], "r"
    for i in range(n):
        nodes.append(Node(f"c{i}", "concat", (prev, prev)))
        prev = f"c{i}"
    return _proto(nodes + [Node("l", "sum", (prev,))], params={"p": TensorSpec((), np.dtype("float64"))})


def _broadcast_exp() -> pb.Graph:
    """exp(broadcast_to(p, [2**14, 2**14])): a ~100-byte request that would hold 2 GiB."""
    return _proto([Node("b", "broadcast_to", ("p",), {"shape": [2**14, 2**14]}), Node("e", "exp", ("b",)),
                   Node("l", "sum", ("e",))], params={"p": TensorSpec((), F32)})


def _conv_columns() -> pb.Graph:
    """sum(conv2d(x, w)) of x (1, 1, 512, 512) and a 64x64 kernel: 1 MB of operands whose im2col
    columns hold 449*449*4096 float32 (3.3 GB)."""
    return _proto([Node("c", "conv2d", ("x", "w")), Node("l", "sum", ("c",))],
                  params={"x": TensorSpec((1, 1, 512, 512), F32), "w": TensorSpec((1, 1, 64, 64), F32)})


def _matmul_graph(n=200) -> pb.Graph:
    """sum(a @ b) of two (n, n) float32 parameters: 6 n**3 FLOPs forward and backward."""
    return _proto([Node("mm", "matmul", ("a", "b")), Node("l", "sum", ("mm",))],
                  params={"a": TensorSpec((n, n), F32), "b": TensorSpec((n, n), F32)})


MATMUL_PARAMS = [_whole("a", np.eye(200, dtype=np.float32)), _whole("b", np.eye(200, dtype=np.float32))]
# a parameter of 2**29 float32 (2 GiB), declared by a first chunk of 8 bytes
BIG_GRAPH = _proto([Node("l", "sum", ("big",))], params={"big": TensorSpec((2**29,), F32)})
BIG_DECLARED = [_chunk("big", shape=(2**29,), data=b"\0" * 8)]


def _other_graph() -> pb.Graph:
    """BASE's sources under another loss: another graph id, the same parameters."""
    g = gw.Graph()
    x, w, b = g.input("x", (None, 3)), g.param("w", (3,)), g.param("b", (3,))
    g.set_loss(gw.sum(gw.tanh(x * w + b)), batch_reduction="sum")
    return graph_to_proto(g.graph_def)


OTHER = _other_graph()
BASE_ID, OTHER_ID = graph_id_of_proto(BASE), graph_id_of_proto(OTHER)


def _session_naming_another_graph(stub, inline: bool):
    """A Compute request of a session on BASE that names OTHER (inline, or by its registered id)."""
    info = stub.CreateSession(iter([pb.SessionRequest(header=pb.SessionHeader(graph=BASE), params=GOOD_PARAMS)]),
                              timeout=30)
    if inline:
        header = pb.ComputeHeader(session_id=info.session_id, graph=OTHER)
    else:
        assert stub.RegisterGraph(_register(OTHER), timeout=30).graph_id == OTHER_ID
        header = pb.ComputeHeader(session_id=info.session_id, graph_id=OTHER_ID)
    return [pb.ComputeRequest(header=header, batch=GOOD_BATCH)], (f"session {info.session_id!r}",)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _many_nodes(n=2_500_000) -> bytes:
    """A serialized RegisterGraphRequest of a graph whose only fault is its size: ``n`` nodes
    n0, n1, ... each sum(x), the loss n0 (~48 MB, under the 64 MiB message limit). Written by
    hand: repeated fields concatenate on the wire, and 2.5M protobuf messages take long to build."""
    def node(i):
        name = b"n%d" % i
        body = b"\x0a" + bytes([len(name)]) + name + b"\x12\x03sum\x1a\x01x"  # name, op, inputs
        return b"\x22" + bytes([len(body)]) + body  # Graph.nodes (field 4)
    head = pb.Graph(params=[pb.NamedSpec(name="x", spec=pb.TensorSpec(dtype=pb.FLOAT32, shape=[3]))], loss="n0",
                    batch_reduction="sum")
    graph = head.SerializeToString() + b"".join(map(node, range(n)))
    return b"\x0a" + _varint(len(graph)) + graph  # RegisterGraphRequest.graph (field 1)


def _job(optimizer='{"name": "sgd", "lr": 0.1}', graph=BASE, params=None, data=None, epochs=1,
         batch_size=4) -> list[pb.JobRequest]:
    header = pb.JobHeader(graph=graph, optimizer_json=optimizer, batch_size=batch_size, epochs=epochs)
    return [pb.JobRequest(header=header, params=GOOD_PARAMS if params is None else params,
                          data=GOOD_BATCH if data is None else data)]


# request bytes protobuf refuses to parse, by request type: a string field (a graph id, a
# session or job id, the loss name) holding bytes that are not UTF-8, and bytes cut short
_NON_UTF8 = {
    "RegisterGraphRequest": pb.RegisterGraphRequest(graph=pb.Graph(loss="@@")),
    "ComputeRequest": pb.ComputeRequest(header=pb.ComputeHeader(graph_id="@@")),
    "SessionRequest": pb.SessionRequest(header=pb.SessionHeader(graph_id="@@")),
    "SessionRef": pb.SessionRef(session_id="@@"),
    "JobRequest": pb.JobRequest(header=pb.JobHeader(graph_id="@@")),
    "WatchJobRequest": pb.WatchJobRequest(job_id="@@"),
    "JobRef": pb.JobRef(job_id="@@"),
}


def _garbage_cases() -> list[Case]:
    cases = []
    for m in SERVICE.methods:
        payloads = {"truncated": b"\x0a\x10abc"}  # field 1, 16 bytes long, 3 there
        if m.input_type.name in _NON_UTF8:
            payloads["non-utf8"] = _NON_UTF8[m.input_type.name].SerializeToString().replace(b"@@", b"\xff\xfe")
        for kind, payload in payloads.items():
            cases.append(Case(f"garbage-{kind}-{m.name}", lambda p=payload, s=m.client_streaming: [p] if s else p,
                              INVALID, (f"malformed {m.input_type.name} message",), method=m.name))
    return cases


CASES = [
    # ---- tensor bytes
    Case("bytes-not-a-multiple-of-itemsize", lambda: _compute(batch=[_chunk("x", shape=(4, 3), data=b"\0" * 46)]),
         INVALID, ("'x'", "float32[4, 3]", "needs 48 bytes", "got 46")),
    Case("bytes-short-of-shape", lambda: _compute(batch=[_chunk("x", shape=(4, 3), data=b"\0" * 24)]),
         INVALID, ("'x'", "float32[4, 3]", "needs 48 bytes", "got 24")),
    Case("bytes-beyond-shape", lambda: _compute(batch=[_chunk("x", shape=(4, 3), data=b"\0" * 52)]),
         INVALID, ("'x'", "float32[4, 3]", "needs 48 bytes", "52")),
    Case("bytes-short-over-pieces", lambda: _compute(batch=[_chunk("x", shape=(4, 3), data=b"\0" * 20),
                                                            _chunk("x", offset=20, data=b"\0" * 20)]),
         INVALID, ("'x'", "float32[4, 3]", "needs 48 bytes", "got 40")),
    Case("piece-at-wrong-offset", lambda: _compute(batch=[_chunk("x", shape=(4, 3), data=b"\0" * 20),
                                                          _chunk("x", offset=24, data=b"\0" * 24)]),
         INVALID, ("'x'", "offset 24", "20 of 48")),
    Case("piece-before-first-piece", lambda: _compute(batch=[_chunk("x", offset=8, data=b"\0" * 8)]),
         INVALID, ("'x'", "before its first piece")),
    Case("tensor-sent-twice", lambda: _compute(batch=GOOD_BATCH * 2), INVALID, ("'x'", "sent twice")),
    Case("bool-bytes-not-0-or-1", lambda: _compute(BOOL_GRAPH, params=[_whole("w", W)], batch=[
        _whole("x", X), _chunk("m", pb.BOOL, (4, 3), bytes([1, 0, 1, 0, 2, 1, 0, 0, 1, 1, 1, 0]))]),
         INVALID, ("'m'", "bool", "0 and 1")),
    Case("bool-bytes-not-0-or-1-over-pieces", lambda: _compute(BOOL_GRAPH, params=[_whole("w", W)], batch=[
        _whole("x", X), _chunk("m", pb.BOOL, (4, 3), bytes(6)), _chunk("m", offset=6, data=bytes([0, 0, 7, 0, 0, 0]))]),
         INVALID, ("'m'", "bool", "0 and 1")),
    Case("unknown-dtype-enum", lambda: _compute(batch=[_chunk("x", 99, (4, 3), b"\0" * 48)]),
         INVALID, ("'x'", "dtype", "99")),
    Case("unspecified-dtype", lambda: _compute(params=[_chunk("w", 0, (3,), b"\0" * 12), _whole("b", B)]),
         INVALID, ("'w'", "dtype", "0")),
    Case("constant-bytes-wrong", lambda: _register(_graph(lambda g: g.constants.add(
        name="c", tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[3], data=b"\0" * 10)))),
         INVALID, ("constant 'c'", "float32[3]", "needs 12 bytes", "got 10"), method="RegisterGraph"),
    Case("tensor-dtype-against-spec", lambda: _compute(batch=[_whole("x", X.astype(np.float64))]),
         INVALID, ("'x'", "float32[?, 3]", "float64[4, 3]")),
    Case("tensor-shape-against-spec", lambda: _compute(params=[_whole("w", np.ones(4, np.float32)), _whole("b", B)]),
         INVALID, ("'w'", "float32[3]", "float32[4]")),
    Case("batch-sizes-disagree", lambda: _compute(SCE_GRAPH, params=[_whole("w", np.ones((3, 5), np.float32))],
                                                  batch=[_whole("x", X), _whole("y", np.zeros(5, np.int64))]),
         INVALID, ("batch size", "'x'", "'y'")),
    # ---- dimensions and sizes
    Case("negative-dim", lambda: _compute(batch=[_chunk("x", shape=(-2, 3))]),
         INVALID, ("'x'", "negative dimension", "(-2, 3)")),
    Case("negative-dim-in-spec", lambda: _register(_graph(lambda g: _set_param_spec(g, "w", shape=[-5]))),
         INVALID, ("'w'", "negative dimension", "-5"), method="RegisterGraph"),
    Case("absurd-dim", lambda: _compute(batch=[_chunk("x", shape=(2**40,))]),
         EXHAUSTED, ("'x'", "(1099511627776,)", "limit")),
    Case("shape-product-overflows-64-bits", lambda: _compute(batch=[_chunk("x", shape=(2**32, 2**32))]),
         EXHAUSTED, ("'x'", "(4294967296, 4294967296)", "18446744073709551616")),
    Case("shape-product-overflows-64-bits-in-spec",
         lambda: _register(_graph(lambda g: _set_param_spec(g, "w", shape=[2**32, 2**32]))),
         EXHAUSTED, ("'w'", "[4294967296, 4294967296]", "18446744073709551616"), method="RegisterGraph"),
    Case("broadcast-to-terabytes-static", lambda: _register(_broadcast_graph(batched=False)),
         EXHAUSTED, ("'outer'", "'add'", "[1048576, 1048576]", "1099511627776"), method="RegisterGraph"),
    Case("broadcast-to-terabytes-by-batch", lambda: _compute(
        _broadcast_graph(batched=True), params=[_whole("b", np.ones((1, 2**20), np.float32))],
        batch=list(tensor_chunks("a", np.ones((2**20, 1), np.float32), 1 << 20))),
         EXHAUSTED, ("'outer'", "'add'", "[1048576, 1048576]", "1099511627776")),
    # ---- graph structure
    Case("unknown-op", lambda: _compute(_graph(lambda g: setattr(_node(g, "relu"), "op", "frobnicate"))),
         INVALID, ("'relu'", "unknown op", "'frobnicate'")),
    Case("cycle", lambda: _compute(_graph(lambda g: _node(g, "mul").inputs.__setitem__(0, "relu"))),
         INVALID, ("cycle", "mul", "add", "relu")),
    Case("dangling-input", lambda: _compute(_graph(lambda g: _node(g, "add").inputs.__setitem__(1, "nowhere"))),
         INVALID, ("'add'", "'nowhere'", "not defined")),
    Case("wrong-arity", lambda: _compute(_graph(lambda g: _node(g, "relu").inputs.append("w"))),
         INVALID, ("'relu'", "arity", "takes 1", "got 2")),
    Case("dtype-mismatch", lambda: _compute(_graph(lambda g: _set_param_spec(g, "w", pb.FLOAT64, [3]))),
         INVALID, ("'mul'", "dtype", "float32[?, 3]", "float64[3]")),
    Case("unknown-attribute", lambda: _compute(_graph(lambda g: _node(g, "loss").attrs["speed"].CopyFrom(
        pb.AttrValue(i=3)))), INVALID, ("'loss'", "'sum'", "unknown attribute", "speed")),
    Case("attribute-of-wrong-kind", lambda: _compute(_graph(lambda g: _node(g, "loss").attrs["keepdims"].CopyFrom(
        pb.AttrValue(s="yes")))), INVALID, ("'loss'", "'keepdims'", "bool")),
    Case("duplicate-node-name", lambda: _compute(_graph(lambda g: setattr(_node(g, "relu"), "name", "add"))),
         INVALID, ("'add'", "duplicate")),
    Case("non-scalar-loss", lambda: _compute(_graph(lambda g: setattr(g, "loss", "relu"))),
         INVALID, ("'relu'", "loss", "float scalar", "float32[?, 3]")),
    Case("loss-not-in-graph", lambda: _compute(_graph(lambda g: setattr(g, "loss", "ghost"))),
         INVALID, ("loss", "'ghost'")),
    Case("empty-graph", lambda: _compute(pb.Graph(), params=[], batch=[]), INVALID, ("empty graph",)),
    Case("empty-graph-register", lambda: _register(pb.Graph()), INVALID, ("empty graph",), method="RegisterGraph"),
    Case("bad-batch-reduction", lambda: _compute(_graph(lambda g: setattr(g, "batch_reduction", "median"))),
         INVALID, ("batch_reduction", "'median'")),
    # ---- the request against the graph
    Case("missing-batch-input", lambda: _compute(batch=[]), INVALID, ("missing batch input", "'x'")),
    Case("missing-parameter", lambda: _compute(params=[_whole("w", W)]), INVALID, ("missing parameter", "'b'")),
    Case("unknown-parameter", lambda: _compute(params=GOOD_PARAMS + [_whole("extra", W)]),
         INVALID, ("unknown parameter", "'extra'")),
    Case("empty-batch-mean-loss", lambda: _compute(SCE_GRAPH, params=[_whole("w", np.ones((3, 5), np.float32))],
                                                   batch=[_whole("x", np.zeros((0, 3), np.float32)),
                                                          _whole("y", np.zeros(0, np.int64))]),
         INVALID, ("empty batch", "'x'", "0 examples")),
    Case("label-out-of-range", lambda: _compute(SCE_GRAPH, params=[_whole("w", np.ones((3, 5), np.float32))],
                                                batch=[_whole("x", X), _whole("y", np.array([0, 1, 9, 2]))]),
         INVALID, ("'xent'", "softmax_cross_entropy", "labels", "[0, 5)")),
    Case("wrt-unknown", lambda: _compute(wrt=["nope"]), INVALID, ("'nope'", "differentiate")),
    Case("fetch-unknown", lambda: _compute(fetch=["nope"]), INVALID, ("'nope'", "fetch")),
    Case("no-graph", lambda: _compute(None), INVALID, ("names no graph",)),
    Case("no-header", lambda: [pb.ComputeRequest(batch=GOOD_BATCH)], INVALID, ("first message", "header")),
    Case("empty-stream", lambda: [], INVALID, ("first message", "header")),
    Case("second-header", lambda: _compute() + _compute(), INVALID, ("only the first message", "header")),
    # a tensor declared after the server validated the batch (shards were already running)
    Case("unknown-batch-input-in-a-later-message",
         lambda: _compute() + [pb.ComputeRequest(batch=[_whole("zzz", X)])], INVALID, ("unknown batch input", "'zzz'")),
    Case("unknown-graph-id", lambda: _compute(None, graph_id="g-00000000000000000000000000000000"),
         NOT_FOUND, ("unknown graph id", "g-00000000000000000000000000000000")),
    Case("unknown-session-id", lambda: _compute(None, params=[], session_id="s-nope"),
         NOT_FOUND, ("unknown session id", "'s-nope'")),
    Case("session-missing-parameter", lambda: [pb.SessionRequest(header=pb.SessionHeader(graph=BASE),
                                                                 params=[_whole("w", W)])],
         INVALID, ("missing parameter", "'b'"), method="CreateSession"),
    Case("session-update-unknown", lambda: [pb.SessionRequest(header=pb.SessionHeader(session_id="s-gone"),
                                                              params=[_whole("w", W)])],
         NOT_FOUND, ("'s-gone'",), method="UpdateSession"),
    Case("session-params-unknown", lambda: pb.SessionRef(session_id="s-gone"), NOT_FOUND, ("'s-gone'",),
         method="GetSessionParams"),
    Case("request-over-byte-limit", lambda: _compute(batch=[_whole("x", np.zeros((400, 3), np.float32))]),
         EXHAUSTED, ("'x'", "1000 bytes"), server={"max_request_bytes": 1000}),
    Case("tensor-over-element-limit", lambda: _compute(batch=[_whole("x", np.zeros((400, 3), np.float32))]),
         EXHAUSTED, ("'x'", "(400, 3)", "1200", "limit is 1000"), server={"max_tensor_elements": 1000}),
    Case("too-many-nodes", lambda: _register(_graph(lambda g: g.nodes.add(name="extra", op="relu", inputs=["relu"]))),
         EXHAUSTED, ("6 nodes", "limit is 5"), method="RegisterGraph", server={"max_nodes": 5}),
    # ---- ranks above NumPy's 64: refused while decoding, not inside NumPy at run time
    Case("rank-65-batch-chunk", lambda: _compute(batch=[_chunk("x", shape=RANK_65, data=b"\0" * 4)]),
         EXHAUSTED, ("batch tensor 'x'", "shape of rank 65", "the limit is 64")),
    Case("rank-65-param-spec", lambda: _register(_graph(lambda g: _set_param_spec(g, "w", shape=RANK_65))),
         EXHAUSTED, ("parameter 'w'", "shape of rank 65", "the limit is 64"), method="RegisterGraph"),
    Case("rank-65-constant", lambda: _register(_graph(lambda g: g.constants.add(
        name="c", tensor=pb.Tensor(dtype=pb.FLOAT32, shape=RANK_65, data=b"\0" * 4)))),
         EXHAUSTED, ("constant 'c'", "shape of rank 65", "the limit is 64"), method="RegisterGraph"),
    Case("rank-65-reshape", lambda: _compute(_reshaped([1] * 62 + [3, 1, 1]), params=[_whole("w", W)], batch=[]),
         EXHAUSTED, ("node 'r'", "op 'reshape'", "'shape' lists 65 entries", "at most 64 dimensions")),
    Case("rank-65-reshape-register", lambda: _register(_reshaped([1] * 62 + [3, 1, 1])),
         EXHAUSTED, ("node 'r'", "op 'reshape'", "'shape' lists 65 entries", "at most 64 dimensions"),
         method="RegisterGraph"),
    # inferring it was quadratic in the rank: the call must end, refused, well within its timeout
    Case("reshape-to-rank-a-million", lambda: _compute(_reshaped([1] * 999_999 + [3]), params=[_whole("w", W)],
                                                       batch=[]),
         EXHAUSTED, ("node 'r'", "op 'reshape'", "'shape' lists 1000000 entries", "at most 64 dimensions"),
         timeout=10),
    # ---- a zero in the shape hides huge dims from the element count
    Case("huge-dims-zero-product-chunk", lambda: _compute(batch=[_chunk("x", shape=HUGE_BUT_EMPTY)]),
         EXHAUSTED, ("batch tensor 'x'", "(4294967296, 4294967296, 0)", "dimension of 4294967296",
                     "the limit is 2147483648")),
    Case("huge-dims-zero-product-spec",
         lambda: _register(_graph(lambda g: _set_param_spec(g, "w", shape=HUGE_BUT_EMPTY))),
         EXHAUSTED, ("'w'", "[4294967296, 4294967296, 0]", "dimension of 4294967296", "the limit is 2147483648"),
         method="RegisterGraph"),
    Case("huge-dims-zero-product-constant", lambda: _register(_graph(lambda g: g.constants.add(
        name="c", tensor=pb.Tensor(dtype=pb.FLOAT32, shape=HUGE_BUT_EMPTY)))),
         EXHAUSTED, ("constant 'c'", "(4294967296, 4294967296, 0)", "dimension of 4294967296"),
         method="RegisterGraph"),
    # ---- sources
    Case("input-and-param-same-name", lambda: _compute(_graph(lambda g: g.params.add(
        name="x", spec=pb.TensorSpec(dtype=pb.FLOAT32, shape=[3]))), params=GOOD_PARAMS + [_whole("x", W)]),
         INVALID, ("parameter 'x'", "same name as a batch input")),
    Case("constant-and-param-same-name", lambda: _register(_graph(lambda g: g.constants.add(
        name="w", tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[3], data=W.tobytes())))),
         INVALID, ("constant 'w'", "same name as a parameter"), method="RegisterGraph"),
    Case("param-spec-with-unknown-dim", lambda: _register(_graph(lambda g: _set_param_spec(g, "w", shape=[-1]))),
         INVALID, ("parameter 'w'", "float32[?]", "unknown (-1) dimension", "static shape"), method="RegisterGraph"),
    # ---- the graph's size, refused on the message
    Case("2.5M-node-graph", _many_nodes, EXHAUSTED,
         ("graph has 2500000 nodes", "the limit is 100000", "refused before decoding"), method="RegisterGraph"),
    # ---- admission estimates: tiny requests whose runs would not fit
    Case("concat-doublings", lambda: _compute(_concat_doublings(), params=[_whole("p", np.zeros(()))], batch=[]),
         EXHAUSTED, ("request needs an estimated", "GB of memory at its peak", "node 'c30', op 'concat'",
                     "the limit is 8.6 GB"),
         server={"max_tensor_elements": 2**40, "max_request_memory": 8 * GiB}),
    Case("broadcast-then-exp", lambda: _compute(_broadcast_exp(), params=[_whole("p", np.float32(0.5))], batch=[]),
         EXHAUSTED, ("request needs an estimated", "of memory at its peak", "node 'e', op 'exp'",
                     "the limit is 268.4 MB"), server={"max_request_memory": 256 << 20}),
    Case("conv-columns", lambda: _compute(_conv_columns(), batch=[], params=[
             _whole("x", np.zeros((1, 1, 512, 512), np.float32)), _whole("w", np.zeros((1, 1, 64, 64), np.float32))]),
         EXHAUSTED, ("request needs an estimated", "GB of memory at its peak", "op 'conv2d'", "the limit is 1.1 GB"),
         server={"max_request_memory": 1 << 30, "max_request_flops": 1e15}),
    Case("over-the-flops-limit", lambda: _compute(_matmul_graph(), params=MATMUL_PARAMS, batch=[]),
         EXHAUSTED, ("request needs an estimated", "floating-point operations", "the limit is 1e+07"),
         server={"max_request_flops": 1e7}),
    Case("over-the-flops-limit-register", lambda: _register(_matmul_graph()),
         EXHAUSTED, ("request needs an estimated", "floating-point operations", "the limit is 1e+07"),
         method="RegisterGraph", server={"max_request_flops": 1e7}),
    # ---- the memory budget: declared tensors are charged before their bytes arrive
    Case("2GiB-param-over-the-memory-budget", lambda: [pb.ComputeRequest(
        header=pb.ComputeHeader(graph=BIG_GRAPH), params=BIG_DECLARED)],
         EXHAUSTED, ("'big'", "2.1 GB", "memory budget is 1.1 GB", "--memory-budget"), server={"memory_budget": GiB}),
    Case("2GiB-session-param-over-the-memory-budget", lambda: [pb.SessionRequest(
        header=pb.SessionHeader(graph=BIG_GRAPH), params=BIG_DECLARED)],
         EXHAUSTED, ("'big'", "2.1 GB", "memory budget is 1.1 GB", "--memory-budget"), method="CreateSession",
         server={"memory_budget": GiB}),
    # ---- sessions
    Case("session-naming-another-graph-id", functools.partial(_session_naming_another_graph, inline=False),
         INVALID, (BASE_ID, OTHER_ID), with_stub=True),
    Case("session-naming-another-graph-inline", functools.partial(_session_naming_another_graph, inline=True),
         INVALID, (BASE_ID, OTHER_ID), with_stub=True),
    # ---- the declared batch reduction against the loss
    Case("sum-loss-declared-mean", lambda: _compute(_graph(lambda g: setattr(g, "batch_reduction", "mean"))),
         INVALID, ("sum over the batch", "node 'loss', op 'sum'", "batch_reduction='mean'", "declare 'sum'")),
    Case("mean-loss-declared-sum", lambda: _compute(
        _graph_of(SCE_GRAPH, lambda g: setattr(g, "batch_reduction", "sum")),
        params=[_whole("w", np.ones((3, 5), np.float32))], batch=[_whole("x", X), _whole("y", np.zeros(4, np.int64))]),
         INVALID, ("mean over the batch", "node 'xent', op 'softmax_cross_entropy'", "batch_reduction='sum'",
                   "declare 'mean'")),
    Case("sum-loss-declared-mean-register", lambda: _register(_graph(lambda g: setattr(g, "batch_reduction", "mean"))),
         INVALID, ("sum over the batch", "node 'loss', op 'sum'", "declare 'sum'"), method="RegisterGraph"),
    # ---- training jobs
    Case("job-optimizer-nested-100000-deep",
         lambda: _job('{"name": "sgd", "lr": 0.1, "momentum": ' + "[" * 100_000 + "]" * 100_000 + "}"),
         INVALID, ("optimizer", "config of 200040 bytes", "the limit is 65536"), method="SubmitJob"),
    Case("job-optimizer-nested-too-deeply", lambda: _job("[" * 20_000 + "]" * 20_000),
         INVALID, ("optimizer", "nested too deeply"), method="SubmitJob"),
    # two faults: the first found (lr is missing) is named; the wrong momentum once lr is given
    Case("job-optimizer-momentum-not-a-number", lambda: _job('{"name": "sgd", "momentum": "x"}'),
         INVALID, ("optimizer: sgd: lr is required",), method="SubmitJob"),
    Case("job-optimizer-momentum-not-a-number-with-lr", lambda: _job('{"name": "sgd", "lr": 0.1, "momentum": "x"}'),
         INVALID, ("optimizer", "momentum must be a number", "'x'"), method="SubmitJob"),
    Case("job-optimizer-lr-infinity", lambda: _job('{"name": "sgd", "lr": Infinity}'),
         INVALID, ("optimizer", "non-finite number Infinity"), method="SubmitJob"),
    Case("job-optimizer-negative-lr", lambda: _job('{"name":"sgd","lr":-1}'),
         INVALID, ("optimizer", "lr must be > 0", "-1"), method="SubmitJob"),
    Case("job-over-the-step-limit", lambda: _job(epochs=2**32 - 1),
         EXHAUSTED, ("4294967295 steps", "the limit is 1000", "--max-job-steps"), method="SubmitJob",
         server={"max_job_steps": 1000}),
    Case("job-sum-loss-declared-mean", lambda: _job(graph=_graph(lambda g: setattr(g, "batch_reduction", "mean"))),
         INVALID, ("sum over the batch", "node 'loss', op 'sum'", "declare 'sum'"), method="SubmitJob"),
    Case("job-2GiB-param-over-the-memory-budget", lambda: [pb.JobRequest(
        header=pb.JobHeader(graph=BIG_GRAPH, optimizer_json='{"name": "sgd", "lr": 0.1}', batch_size=1, epochs=1),
        params=BIG_DECLARED)],
         EXHAUSTED, ("'big'", "2.1 GB", "memory budget is 1.1 GB"), method="SubmitJob", server={"memory_budget": GiB}),
    # ---- bytes protobuf cannot parse, to every method
    *_garbage_cases(),
]


@pytest.fixture(scope="module")
def servers(start_server):
    """Addresses by config: the default server and one per special config of the corpus."""
    cache = {}

    def get(config: dict) -> str:
        key = tuple(sorted(config.items()))
        if key not in cache:
            cache[key] = start_server(**config)[1]
        return cache[key]

    return get


def _call(stub, method: str, request, timeout=30):
    rpc = getattr(stub, method)
    out = rpc(iter(request) if isinstance(request, list) else request, timeout=timeout)
    return list(out) if SERVICE.methods_by_name[method].server_streaming else out


def _is_raw(request) -> bool:
    return isinstance(request, bytes) or isinstance(request, list) and bool(request) and isinstance(request[0], bytes)


def _call_raw(channel, method: str, request, timeout=30):
    """Bytes in, bytes out: what protobuf's serializers would never send."""
    m = SERVICE.methods_by_name[method]
    kind = {(False, False): channel.unary_unary, (True, False): channel.stream_unary,
            (False, True): channel.unary_stream, (True, True): channel.stream_stream}[m.client_streaming,
                                                                                     m.server_streaming]
    out = kind(f"/{SERVICE.full_name}/{method}")(iter(request) if m.client_streaming else request, timeout=timeout)
    return list(out) if m.server_streaming else out


def _build(case: Case, stub) -> tuple[object, tuple[str, ...]]:
    """The case's request and the fragments its answer must hold."""
    if case.with_stub:
        request, more = case.build(stub)
        return request, case.says + more
    return case.build(), case.says


def _assert_good(stub) -> None:
    """The same server still answers a good request, correctly."""
    responses = _call(stub, "ValueAndGrad", _compute())
    assert responses[-1].summary.loss == _expected_good_loss()


def _assert_good_session(stub) -> None:
    """... and creates a good session, which computes."""
    info = stub.CreateSession(iter([pb.SessionRequest(header=pb.SessionHeader(graph=BASE), params=GOOD_PARAMS)]),
                              timeout=30)
    answer = stub.Compute(pb.ComputeRequest(header=pb.ComputeHeader(session_id=info.session_id), batch=GOOD_BATCH),
                          timeout=30)
    assert answer.summary.loss == _expected_good_loss()
    stub.CloseSession(pb.SessionRef(session_id=info.session_id), timeout=30)


def _assert_good_job(stub) -> None:
    """... and runs a good training job to the end: one SGD step over the whole of X."""
    info = stub.SubmitJob(iter(_job()), timeout=30)
    assert info.state in ("queued", "running", "done") and info.total_steps == 1, info
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=info.job_id), timeout=30))
    assert events and events[-1].state == "done", events
    assembler = Assembler()
    for message in stub.GetJobResult(pb.JobRef(job_id=info.job_id), timeout=30):
        for chunk in message.params:
            assembler.add("params", chunk)
    _, grads = gw.local().value_and_grad(_base_graph(), {"w": W, "b": B}, {"x": X})
    got = assembler.result("params")
    for name, start in (("w", W), ("b", B)):
        np.testing.assert_allclose(got[name], start - 0.1 * grads[name], rtol=1e-5, atol=1e-6)


GOOD_AFTER = {"CreateSession": _assert_good_session, "UpdateSession": _assert_good_session,
              "SubmitJob": _assert_good_job}


def _params(cases: list[Case]) -> list:
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
            for c in cases]


@pytest.mark.parametrize("case", _params(CASES))
def test_bad_request(servers, case: Case):
    with grpc.insecure_channel(servers(case.server)) as channel:
        stub = pb_grpc.GradwireStub(channel)
        request, says = _build(case, stub)
        with pytest.raises(grpc.RpcError) as err:
            if _is_raw(request):
                _call_raw(channel, case.method, request, case.timeout)
            else:
                _call(stub, case.method, request, case.timeout)
        assert err.value.code() == case.code, err.value.details()
        details = err.value.details()
        for fragment in says:
            assert fragment in details, f"{fragment!r} not in {details!r}"
        assert "Traceback" not in details and "internal error" not in details
        _assert_good(stub)
        GOOD_AFTER.get(case.method, lambda stub: None)(stub)


# The SDK sends a small request as one unary Compute message, which the server decodes
# without the streaming feed: the same corpus must fail there the same way.
MULTI_MESSAGE = ("empty-stream", "second-header", "unknown-batch-input-in-a-later-message")
UNARY = [c for c in CASES if c.method == "ValueAndGrad" and c.id not in MULTI_MESSAGE]


@pytest.mark.parametrize("case", _params(UNARY))
def test_bad_request_as_one_unary_message(servers, case: Case):
    with grpc.insecure_channel(servers(case.server)) as channel:
        stub = pb_grpc.GradwireStub(channel)
        (request,), says = _build(case, stub)
        with pytest.raises(grpc.RpcError) as err:
            if _is_raw(request):
                _call_raw(channel, "Compute", request, case.timeout)
            else:
                stub.Compute(request, timeout=case.timeout)
        assert err.value.code() == case.code, err.value.details()
        for fragment in says:
            assert fragment in err.value.details(), f"{fragment!r} not in {err.value.details()!r}"
        assert stub.Compute(_compute()[0], timeout=30).summary.loss == _expected_good_loss()


def test_corpus_covers_every_code():
    assert {c.code for c in CASES} == {INVALID, EXHAUSTED, NOT_FOUND}


# ---------------------------------------------------------------- the SDK's exception classes


@pytest.fixture(scope="module")
def address(servers):
    return servers({})


@pytest.fixture(scope="module")
def client(address):
    with gw.connect(address) as c:
        yield c


def _good_sdk(client) -> None:
    assert client.value_and_grad(_base_graph(), {"w": W, "b": B}, {"x": X})[0] == _expected_good_loss()


def test_sdk_raises_invalid_graph(client):
    cyclic = GraphDef(inputs={"x": TensorSpec((None, 3), F32)},
                      nodes=[Node("a", "relu", ("b",)), Node("b", "relu", ("a",)), Node("s", "sum", ("b",))], loss="s")
    with pytest.raises(gw.InvalidGraph, match="cycle") as err:
        client.register(cyclic)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(err.value, gw.GradwireError)
    _good_sdk(client)
    g = _base_graph()
    with pytest.raises(gw.InvalidGraph, match="missing parameter") as err:
        client.value_and_grad(g, {"w": W}, {"x": X})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    _good_sdk(client)


def test_sdk_raises_resource_exhausted(client):
    with pytest.raises(gw.ResourceExhausted, match="'outer'") as err:
        client.register(GraphDef(**_graph_def_kwargs(batched=False)))
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    _good_sdk(client)
    g = gw.Graph()
    a, b = g.input("a", (None, 1)), g.param("b", (1, 2**20))
    g.set_loss(gw.sum(gw.add(a, b, name="outer")), batch_reduction="sum")
    with pytest.raises(gw.ResourceExhausted, match="'outer'") as err:
        client.value_and_grad(g, {"b": np.ones((1, 2**20), np.float32)}, {"a": np.ones((2**20, 1), np.float32)})
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1099511627776" in str(err.value)
    _good_sdk(client)


def _graph_def_kwargs(batched: bool) -> dict:
    from gradwire.worker.codec import graph_from_proto
    gd = graph_from_proto(_broadcast_graph(batched))
    return {"inputs": gd.inputs, "params": gd.params, "nodes": gd.nodes, "loss": gd.loss}


def test_sdk_raises_not_found(client):
    with pytest.raises(gw.NotFound, match="g-feedface") as err:
        client.value_and_grad("g-feedface", {"w": W, "b": B}, {"x": X})
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    _good_sdk(client)


def _heavy(layers=4, width=256, n=2048):
    """A request heavy in matmuls: (4, 256, 2048) is about 0.1 s on two idle cores, 2 MB."""
    g = gw.Graph()
    x, w = g.input("x", (None, width)), g.param("W", (width, width))
    h = x
    for _ in range(layers):
        h = gw.tanh(h @ w)
    g.set_loss(gw.mean(gw.square(h)))
    rng = np.random.default_rng(0)
    params = {"W": (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)}
    return g, params, {"x": rng.standard_normal((n, width), dtype=np.float32)}


def _wait_for_log(caplog, predicate, seconds=10.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lines = [r.getMessage() for r in caplog.records if predicate(r.getMessage())]
        if lines:
            return lines
        time.sleep(0.05)
    return []


@pytest.mark.parametrize("where", ["compute", "upload"])
def test_sdk_raises_deadline_exceeded(client, caplog, where):
    """A 0.05 s deadline on a heavy request (compute) or a 64 MB one (still streaming in when
    the deadline passes): the client gets DeadlineExceeded in time, the server logs the
    request as DEADLINE_EXCEEDED (not as an internal error) and keeps serving."""
    caplog.set_level(logging.INFO, logger="gradwire.server")
    # compute: seconds of work on any machine (the deadline stops it within a node, so the test
    # does not pay for it); upload: 64 MB still streaming in when the deadline passes
    g, params, batch = _heavy(layers=24, width=512, n=8192) if where == "compute" else \
        _heavy(layers=1, width=256, n=65536)
    client.register(g)
    start = time.monotonic()
    # compute: long enough for the handler to start even on a busy machine, far shorter than
    # the work; the engine stops at its next node
    timeout = 0.25 if where == "compute" else 0.05
    with pytest.raises(gw.DeadlineExceeded) as err:
        client.run(g, params, batch, timeout=timeout, shards=8)
    assert time.monotonic() - start < 1.0
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    lines = _wait_for_log(caplog, lambda m: ("method=ValueAndGrad" in m or "method=Compute" in m)
                          and "status=OK" not in m)
    assert lines and "status=DEADLINE_EXCEEDED" in lines[0], lines
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    _good_sdk(client)


class _GatedBackend(LocalBackend):
    """Holds every request inside compute until ``release`` is set."""

    inline = False  # it blocks: never on the server's event loop

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def compute(self, job, cancel):
        self.entered.set()
        assert self.release.wait(30)
        return super().compute(job, cancel)


def test_concurrency_limit_rejects_the_second_request(start_server):
    backend = _GatedBackend()
    _, address = start_server(backend=backend, max_concurrent=1)
    g = _base_graph()
    outcome = {}

    def first():
        with gw.connect(address) as c:
            outcome["first"] = c.value_and_grad(g, {"w": W, "b": B}, {"x": X})

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert backend.entered.wait(10)
        with gw.connect(address) as c, pytest.raises(gw.ResourceExhausted, match="1 concurrent") as err:
            c.value_and_grad(g, {"w": W, "b": B}, {"x": X})
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        backend.release.set()
        thread.join(30)
    assert outcome["first"][0] == _expected_good_loss()
    with gw.connect(address) as c:  # the slot is free again
        _good_sdk(c)


def test_concurrency_limit_with_two_heavy_requests(start_server):
    _, address = start_server(max_concurrent=1)
    g, params, batch = _heavy(layers=6, width=512, n=4096)  # ~1.5 s: the two surely overlap
    with gw.connect(address) as c:
        c.register(g)
    barrier = threading.Barrier(2)
    outcomes: list = [None, None]

    def run(i):
        with gw.connect(address) as c:
            barrier.wait()
            try:
                outcomes[i] = c.value_and_grad(g, params, batch)[0]
            except gw.GradwireError as exc:
                outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    errors = [o for o in outcomes if isinstance(o, gw.GradwireError)]
    assert len(errors) == 1, outcomes
    assert isinstance(errors[0], gw.ResourceExhausted) and errors[0].code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "concurrent" in str(errors[0])
    losses = [o for o in outcomes if isinstance(o, float)]
    assert len(losses) == 1 and np.isfinite(losses[0]) and losses[0] > 0
    with gw.connect(address) as c:
        _good_sdk(c)


# ---------------------------------------------------------------- retries


def test_invalid_argument_is_never_retried(client, address, caplog):
    caplog.set_level(logging.INFO, logger="gradwire.server")
    bad = GraphDef(nodes=[Node("a", "nope", ())], loss="a")
    payload = pb.RegisterGraphRequest(graph=graph_to_proto(bad)).ByteSize()
    before = client.bytes_sent
    with pytest.raises(gw.InvalidGraph, match="'nope'"):
        client.register(bad)
    assert client.bytes_sent - before == payload  # one attempt
    assert len([r for r in caplog.records if "method=RegisterGraph" in r.getMessage()
                and "status=INVALID_ARGUMENT" in r.getMessage()]) == 1

    caplog.clear()
    messages = list(stream_messages(pb.ComputeRequest, {"header": pb.ComputeHeader(graph=BASE)},
                                    {"params": {"w": W}, "batch": {"x": X}}))
    with gw.connect(address) as fresh:  # sends the whole graph, as ``messages`` do
        with pytest.raises(gw.InvalidGraph, match="missing parameter"):
            fresh.value_and_grad(_base_graph(), {"w": W}, {"x": X})
        assert fresh.bytes_sent == sum(len(m.encode()) for m in messages)
    # small: sent as one unary Compute call
    assert len([r for r in caplog.records if "method=Compute" in r.getMessage()]) == 1
    _good_sdk(client)


def test_unavailable_is_retried_within_the_deadline():
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = gw.connect(f"127.0.0.1:{port}", timeout=1.0)
    g = _base_graph()
    payload = pb.RegisterGraphRequest(graph=graph_to_proto(g.graph_def)).ByteSize()
    start = time.monotonic()
    with pytest.raises(gw.Unavailable) as err:
        c.register(g)
    elapsed = time.monotonic() - start
    c.close()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    attempts = c.bytes_sent // payload
    assert c.bytes_sent == attempts * payload and attempts > 1
    assert elapsed <= 1.05  # gave up within the deadline ...
    assert elapsed > 0.05  # ... after backing off between attempts
