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
@pytest.mark.skipif(os.environ.get("GRADWIRE_TEST_CONTENTION") != "1",
                    reason="opt-in (GRADWIRE_TEST_CONTENTION=1): it measures other processes' CPU, so a busy "
                           "machine fails it")
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
    assert {"node_ms", "bound_ms", "worst_ms", "trials", "counted_trials"} <= set(idle)
    assert idle["trials"] and all({"code", "idle_s", "busy_before"} <= set(t) for t in idle["trials"])


def _train_jobs_quick(tmp_path, no_ray: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWIRE_BENCH_")}
    if no_ray:
        env["GRADWIRE_BENCH_TRAIN_JOBS_NO_RAY"] = "1"
    out = subprocess.run([sys.executable, "-m", "gradwire", "bench", "--quick", "--only", "train_jobs",
                          "--out", str(tmp_path / "bench.json")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "bench.json").read_text())
    assert not results["errors"], results["errors"]
    rows = {row["name"]: row for row in results["rows"]}
    assert not [n for n in rows if "error" in n], rows
    keys = {"name", "median_ms", "min_ms", "ratio", "target", "pass", "notes", "workload"}
    assert all(keys <= set(row) for row in rows.values())
    return rows


def test_train_jobs_quick_smoke(tmp_path):
    """The training-job workload's in-process and local-backend rows (Ray variants skipped:
    each Ray server takes seconds to start). No timing is judged."""
    rows = _train_jobs_quick(tmp_path, no_ray=True)
    base, job = rows["train_jobs/a numpy SGD loop (hand-written)"], rows["train_jobs/a job, local backend"]
    assert base["ratio"] == 1.0 and base["examples_per_s"] > 0
    assert job["ratio"] > 0 and job["examples_per_s"] > 0 and job["step_ms"] > 0
    assert rows["train_jobs/a floor: gw.local() + SGD rule in-process"]["ratio"] > 0
    assert rows["train_jobs/a floor: job on a 1-node graph, local backend"]["step_ms"] > 0
    c = rows["train_jobs/c a job, local backend"]
    assert c["cpu_ms_per_step"] > 0 and c["source"] in ("hook", "e2e")
    for name in ("train_jobs/a pytorch SGD loop", "train_jobs/a ray train + ddp 2w x 1t (gloo)"):
        assert rows[name]["ratio"] is not None or "unavailable" in rows[name]["notes"]
    assert any(n.startswith("train_jobs/b") and "skipped" in r["notes"] for n, r in rows.items())
    assert all(r["pass"] is None for r in rows.values())  # --quick judges nothing


@pytest.mark.slow
def test_train_jobs_quick_smoke_with_ray(tmp_path):
    """The same at toy sizes with every Ray server (about a minute: five Ray starts)."""
    rows = _train_jobs_quick(tmp_path, no_ray=False)
    for name in ("train_jobs/a job, ray 2w x 1t, placement=ray", "train_jobs/a job, placement=auto (ray 2w x 1t)",
                 "train_jobs/b ideal 1 process(es) x 1 thread", "train_jobs/b job, ray 1w x 1t",
                 "train_jobs/a floor: ray no-op actor task round trip"):
        if name in rows:  # placement rows exist only where the server has the setting
            assert rows[name]["median_ms"] > 0, name
    assert rows["train_jobs/b job, ray 1w x 1t"]["ratio"] > 0
    c = rows["train_jobs/c b job, ray 1w x 1t"]
    assert c["cpu_ms_per_step"] > 0 and c["ray_in_bytes_per_step"] > 0
    speedup = rows["train_jobs/b job speedup 1 -> 2 workers"]
    assert speedup["ratio"] > 0 or "not measured" in speedup["notes"]  # 2 workers need 2 CPUs or GRADWIRE_BENCH_WORKERS
