"""Training-job steps on Ray keep their data on the workers, make one round trip per worker
per step, survive a worker killed mid-job bitwise, and go where the cost says."""

from __future__ import annotations

import os
import signal
import tempfile
import time

import numpy as np
import pytest

import gradwire as gw
from gradwire.server.app import create_server
from gradwire.server.config import ServerConfig
from gradwire.server.placement import Planner

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def _inputs(n=403, width=12):
    g = gw.Graph()
    x, y = g.input("x", (None, width)), g.input("y", (None,), "int64")
    w1, b1 = g.param("w1", (width, 32)), g.param("b1", (32,))
    w2, b2 = g.param("w2", (32, 4)), g.param("b2", (4,))
    g.set_loss(gw.softmax_cross_entropy(gw.relu(x @ w1 + b1) @ w2 + b2, y))
    rng = np.random.default_rng(0)
    params = {"w1": (rng.normal(size=(width, 32)) * 0.3).astype(np.float32), "b1": np.zeros(32, np.float32),
              "w2": (rng.normal(size=(32, 4)) * 0.3).astype(np.float32), "b2": np.zeros(4, np.float32)}
    labels = rng.integers(0, 4, size=n)
    data = {"x": (rng.normal(size=(n, width)) + np.eye(4, width)[labels] * 2).astype(np.float32),
            "y": labels.astype(np.int64)}
    return g, params, data


def _server(ray_cluster, tmp, **overrides):
    values = dict(port=0, backend="ray", ray_address=ray_cluster.address, workers=2, worker_cpus=0.5, shards=4,
                  job_dir=tmp, grace_seconds=0.0, placement="ray")
    values.update(overrides)
    return create_server(ServerConfig(**values))


def _reference(g, params, data, epochs, batch_size=100, seed=5):
    """The job's arithmetic in this process: the same plan, order and one BLAS thread."""
    opt = gw.optim.Adam(lr=1e-2)
    state = opt.init(params)
    engine = gw.local(shards=4, blas_threads=1)
    n = len(data["y"])
    steps = -(-n // batch_size)
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for i in range(steps):
            rows = np.sort(order[i * batch_size:(i + 1) * batch_size])
            _, grads = engine.value_and_grad(g, params, {k: v[rows] for k, v in data.items()})
            params, state = opt.update(params, grads, state)
    return params


def test_data_is_fetched_once_per_worker_and_each_step_is_one_task_per_worker(ray_cluster):
    import ray

    g, params, data = _inputs()
    with tempfile.TemporaryDirectory() as tmp:
        server, port = _server(ray_cluster, tmp)
        try:
            with gw.connect(f"127.0.0.1:{port}", timeout=120) as client:
                job = client.submit_job(g, params, data, gw.optim.Adam(lr=1e-2), batch_size=100, epochs=3, seed=5)
                final = job.result()
                info = job.info()
            stats = ray.get([w.stats.remote() for w in server.backend.workers])
        finally:
            server.stop(0)
    assert info["placement"].startswith("ray: placement ray requested")
    assert [s["datasets_fetched"] for s in stats] == [1, 1]  # the dataset crossed to each worker once
    assert [s["job_tasks"] for s in stats] == [15, 15]  # 15 steps: one task per worker per step
    want = _reference(*_inputs(), epochs=3)
    for k in want:
        assert np.array_equal(final[k], want[k]), k


def test_a_worker_killed_mid_job_changes_no_bit(ray_cluster):
    """kill -9 of an actor's process mid-job: its block re-runs on a replacement that fetches
    the data again, and the final parameters are those of an uninterrupted run."""
    g, params, data = _inputs(n=2000)
    epochs = 20
    with tempfile.TemporaryDirectory() as tmp:
        server, port = _server(ray_cluster, tmp)
        try:
            with gw.connect(f"127.0.0.1:{port}", timeout=300) as client:
                job = client.submit_job(g, params, data, gw.optim.Adam(lr=1e-2), batch_size=100, epochs=epochs,
                                        seed=5)
                for event in job.watch():
                    if event.step >= 20:
                        break
                victim = server.backend.worker_identities()[0]["pid"]
                os.kill(victim, signal.SIGKILL)
                final = job.result() if _wait_done(job) else pytest.fail("the job did not finish")
            replaced = server.backend.replaced
        finally:
            server.stop(0)
    assert replaced >= 1
    want = _reference(*_inputs(n=2000), epochs=epochs)
    for k in want:
        assert np.array_equal(final[k], want[k]), k


def _wait_done(job, timeout=240.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.info()["state"] in ("done", "failed", "cancelled"):
            return job.info()["state"] == "done"
        time.sleep(0.1)
    return False


def test_placement_by_cost_keeps_the_bits_and_says_why(ray_cluster):
    """A tiny request and a tiny job run in the coordinator under --placement auto; forced to
    Ray they run on the workers; the bits are the same everywhere."""
    g, params, data = _inputs()
    batch = {k: v[:64] for k, v in data.items()}
    answers, placements = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        server, port = _server(ray_cluster, tmp, placement="auto")
        try:
            with gw.connect(f"127.0.0.1:{port}", timeout=120) as auto, \
                    gw.connect(f"127.0.0.1:{port}", timeout=120, placement="ray") as forced:
                for name, client in (("auto", auto), ("ray", forced)):
                    loss, grads, info = client.value_and_grad(g, params, batch, return_info=True)
                    answers[name], placements[name] = (loss, grads), info
                job = auto.submit_job(g, params, data, gw.optim.Adam(lr=1e-2), batch_size=100, epochs=1, seed=5)
                auto_final, auto_info = job.result(), job.info()
                job = auto.submit_job(g, params, data, gw.optim.Adam(lr=1e-2), batch_size=100, epochs=1, seed=5,
                                      placement="ray")
                ray_final, ray_info = job.result(), job.info()
        finally:
            server.stop(0)
    assert placements["auto"]["placement"].startswith("local: too small to gain from the workers")
    assert {s["worker"] for s in placements["auto"]["shards"]} == {"local"}
    assert placements["ray"]["placement"].startswith("ray: placement ray requested")
    assert {s["worker"] for s in placements["ray"]["shards"]} <= {"worker-0", "worker-1"}
    assert placements["auto"]["estimated_ms"] > 0
    assert answers["auto"][0] == answers["ray"][0]
    for k in params:
        assert np.array_equal(answers["auto"][1][k], answers["ray"][1][k]), k
        assert np.array_equal(auto_final[k], ray_final[k]), k
    assert auto_info["placement"].startswith("local") and ray_info["placement"].startswith("ray")


def test_the_planner_weighs_compute_against_the_round_trip():
    planner = Planner("auto", workers=2, flops_per_ms=1e6, round_trip_ms=1.0)
    assert planner.place(1e5).where == "local"  # 0.1 ms here vs 3.05 ms there
    big = planner.place(1e8)  # 100 ms here vs 53 ms on two workers
    assert big.where == "ray" and "worth the workers" in big.reason
    assert planner.place(1e8, "local").where == "local" and planner.place(1e3, "ray").where == "ray"
    with pytest.raises(ValueError):
        planner.place(1.0, "gpu")
