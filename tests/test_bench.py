"""`gradwire bench` stays runnable: a quick smoke run of the in-process workloads (the
full run, with its targets, is the benchmark itself, never a unit test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_smoke(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gradwire", "bench", "--quick", "--only", "mlp", "--only", "latency",
                          "--out", str(tmp_path / "bench.json")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "bench.json").read_text())
    names = {row["name"] for row in results["rows"]}
    assert {"mlp/engine", "mlp/numpy (hand-written)", "latency/grpc echo (bare)"} <= names
    assert any(row["name"] == "mlp/check engine==numpy" and row["pass"] for row in results["rows"])
