"""The server always answers, whatever its clients hold open, and deadlines stop the work.

Raw protobuf stubs, some on grpc.aio channels so that one test thread can hold hundreds of
streams open, against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import gradwire as gw
from gradwire.protos import gradwire_pb2 as pb
from gradwire.protos import gradwire_pb2_grpc as pb_grpc
from gradwire.worker.codec import graph_to_proto, tensor_chunks

W, B = np.array([0.5, -1.0, 2.0], np.float32), np.array([0.1, 0.2, -0.3], np.float32)
X = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def _small_graph() -> gw.Graph:
    g = gw.Graph()
    x, w, b = g.input("x", (None, 3)), g.param("w", (3,)), g.param("b", (3,))
    g.set_loss(gw.sum(gw.sigmoid(gw.relu(x * w + b))), batch_reduction="sum")
    return g


SMALL = graph_to_proto(_small_graph().graph_def)
EXPECTED = gw.local().value_and_grad(_small_graph(), {"w": W, "b": B}, {"x": X})


def _whole(name, array) -> pb.TensorChunk:
    return next(tensor_chunks(name, np.asarray(array), 1 << 30))


def _small_request(**header) -> pb.ComputeRequest:
    return pb.ComputeRequest(header=pb.ComputeHeader(graph=SMALL, **header), params=[_whole("w", W), _whole("b", B)],
                             batch=[_whole("x", X)])


def _assert_answers(address: str, within: float = 1.0) -> None:
    """Health, ListOps and a small Compute each answer within ``within`` seconds, exactly."""
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=within).status == \
            health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.GradwireStub(channel)
        assert len(stub.ListOps(pb.ListOpsRequest(), timeout=within).ops) > 10
        response = stub.Compute(_small_request(), timeout=within)
        assert response.summary.loss == EXPECTED[0]


@pytest.fixture(scope="module")
def loop():
    """An event loop in a thread of its own, for the aio client channels."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _on(loop, coroutine, timeout: float = 60):
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)


async def _open_streams(address: str, method: str, first, n: int):
    """``n`` calls of a client-streaming method that each send ``first`` (or nothing) and stall."""
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.GradwireStub(channel)
    calls = []
    for _ in range(n):
        call = getattr(stub, method)()
        if first is not None:
            await call.write(first)
        calls.append(call)
    return channel, calls


async def _close(channel, calls) -> None:
    for call in calls:
        call.cancel()
    await channel.close()


@pytest.mark.parametrize("method,first", [
    ("CreateSession", pb.SessionRequest(header=pb.SessionHeader(graph=SMALL))),
    ("ValueAndGrad", pb.ComputeRequest(header=pb.ComputeHeader(graph=SMALL))),
    ("ValueAndGrad", None),  # not even a header
])
def test_stalled_streams_do_not_silence_the_server(start_server, loop, method, first):
    """256 streams that sent a header (or nothing) and stalled: every call still answers within 1 s.
    Before grpc.aio each held a thread of a pool of max_concurrent + 8, and 24 silenced it."""
    _, address = start_server(max_concurrent=300 if first is not None and method == "ValueAndGrad" else 2)
    channel, calls = _on(loop, _open_streams(address, method, first, 256))
    try:
        time.sleep(0.3)  # let the server take them all in
        _assert_answers(address)
    finally:
        _on(loop, _close(channel, calls))


def test_streams_without_a_header_hold_no_slot(start_server, loop):
    """A slot is taken only once the header has arrived: 8 silent streams on a 1-slot server."""
    _, address = start_server(max_concurrent=1)
    channel, calls = _on(loop, _open_streams(address, "ValueAndGrad", None, 8))
    try:
        time.sleep(0.2)
        _assert_answers(address)
    finally:
        _on(loop, _close(channel, calls))


