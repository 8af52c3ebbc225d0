"""The Ray backend on a real 2-node cluster (issue 4): bitwise-identical answers for any
worker count, work placed in Ray worker processes on both nodes, recovery from a killed
worker, deterministic failures without retries, bounded retries, deadline cancellation and
the run info. Everything shares the session's Ray cluster (``ray_cluster`` in conftest.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import tempfile
import time

import numpy as np
import pytest

import gradwire as gw
from gradwire.server.app import create_server
from gradwire.server.config import ServerConfig

# as the Ray backend sets it before it joins a cluster; this process joins the session's
# cluster (conftest.py) before any server starts, and after every test module is imported
os.environ.setdefault("RAY_cancellation_retry_ms", "100")
ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray

CLASSES = 10
SIZES = (12, 32, 24, CLASSES)  # the MLP of the equality tests
BATCH = 1003  # not a multiple of the shard count: shards of 126 and 125 examples
SHARDS = 8
HEAVY_SIZES = (16, 512, 512, CLASSES)  # compute-heavy, small upload
HEAVY_BATCH = 24_000
HEAVY_SHARDS = 32
# ~20 s of compute (~10 s on 2 workers) in tasks of ~5 s each (8 shards a task), nodes of
# ~0.1 s: a request that surely outlasts a deadline of a second or so, on faster machines too
SLOW_SIZES = (16, 1024, 1024, 1024, CLASSES)
SLOW_BATCH = 48_000


# ------------------------------------------------------------------ graphs and data


def _mlp(dtype: str, sizes=SIZES, reduction: str = "mean") -> gw.Graph:
    """relu -> sigmoid -> logits; mean softmax cross-entropy, or (``reduction="sum"``) the
    summed squared error of the sigmoid outputs against one-hot targets."""
    g = gw.Graph()
    x = g.input("x", shape=(None, sizes[0]), dtype=dtype)
    h = x
    for i, (a, b) in enumerate(zip(sizes, sizes[1:]), start=1):
        h = h @ g.param(f"W{i}", shape=(a, b), dtype=dtype) + g.param(f"b{i}", shape=(b,), dtype=dtype)
        if i == 1:
            h = gw.relu(h)
        elif i < len(sizes) - 1:
            h = gw.sigmoid(h)
    if reduction == "sum":
        t = g.input("t", shape=(None, sizes[-1]), dtype=dtype)
        g.set_loss(gw.sum(gw.square(gw.sigmoid(h) - t)), batch_reduction="sum")
    else:
        y = g.input("y", shape=(None,), dtype="int64")
        g.set_loss(gw.softmax_cross_entropy(h, y))
    return g


def _data(dtype: str, n: int, sizes=SIZES, reduction: str = "mean", seed: int = 7):
    rng = np.random.default_rng(seed)
    params = {}
    for i, (a, b) in enumerate(zip(sizes, sizes[1:]), start=1):
        params[f"W{i}"] = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(dtype)
        params[f"b{i}"] = (rng.normal(size=b) * 0.1).astype(dtype)
    labels = rng.integers(0, sizes[-1], size=n)
    batch = {"x": rng.normal(size=(n, sizes[0])).astype(dtype)}
    if reduction == "sum":
        batch["t"] = np.eye(sizes[-1], dtype=dtype)[labels]
    else:
        batch["y"] = labels
    return params, batch


def _heavy():
    return _mlp("float64", HEAVY_SIZES), *_data("float64", HEAVY_BATCH, HEAVY_SIZES, seed=11)


def _slow():
    return _mlp("float64", SLOW_SIZES), *_data("float64", SLOW_BATCH, SLOW_SIZES, seed=13)


def _assert_bitwise(loss, grads, want_loss, want_grads, what=""):
    assert loss == want_loss, f"{what}: loss {loss!r} != {want_loss!r}"
    assert grads.keys() == want_grads.keys()
    for k in want_grads:
        assert grads[k].dtype == want_grads[k].dtype and grads[k].shape == want_grads[k].shape, f"{what}: {k}"
        assert np.array_equal(grads[k], want_grads[k]), \
            f"{what}: grad {k} differs (max |diff| {np.max(np.abs(grads[k] - want_grads[k]))})"


# ------------------------------------------------------------------ servers and process helpers


def _config(ray_cluster, **overrides) -> ServerConfig:
    values = dict(port=0, backend="ray", ray_address=ray_cluster.address, workers=2, worker_cpus=0.5,
                  job_dir=tempfile.mkdtemp(prefix="gradwire-test-jobs-"),  # one server per job folder
                  shards=SHARDS, grace_seconds=0.0, placement="ray")  # this suite is about the workers
    values.update(overrides)
    return ServerConfig(**values)


@contextlib.contextmanager
def _serving(ray_cluster, **overrides):
    """A server (and a client) for the duration of the block; its actors die with it."""
    server, port = create_server(_config(ray_cluster, **overrides))
    client = gw.connect(f"127.0.0.1:{port}", timeout=120)
    try:
        yield server, client
    finally:
        client.close()
        server.stop(0)


@pytest.fixture(scope="module")
def served(ray_cluster):
    """The module's 2-worker server (0.5 CPU an actor: room beside the 1- and 4-worker pools)."""
    with _serving(ray_cluster) as pair:
        yield pair


