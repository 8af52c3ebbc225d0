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


def test_round_orders_balance_positions_and_vary_predecessors():
    from gradwire.bench.timing import round_orders

    for names in ("abc", "abcd", "abcdef"):
        n = len(names)
        orders = round_orders(names, 5 * n)
        assert len(orders) == 5 * n and all(sorted(o) == sorted(names) for o in orders)
        for block in range(5):  # every variant in every position once per block of n rounds
            rounds = orders[block * n:(block + 1) * n]
            assert all(sorted(o[position] for o in rounds) == sorted(names) for position in range(n))
        predecessors = {o[o.index("a") - 1] for o in orders if o.index("a") > 0}
        assert len(predecessors) > 1  # not always the same neighbour, as a fixed rotation gives
    assert round_orders("abcd", 9)[:4] != round_orders("abcd", 9)[4:8]