def _declaring(name: str, elements: int) -> pb.ComputeRequest:
    """A stream's first message that declares a float32 parameter of ``elements`` and sends 8 bytes."""
    return pb.ComputeRequest(header=pb.ComputeHeader(graph=SMALL), params=[pb.TensorChunk(
        name=name, dtype=pb.FLOAT32, shape=[elements], offset=0, data=b"\0" * 8)])


def test_stalled_upload_ends_after_the_idle_timeout_and_frees_what_it_held(start_server, loop):
    server, address = start_server(max_concurrent=1, idle_timeout=0.5)

    async def stall():
        async with grpc.aio.insecure_channel(address) as channel:
            call = pb_grpc.GradwireStub(channel).ValueAndGrad()
            await call.write(_declaring("w", 1 << 28))  # 1 GiB declared, 8 bytes sent
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
            return err.value, time.monotonic() - started

    error, waited = _on(loop, stall())
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
    assert "idle-timeout" in error.details()
    assert 0.4 < waited < 10
    assert server.admission.memory.in_use == 0
    _assert_answers(address)  # the only slot is free again


def test_declared_tensors_are_charged_to_the_memory_budget(start_server, loop):
    """3 streams that each declare 2 GiB and send 8 bytes: with a 5 GiB budget the third is
    refused at once (RESOURCE_EXHAUSTED), nothing is allocated, and all is released at the end."""
    server, address = start_server(max_concurrent=4, idle_timeout=1.0, memory_budget=5 << 30)

    async def three():
        channel = grpc.aio.insecure_channel(address)
        stub = pb_grpc.GradwireStub(channel)
        calls = [stub.ValueAndGrad() for _ in range(3)]
        for call in calls:
            await call.write(_declaring("w", 1 << 29))
            await asyncio.sleep(0.1)
        codes = []
        for call in calls:
            try:
                async for _ in call:
                    pass
                codes.append((grpc.StatusCode.OK, ""))
            except grpc.aio.AioRpcError as exc:
                codes.append((exc.code(), exc.details()))
        await channel.close()
        return codes

    rss_before = _rss_bytes()
    codes = _on(loop, three())
    assert [c for c, _ in codes].count(grpc.StatusCode.DEADLINE_EXCEEDED) == 2, codes
    refused = [d for c, d in codes if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(refused) == 1 and "memory budget" in refused[0], codes
    assert _rss_bytes() - rss_before < 1 << 30  # declared 6 GiB, allocated (touched) nothing like it
    assert server.admission.memory.in_use == 0
    _assert_answers(address)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_session_request_naming_another_graph_is_refused(start_server):
    _, address = start_server()
    other = gw.Graph()
    x, w, b = other.input("x", (None, 3)), other.param("w", (3,)), other.param("b", (3,))
    other.set_loss(gw.sum(gw.tanh(x * w + b)), batch_reduction="sum")  # same sources, another graph
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GradwireStub(channel)
        info = stub.CreateSession(iter([pb.SessionRequest(header=pb.SessionHeader(graph=SMALL),
                                                          params=[_whole("w", W), _whole("b", B)])]), timeout=10)
        other_id = stub.RegisterGraph(pb.RegisterGraphRequest(graph=graph_to_proto(other.graph_def)), timeout=10).graph_id
        assert other_id != info.graph_id
        request = pb.ComputeRequest(header=pb.ComputeHeader(session_id=info.session_id, graph_id=other_id),
                                    batch=[_whole("x", X)])
        with pytest.raises(grpc.RpcError) as err:
            stub.Compute(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.session_id in err.value.details() and other_id in err.value.details()
        request.header.graph_id = info.graph_id  # naming its own graph is fine
        assert stub.Compute(request, timeout=10).summary.loss == EXPECTED[0]


def test_the_headers_request_id_labels_the_answer(start_server):
    _, address = start_server()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GradwireStub(channel)
        assert stub.Compute(_small_request(request_id="mine-42"), timeout=10).summary.request_id == "mine-42"
        # metadata labels it too; a label that is not a plain short id is replaced by the server's own
        answer = stub.Compute(_small_request(), timeout=10, metadata=(("gradwire-request-id", "meta-7"),))
        assert answer.summary.request_id == "meta-7"
        answer = stub.Compute(_small_request(request_id="bad\nid"), timeout=10)
        assert answer.summary.request_id and "\n" not in answer.summary.request_id


def test_a_non_finite_loss_is_flagged_and_check_finite_checks_gradients(start_server):
    g = gw.Graph()
    x, w = g.input("x", (None, 3)), g.param("w", (3,))
    g.set_loss(gw.sum(gw.sqrt(x * w)), batch_reduction="sum")  # sqrt of negatives: NaN
    proto = graph_to_proto(g.graph_def)
    request = pb.ComputeRequest(header=pb.ComputeHeader(graph=proto), params=[_whole("w", -W)], batch=[_whole("x", X)])
    _, address = start_server()
    with grpc.insecure_channel(address) as channel:
        answer = pb_grpc.GradwireStub(channel).Compute(request, timeout=10)
        assert np.isnan(answer.summary.loss)
        assert any("not finite" in w for w in answer.summary.info.warnings)
    # a finite loss whose gradient is not: d sqrt(x w)/dw at x w = 0 (X[0, 0] is 0)
    request.params[0].CopyFrom(_whole("w", np.abs(W)))
    _, strict = start_server(check_finite=True)
    with grpc.insecure_channel(strict) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GradwireStub(channel).Compute(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "gradient of 'w'" in err.value.details() and "not finite" in err.value.details()


# ---------------------------------------------------------------- deadlines stop the work


def _heavy_request(layers: int = 24, width: int = 1024, n: int = 4096) -> tuple[pb.ComputeRequest, float]:
    """An MLP whose one request takes several seconds here; each node well under a second."""
    g = gw.Graph()
    h = g.input("x", (None, width))
    params = {}
    rng = np.random.default_rng(0)
    for i in range(layers):
        params[f"w{i}"] = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        h = gw.tanh(h @ g.param(f"w{i}", (width, width)))
    g.set_loss(gw.mean(h * h))
    batch = rng.standard_normal((n, width)).astype(np.float32)
    request = pb.ComputeRequest(header=pb.ComputeHeader(graph=graph_to_proto(g.graph_def)),
                                params=[_whole(k, v) for k, v in params.items()], batch=[_whole("x", batch)])
    return request, 6.0 * layers * n * width * width  # forward + backward FLOPs


def _cpu_seconds() -> float:
    return time.process_time()  # every thread of this process: the in-process server's included


def test_a_deadline_stops_the_computation_and_frees_its_slot(start_server):
    """A 1 s deadline on a computation of many seconds: the client gets DEADLINE_EXCEEDED, the
    server's CPU is idle within a second of the deadline, and the only slot admits the next call."""
    _, address = start_server(max_concurrent=1, max_message_bytes=1 << 30)
    request, _ = _heavy_request()
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 1 << 30)]) as channel:
        stub = pb_grpc.GradwireStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.Compute(request, timeout=1.0)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = started + 1.0
        time.sleep(max(0.0, deadline + 1.0 - time.monotonic()))
        cpu, wall = _cpu_seconds(), time.monotonic()
        time.sleep(0.5)
        busy = (_cpu_seconds() - cpu) / (time.monotonic() - wall)
        assert busy < 0.25, f"the server still used {busy:.2f} cores a second after the deadline"
    _assert_answers(address)


