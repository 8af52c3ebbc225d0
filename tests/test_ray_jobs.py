"""Training jobs on the Ray backend (issue 5): steps run data-parallel on Ray workers and
the final parameters do not depend on the number of workers."""

from __future__ import annotations

import numpy as np
import pytest

import gradwire as gw
from gradwire.server.app import create_server
from gradwire.server.config import ServerConfig

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def _train(ray_cluster, tmp_path, workers: int, job_inputs):
    g, params, data = job_inputs()
    server, port = create_server(ServerConfig(port=0, backend="ray", ray_address=ray_cluster.address, placement="ray",
                                              workers=workers, worker_cpus=0.5, shards=4,
                                              job_dir=str(tmp_path / f"jobs{workers}")))
    try:
        with gw.connect(f"127.0.0.1:{port}", timeout=120) as client:
            job = client.submit_job(g, params, data, gw.optim.Adam(lr=1e-2), batch_size=100, epochs=3, seed=5)
            events = list(job.watch())
            final = job.result()
        pids = {w["pid"] for w in server.backend.worker_identities()}
    finally:
        server.stop(0)
    return events, final, pids


def test_ray_job_trains_and_is_bitwise_independent_of_worker_count(ray_cluster, tmp_path, pinned_job_inputs):
    events1, final1, pids1 = _train(ray_cluster, tmp_path, 1, pinned_job_inputs)
    events2, final2, pids2 = _train(ray_cluster, tmp_path, 2, pinned_job_inputs)
    assert len(pids1) == 1 and len(pids2) == 2
    losses = [e.loss for e in events2 if e.state == "running"]
    assert events2[-1].state == "done" and len(losses) == 15
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    for k in final1:
        assert np.array_equal(final1[k], final2[k]), k
    # and the same bits as the in-process engine following the same plan and batch order
    g, params, data = pinned_job_inputs()
    opt = gw.optim.Adam(lr=1e-2)
    state = opt.init(params)
    engine = gw.local(shards=4, blas_threads=1)
    for epoch in range(3):
        order = np.random.default_rng([5, epoch]).permutation(403)
        for i in range(5):
            rows = np.sort(order[i * 100:(i + 1) * 100])
            _, grads = engine.value_and_grad(g, params, {k: v[rows] for k, v in data.items()})
            params, state = opt.update(params, grads, state)
    for k in final1:
        assert np.array_equal(final1[k], params[k]), k
