"""The gradient request path piece by piece, without gRPC: decode → validate → compute → encode."""

from __future__ import annotations

import numpy as np
import pytest

import gradwire as gw
from gradwire.protos import gradwire_pb2 as pb
from gradwire.server import gradients
from gradwire.server.admission import Admission
from gradwire.server.backend import LocalBackend
from gradwire.server.config import ServerConfig
from gradwire.server.store import GraphStore, SessionStore
from gradwire.server.status import DeadlineExceeded
from gradwire.worker.cancel import CancelToken
from gradwire.worker.codec import assemble, graph_to_proto
from gradwire.worker.validate import GraphError, LimitError

W, B = np.array([0.5, -1.0, 2.0], np.float32), np.array([0.1, 0.2, -0.3], np.float32)
X = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def _graph() -> gw.Graph:
    g = gw.Graph()
    x, w, b = g.input("x", (None, 3)), g.param("w", (3,)), g.param("b", (3,))
    g.set_loss(gw.sum(gw.sigmoid(gw.relu(x * w + b))), batch_reduction="sum")
    return g


@pytest.fixture
def stores():
    config = ServerConfig()
    return config, GraphStore(config.limits, 8), SessionStore(8)


def _decoded(stores, **header):
    config, graphs, sessions = stores
    header = pb.ComputeHeader(graph=graph_to_proto(_graph().graph_def), **header)
    reg, session = gradients.resolve_target(header, graphs, sessions)
    return gradients.decode(header, reg, session, {"w": W, "b": B}, {"x": X})


def test_decode_resolves_the_graph_and_keys_no_client_data(stores):
    decoded = _decoded(stores, request_id="client-chosen")
    assert decoded.params_key is None  # a plain request's parameters are its own, never looked up
    assert decoded.reg.graph_id.startswith("g-") and decoded.version == 0


def test_decode_of_a_session_request(stores):
    config, graphs, sessions = stores
    reg = graphs.register(graph_to_proto(_graph().graph_def))
    session = sessions.create(reg, {"w": W, "b": B})
    header = pb.ComputeHeader(session_id=session.session_id)
    target = gradients.resolve_target(header, graphs, sessions)
    decoded = gradients.decode(header, *target, {}, {"x": X})
    assert decoded.params_key == f"{session.session_id}@{session.version}"
    with pytest.raises(GraphError, match="carries no parameters"):
        gradients.decode(header, *target, {"w": W}, {"x": X})


def test_validate_refuses_before_anything_runs(stores):
    config = stores[0]
    decoded = _decoded(stores, fetch=["nope"])
    with pytest.raises(GraphError, match="cannot fetch"):
        gradients.validate(decoded, config, 1)
    decoded = _decoded(stores, wrt=["x2"])
    with pytest.raises(GraphError, match="cannot differentiate"):
        gradients.validate(decoded, config, 1)


def test_compute_and_encode_match_the_engine(stores):
    config = stores[0]
    decoded = _decoded(stores)
    job = gradients.validate(decoded, config, 1)
    holdings = Admission(1, 1 << 30).holdings()
    outcome = gradients.compute(LocalBackend(), decoded, job, holdings, CancelToken(), config)
    holdings.release()
    message = gradients.encode_unary(decoded, job, outcome, "local", "r-1")
    loss, grads = gw.local().value_and_grad(_graph(), {"w": W, "b": B}, {"x": X})
    assert message.summary.loss == loss and message.summary.request_id == "r-1"
    got = assemble([message], "grads")
    assert all(np.array_equal(got[k], grads[k]) for k in grads)
    streamed = list(gradients.encode_stream(decoded, job, outcome, "local", "r-1", 1 << 20))
    assert streamed[-1].fields["summary"].loss == loss


def test_compute_charges_memory_and_stops_when_cancelled(stores):
    config = stores[0]
    decoded = _decoded(stores)
    job = gradients.validate(decoded, config, 1)
    tiny = Admission(1, 8).holdings()  # a budget smaller than the request
    with pytest.raises(LimitError, match="memory budget"):
        gradients.compute(LocalBackend(), decoded, job, tiny, CancelToken(), config)
    cancelled = CancelToken()
    cancelled.cancel()
    with pytest.raises(DeadlineExceeded):
        gradients.compute(LocalBackend(), decoded, job, Admission(1, 1 << 30).holdings(), cancelled, config)


def test_run_info_reports_sharding_and_the_estimate(start_server):
    _, address = start_server(shards=2)
    with gw.connect(address) as client:
        _, _, info = client.value_and_grad(_graph(), {"w": W, "b": B}, {"x": X}, return_info=True)
    assert info["shard_count"] == 2 and info["sharding"].startswith("sharded")
    assert info["estimated_peak_bytes"] >= W.nbytes + B.nbytes + X.nbytes and info["estimated_flops"] > 0
    assert info["warnings"] == []


def test_requests_over_the_memory_or_flop_limit_are_refused_before_running(start_server):
    """31 concat doublings of a scalar: an 836-byte request that grew the server past 16 GiB."""
    g = gw.Graph()
    v = g.param("p", ())
    v = gw.reshape(v, shape=[1])
    for _ in range(31):
        v = gw.concat(v, v, axis=0)
    g.set_loss(gw.sum(v))
    _, address = start_server(max_tensor_elements=2**40)
    with gw.connect(address) as client:
        with pytest.raises(gw.ResourceExhausted, match="estimated .* of memory at its peak"):
            client.value_and_grad(g, {"p": np.float32(1.0)}, {})
        _, _, info = client.value_and_grad(_graph(), {"w": W, "b": B}, {"x": X}, return_info=True)  # still serving
    _, strict = start_server(max_request_flops=10)
    with gw.connect(strict) as client:
        with pytest.raises(gw.ResourceExhausted, match="floating-point operations"):
            client.value_and_grad(_graph(), {"w": W, "b": B}, {"x": X})


def test_the_shard_count_is_chosen_by_cost_when_nobody_chose_one(start_server):
    from gradwire.server.placement import SHARD_FLOPS, shards_by_cost

    assert shards_by_cost(1e6, 8) == 1 and shards_by_cost(4 * SHARD_FLOPS, 8) == 4
    assert shards_by_cost(1e12, 8) == 8 and shards_by_cost(1e12, 1) == 1

    class EightByDefault(LocalBackend):  # as the Ray backend: up to 8 micro-shards a request
        default_shards = 8

    _, address = start_server(backend=EightByDefault())
    g = gw.Graph()
    x, w = g.input("x", (None, 256)), g.param("w", (256, 256))
    g.set_loss(gw.mean(gw.tanh(x @ w)))
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((256, 256)).astype(np.float32)}
    with gw.connect(address) as client:
        tiny = client.value_and_grad(g, params, {"x": rng.standard_normal((4, 256)).astype(np.float32)},
                                     return_info=True)[2]
        big = client.value_and_grad(g, params, {"x": rng.standard_normal((4096, 256)).astype(np.float32)},
                                    return_info=True)[2]
        chosen = gw.connect(address, shards=2).value_and_grad(
            g, params, {"x": rng.standard_normal((4, 256)).astype(np.float32)}, return_info=True)[2]
    assert tiny["shard_count"] == 1 and big["shard_count"] == 8 and chosen["shard_count"] == 2
