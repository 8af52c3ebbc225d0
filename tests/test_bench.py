"""`gradwire bench` stays runnable: a quick smoke run of the in-process workloads (the
full run, with its targets, is the benchmark itself, never a unit test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_contention_counts_the_work_a_workload_starts_as_its_own():
    """Servers and Ray workers a workload starts are its descendants: their CPU is not
    contention, while a process outside the tree is."""
    from gradwire.bench.timing import Contention

    spin = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"
    with Contention(interval=0.1) as own:  # a grandchild, as Ray's workers are (raylet's children),
        child = subprocess.Popen(["sh", "-c", f"{sys.executable} -c '{spin}' & wait"])
        time.sleep(1.7)  # and not reaped when the block ends
    child.wait()
    with Contention(interval=0.1) as foreign:  # detached: reparented away from this process
        subprocess.run(["sh", "-c", f"{sys.executable} -c '{spin}' > /dev/null 2>&1 &"], check=True)
        time.sleep(1.5)
    assert own.foreign_cpus is not None and foreign.foreign_cpus is not None
    assert own.foreign_cpus < 0.5 < foreign.foreign_cpus, (own.foreign_cpus, foreign.foreign_cpus)


def test_robustness_workloads_quick_smoke(tmp_path):
    """The aio_latency, stalled_streams and deadline_idle workloads produce their rows (the
    before/after rows only with GRADWIRE_BENCH_BASELINE_TREE, unset here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWIRE_BENCH_")}
    out = subprocess.run([sys.executable, "-m", "gradwire", "bench", "--quick", "--only", "aio_latency",
                          "--only", "stalled_streams", "--only", "deadline_idle", "--out", str(tmp_path / "bench.json")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "bench.json").read_text())
    assert not results["errors"], results["errors"]
    rows = {row["name"]: row for row in results["rows"]}
    keys = {"name", "median_ms", "min_ms", "ratio", "target", "pass", "notes", "workload"}
    assert all(keys <= set(row) for row in rows.values())
    latency = [r for r in rows.values() if r["workload"] == "aio_latency"]
    assert {"aio_latency/grpc echo (bare sync server, own process)",
            "aio_latency/floor: grpc.aio echo through loop -> thread pool -> loop"} <= set(rows)
    assert any(r["name"].startswith("aio_latency/gradwire after") and r["target"] for r in latency)
    assert any(r["name"] == "aio_latency/after / before" and "skipped" in r["notes"] for r in latency)
    stalled = [r for r in rows.values() if r["workload"] == "stalled_streams"]
    assert sorted(r["streams"] for r in stalled) == [0, 16]
    assert all(r["answered"] == r["checks"] and "p99_ms" in r["stats"] for r in stalled)
    idle = rows["deadline_idle/deadline -> server CPU idle"]
    assert {"node_ms", "bound_ms", "worst_ms", "trials"} <= set(idle)
    assert all(t["code"] == "DEADLINE_EXCEEDED" for t in idle["trials"])
