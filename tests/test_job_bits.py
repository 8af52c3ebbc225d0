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


def _job_inputs():
    g = gw.Graph()
    x, y = g.input("x", (None, 12)), g.input("y", (None,), "int64")
    w1, b1 = g.param("w1", (12, 32)), g.param("b1", (32,))
    w2, b2 = g.param("w2", (32, 4)), g.param("b2", (4,))
    g.set_loss(gw.softmax_cross_entropy(gw.relu(x @ w1 + b1) @ w2 + b2, y))
    rng = np.random.default_rng(0)
    params = {"w1": (rng.normal(size=(12, 32)) * 0.3).astype(np.float32), "b1": np.zeros(32, np.float32),
              "w2": (rng.normal(size=(32, 4)) * 0.3).astype(np.float32), "b2": np.zeros(4, np.float32)}
    labels = rng.integers(0, 4, size=403)
    data = {"x": (rng.normal(size=(403, 12)) + np.eye(4, 12)[labels] * 2).astype(np.float32),
            "y": labels.astype(np.int64)}
    return g, params, data


def _same_blas() -> bool:
    cores = sorted({i.get("internal_api", "") + ":" + str(i.get("architecture", "")) for i in threadpool_info()
                    if i.get("user_api") == "blas"})
    return json.loads(str(PINNED["meta"]))["blas"] == cores


def _train(**config) -> dict[str, dict[str, np.ndarray]]:
    g, params, data = _job_inputs()
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


def test_local_jobs_keep_their_pinned_bits():
    _assert_pinned(_train(backend="local"), "local")


@pytest.mark.ray
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_ray_jobs_keep_their_pinned_bits_on_any_worker_count(ray_cluster, workers):
    finals = _train(backend="ray", ray_address=ray_cluster.address, workers=workers, placement="ray",
                    worker_cpus=1.0 if workers < 4 else 0.5)
    _assert_pinned(finals, "ray2")
