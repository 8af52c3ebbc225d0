"""The gRPC service end to end: a real server on 127.0.0.1 (port 0), clients through the SDK.

Remote answers must equal the in-process engine's bit for bit on the same shard plan;
large tensors must cross the wire in both directions; sessions must ship only batches.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import gradwire as gw
from gradwire.protos import gradwire_pb2 as pb
from gradwire.protos import gradwire_pb2_grpc as pb_grpc
from gradwire.server.backend import LocalBackend
from gradwire.server.status import WorkersUnavailable
from gradwire.worker.codec import graph_to_proto
from gradwire.worker.ops import OPS

KINDS = ("seed", "mlp", "mse")
DTYPES = ("float32", "float64")


@pytest.fixture(scope="module")
def address(start_server):
    """One shared server with the default config (8 micro-shards per request)."""
    _, address = start_server(shards=8)
    return address


@pytest.fixture(scope="module")
def client(address):
    with gw.connect(address) as c:
        yield c


def assert_same(remote, local, what=""):
    """Bitwise: same names, dtypes, shapes and bits."""
    assert remote.keys() == local.keys(), what
    for name in local:
        r, l = remote[name], local[name]
        assert r.dtype == l.dtype and r.shape == l.shape, f"{what} {name}: {r.dtype}{r.shape} vs {l.dtype}{l.shape}"
        assert np.array_equal(r, l), f"{what} {name}: max diff {np.max(np.abs(r.astype(np.float64) - l))}"


def raw_compute(address, header, params=None, batch=None, metadata=()):
    """ValueAndGrad through a raw stub: the streamed responses."""
    from gradwire.worker.codec import stream_messages

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GradwireStub(channel)
        messages = (m.to_proto() for m in stream_messages(pb.ComputeRequest, {"header": header},
                                                          {"params": params or {}, "batch": batch or {}}))
        return list(stub.ValueAndGrad(messages, timeout=30, metadata=metadata))


# ---------------------------------------------------------------- bitwise equality


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_remote_equals_local_bitwise_default_shards(client, example_graph, kind, dtype):
    graph, params, batch = example_graph(kind, dtype)
    loss, grads, info = client.value_and_grad(graph, params, batch, return_info=True)
    local_loss, local_grads = gw.local(shards=8).value_and_grad(graph, params, batch)
    assert info["shard_count"] == 8  # the server's default plan (ServerConfig.shards)
    assert [(s["start"], s["stop"]) for s in info["shards"]][:2] == [(0, 5), (5, 10)]  # 37 = 5*5 + 4*3
    assert loss == local_loss
    assert_same(grads, local_grads, f"{kind}/{dtype}")
    assert all(g.dtype == np.dtype(dtype) for g in grads.values())
    assert np.isfinite(loss) and any(np.any(g != 0) for g in grads.values())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_remote_equals_local_bitwise_one_shard(address, example_graph, kind, dtype):
    graph, params, batch = example_graph(kind, dtype, seed=1)
    with gw.Client(address, shards=1) as one:
        loss, grads, info = one.value_and_grad(graph, params, batch, return_info=True)
    local_loss, local_grads = gw.local().value_and_grad(graph, params, batch)
    assert info["shard_count"] == 1
    assert loss == local_loss
    assert_same(grads, local_grads, f"{kind}/{dtype}")


def test_per_request_shards_input_grads_and_fetch(client, example_graph):
    graph, params, batch = example_graph("mse", "float64", n=10)
    remote = client.run(graph, params, batch, shards=3, input_grads=["x"], fetch=[graph.graph_def.nodes[-2].name])
    local = gw.local(shards=3).run(graph, params, batch, wrt=tuple(params) + ("x",),
                                   fetch=[graph.graph_def.nodes[-2].name])
    assert remote.info["shard_count"] == 3
    assert remote.loss == local.loss
    assert_same(remote.grads, local.grads)
    assert_same(remote.input_grads, local.input_grads)
    assert_same(remote.outputs, local.outputs)
    assert remote.input_grads["x"].shape == (10, 6)


def test_run_info_reports_placement_and_phases(client, example_graph):
    graph, params, batch = example_graph("mlp")
    result = client.run(graph, params, batch)
    assert result.graph_id == graph.id
    assert result.info["backend"] == "local" and result.info["server_pid"] == os.getpid()
    assert [s["index"] for s in result.info["shards"]] == list(range(8))
    assert result.info["shards"][-1]["stop"] == 37
    assert {"decode", "validate", "compute", "encode"} <= set(result.info["phase_ms"])


def test_scalar_bool_and_big_endian_tensors_cross_the_wire(client):
    """0-d parameters keep shape () both ways; bool and int inputs and non-native byte order
    arrive as their values."""
    g = gw.Graph()
    x, m = g.input("x", (None, 3), "float64"), g.input("m", (None, 3), "bool")
    t, w = g.param("t", (), "float64"), g.param("w", (3,), "float64")
    g.set_loss(gw.mean(gw.where(m, x * w, x) * t) + gw.square(t))
    rng = np.random.default_rng(8)
    params = {"t": np.float64(1.5), "w": rng.standard_normal(3).astype(">f8")}
    batch = {"x": rng.standard_normal((10, 3)).astype(">f8"), "m": rng.random((10, 3)) > 0.5}
    loss, grads = client.value_and_grad(g, params, batch)
    local_loss, local_grads = gw.local(shards=8).value_and_grad(
        g, {k: np.asarray(v, np.float64) for k, v in params.items()}, {"x": batch["x"].astype(np.float64), "m": batch["m"]})
    assert grads["t"].shape == () and grads["w"].shape == (3,)
    assert loss == local_loss
    assert_same(grads, local_grads)
    session = client.session(g, params)
    assert session.params()["t"].shape == ()
    assert session.params()["t"] == 1.5
    session.close()


# ---------------------------------------------------------------- large tensors


def test_100mb_parameter_and_gradient_cross_the_wire(client):
    n = 25_000_000  # 100 MB of float32
    g = gw.Graph()
    x, w = g.input("x", (None, 1)), g.param("W", (n,))
    g.set_loss(gw.sum(gw.square(w) * x), batch_reduction="sum")
    weights = np.random.default_rng(7).standard_normal(n, dtype=np.float32)
    batch = {"x": np.full((1, 1), 2.0, np.float32)}
    sent, received = client.bytes_sent, client.transport.bytes_received
    loss, grads = client.value_and_grad(g, {"W": weights}, batch)
    assert client.bytes_sent - sent > 100_000_000
    assert client.transport.bytes_received - received > 100_000_000
    grad = grads["W"]
    assert grad.dtype == np.float32 and grad.shape == (n,)
    assert np.array_equal(grad, weights * np.float32(4.0))  # d/dW sum(2 W^2) = 4 W, exact in float32
    np.testing.assert_allclose(loss, 2.0 * np.sum(np.square(weights.astype(np.float64))), rtol=1e-5)
    local_loss, local_grads = gw.local(shards=8).value_and_grad(g, {"W": weights}, batch)
    assert loss == local_loss and np.array_equal(grad, local_grads["W"])


def _free_memory() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(_free_memory() < 16 << 30, reason="needs 16 GiB of free memory")
def test_2_5_gb_request(start_server):
    """Five 500 MB parameters (2.5 GB, beyond protobuf's 2 GiB message cap) up, 2.5 GB of
    gradients down. To stay lean the client holds one 500 MB base array: the parameters are
    views of it (reversed, reshaped, transposed), distinct tensors on the wire."""
    n = 125_000_000
    base = np.random.default_rng(11).standard_normal(n, dtype=np.float32)
    views = {
        "p0": base,
        "p1": base[::-1],  # non-contiguous views are copied one tensor at a time while streaming
        "p2": base.reshape(n // 8, 8),
        "p3": base.reshape(8, n // 8).T,
        "p4": base.reshape(1000, n // 1000),
    }
    scales = {"p0": 0.5, "p1": 1.0, "p2": 2.0, "p3": 4.0, "p4": 0.25}  # powers of two: exact gradients
    g = gw.Graph()
    total = None
    for k, v in views.items():
        term = gw.sum(gw.square(g.param(k, v.shape))) * scales[k]
        total = term if total is None else total + term
    g.set_loss(total)
    total_bytes = sum(v.nbytes for v in views.values())
    assert total_bytes == 2_500_000_000
    # the default request limit is a quarter of the machine; this one is estimated at 7.5 GB
    _, address = start_server(shards=8, max_request_memory=12 << 30, memory_budget=16 << 30)
    with gw.connect(address, timeout=900) as client:
        t0 = time.perf_counter()
        loss, grads = client.value_and_grad(g, views, {})
        elapsed = time.perf_counter() - t0
        assert client.bytes_sent > total_bytes
        assert client.transport.bytes_received > total_bytes
    step = 1 << 24  # compare 64 MB at a time
    for k, v in views.items():
        grad = grads.pop(k)
        assert grad.shape == v.shape and grad.dtype == np.float32
        rows = max(1, step // (v.size // v.shape[0]))
        factor = np.float32(2 * scales[k])  # d/dp c*sum(p^2) = 2c p
        for i in range(0, v.shape[0], rows):
            assert np.array_equal(grad[i:i + rows], v[i:i + rows] * factor), (k, i)
        del grad
    sumsq = sum(float(np.sum(np.square(base[i:i + step], dtype=np.float64))) for i in range(0, n, step))
    np.testing.assert_allclose(loss, sumsq * sum(scales.values()), rtol=1e-4)
    print(f"2.5 GB request: value_and_grad took {elapsed:.1f} s")


# ---------------------------------------------------------------- sessions


def _session_graph(d_in=256, hidden=1024, dtype="float32"):
    """A parameter-heavy classifier: ~1 MB of float32 parameters against 1 KB per example."""
    g = gw.Graph()
    x, y = g.input("x", (None, d_in), dtype), g.input("y", (None,), "int64")
    w1, b1, w2 = g.param("W1", (d_in, hidden), dtype), g.param("b1", (hidden,), dtype), g.param("W2", (hidden, 10), dtype)
    g.set_loss(gw.softmax_cross_entropy(gw.relu(x @ w1 + b1) @ w2, y))
    rng = np.random.default_rng(3)
    params = {"W1": (rng.standard_normal((d_in, hidden)) * 0.05).astype(dtype), "b1": np.zeros(hidden, dtype),
              "W2": (rng.standard_normal((hidden, 10)) * 0.05).astype(dtype)}
    return g, params


def test_session_ships_only_batches(client):
    g, params = _session_graph()
    rng = np.random.default_rng(4)
    batches = [{"x": rng.standard_normal((4, 256), dtype=np.float32),
                "y": rng.integers(0, 10, 4).astype(np.int64)} for _ in range(10)]
    param_bytes = sum(v.nbytes for v in params.values())  # 1 093 632
    batch_bytes = sum(v.nbytes for v in batches[0].values())  # 4 128
    session = client.session(g, params)
    local = gw.local(shards=8)
    results = []
    before = client.bytes_sent
    for batch in batches:
        results.append(session.value_and_grad(batch))
    sent = client.bytes_sent - before
    assert sent < param_bytes
    assert 10 * batch_bytes <= sent <= 10 * (batch_bytes + 256)  # the batches plus small headers
    for batch, (loss, grads) in zip(batches, results):
        local_loss, local_grads = local.value_and_grad(g, params, batch)
        assert loss == local_loss
        assert_same(grads, local_grads)
    # without the session, one step alone ships the parameters
    before = client.bytes_sent
    client.value_and_grad(g.id, params, batches[0])
    assert client.bytes_sent - before > param_bytes + batch_bytes
    session.close()


def test_session_gradients_larger_than_a_message_stream_back(start_server, caplog):
    """A tiny batch against big server-side parameters: the answer is as big as the
    parameters, so it must stream, not come back as one (unary) message."""
    limit = 2 << 20  # 2 MiB messages; the session holds ~4 MiB of parameters (float32 256x1024 + ...)
    _, address = start_server(max_message_bytes=limit, chunk_bytes=1 << 20)
    g, params = _session_graph()
    batch = {"x": np.ones((2, 256), np.float32), "y": np.zeros(2, np.int64)}
    with gw.connect(address, chunk_bytes=1 << 20, max_message_bytes=limit) as small_client:
        session = small_client.session(g, params)
        with caplog.at_level(logging.INFO, logger="gradwire.server"):
            loss, grads = session.value_and_grad(batch)
        local_loss, local_grads = gw.local().value_and_grad(g, params, batch)
        assert loss == local_loss
        assert_same(grads, local_grads)
        assert any("method=ValueAndGrad" in r.getMessage() for r in caplog.records)


def test_graph_outputs_larger_than_a_message_stream_back(start_server):
    """Declared outputs come back with every answer: with them, a small request is not sent
    as a unary call whose one answer message could outgrow the limit."""
    limit = 2 << 20
    _, address = start_server(max_message_bytes=limit, chunk_bytes=1 << 20)
    g = gw.Graph()
    x, w = g.input("x", (None, 1)), g.param("w", (1, 4096))
    g.fetch(gw.tanh(x @ w, name="wide"))  # 256 x 4096 float32 = 4 MiB, from a 1 KiB request
    g.set_loss(gw.sum(g["wide"]), batch_reduction="sum")
    params, batch = {"w": np.full((1, 4096), 0.01, np.float32)}, {"x": np.ones((256, 1), np.float32)}
    with gw.connect(address, chunk_bytes=1 << 20, max_message_bytes=limit) as small_client:
        result = small_client.run(g, params, batch)
        session = small_client.session(g, params)
        from_session = session.run(batch)
    local = gw.local().run(g, params, batch)
    for r in (result, from_session):
        assert r.loss == local.loss and np.array_equal(r.outputs["wide"], local.outputs["wide"])


def test_session_update_params_version_and_close(client, address):
    g, params = _session_graph(d_in=32, hidden=16, dtype="float64")
    rng = np.random.default_rng(6)
    batch = {"x": rng.standard_normal((12, 32)), "y": rng.integers(0, 10, 12).astype(np.int64)}
    session = client.session(g, params)
    assert session.graph_id == g.id
    v0 = session.version
    assert_same(session.params(), params)

    new_w = rng.standard_normal((32, 16))
    v1 = session.update({"W1": new_w})
    assert v1 > v0 and session.version == v1
    updated = {**params, "W1": new_w}
    assert_same(session.params(), updated)  # bitwise round trip, the untouched b1 and W2 kept
    loss, grads = session.value_and_grad(batch)
    local_loss, local_grads = gw.local(shards=8).value_and_grad(g, updated, batch)
    assert loss == local_loss
    assert_same(grads, local_grads)

    v2 = session.update({"b1": np.full(16, 0.5)})
    assert v2 > v1
    assert np.array_equal(session.params()["b1"], np.full(16, 0.5))

    # the version a step ran against travels in its summary
    header = pb.ComputeHeader(session_id=session.session_id)
    responses = raw_compute(address, header, batch=batch)
    assert responses[-1].summary.session_version == v2

    # a session update is checked against the graph
    with pytest.raises(gw.InvalidGraph, match="'W1'") as err:
        session.update({"W1": np.zeros((3, 3))})
    assert "float64[32, 16]" in str(err.value) and "[3, 3]" in str(err.value)
    with pytest.raises(gw.InvalidGraph, match="unknown parameter"):
        session.update({"nope": np.zeros(3)})
    assert session.version == v2

    session.close()
    for action in (lambda: session.value_and_grad(batch), session.params, lambda: session.update({"b1": params["b1"]}),
                   session.close):
        with pytest.raises(gw.NotFound, match=session.session_id) as err:
            action()
        assert err.value.code == grpc.StatusCode.NOT_FOUND

    unknown = gw.Session(client, "s-doesnotexist", g.id, 1)
    with pytest.raises(gw.NotFound, match="s-doesnotexist"):
        unknown.value_and_grad(batch)


def test_session_rejects_parameters_in_a_step(client, address):
    g, params = _session_graph(d_in=8, hidden=4)
    session = client.session(g, params)
    header = pb.ComputeHeader(session_id=session.session_id)
    batch = {"x": np.ones((2, 8), np.float32), "y": np.zeros(2, np.int64)}
    with pytest.raises(grpc.RpcError) as err:
        raw_compute(address, header, params={"W2": params["W2"]}, batch=batch)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "session" in err.value.details()
    session.close()


# ---------------------------------------------------------------- graphs and registration


def test_register_twice_gives_the_same_content_hash(client, example_graph):
    graph, _, _ = example_graph("mlp")
    first = client.register(graph)
    assert first == client.register(graph) == graph.id
    assert first.startswith("g-")
    # the same graph built again, as a different object, has the same id
    rebuilt, _, _ = example_graph("mlp", seed=99)
    assert client.register(rebuilt) == first
    # a different graph has another id
    other, _, _ = example_graph("mse")
    assert client.register(other) != first


def test_value_and_grad_registers_on_first_use(address, example_graph):
    g = gw.Graph()
    x, w = g.input("x", (None, 4)), g.param("w", (4,))
    g.set_loss(gw.mean(gw.tanh(x * w) * float(np.pi)))  # a graph no other test registers
    params, batch = {"w": np.arange(4, dtype=np.float32)}, {"x": np.ones((3, 4), np.float32)}
    by_id = pb.ComputeHeader(graph_id=g.id)
    with pytest.raises(grpc.RpcError) as err:
        raw_compute(address, by_id, params, batch)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and g.id in err.value.details()

    fresh = gw.connect(address)
    before = fresh.bytes_sent
    loss, grads = fresh.value_and_grad(g, params, batch)
    first_call = fresh.bytes_sent - before
    # the server now knows the graph by id ...
    responses = raw_compute(address, by_id, params, batch)
    assert responses[-1].summary.loss == loss and responses[-1].summary.graph_id == g.id
    # ... and the client sends it by id from the second call on
    before = fresh.bytes_sent
    again_loss, again_grads = fresh.value_and_grad(g, params, batch)
    second_call = fresh.bytes_sent - before
    assert again_loss == loss
    assert_same(again_grads, grads)
    graph_bytes = graph_to_proto(g.graph_def).ByteSize()
    assert first_call - second_call >= graph_bytes - len(g.id) - 8
    fresh.close()


def test_forgotten_graph_is_sent_again(start_server, example_graph):
    _, address = start_server(max_graphs=1)
    g1, p1, b1 = example_graph("seed")
    g2, p2, b2 = example_graph("mse")
    with gw.connect(address) as c:
        first = c.value_and_grad(g1, p1, b1)
        c.value_and_grad(g2, p2, b2)  # evicts g1 on the server
        loss, grads = c.value_and_grad(g1, p1, b1)  # by id -> NOT_FOUND -> whole graph again
    assert loss == first[0]
    assert_same(grads, first[1])


def test_ops_lists_the_op_table(client):
    listed = {op["name"]: op for op in client.ops()}
    assert set(listed) == set(OPS)
    for name, op in OPS.items():
        info = listed[name]
        assert info["arity"] == op.arity, name
        assert set(info["attrs"]) == set(op.attrs), name
        for attr_name, attr in op.attrs.items():
            assert info["attrs"][attr_name]["kind"] == attr.kind, (name, attr_name)
            assert info["attrs"][attr_name]["required"] == attr.required, (name, attr_name)
            if not attr.required:
                assert info["attrs"][attr_name]["default"] == repr(attr.default), (name, attr_name)
        assert info["differentiable"] == list(op.differentiable(op.arity or 1)), name
        assert info["doc"] == op.doc
    assert listed["concat"]["arity"] is None and listed["concat"]["attrs"]["axis"]["kind"] == "int"
    assert listed["slice"]["attrs"]["starts"]["required"] is True


def test_health_reports_serving(address):
    from gradwire.server.app import SERVICE_NAME

    assert SERVICE_NAME == "gradwire.v1.Gradwire"
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "gradwire.v1.Gradwire"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_stopped_server_refuses_calls(start_server):
    server, address = start_server()
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        server.stop(0)
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reflection_lists_the_service(address):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        assert "gradwire.v1.Gradwire" in services
        assert "grpc.health.v1.Health" in services
        service = DescriptorPool(database).FindServiceByName("gradwire.v1.Gradwire")
        methods = {m.name: m for m in service.methods}
        assert {"RegisterGraph", "ValueAndGrad", "CreateSession", "UpdateSession",
                "GetSessionParams", "CloseSession", "ListOps"} <= set(methods)
        assert methods["ValueAndGrad"].input_type.full_name == "gradwire.v1.ComputeRequest"


# ---------------------------------------------------------------- logging and retries


def test_each_request_is_logged_once(client, example_graph, caplog):
    graph, params, batch = example_graph("seed", n=9)
    caplog.set_level(logging.INFO, logger="gradwire.server")
    client.value_and_grad(graph, params, batch)  # small: the unary Compute call
    lines = [r.getMessage() for r in caplog.records if "method=Compute" in r.getMessage()]
    assert len(lines) == 1
    assert f"graph={graph.id}" in lines[0] and "batch=9" in lines[0] and "status=OK" in lines[0]
    assert lines[0].startswith("request=") and " ms=" in lines[0]


class _FlakyBackend(LocalBackend):
    """Fails its first ``failures`` requests as if the workers had died."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0
        self._lock = threading.Lock()

    def compute(self, job, cancel):
        with self._lock:
            self.calls += 1
            fail = self.calls <= self.failures
        if fail:
            raise WorkersUnavailable("all workers died (test)")
        return super().compute(job, cancel)


def test_client_retries_unavailable_from_the_server(start_server, example_graph):
    backend = _FlakyBackend(failures=2)
    _, address = start_server(backend=backend, shards=8)
    graph, params, batch = example_graph("mlp")
    with gw.connect(address, timeout=20) as c:
        loss, grads = c.value_and_grad(graph, params, batch)
        assert backend.calls == 3  # two UNAVAILABLE answers, retried, then success
        local_loss, local_grads = gw.local(shards=8).value_and_grad(graph, params, batch)
        assert loss == local_loss
        assert_same(grads, local_grads)
        backend.failures, backend.calls = 10, 0
        with gw.Client(address, max_attempts=3) as three, pytest.raises(gw.Unavailable, match="workers died") as err:
            three.value_and_grad(graph, params, batch)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert backend.calls == 3  # max_attempts, no more