def _idle_cpus() -> float:
    return ray.available_resources().get("CPU", 0.0)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _actor_pids(backend) -> list[int]:
    """The pids of the backend's current actors, from the GCS actor table (asking the actors
    themselves would queue behind the shards they are running)."""
    from ray._private import state

    pids = []
    for handle in list(backend.workers):
        entry = state.actors(actor_id=handle._actor_id.hex())
        pid = entry.get("Pid", 0) if entry else 0
        if pid and entry.get("State") == "ALIVE":
            pids.append(int(pid))
    return pids


def _kill(pid: int) -> bool:
    """SIGKILL ``pid`` if it is (still) one of our Ray shard workers, never anything else."""
    if "ShardWorker" not in _cmdline(pid):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def _cpu_seconds(pids) -> dict[int, float]:
    """CPU time (user + system, all threads) each process has used so far."""
    out = {}
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return out


def _cpu_use(pids, seconds: float = 0.5) -> dict[int, float]:
    """Cores each process used over the next ``seconds``."""
    before, t = _cpu_seconds(pids), time.monotonic()
    time.sleep(seconds)
    after, elapsed = _cpu_seconds(pids), time.monotonic() - t
    return {pid: (after[pid] - before[pid]) / elapsed for pid in pids}


def _raw_compute(graph: gw.Graph, params, batch):
    """A hand-built unary ``ComputeRequest`` (for a raw stub): every tensor whole."""
    from gradwire.protos import gradwire_pb2 as pb
    from gradwire.worker.codec import graph_to_proto, tensor_chunks

    def whole(group):
        return [next(tensor_chunks(name, np.asarray(a), 1 << 30)) for name, a in group.items()]

    return pb.ComputeRequest(header=pb.ComputeHeader(graph=graph_to_proto(graph.graph_def)),
                             params=whole(params), batch=whole(batch))


def _wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# ------------------------------------------------------------------ 1. bitwise equality across worker counts


CASES = [("float32", "mean"), ("float64", "mean"), ("float32", "sum"), ("float64", "sum")]


@pytest.fixture(scope="class")
def pools(ray_cluster, served):
    """Servers with 1, 2 and 4 workers, for one test class."""
    # 2 x 0.5 (module server) + 1 x 0.5 + 4 x 0.5 = 3.5 of the cluster's 4 CPUs
    with _serving(ray_cluster, workers=1) as one, _serving(ray_cluster, workers=4) as four:
        yield {1: one, 2: served, 4: four}


