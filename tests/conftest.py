"""Shared fixtures for the core suite. With ``--import-mode=importlib`` test modules cannot
import each other, so helpers are handed out as fixtures."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from gradwire.worker.graph import Node
from gradwire.worker.ops import OPS, Op, Sample
from gradwire.worker.validate import normalize_attrs


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def _op_attrs(op: Op, sample: Sample) -> dict:
    """The sample's attributes as the engine hands them to kernels: checked, defaults filled."""
    node = Node("probe", op.name, tuple(f"x{i}" for i in range(len(sample.inputs))), dict(sample.attrs))
    return normalize_attrs(node)


def _diff_mask(op: Op, xs) -> list[bool]:
    """Which inputs are differentiated: the op has a rule for them and they are floats."""
    return [d and np.asarray(x).dtype.kind == "f" for d, x in zip(op.differentiable(len(xs)), xs)]


@pytest.fixture
def op_attrs():
    return _op_attrs


@pytest.fixture
def diff_mask():
    return _diff_mask


@pytest.fixture
def op_samples():
    """``op_samples(name)``: the op's float64 samples, drawn with a seed fixed per op name."""

    def samples(name: str) -> list[Sample]:
        op = OPS[name]
        return list(op.samples(np.random.default_rng(zlib.crc32(name.encode())))) if op.samples else []

    return samples


# ------------------------------------------------------------------ the shared Ray session (tests marked "ray")

import os as _os

_os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before anything imports ray: keep Ray on 127.0.0.1


@pytest.fixture(scope="session")
def ray_cluster():
    """ONE Ray session for the whole pytest run: a real 2-node cluster on loopback (2 CPUs a
    node) with this process connected as the driver. Yields the ``ray.cluster_utils.Cluster``;
    ``ray_cluster.address`` is what a server's ``ray_address`` should name."""
    import logging

    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # someone else's session: do not mix
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    try:
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


# ---------------------------------------------------------------- gRPC service suite
# (test_service.py, test_bad_requests.py, test_protos.py, test_cli.py)


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """``start_server(**config) -> (server, address)``: a started in-process server on
    127.0.0.1 and an OS-chosen port (``backend=`` passes a custom backend). Every server
    started through it is stopped when the test module ends."""

    from gradwire.server.app import create_server
    from gradwire.server.config import ServerConfig

    servers = []

    def start(backend=None, **config):
        isolated = {"job_dir": str(tmp_path_factory.mktemp("jobs"))}  # its own: one server per job folder
        server, port = create_server(ServerConfig(**{"host": "127.0.0.1", "port": 0, **isolated, **config}), backend)
        servers.append(server)
        return server, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)


def _example_graph(kind: str, dtype: str = "float32", n: int = 37, seed: int = 0):
    """``(graph, params, batch)`` for one of the example graphs of the service suite:
    ``"seed"`` sum(sigmoid(relu(x*w + b))), ``"mlp"`` a two-layer MLP under
    softmax_cross_entropy, ``"mse"`` matmul/tanh/concat/slice under mse."""
    import gradwire as gw

    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    g = gw.Graph()
    if kind == "seed":
        x = g.input("x", (None, 3), dtype)
        w, b = g.param("w", (3,), dtype), g.param("b", (3,), dtype)
        g.set_loss(gw.sum(gw.sigmoid(gw.relu(x * w + b))), batch_reduction="sum")
        return g, {"w": normal(3), "b": normal(3)}, {"x": normal(n, 3)}
    if kind == "mlp":
        x, labels = g.input("x", (None, 20), dtype), g.input("labels", (None,), "int64")
        w1, b1 = g.param("w1", (20, 32), dtype), g.param("b1", (32,), dtype)
        w2, b2 = g.param("w2", (32, 5), dtype), g.param("b2", (5,), dtype)
        logits = gw.relu(x @ w1 + b1) @ w2 + b2
        g.set_loss(gw.softmax_cross_entropy(logits, labels))
        params = {"w1": normal(20, 32) * 0.3, "b1": normal(32) * 0.1, "w2": normal(32, 5) * 0.3, "b2": normal(5) * 0.1}
        return g, params, {"x": normal(n, 20), "labels": rng.integers(0, 5, size=n).astype(np.int64)}
    if kind == "mse":
        x, y = g.input("x", (None, 6), dtype), g.input("y", (None, 6), dtype)
        w, v, b = g.param("w", (6, 4), dtype), g.param("v", (6, 4), dtype), g.param("b", (6,), dtype)
        h = gw.concat(x @ w, gw.tanh(x @ v), axis=1)  # (n, 8)
        pred = gw.slice(h, starts=[1], ends=[7], axes=[1]) * gw.sigmoid(b)  # (n, 6)
        g.set_loss(gw.mse(pred, y))
        params = {"w": normal(6, 4) * 0.5, "v": normal(6, 4) * 0.5, "b": normal(6)}
        return g, params, {"x": normal(n, 6), "y": normal(n, 6)}
    raise ValueError(f"unknown example graph {kind!r}")


@pytest.fixture(scope="session")
def pinned_job_inputs():
    """``() -> (graph, params, data)`` of the training job whose bits tests/data pins (the
    script that made the pin defines it)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("make_job_bits", Path(__file__).parent / "data" / "make_job_bits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.job_inputs


@pytest.fixture
def example_graph():
    """``example_graph(kind, dtype="float32", n=37, seed=0) -> (graph, params, batch)``."""
    return _example_graph


# ---------------------------------------------------------------- servers in their own process


@pytest.fixture(scope="session")
def free_port():
    """``free_port() -> int``: a TCP port on 127.0.0.1 nobody listens on now (for a server
    started in another process, which binds it itself)."""
    import socket

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick


@pytest.fixture(scope="session")
def wait_healthy():
    """``wait_healthy(address, proc, timeout=30)``: return once the server process ``proc`` at
    ``address`` answers SERVING on the gRPC health service; fail if it exits first."""
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def wait(address: str, proc, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert proc.poll() is None, f"the server at {address} exited with status {proc.returncode}"
            try:
                with grpc.insecure_channel(address) as channel:
                    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if check.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError:
                time.sleep(0.2)
        raise TimeoutError(f"the server at {address} did not become healthy in {timeout}s")

    return wait
