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


def test_round_orders_vary_every_variants_predecessor():
    from gradwire.bench.timing import round_orders

    few = round_orders("abc", 12)
    assert len(few) == 12 and all(sorted(o) == ["a", "b", "c"] for o in few)
    assert len(set(few)) == 6  # every permutation
    many = round_orders("abcdef", 30)
    assert all(sorted(o) == list("abcdef") for o in many)
    predecessors = {o[o.index("a") - 1] for o in many if o.index("a") > 0}
    assert len(predecessors) == 5  # not always the same neighbour, as rotations would give