class TestBitwiseAcrossWorkers:
    """1, 2 and 4 workers give the same bits as ``gw.local(shards=8, blas_threads=1)``."""

    @pytest.mark.parametrize("dtype,reduction", CASES)
    def test_same_bits_for_1_2_4_workers_and_local(self, pools, dtype, reduction):
        graph = _mlp(dtype, reduction=reduction)
        params, batch = _data(dtype, BATCH, reduction=reduction)
        want_loss, want_grads = gw.local(shards=SHARDS, blas_threads=1).value_and_grad(graph, params, batch)
        for workers, (server, client) in pools.items():
            loss, grads, info = client.value_and_grad(graph, params, batch, return_info=True)
            assert info["backend"] == "ray" and info["shard_count"] == SHARDS
            assert len({s["worker"] for s in info["shards"]}) == workers  # one shard each to start
            sizes = [s["stop"] - s["start"] for s in info["shards"]]
            assert sum(sizes) == BATCH and set(sizes) == {126, 125}  # really uneven
            _assert_bitwise(loss, grads, want_loss, want_grads, f"{workers} workers, {dtype}, {reduction}")
            assert all(g.dtype == np.dtype(dtype) for g in grads.values())

    @pytest.mark.parametrize("dtype,reduction", CASES)
    def test_distributed_equals_single_shard_engine(self, pools, dtype, reduction):
        """Uneven shards are weighted right: 8 shards on Ray == 1 shard in-process, to rounding."""
        graph = _mlp(dtype, reduction=reduction)
        params, batch = _data(dtype, BATCH, reduction=reduction)
        rtol = 1e-5 if dtype == "float32" else 1e-12
        one_loss, one_grads = gw.local().value_and_grad(graph, params, batch)
        _, client = pools[2]
        loss, grads = client.value_and_grad(graph, params, batch)
        assert loss == pytest.approx(one_loss, rel=rtol)
        for k in one_grads:
            scale = np.max(np.abs(one_grads[k]))
            np.testing.assert_allclose(grads[k], one_grads[k], rtol=rtol, atol=rtol * scale, err_msg=k)
        # and a wrong weighting (equal shard weights) would be caught at this tolerance
        if reduction == "mean":
            naive = gw.local().value_and_grad(graph, params, {k: v[:125 * SHARDS] for k, v in batch.items()})[1]
            assert any(not np.allclose(grads[k], naive[k], rtol=rtol, atol=rtol * np.max(np.abs(naive[k])))
                       for k in naive)


def test_fetched_outputs_and_input_grads_match_local(served):
    """Batched values concatenate by shard, batch-independent ones stack or sum, as in-process."""
    _, client = served
    g = gw.Graph()
    x = g.input("x", shape=(None, 6), dtype="float64")
    s = g.input("s", shape=(6,), dtype="float64")  # unbatched input: its gradient sums over shards
    W = g.param("W", shape=(6, 3), dtype="float64")
    h = gw.tanh((x * s) @ W)
    W2 = W * W  # batch-independent fetched value
    g.fetch(h, W2)
    g.set_loss(gw.mean(gw.square(h)))
    rng = np.random.default_rng(5)
    params = {"W": rng.normal(size=(6, 3))}
    batch = {"x": rng.normal(size=(BATCH, 6)), "s": rng.normal(size=6)}
    want = gw.local(shards=SHARDS, blas_threads=1).run(g, params, batch, wrt=("W", "x", "s"))
    got = client.run(g, params, batch, wrt=("W",), input_grads=("x", "s"))
    _assert_bitwise(got.loss, got.grads, want.loss, want.grads, "fetch/input_grads")
    for k in ("x", "s"):
        assert np.array_equal(got.input_grads[k], want.input_grads[k]), k
    assert got.input_grads["s"].shape == (6,) and got.input_grads["x"].shape == (BATCH, 6)
    assert got.outputs.keys() == want.outputs.keys()
    for k in want.outputs:
        assert got.outputs[k].shape == want.outputs[k].shape, k
        assert np.array_equal(got.outputs[k], want.outputs[k]), k


# ------------------------------------------------------------------ 2. placement: Ray worker processes on both nodes


def test_shards_run_in_ray_workers_on_both_nodes(served, ray_cluster):
    server, client = served
    graph = _mlp("float64")
    params, batch = _data("float64", BATCH)
    _, _, info = client.value_and_grad(graph, params, batch, return_info=True)
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(alive) == 2
    identities = server.backend.worker_identities()
    actor_pids = {w["pid"] for w in identities}
    assert info["server_pid"] == os.getpid()  # in-process server
    for s in info["shards"]:
        assert s["pid"] != info["server_pid"] and s["pid"] != os.getpid()
        assert s["pid"] in actor_pids and s["node"] in alive
        assert "ShardWorker" in _cmdline(s["pid"])
    assert {w["node"] for w in identities} == alive, "the SPREAD pool should have an actor on each node"
    assert {s["node"] for s in info["shards"]} == alive


# ------------------------------------------------------------------ 7. run info


