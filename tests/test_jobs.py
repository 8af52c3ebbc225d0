"""Training jobs through a real server: progress, cancel, reconnect, restart-resume,
submission-time validation, datasets on the server's disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gradwire as gw


def _model(seed=0):
    g = gw.Graph()
    x, y = g.input("x", (None, 8)), g.input("y", (None,), "int64")
    w1, b1 = g.param("w1", (8, 16)), g.param("b1", (16,))
    w2, b2 = g.param("w2", (16, 3)), g.param("b2", (3,))
    g.set_loss(gw.softmax_cross_entropy(gw.tanh(x @ w1 + b1) @ w2 + b2, y))
    rng = np.random.default_rng(seed)
    params = {"w1": (rng.normal(size=(8, 16)) * 0.3).astype(np.float32), "b1": np.zeros(16, np.float32),
              "w2": (rng.normal(size=(16, 3)) * 0.3).astype(np.float32), "b2": np.zeros(3, np.float32)}
    return g, params


def _data(n=300, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    x = (rng.normal(size=(n, 8)) + np.eye(3, 8)[y] * 3).astype(np.float32)
    return {"x": x, "y": y.astype(np.int64)}


@pytest.fixture(scope="module")
def address(start_server):
    return start_server(shards=4)[1]


def test_loss_decreases_and_result_has_param_shapes(address):
    g, params = _model()
    with gw.connect(address) as client:
        job = client.submit_job(g, params, _data(), gw.optim.Adam(lr=1e-2), batch_size=32, epochs=4, seed=0)
        events = list(job.watch())
        trained = job.result()
    running = [e for e in events if e.state == "running"]
    assert events[-1].state == "done" and running[-1].step == events[-1].total_steps == 40
    assert [e.step for e in running] == list(range(1, 41))
    assert np.mean([e.loss for e in running[-5:]]) < 0.5 * np.mean([e.loss for e in running[:5]])
    assert all(e.examples_per_s > 0 for e in running)
    assert {k: (v.shape, v.dtype) for k, v in trained.items()} == {k: (v.shape, v.dtype) for k, v in params.items()}
    # the trained parameters really are better on the training data
    local = gw.local()
    assert local.value_and_grad(g, trained, _data())[0] < local.value_and_grad(g, params, _data())[0]


def test_same_seed_same_bits_and_listing(address):
    g, params = _model()
    with gw.connect(address) as client:
        runs = [client.submit_job(g, params, _data(), gw.optim.SGD(lr=0.1, momentum=0.9), batch_size=50,
                                  epochs=2, seed=7, name=f"run{i}") for i in range(2)]
        results = [job.result() for job in runs]
        listed = {j["job_id"]: j for j in client.jobs()}
    for k in params:
        assert np.array_equal(results[0][k], results[1][k])
    assert all(listed[job.job_id]["state"] == "done" for job in runs)
    assert {listed[job.job_id]["name"] for job in runs} == {"run0", "run1"}


def test_cancel(address):
    g, params = _model()
    with gw.connect(address) as client:
        job = client.submit_job(g, params, _data(), gw.optim.Adam(lr=1e-3), batch_size=1, epochs=1000)
        for event in job.watch():
            if event.step >= 3:
                break
        job.cancel()
        last = job.wait()
        assert last.state == "cancelled"
        assert job.info()["state"] == "cancelled"
        with pytest.raises(gw.GradwireError, match="is cancelled") as err:
            job.result()
        assert err.value.code.name == "FAILED_PRECONDITION"


def test_job_outlives_its_client_and_watch_resumes(address):
    g, params = _model()
    client = gw.connect(address)
    job = client.submit_job(g, params, _data(), gw.optim.Adam(lr=1e-2), batch_size=8, epochs=3, seed=0)
    seen = []
    for event in job.watch():
        seen.append(event.step)
        if len(seen) == 3:
            break
    client.close()  # disconnect mid-job
    time.sleep(0.3)
    with gw.connect(address) as again:
        rewatch = again.job(job.job_id)
        rewatch.last_step = seen[-1]
        steps = [e.step for e in rewatch.watch() if e.state == "running"]
        assert steps == list(range(seen[-1] + 1, 3 * 38 + 1))  # resumed right after the last step seen
        assert again.job(job.job_id).info()["state"] == "done"


@pytest.mark.parametrize("change,message", [
    (lambda d: d.pop("y"), r"dataset arrays \['x'\] do not match the graph's inputs \['x', 'y'\]"),
    (lambda d: d.update(x=d["x"].astype(np.float64)), r"dataset array 'x' is float64\[300, 8\]; the graph's input is float32"),
    (lambda d: d.update(x=d["x"][:, :5]), r"dataset array 'x' is float32\[300, 5\]"),
    (lambda d: d.update(y=d["y"][:10]), "dataset arrays differ in length"),
])
def test_bad_datasets_are_rejected_at_submission(address, change, message):
    g, params = _model()
    data = _data()
    change(data)
    with gw.connect(address) as client, pytest.raises(gw.InvalidGraph, match=message):
        client.submit_job(g, params, data, gw.optim.SGD(lr=0.1), batch_size=10)


@pytest.mark.parametrize("kwargs,message", [
    (dict(batch_size=301), "batch_size 301 must be between 1 and the dataset size 300"),
    (dict(batch_size=0), "batch_size 0 must be between 1"),
    (dict(optimizer={"name": "adam", "lr": 1e-3, "momentum": 0.9}), r"optimizer: unknown adam setting\(s\) \['momentum'\]"),
    (dict(optimizer={"name": "lbfgs", "lr": 1.0}), "optimizer: unknown optimizer 'lbfgs'"),
    (dict(epochs=0), "epochs must be >= 1"),
])
def test_bad_settings_are_rejected_at_submission(address, kwargs, message):
    g, params = _model()
    settings = dict(optimizer=gw.optim.SGD(lr=0.1), batch_size=10, epochs=1) | kwargs
    with gw.connect(address) as client, pytest.raises(gw.InvalidGraph, match=message):
        client.submit_job(g, params, _data(), **settings)


def test_dataset_paths_on_the_server(start_server, tmp_path):
    g, params = _model()
    data = _data()
    np.savez(tmp_path / "data.npz", **data)
    np.savez(tmp_path / "damaged.npz", **data)
    (tmp_path / "damaged.npz").write_bytes((tmp_path / "damaged.npz").read_bytes()[:100])
    _, address = start_server(shards=4, data_roots=str(tmp_path))
    with gw.connect(address) as client:
        uploaded = client.submit_job(g, params, data, gw.optim.SGD(lr=0.1), batch_size=30, epochs=2, seed=3).result()
        from_npz = client.submit_job(g, params, str(tmp_path / "data.npz"), gw.optim.SGD(lr=0.1), batch_size=30,
                                     epochs=2, seed=3).result()
        with pytest.raises(gw.InvalidGraph, match="cannot read dataset"):
            client.submit_job(g, params, str(tmp_path / "damaged.npz"), gw.optim.SGD(lr=0.1), batch_size=30)
    for k in params:
        assert np.array_equal(uploaded[k], from_npz[k])


def test_memory_mapped_dataset():
    from gradwire.server.jobs import load_dataset

    arrays = load_dataset(str(_npy_dir()))
    # plain ndarrays (fast to index) over the file's memory map, not copies
    assert all(type(v) is np.ndarray and isinstance(v.base, np.memmap) and not v.flags.owndata
               for v in arrays.values())


def _npy_dir():
    import tempfile
    from pathlib import Path

    directory = Path(tempfile.mkdtemp())
    np.save(directory / "x.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    return directory


# ---------------------------------------------------------------- restart and resume


def _serve(port: int, job_dir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gradwire", "serve", "--port", str(port), "--job-dir", str(job_dir),
                             "--shards", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_killed_server_resumes_job_bitwise(wait_healthy, free_port, tmp_path, address):
    g, params = _model()
    data = _data()
    settings = dict(optimizer=gw.optim.Adam(lr=1e-2), batch_size=4, epochs=6, seed=11, checkpoint_every=10)
    with gw.connect(address) as client:  # the uninterrupted reference run
        reference = client.submit_job(g, params, data, **settings).result()

    port = free_port()
    remote = f"127.0.0.1:{port}"
    proc = _serve(port, tmp_path / "jobs")
    try:
        wait_healthy(remote, proc)
        with gw.connect(remote) as client:
            job = client.submit_job(g, params, data, **settings)
            for event in job.watch():
                if event.step >= 25:
                    seen = event.step  # watchers get events in batches: the job may be further on
                    break
        proc.send_signal(signal.SIGKILL)  # no chance to clean up: only its checkpoints survive
        proc.wait(timeout=10)
        proc = _serve(port, tmp_path / "jobs")
        wait_healthy(remote, proc)
        with gw.connect(remote) as client:
            resumed = client.job(job.job_id)
            events = list(resumed.watch())
            assert events[-1].state == "done"
            # resumed from its last checkpoint (a multiple of 10, at or after the last one it had
            # passed when watched), not from the start
            resumed_at = [e.step for e in events if e.message.startswith("resumed from step")]
            assert len(resumed_at) == 1 and resumed_at[0] % 10 == 0 and resumed_at[0] >= seen // 10 * 10, \
                (resumed_at, seen)
            steps = [e.step for e in events if e.state == "running" and not e.message]
            assert steps == list(range(1, events[-1].total_steps + 1))  # each step once, none lost
            final = resumed.result()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for k in params:
        assert np.array_equal(final[k], reference[k]), k
