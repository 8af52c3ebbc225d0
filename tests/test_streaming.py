"""The batch streams in while shards already run (server/feed.py): shards start on the rows
that have arrived; any chunk order is still correct; parameters must precede the batch."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

import gradwire as gw
from gradwire.protos import gradwire_pb2 as pb
from gradwire.protos import gradwire_pb2_grpc as pb_grpc
from gradwire.server.backend import LocalBackend
from gradwire.worker.codec import assemble, graph_to_proto, stream_messages


class RecordingBackend(LocalBackend):
    """The local backend, noting when each shard's rows were ready."""

    def __init__(self):
        self.ready_at: list[tuple[int, float]] = []

    def compute(self, job, cancel):
        wait_rows = job.wait_rows

        def recording(stop, timeout=None):
            ok = wait_rows(stop, timeout)
            self.ready_at.append((stop, time.monotonic()))
            return ok

        job.wait_rows = recording
        return super().compute(job, cancel)


def _graph():
    g = gw.Graph()
    x, y = g.input("x", (None, 64), "float64"), g.input("y", (None,), "int64")
    w = g.param("w", (64, 5), "float64")
    g.set_loss(gw.softmax_cross_entropy(gw.tanh(x @ w), y))
    rng = np.random.default_rng(0)
    return g, {"w": rng.normal(size=(64, 5))}, {"x": rng.normal(size=(4000, 64)), "y": rng.integers(0, 5, 4000)}


def _messages(g, params, batch, chunk_bytes, row_interleave=("batch",), shards=8):
    header = pb.ComputeHeader(graph=graph_to_proto(g.graph_def), shards=shards)
    return [m.to_proto() for m in stream_messages(pb.ComputeRequest, {"header": header},
                                                  {"params": params, "batch": batch}, chunk_bytes,
                                                  row_interleave=row_interleave)]


def _call(address, messages, pause_before_last=0.0):
    sent_last = []

    def requests():
        for i, message in enumerate(messages):
            if i == len(messages) - 1:
                time.sleep(pause_before_last)
                sent_last.append(time.monotonic())
            yield message

    with grpc.insecure_channel(address) as channel:
        responses = list(pb_grpc.GradwireStub(channel).ValueAndGrad(requests(), timeout=30))
    return responses, sent_last[0]


def _grad(responses):
    return assemble(responses, "grads")


def test_shards_start_before_the_batch_has_arrived(start_server):
    backend = RecordingBackend()
    _, address = start_server(backend=backend)
    g, params, batch = _graph()
    messages = _messages(g, params, batch, chunk_bytes=64 << 10)
    assert len(messages) > 8
    responses, last_sent = _call(address, messages, pause_before_last=0.5)
    first_ready = min(t for stop, t in backend.ready_at)
    assert first_ready < last_sent - 0.3  # the first shard was under way long before the last bytes
    want = gw.local(shards=8).value_and_grad(g, params, batch)[1]
    assert np.array_equal(_grad(responses)["w"], want["w"])


def test_any_chunk_order_gives_the_same_bits(start_server):
    _, address = start_server()
    g, params, batch = _graph()
    interleaved, _ = _call(address, _messages(g, params, batch, 32 << 10))
    sequential, _ = _call(address, _messages(g, params, batch, 32 << 10, row_interleave=()))
    assert np.array_equal(_grad(interleaved)["w"], _grad(sequential)["w"])


def test_parameters_after_the_batch_are_rejected(start_server):
    _, address = start_server()
    g, params, batch = _graph()
    header = pb.ComputeHeader(graph=graph_to_proto(g.graph_def))
    head = next(stream_messages(pb.ComputeRequest, {"header": header}, {"batch": batch}, 1 << 30)).to_proto()
    tail = next(stream_messages(pb.ComputeRequest, {}, {"params": params}, 1 << 30)).to_proto()
    with pytest.raises(grpc.RpcError) as err:
        _call(address, [head, tail])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # which of the two checks sees it first is a race; both name the parameter
    assert ("parameter 'w' arrived after the batch began" in err.value.details()
            or "missing parameter(s) ['w']" in err.value.details())