def test_info_phases_and_shard_count(served):
    _, client = served
    graph = _mlp("float32")
    params, batch = _data("float32", BATCH)
    _, _, info = client.value_and_grad(graph, params, batch, return_info=True)
    assert {"decode", "validate", "schedule", "compute", "reduce", "encode"} <= info["phase_ms"].keys()
    assert all(v >= 0 for v in info["phase_ms"].values())
    assert info["shard_count"] == len(info["shards"]) == SHARDS
    assert [s["index"] for s in info["shards"]] == list(range(SHARDS))
    assert all(s["attempts"] == 1 and s["ms"] > 0 for s in info["shards"])


# ------------------------------------------------------------------ 4. deterministic failures: at once, no retries


def test_label_out_of_range_fails_at_once_without_retries(served):
    server, client = served
    graph = _mlp("float64")
    params, batch = _data("float64", BATCH)
    batch["y"] = batch["y"].copy()
    batch["y"][BATCH - 1] = 99  # 10 classes; in the last shard
    before = server.backend.replaced
    t = time.monotonic()
    with pytest.raises(gw.InvalidGraph, match="softmax_cross_entropy") as err:
        client.value_and_grad(graph, params, batch)
    assert time.monotonic() - t < 10
    assert "99" in str(err.value)
    assert server.backend.replaced == before
    # the pool is unharmed
    good_params, good_batch = _data("float64", BATCH)
    assert np.isfinite(client.value_and_grad(graph, good_params, good_batch)[0])


def test_check_finite_names_the_log_op(ray_cluster):
    g = gw.Graph()
    x = g.input("x", shape=(None, 4), dtype="float64")
    w = g.param("w", shape=(4,), dtype="float64")
    g.set_loss(gw.mean(gw.log(x * w)))
    params = {"w": np.ones(4)}
    batch = {"x": -np.abs(np.random.default_rng(3).normal(size=(37, 4))) - 0.1}  # log of negatives
    with _serving(ray_cluster, workers=1, check_finite=True) as (server, client):
        before = server.backend.replaced
        with pytest.raises(gw.InvalidGraph, match="'log'") as err:
            client.value_and_grad(g, params, batch)
        assert "non-finite" in str(err.value)
        assert server.backend.replaced == before
        ok = {"x": np.abs(batch["x"])}
        assert np.isfinite(client.value_and_grad(g, params, ok)[0])


# ------------------------------------------------------------------ 6. deadline cancellation


def test_deadline_cancels_and_frees_the_cluster(served, caplog):
    server, client = served
    caplog.set_level(logging.INFO, logger="gradwire.server")
    graph, params, batch = _slow()
    # idle: the cluster's CPUs less what this server's actors hold (servers stopped by earlier
    # tests may still be releasing theirs, so wait for that first)
    config = server.config
    idle = ray.cluster_resources()["CPU"] - config.workers * config.worker_cpus
    assert _wait_until(lambda: _idle_cpus() == idle, 20), (_idle_cpus(), idle)
    t = time.monotonic()
    with pytest.raises(gw.DeadlineExceeded):
        client.run(graph, params, batch, shards=HEAVY_SHARDS, timeout=0.5)
    assert time.monotonic() - t < 3

    # the server gave up on the request soon after the deadline (not after all 32 shards)
    def logged():
        return [r.getMessage() for r in caplog.records
                if "method=ValueAndGrad" in r.getMessage() and "status=DEADLINE_EXCEEDED" in r.getMessage()]

    assert _wait_until(lambda: logged(), 5), "the server never logged the deadline"
    server_ms = float(logged()[-1].rsplit("ms=", 1)[1])
    assert server_ms < 0.5e3 + 2.5e3, server_ms

    assert _wait_until(lambda: _idle_cpus() == idle, 10), (_idle_cpus(), idle)
    t = time.monotonic()
    identities = server.backend.worker_identities()  # actors answer: nothing left queued on them
    assert time.monotonic() - t < 5 and len(identities) == 2
    small_params, small_batch = _data("float64", BATCH)
    want = gw.local(shards=SHARDS, blas_threads=1).value_and_grad(_mlp("float64"), small_params, small_batch)
    loss, grads = client.value_and_grad(_mlp("float64"), small_params, small_batch)
    _assert_bitwise(loss, grads, *want, "after a cancelled request")