# ---------------------------------------------------------------- training jobs and admission


def _job_model():
    g = gw.Graph()
    x, y = g.input("x", (None, 8)), g.input("y", (None,), "int64")
    w = g.param("w", (8, 3))
    g.set_loss(gw.softmax_cross_entropy(x @ w, y))
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((256, 8)).astype(np.float32), "y": rng.integers(0, 3, 256).astype(np.int64)}
    return g, {"w": np.zeros((8, 3), np.float32)}, data


def test_job_watchers_do_not_silence_the_server(start_server, loop):
    """256 WatchJob streams on a running job (32 silenced the threaded server)."""
    _, address = start_server()
    g, params, data = _job_model()
    with gw.connect(address) as client:
        job = client.submit_job(g, params, data, gw.optim.SGD(lr=0.1), batch_size=8, epochs=10_000)
        request = pb.WatchJobRequest(job_id=job.job_id)

        async def watch(n):
            channel = grpc.aio.insecure_channel(address)
            stub = pb_grpc.GradwireStub(channel)
            calls = [stub.WatchJob(request) for _ in range(n)]
            for call in calls[:4]:
                await call.read()  # they are live: events flow
            return channel, calls

        channel, calls = _on(loop, watch(256))
        try:
            time.sleep(0.3)
            _assert_answers(address)
            assert job.info()["state"] == "running"
        finally:
            job.cancel()
            _on(loop, _close(channel, calls))


