"""A job's final parameters are pinned: the bits the job path gave before its steps moved
onto the workers (tests/data/job_bits_v1.npz, made by tests/data/make_job_bits.py), for the
local backend and for Ray with 1, 2 and 4 workers. BLAS kernels differ between processors,
so the pin applies where the BLAS it was made with is the one in use."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import gradwire as gw
from gradwire.server.app import create_server
from gradwire.server.config import ServerConfig

DATA = Path(__file__).parent / "data"
PINNED = np.load(DATA / "job_bits_v1.npz")
OPTIMIZERS = {"adam": gw.optim.Adam(lr=1e-2), "sgd": gw.optim.SGD(lr=0.1, momentum=0.9)}


def _same_blas() -> bool:
    cores = sorted({i.get("internal_api", "") + ":" + str(i.get("architecture", "")) for i in threadpool_info()
                    if i.get("user_api") == "blas"})
    return json.loads(str(PINNED["meta"]))["blas"] == cores


def _train(job_inputs, **config) -> dict[str, dict[str, np.ndarray]]:
    g, params, data = job_inputs()
    finals = {}
    with tempfile.TemporaryDirectory() as tmp:
        server, port = create_server(ServerConfig(port=0, job_dir=tmp, shards=4, **config))
        try:
            with gw.connect(f"127.0.0.1:{port}", timeout=300) as client:
                for name, opt in OPTIMIZERS.items():
                    finals[name] = client.submit_job(g, params, data, opt, batch_size=100, epochs=3, seed=5).result()
        finally:
            server.stop(0)
    return finals


def _assert_pinned(finals, pinned: str) -> None:
    if not _same_blas():
        pytest.skip("the pinned bits were made with another BLAS kernel")
    for name, final in finals.items():
        for k, v in final.items():
            assert np.array_equal(v, PINNED[f"{pinned}/{name}/{k}"]), (pinned, name, k)


def test_local_jobs_keep_their_pinned_bits(pinned_job_inputs):
    _assert_pinned(_train(pinned_job_inputs, backend="local"), "local")


@pytest.mark.ray
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_ray_jobs_keep_their_pinned_bits_on_any_worker_count(ray_cluster, workers, pinned_job_inputs):
    finals = _train(pinned_job_inputs, backend="ray", ray_address=ray_cluster.address, workers=workers, placement="ray",
                    worker_cpus=1.0 if workers < 4 else 0.5)
    _assert_pinned(finals, "ray2")