def test_deadline_stops_the_shards_running_on_the_workers(served):
    """A request of ~10 s with a 1 s deadline: DEADLINE_EXCEEDED at ~1 s, and the Ray worker
    processes stop computing soon after (a running task of a regular actor is not interrupted
    by ``ray.cancel``: the shard's own token stops it at its next node); no worker is
    replaced, and the next request is answered exactly."""
    server, client = served
    graph, params, batch = _slow()
    pids = [w["pid"] for w in server.backend.worker_identities()]
    replaced = server.backend.replaced
    out: dict = {}

    def request():
        out["start"] = time.monotonic()
        try:
            client.run(graph, params, batch, shards=HEAVY_SHARDS, timeout=1.0)
        except BaseException as exc:  # noqa: BLE001 - checked below
            out["error"] = exc
        out["end"] = time.monotonic()

    thread = threading.Thread(target=request)
    thread.start()
    # Ray retitles a worker process while it runs a task: the request's shards are running
    computing = _wait_until(lambda: any("run_shard" in _cmdline(pid) for pid in pids), 1.0, 0.01)
    busy = _cpu_use(pids, 0.3)
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(out.get("error"), gw.DeadlineExceeded), out.get("error")
    deadline = out["start"] + 1.0
    assert out["end"] - deadline < 2.0, f"answered {out['end'] - deadline:.1f} s after the deadline"
    assert computing, "no worker started a shard before the deadline"

    time.sleep(max(0.0, deadline + 1.0 - time.monotonic()))
    after = _cpu_use(pids)  # a window starting 1 s after the deadline
    assert all(use < 0.1 for use in after.values()), \
        f"Ray workers still computing 1 s after the deadline (cores: {after}; before it: {busy})"
    assert server.backend.replaced == replaced  # cancelled work is not a lost worker
    assert sorted(w["pid"] for w in server.backend.worker_identities()) == sorted(pids)

    small_params, small_batch = _data("float64", BATCH, seed=17)
    want = gw.local(shards=SHARDS, blas_threads=1).value_and_grad(_mlp("float64"), small_params, small_batch)
    _assert_bitwise(*client.value_and_grad(_mlp("float64"), small_params, small_batch), *want, "the next request")


def test_a_cancelled_call_stops_the_shards_running_on_the_workers(served):
    """No deadline: the client cancels the call. The driver's ``ray.cancel`` only flags the
    tasks (a running one, and a queued one once it starts); their tokens' probe of that flag
    stops them."""
    import grpc

    from gradwire.protos import gradwire_pb2_grpc as pb_grpc

    server, _ = served
    graph, params, batch = _slow()
    pids = [w["pid"] for w in server.backend.worker_identities()]
    replaced = server.backend.replaced
    request = _raw_compute(graph, params, batch)
    request.header.shards = HEAVY_SHARDS
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = pb_grpc.GradwireStub(channel).Compute.future(request)  # no timeout
        assert _wait_until(lambda: all("run_shard" in _cmdline(pid) for pid in pids), 30, 0.01), \
            "the workers never started the request's shards"
        busy = _cpu_use(pids, 0.3)
        assert call.cancel() and call.cancelled()
        cancelled_at = time.monotonic()
    time.sleep(max(0.0, cancelled_at + 1.0 - time.monotonic()))
    after = _cpu_use(pids)
    assert all(use < 0.1 for use in after.values()), \
        f"Ray workers still computing 1 s after the cancel (cores: {after}; before it: {busy})"
    assert server.backend.replaced == replaced
    small_params, small_batch = _data("float64", BATCH, seed=19)
    want = gw.local(shards=SHARDS, blas_threads=1).value_and_grad(_mlp("float64"), small_params, small_batch)
    _, client = served
    _assert_bitwise(*client.value_and_grad(_mlp("float64"), small_params, small_batch), *want, "after a cancel")


def test_a_task_stops_at_its_wall_clock_deadline_outside_ray_too():
    """``ShardWorker.run_shards`` run in this process (no Ray task: no probe): a deadline
    already past stops it before any node (``Stopped``); a distant one changes nothing."""
    from gradwire.worker.codec import graph_to_proto
    from gradwire.worker.engine import Program
    from gradwire.worker.ray_worker import ShardWorker, Stopped, task_token
    from gradwire.worker.shards import combine, plan_shards

    token = task_token(time.time() + 100.0)
    assert 99.0 < token.remaining() <= 100.0 and not token.cancelled
    assert task_token(time.time() - 1.0).cancelled and task_token(None).deadline is None

    graph = _mlp("float64")
    params, batch = _data("float64", BATCH)
    program = Program(graph.graph_def)
    shards = plan_shards(program, batch, 2)
    worker = ShardWorker("local")
    args = ("g", [graph_to_proto(graph.graph_def).SerializeToString()], "p-1", [params], batch, shards,
            None, (), False, None)
    stopped = worker.run_shards(*args, deadline=time.time() - 0.001)
    assert isinstance(stopped, Stopped) and stopped.deadline_passed
    result, infos = worker.run_shards(*args, deadline=time.time() + 100.0)
    want = combine([program.run(params, {k: v[s.start:s.stop] for k, v in batch.items()}, loss_scale=s.weight)
                    for s in shards], program)
    _assert_bitwise(result.loss, result.grads, want.loss, want.grads, "in-process run_shards")
    assert len(infos) == 2


