"""The user-facing commands as subprocesses: `gradwire demo`, `gradwire train`, `gradwire jobs`,
and the digits example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          **kwargs)


def test_demo_computes_remote_gradients_equal_to_local():
    out = _run("-m", "gradwire", "demo", "--steps", "10")
    assert out.returncode == 0, out.stderr
    assert "max |remote-local| 0.0e+00" in out.stdout
    assert out.stdout.count("grad ") == 4 and "training accuracy" in out.stdout


def test_train_cli_writes_params_and_plot(tmp_path, start_server):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=400)
    x = (rng.normal(size=(400, 64)) + np.eye(10, 64)[y] * 3).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=y.astype(np.int64))
    out = _run("-m", "gradwire", "train", "--model", "examples/mlp.py", "--data", str(tmp_path / "data.npz"),
               "--epochs", "3", "--batch-size", "50", "--optimizer", "adam", "--lr", "1e-2",
               "--out", str(tmp_path / "params.npz"), "--plot", str(tmp_path / "loss.png"))
    assert out.returncode == 0, out.stderr
    assert "done: 24 steps, 3 epochs" in out.stdout
    with np.load(tmp_path / "params.npz") as params:
        assert sorted(params.files) == ["b1", "b2", "w1", "w2"] and params["w1"].shape == (64, 64)
    if "no loss curve" not in out.stdout:
        assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step/s" in out.stderr  # the progress bar

    # against a running server: list and watch the finished job
    server, address = start_server()
    out = _run("-m", "gradwire", "train", "--server", address, "--model", "examples/mlp.py", "--data",
               str(tmp_path / "data.npz"), "--epochs", "1", "--batch-size", "100", "--out",
               str(tmp_path / "p2.npz"), "--plot", "")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split("job ", 1)[1].split()[0]
    listing = _run("-m", "gradwire", "jobs", "list", "--server", address)
    assert job_id in listing.stdout and "done" in listing.stdout
    watch = _run("-m", "gradwire", "jobs", "watch", job_id, "--server", address)
    assert f"job {job_id}: done" in watch.stdout


def test_digits_example_reaches_95_percent():
    pytest.importorskip("sklearn")
    out = _run("examples/digits.py", "--backend", "local", "--epochs", "15")
    assert out.returncode == 0, out.stdout + out.stderr
    accuracy = float(out.stdout.split("held-out accuracy ")[1].split("%")[0])
    assert accuracy >= 95.0