from gradwire.server.backend import LocalBackend  # noqa: E402


class _CountingBackend(LocalBackend):
    """The local backend, counting how many blocks of shards run at once."""

    def __init__(self):
        self.lock, self.running, self.most = threading.Lock(), 0, 0

    def submit(self, *args):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.005)  # long enough for overlaps to show
            return super().submit(*args)
        finally:
            with self.lock:
                self.running -= 1


def test_training_jobs_count_against_admission(start_server):
    """6 jobs against --max-concurrent 2 and --max-running-jobs 3: at most 2 steps compute at
    once, at most 3 jobs run, the rest wait queued, and all of them finish."""
    backend = _CountingBackend()
    _, address = start_server(backend=backend, max_concurrent=2, max_running_jobs=3)
    g, params, data = _job_model()
    with gw.connect(address) as client:
        jobs = [client.submit_job(g, params, data, gw.optim.SGD(lr=0.1), batch_size=32, epochs=4) for _ in range(6)]
        most_running = 0
        while True:
            states = [info["state"] for info in client.jobs()]
            most_running = max(most_running, states.count("running"))
            if all(s in ("done", "failed", "cancelled") for s in states):
                break
            time.sleep(0.01)
        assert all(job.result()["w"].shape == (8, 3) for job in jobs)
    assert backend.most <= 2
    assert most_running <= 3


def test_a_job_beyond_the_step_limit_is_refused(start_server):
    _, address = start_server(max_job_steps=1000)
    g, params, data = _job_model()
    with gw.connect(address) as client:
        with pytest.raises(gw.ResourceExhausted, match="limit is 1000"):
            client.submit_job(g, params, data, gw.optim.SGD(lr=0.1), batch_size=8, epochs=2**32 - 1)
        assert client.ops()  # still serving


def test_a_dataset_path_that_is_no_regular_file_is_refused(start_server, tmp_path):
    """A FIFO would block the read forever; a device never ends."""
    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    _, address = start_server(data_roots=f"{tmp_path}{os.pathsep}/dev")
    g, params, _ = _job_model()
    with gw.connect(address, timeout=10) as client:
        for path in (str(fifo), "/dev/zero"):
            with pytest.raises(gw.PermissionDenied, match="not a regular .npz or .npy file"):
                client.submit_job(g, params, path, gw.optim.SGD(lr=0.1), batch_size=8, epochs=1)
    _assert_answers(address)


def test_a_deadline_before_the_compute_thread_starts_frees_the_slot(start_server):
    """The deadline passes while the request waits for a compute thread (its work never starts):
    what it holds is released all the same, so the next request is admitted."""
    server, address = start_server(max_concurrent=1)
    blocker = server.servicer.compute_pool.submit(time.sleep, 1.5)  # the pool's one thread is busy
    request, _ = _heavy_request(layers=1, width=64, n=512)  # over 64 KiB: never computed inline
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GradwireStub(channel).Compute(request, timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    blocker.result()
    time.sleep(0.1)
    assert server.admission.memory.in_use == 0
    _assert_answers(address)  # the only slot is free again (a leaked one would refuse this)