# ------------------------------------------------------------------ 3. a worker killed mid-request


def test_killed_worker_is_replaced_and_answer_unchanged(served):
    server, client = served
    graph, params, batch = _heavy()
    clean = client.run(graph, params, batch, shards=HEAVY_SHARDS)
    assert all(s["attempts"] == 1 for s in clean.info["shards"])

    before = server.backend.worker_identities()
    replaced = server.backend.replaced
    victim = before[0]["pid"]
    out: dict = {}

    def request():
        try:
            out["result"] = client.run(graph, params, batch, shards=HEAVY_SHARDS)
        except BaseException as exc:  # noqa: BLE001 - reported below
            out["error"] = exc

    thread = threading.Thread(target=request)
    thread.start()
    # kill once the victim is computing a shard of this request (Ray retitles it while busy)
    assert _wait_until(lambda: "run_shard" in _cmdline(victim), 20, 0.005), "the request never started"
    assert thread.is_alive(), "the request finished before the kill: make it heavier"
    assert _kill(victim)
    thread.join(120)
    assert not thread.is_alive()
    assert "error" not in out, out.get("error")
    result = out["result"]
    _assert_bitwise(result.loss, result.grads, clean.loss, clean.grads, "after a worker was killed")
    assert max(s["attempts"] for s in result.info["shards"]) > 1
    assert victim not in {s["pid"] for s in result.info["shards"] if s["attempts"] > 1}
    after = server.backend.worker_identities()
    assert victim not in {w["pid"] for w in after}
    assert {w["pid"] for w in after} - {w["pid"] for w in before}, "no new actor process"
    assert server.backend.replaced >= replaced + 1


def test_concurrent_requests_replace_a_dead_worker_once(served):
    """Two requests both see the killed actor die: it is replaced once (the second request
    must not kill the first one's replacement), and both answers are unchanged."""
    server, client = served
    graph, params, batch = _heavy()
    clean = client.run(graph, params, batch, shards=HEAVY_SHARDS)
    victim = server.backend.worker_identities()[1]["pid"]
    replaced = server.backend.replaced
    outs: list = [{}, {}]

    def request(out):
        try:
            out["result"] = client.run(graph, params, batch, shards=HEAVY_SHARDS)
        except BaseException as exc:  # noqa: BLE001 - reported below
            out["error"] = exc

    threads = [threading.Thread(target=request, args=(out,)) for out in outs]
    for th in threads:
        th.start()
    # both requests keep a shard queued on every worker: wait until the victim is busy
    assert _wait_until(lambda: "run_shard" in _cmdline(victim), 20, 0.005)
    time.sleep(0.3)
    assert all(th.is_alive() for th in threads), "a request finished before the kill: make it heavier"
    assert _kill(victim)
    for th in threads:
        th.join(180)
    for out in outs:
        assert "error" not in out, out.get("error")
        _assert_bitwise(out["result"].loss, out["result"].grads, clean.loss, clean.grads, "concurrent")
    assert any(max(s["attempts"] for s in out["result"].info["shards"]) > 1 for out in outs)
    assert server.backend.replaced == replaced + 1
    assert len(server.backend.worker_identities()) == 2


# ------------------------------------------------------------------ 8. no client-chosen id selects cached data


