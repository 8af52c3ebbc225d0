"""Smoke test of the CNN benchmark (no timing is judged here)."""

from __future__ import annotations

from gradwire.bench.registry import Config


def test_cnn_rows(monkeypatch):
    from gradwire.bench.workloads_cnn import cnn

    monkeypatch.setenv("GRADWIRE_BENCH_CNN_REPEATS", "2")
    rows = cnn(Config(repeats=2, warmup=1, quick=True, log=lambda msg: None))
    names = [r["name"] for r in rows]
    assert names[:2] == ["cnn/numpy im2col reference", "cnn/gradwire vs numpy"]
    assert rows[1]["ratio"] > 0 and rows[1]["peak_bytes"] > 0 and "within" in rows[0]["notes"]
