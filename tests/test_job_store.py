"""The job folder: per user by default, one server per folder, retention, compaction, removal,
and health before the resume of old jobs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import gradwire as gw
from gradwire.server.app import create_server
from gradwire.server.config import ServerConfig
from gradwire.server.job_store import COMPACT_TO, compact_events, default_job_dir


def _model():
    g = gw.Graph()
    x, y = g.input("x", (None, 4)), g.input("y", (None,), "int64")
    g.set_loss(gw.softmax_cross_entropy(x @ g.param("w", (4, 3)), y))
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((64, 4)).astype(np.float32), "y": rng.integers(0, 3, 64).astype(np.int64)}
    return g, {"w": np.zeros((4, 3), np.float32)}, data


def test_the_default_folder_is_per_user():
    assert default_job_dir({"XDG_STATE_HOME": "/x/state"}) == "/x/state/gradwire/jobs"
    assert default_job_dir({}).endswith("/.local/state/gradwire/jobs")
    assert ServerConfig().job_dir == default_job_dir()


def test_one_server_per_job_folder(tmp_path):
    first, _ = create_server(ServerConfig(port=0, job_dir=str(tmp_path)))
    try:
        with pytest.raises(RuntimeError, match=rf"job folder .*{tmp_path.name}.* in use by another gradwire server "
                                               r"\(pid \d+\)"):
            create_server(ServerConfig(port=0, job_dir=str(tmp_path)))
    finally:
        first.stop(0)
    second, _ = create_server(ServerConfig(port=0, job_dir=str(tmp_path)))  # free once the first stopped
    second.stop(0)


def test_finished_jobs_are_compacted_kept_to_a_number_and_removable(start_server):
    server, address = start_server(keep_finished=2)
    g, params, data = _model()
    with gw.connect(address) as client:
        jobs = []
        for _ in range(3):  # one after another: the first finished is the oldest
            jobs.append(client.submit_job(g, params, data, gw.optim.SGD(lr=0.1), batch_size=1, epochs=6))
            jobs[-1].result()
            time.sleep(0.05)  # distinct folder times
        listed = {j["job_id"] for j in client.jobs()}
        assert jobs[0].job_id not in listed and {jobs[1].job_id, jobs[2].job_id} <= listed  # the oldest went
        root = server.servicer.jobs.root
        assert not (root / jobs[0].job_id).exists()
        lines = (root / jobs[2].job_id / "events.jsonl").read_text().splitlines()
        running = [json.loads(line) for line in lines if json.loads(line)["state"] == "running"]
        assert len(running) <= COMPACT_TO + 2 and running[-1]["step"] == 6 * 64  # 384 steps, compacted
        assert client.job(jobs[2].job_id).delete()["job_id"] == jobs[2].job_id
        assert not (root / jobs[2].job_id).exists()
        with pytest.raises(gw.NotFound):
            client.job(jobs[2].job_id).info()


def test_a_running_job_cannot_be_removed(start_server):
    _, address = start_server()
    g, params, data = _model()
    with gw.connect(address) as client:
        job = client.submit_job(g, params, data, gw.optim.SGD(lr=0.1), batch_size=1, epochs=10_000)
        with pytest.raises(gw.GradwireError, match="cancel it before removing it"):
            job.delete()
        job.cancel()


def test_a_stopped_server_leaves_no_thread_behind(tmp_path):
    """Its jobs' threads (a long job, cancelled, then compacted) and its event loop's executor end with it."""
    import threading

    before = set(threading.enumerate())
    server, port = create_server(ServerConfig(port=0, job_dir=str(tmp_path)))
    g, params, data = _model()
    with gw.connect(f"127.0.0.1:{port}") as client:
        job = client.submit_job(g, params, data, gw.optim.SGD(lr=0.1), batch_size=1, epochs=10_000)
        while job.info()["step"] < 2000:
            time.sleep(0.01)
        job.cancel()
    server.stop(0)
    left = [t.name for t in set(threading.enumerate()) - before
            if t.is_alive() and "_poll_wrapper" not in t.name]  # grpc's process-wide client poller
    assert left == [], left


def test_compaction_keeps_state_changes_and_the_last_step(tmp_path):
    """A long job's log (linear work: a quadratic compaction kept a cancelled job's thread busy for minutes)."""
    path, n = tmp_path / "events.jsonl", 50_000
    events = [{"step": 0, "state": "running", "message": "started"}]
    events += [{"step": i, "state": "running"} for i in range(1, n + 1)] + [{"step": n, "state": "done"}]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    compact_events(path, keep=10)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert kept[0]["message"] == "started" and kept[-1]["state"] == "done"
    assert len(kept) <= 13 and kept[-2]["step"] == n


def test_health_answers_before_old_jobs_are_resumed(tmp_path):
    """Jobs left unfinished are resumed after the server answers; their ids say UNAVAILABLE
    (retryable) meanwhile, then the job is found."""
    g, params, data = _model()
    server, port = create_server(ServerConfig(port=0, job_dir=str(tmp_path)))
    with gw.connect(f"127.0.0.1:{port}") as client:
        job = client.submit_job(g, params, data, gw.optim.SGD(lr=0.1), batch_size=1, epochs=200, checkpoint_every=50)
        while job.info()["step"] < 60:
            time.sleep(0.01)
    server.stop(0)  # pauses the job at a step; its checkpoint resumes it
    server, port = create_server(ServerConfig(port=0, job_dir=str(tmp_path)))
    try:
        with gw.connect(f"127.0.0.1:{port}", timeout=60) as client:
            assert client.ops()
            resumed = client.job(job.job_id)
            assert resumed.info()["state"] in ("queued", "running", "done")
            resumed.cancel()
    finally:
        server.stop(0)