def test_a_reused_request_id_never_selects_another_calls_parameters(served):
    """Two plain Compute calls with the same ``gradwire-request-id`` and different parameters
    each get their own exact answer: no driver or worker cache is keyed by the client's id."""
    import grpc

    from gradwire.protos import gradwire_pb2_grpc as pb_grpc
    from gradwire.worker.codec import assemble

    server, _ = served
    graph = _mlp("float64")
    _, batch = _data("float64", BATCH)
    local = gw.local(shards=SHARDS, blas_threads=1)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.GradwireStub(channel)
        for seed in (21, 22, 23):  # the same id every time; a new parameter set every time
            params = _data("float64", BATCH, seed=seed)[0]
            response = stub.Compute(_raw_compute(graph, params, batch), timeout=60,
                                    metadata=(("gradwire-request-id", "same-id-every-time"),))
            want_loss, want_grads = local.value_and_grad(graph, params, batch)
            _assert_bitwise(response.summary.loss, assemble([response], "grads"), want_loss, want_grads,
                            f"parameters of seed {seed}")


@pytest.mark.parametrize("key", ["a-key-reused-for-other-parameters", None])
def test_backend_keys_parameter_sets_by_what_it_put(served, key):
    """Whatever key the servicer passes for a plain request (a client's id, or None), a job
    with other parameters under it computes with its own: the backend caches a parameter
    set only for the very object it put, under a key it made."""
    from gradwire.server.driver import Computation
    from gradwire.server.store import Registered
    from gradwire.worker.cancel import CancelToken
    from gradwire.worker.codec import graph_id_of_proto, graph_to_proto
    from gradwire.worker.engine import Program

    server, _ = served
    graph = _mlp("float64")
    proto = graph_to_proto(graph.graph_def)
    reg = Registered(graph_id_of_proto(proto), Program(graph.graph_def), proto.SerializeToString(deterministic=True))
    _, batch = _data("float64", BATCH)
    local = gw.local(shards=SHARDS, blas_threads=1)
    for seed in (31, 32, 31, 33):
        params = _data("float64", BATCH, seed=seed)[0]
        outcome = server.backend.compute(Computation(reg, params, key, batch, None, (), SHARDS), CancelToken())
        want_loss, want_grads = local.value_and_grad(graph, params, batch)
        _assert_bitwise(outcome.result.loss, outcome.result.grads, want_loss, want_grads, f"key {key!r}, seed {seed}")


def test_a_session_version_is_put_once_and_an_update_is_seen(served):
    """A session's ``id@version`` (server-made) still lets its parameters cross once per version."""
    server, client = served
    graph = _mlp("float64")
    params, batch = _data("float64", BATCH, seed=41)
    new_params = _data("float64", BATCH, seed=42)[0]
    local = gw.local(shards=SHARDS, blas_threads=1)
    session = client.session(graph, params)
    try:
        key = f"{session.session_id}@{session.version}"
        _assert_bitwise(*session.value_and_grad(batch), *local.value_and_grad(graph, params, batch), "first run")
        put = server.backend._param_refs.get(key)
        _assert_bitwise(*session.value_and_grad(batch), *local.value_and_grad(graph, params, batch), "second run")
        assert server.backend._param_refs.get(key)[1] == put[1], "the same version was put again"
        session.update(new_params)
        _assert_bitwise(*session.value_and_grad(batch), *local.value_and_grad(graph, new_params, batch), "updated")
        assert server.backend._param_refs.get(f"{session.session_id}@{session.version}")[1] != put[1]
    finally:
        session.close()


# ------------------------------------------------------------------ 5. bounded retries when workers keep dying


def test_workers_that_keep_dying_give_unavailable_not_a_hang(ray_cluster):
    graph, params, batch = _heavy()
    with _serving(ray_cluster, workers=2, max_retries=1) as (server, _):
        stop = threading.Event()
        killed: list[int] = []

        def killer():
            while not stop.is_set():
                for pid in _actor_pids(server.backend):
                    if pid not in killed and _kill(pid):
                        killed.append(pid)
                time.sleep(0.01)

        timeout = 60.0
        # one attempt: the transport would otherwise retry UNAVAILABLE (the whole request) itself
        client = gw.connect(f"127.0.0.1:{server.port}", timeout=timeout, max_attempts=1)
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        t = time.monotonic()
        try:
            with pytest.raises((gw.Unavailable, gw.DeadlineExceeded)) as err:
                client.run(graph, params, batch, shards=HEAVY_SHARDS)
        finally:
            stop.set()
            thread.join(10)
            client.close()
        elapsed = time.monotonic() - t
        assert elapsed < timeout
        assert isinstance(err.value, gw.Unavailable), f"expected the retry bound, got {err.value} after {elapsed:.1f}s"
        assert "giving up" in str(err.value)
        assert len(killed) >= 2 and server.backend.replaced >= 2
