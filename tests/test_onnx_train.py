"""gradwire train --model model.onnx --loss NAME: an ONNX model trains as a job, its loss
chosen by name on its output and a labels input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ROOT = Path(__file__).resolve().parent.parent


def _model(path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, b = (rng.normal(size=(4, 3)) * 0.1).astype(np.float32), np.zeros(3, np.float32)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W", "b"], ["logits"])], "m",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "gradwire", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_an_onnx_model_trains_with_a_named_loss(tmp_path):
    _model(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)))
    out = _run("train", "--model", "m.onnx", "--loss", "softmax_cross_entropy", "--data", "d.npz", "--epochs", "3",
               "--batch-size", "20", "--out", "p.npz", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "p.npz") as params:
        assert sorted(params.files) == ["W", "b"] and params["W"].shape == (4, 3)
    missing = _run("train", "--model", "m.onnx", "--data", "d.npz", cwd=tmp_path)
    assert missing.returncode == 2 and "needs --loss" in missing.stderr


def test_submit_job_takes_an_onnx_model_and_a_loss_by_name(tmp_path, start_server):
    import gradwire as gw

    _model(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    data = {"x": x, "y": (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)}
    _, address = start_server()
    with gw.connect(address) as client:
        job = client.submit_job(str(tmp_path / "m.onnx"), None, data, gw.optim.SGD(lr=0.1), batch_size=20,
                                epochs=3, loss="softmax_cross_entropy")
        trained = job.result()
    graph, params = gw.client.onnx_io.training_graph(str(tmp_path / "m.onnx"), "softmax_cross_entropy")
    before = gw.local().value_and_grad(graph, params, data)[0]
    after = gw.local().value_and_grad(graph, trained, data)[0]
    assert sorted(trained) == ["W", "b"] and after < before
