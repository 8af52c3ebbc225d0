"""``python -m gradwire serve`` as a real process: flags and GRADWIRE_* variables, health,
a gradient request answered bitwise as locally, the per-request log line, and a clean
exit 0 on SIGTERM (draining the calls in flight)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import gradwire as gw
from gradwire.protos import gradwire_pb2 as pb
from gradwire.protos import gradwire_pb2_grpc as pb_grpc
from gradwire.worker.codec import stream_messages

STARTUP_SECONDS = 60


class Served:
    """A ``gradwire serve`` subprocess and its log (stderr, in a file)."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str], port: int):
        self.log_path = tmp / "serve.log"
        self.port, self.address = port, f"127.0.0.1:{port}"
        self._log = open(self.log_path, "wb")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("GRADWIRE_")}
        full_env = {**inherited, "GRADWIRE_JOB_DIR": str(tmp / "jobs"), **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "gradwire", "serve", *args], env=full_env, cwd=tmp,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"server exited with {self.proc.returncode}:\n{self.log()}"
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service="gradwire.v1.Gradwire"), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        pytest.fail(f"server not SERVING after {STARTUP_SECONDS}s:\n{self.log()}")

    def wait_log(self, pattern: str, seconds: float = 10.0) -> re.Match:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log(), re.MULTILINE)
            if match:
                return match
            time.sleep(0.05)
        pytest.fail(f"no log line matching {pattern!r}:\n{self.log()}")

    def terminate(self, seconds: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=seconds)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def served(free_port, tmp_path_factory):
    """One server started through the CLI with ``--port``."""
    port = free_port()
    server = Served(tmp_path_factory.mktemp("serve-flag"), ["--port", str(port), "--log-level", "INFO"], {}, port)
    try:
        server.wait_serving()
        yield server
    finally:
        server.kill()


def test_request_is_answered_bitwise_as_locally(served, example_graph):
    graph, params, batch = example_graph("mlp")
    with gw.connect(served.address) as client:
        loss, grads, info = client.value_and_grad(graph, params, batch, return_info=True)
    local_loss, local_grads = gw.local().value_and_grad(graph, params, batch)  # the local backend's plan
    assert loss == local_loss
    for name in local_grads:
        assert grads[name].dtype == local_grads[name].dtype and np.array_equal(grads[name], local_grads[name])
    assert info["server_pid"] == served.proc.pid and info["shard_count"] == 1
    served.wait_log(rf"request=[0-9a-f]{{12}} method=Compute graph={graph.id} batch=37 status=OK ms=\d+\.\d")


def test_log_line_names_request_graph_batch_status_and_ms(served, example_graph):
    graph, params, batch = example_graph("seed", n=11)
    header = pb.ComputeHeader(graph=pb.Graph.FromString(graph.to_bytes()), shards=2)
    with grpc.insecure_channel(served.address) as channel:
        stub = pb_grpc.GradwireStub(channel)
        responses = list(stub.ValueAndGrad(
            (m.to_proto() for m in stream_messages(pb.ComputeRequest, {"header": header},
                                                   {"params": params, "batch": batch})),
            timeout=30, metadata=(("gradwire-request-id", "cli-test-0001"),)))
        summary = responses[-1].summary
        assert summary.request_id == "cli-test-0001" and summary.graph_id == graph.id
        assert summary.loss == gw.local(shards=2).value_and_grad(graph, params, batch)[0]
        line = served.wait_log(r"^.*request=cli-test-0001 .*$").group(0)
        assert f"method=ValueAndGrad graph={graph.id} batch=11 status=OK ms=" in line
        assert float(re.search(r"ms=(\d+\.\d)", line).group(1)) >= 0

        with pytest.raises(grpc.RpcError) as err:  # failures are logged with their status code
            stub.RegisterGraph(pb.RegisterGraphRequest(graph=pb.Graph()), timeout=10,
                               metadata=(("gradwire-request-id", "cli-test-0002"),))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        served.wait_log(r"request=cli-test-0002 method=RegisterGraph graph=- batch=- status=INVALID_ARGUMENT ms=\d")


def test_sigterm_exits_0(served):
    """Runs last in this module: it stops the shared server."""
    assert served.proc.poll() is None
    start = time.monotonic()
    assert served.terminate(seconds=10) == 0
    assert time.monotonic() - start < 10
    assert "signal 15" in served.log()
    with grpc.insecure_channel(served.address) as channel:  # and the port is closed
        with pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_port_from_environment_and_drain_on_sigterm(free_port, tmp_path, example_graph):
    """GRADWIRE_PORT instead of --port; SIGTERM lets a call in flight finish, then exit 0."""
    port = free_port()
    server = Served(tmp_path, ["--log-level", "INFO"], {"GRADWIRE_PORT": str(port), "GRADWIRE_SHARDS": "3"}, port)
    try:
        server.wait_serving()
        graph, params, batch = example_graph("mse", "float64")
        with gw.connect(server.address) as client:
            loss, grads, info = client.value_and_grad(graph, params, batch, return_info=True)
        assert info["shard_count"] == 3  # GRADWIRE_SHARDS took effect too
        local_loss, local_grads = gw.local(shards=3).value_and_grad(graph, params, batch)
        assert loss == local_loss and all(np.array_equal(grads[k], local_grads[k]) for k in local_grads)

        # a call in flight: its header is sent, the rest of its stream held back until after SIGTERM
        messages = [m.to_proto() for m in stream_messages(
            pb.ComputeRequest, {"header": pb.ComputeHeader(graph_id=graph.id)}, {"params": params, "batch": batch},
            chunk_bytes=256)]
        assert len(messages) > 2
        header_sent, release = threading.Event(), threading.Event()

        def held_back():
            yield messages[0]
            header_sent.set()
            assert release.wait(30)
            yield from messages[1:]

        outcome = {}

        def call():
            with grpc.insecure_channel(server.address) as channel:
                try:
                    outcome["responses"] = list(pb_grpc.GradwireStub(channel).ValueAndGrad(held_back(), timeout=30))
                except grpc.RpcError as exc:
                    outcome["error"] = exc

        thread = threading.Thread(target=call)
        thread.start()
        assert header_sent.wait(10)
        time.sleep(1.0)  # the call is open on the server
        server.proc.send_signal(signal.SIGTERM)
        server.wait_log(r"signal 15: draining")
        release.set()
        thread.join(30)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["responses"][-1].summary.loss == local_loss
        assert server.proc.wait(timeout=10) == 0
    finally:
        server.kill()
