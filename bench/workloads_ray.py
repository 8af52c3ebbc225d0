"""Ray workloads: the MLP step through a server with the Ray backend.

* ``ray_mlp``     (issue 4a) 2 workers x 1 BLAS thread, 8 micro-shards, session-based,
                  against ``gw.local()`` with 2 BLAS threads; the run's phase_ms medians.
* ``ray_scaling`` (issue 4b, 4c) examples/s with 1 BLAS thread per worker for N workers
                  (powers of two up to ``os.cpu_count()``, or ``GRADWIRE_BENCH_WORKERS=1,2,4``),
                  a fresh server + Ray (``num_cpus=N``) per N, against an ideal reference run
                  interleaved with it: the hand-written NumPy forward+backward of
                  ``workloads_core`` in N plain processes (spawned, 1 BLAS thread each), each
                  doing its 1/N of the batch per step, synchronized per step by the parent:
                  no framework, no transport, no reduction.

Every Ray cluster here is started by the server (``ServerConfig(backend="ray")`` with no
``ray_address``: loopback, ``num_cpus = workers``, no dashboard) and shut down by its
``stop``; if one is somehow left running, the workload shuts it down.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Iterator

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before anything imports ray

import numpy as np  # noqa: E402

from .registry import Config, Row, row, workload  # noqa: E402
from .timing import median, summarize  # noqa: E402
from .workloads_service import (  # noqa: E402
    cpu_of,
    fmt_phases,
    gradwire_server,
    ms_list,
    paired_ratio,
    phase_medians,
    scaled_repeats,
    scaled_warmup,
    timed,
)


@contextlib.contextmanager
def ray_server(**config) -> Iterator[tuple[object, str]]:
    """``gradwire_server(backend="ray", ...)``; afterwards no Ray may be left running by us."""
    import ray

    was_running = ray.is_initialized()
    try:
        with gradwire_server(backend="ray", **config) as started:
            yield started
    finally:
        if not was_running and ray.is_initialized():  # the server's stop should have done this
            ray.shutdown()


def _loss_close(a: float, b: float, rtol: float = 1e-4) -> bool:
    return bool(np.isclose(a, b, rtol=rtol, atol=0))


def _worker_spread(infos: list[dict]) -> str:
    counts = Counter(s["worker"] for info in infos for s in info["shards"])
    pids = sorted({s["pid"] for info in infos for s in info["shards"]})
    return f"shards per worker {dict(sorted(counts.items()))} over pids {pids}"


def _shard_ms(infos: list[dict]) -> float:
    return median([s["ms"] for info in infos for s in info["shards"]])


# ---------------------------------------------------------------- ray_mlp (issue 4a)

RAY_MLP_TARGET = 1.25  # Ray server (2 workers x 1 BLAS thread) median / gw.local() (2 BLAS threads) median
RAY_MLP_REPEATS = 10


@workload("ray_mlp")
def ray_mlp(cfg: Config) -> list[Row]:
    """MLP step through a Ray-backend server (2 workers, 1 BLAS thread each) vs gw.local()."""
    import gradwire as gw
    from .workloads_core import MLP_BATCH, MLP_QUICK_BATCH, mlp_data, mlp_graph

    n = MLP_QUICK_BATCH if cfg.quick else MLP_BATCH
    workers, threads = 2, 2
    repeats = scaled_repeats(cfg, "ray_mlp", RAY_MLP_REPEATS)
    params, batch = mlp_data(n)
    graph = mlp_graph()
    local = gw.local(blas_threads=threads)
    infos: list[dict] = []
    t0 = time.perf_counter()
    with ray_server(workers=workers, blas_threads=1, shards=8) as (server, address), gw.connect(address) as client:
        started = time.perf_counter() - t0
        sess = client.session(graph, params)

        def run_ray():
            loss, grads, info = sess.value_and_grad(batch, return_info=True)
            infos.append(info)
            return loss, grads

        ref = gw.local(shards=8, blas_threads=1).value_and_grad(graph, params, batch)
        got = run_ray()
        same = got[0] == ref[0] and all(np.array_equal(got[1][k], ref[1][k]) for k in ref[1])
        cfg.log(f"[ray_mlp] batch={n}; Ray server up in {started:.1f}s ({workers} workers x 1 BLAS thread, "
                f"shards=8); bitwise == gw.local(shards=8, blas_threads=1): {same}; {repeats} rounds interleaved")
        infos.clear()
        samples = timed({"local": lambda: local.value_and_grad(graph, params, batch), "ray": run_ray},
                        repeats=repeats, warmup=scaled_warmup(cfg))
        identities = server.backend.worker_identities()

    stats = {k: summarize(v) for k, v in samples.items()}
    ratio = stats["ray"]["median_ms"] / stats["local"]["median_ms"]
    ph = phase_medians(infos)
    shard_ms = _shard_ms(infos)
    cfg.log(f"[ray_mlp] phase_ms medians: {fmt_phases(ph)}; shard run medians {shard_ms:.1f} ms; "
            f"{_worker_spread(infos)}; workers {[i['pid'] for i in identities]}")
    gate = not cfg.quick
    return [
        row("ray_mlp/gw.local() 2 BLAS threads", stats=stats["local"], ratio=1.0,
            notes=f"baseline; threadpoolctl limit {threads}", samples_ms=ms_list(samples["local"]), batch=n),
        row("ray_mlp/ray server 2x1 thread", stats=stats["ray"], ratio=ratio, target=RAY_MLP_TARGET,
            passed=ratio <= RAY_MLP_TARGET if gate else None,
            notes=f"paired {paired_ratio(samples['ray'], samples['local']):.3f}; session, 8 shards; "
                  f"bitwise==local(8 shards) {same}",
            samples_ms=ms_list(samples["ray"]), batch=n, phase_ms=ph),
        row("ray_mlp/ray phase_ms medians", target="info",
            notes=f"{fmt_phases(ph)}; per-shard run (in worker) median {shard_ms:.1f} ms x 8 shards / 2 workers; "
                  f"{_worker_spread(infos)}",
            phase_ms=ph, shard_ms_median=shard_ms),
    ]


# ---------------------------------------------------------------- ray_scaling (issues 4b, 4c)

SCALING_TARGET = 1.7  # throughput at 2 workers / at 1, at least
IDEAL_TARGET = 0.85  # gradwire throughput / ideal throughput at every N, at least
SCALING_REPEATS = 8


def worker_counts() -> list[int]:
    """``GRADWIRE_BENCH_WORKERS`` ("1,2,4"), else powers of two up to ``os.cpu_count()``."""
    env = os.environ.get("GRADWIRE_BENCH_WORKERS", "").strip()
    if env:
        counts = sorted({int(v) for v in env.split(",") if v.strip()})
        if not counts or counts[0] < 1:
            raise ValueError(f"GRADWIRE_BENCH_WORKERS={env!r}: expected positive integers like 1,2,4")
        return counts
    cpus = os.cpu_count() or 1
    return [2 ** i for i in range(int(math.log2(cpus)) + 1)]


def _ideal_worker(conn, rank: int, n_workers: int, n: int, seed: int) -> None:
    """One process of the ideal reference: its 1/N slice of the batch, forward+backward by
    the hand-written NumPy of workloads_core, 1 BLAS thread, one step per message."""
    import numpy  # noqa: F401 - load BLAS before limiting it
    from threadpoolctl import threadpool_info, threadpool_limits

    from .workloads_core import mlp_data, mlp_numpy
    from ..worker.shards import shard_bounds

    limiter = threadpool_limits(limits=1)  # noqa: F841 - kept for the process's lifetime
    params, batch = mlp_data(n, seed)
    a, b = shard_bounds(n, n_workers)[rank]
    part = {k: np.ascontiguousarray(v[a:b]) for k, v in batch.items()}
    del batch
    mlp_numpy(params, part)  # first-touch and BLAS warm-up
    threads = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    conn.send(("ready", os.getpid(), threads))
    while True:
        msg = conn.recv()
        if msg is None:
            break
        t = time.perf_counter()
        loss, _ = mlp_numpy(params, part)
        conn.send((time.perf_counter() - t, loss))
    conn.close()


def start_children(n_workers: int, target, args_of, name: str, conns: list, procs: list) -> list:
    """Spawn ``n_workers`` processes running ``target(pipe, *args_of(rank))``, appending each's
    pipe and handle to ``conns``/``procs`` as it starts (so ``stop_children`` stops what began),
    and return each child's first message (its ready report)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for rank in range(n_workers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(child, *args_of(rank)), daemon=True, name=f"{name}-{rank}")
        proc.start()
        child.close()
        conns.append(parent)
        procs.append(proc)
    return [c.recv() for c in conns]


def stop_children(conns, procs) -> None:
    """Tell each child process to stop (None on its pipe), join it, kill it by its own handle if it
    does not, and close the pipes."""
    for c in conns:
        with contextlib.suppress(OSError, BrokenPipeError):
            c.send(None)
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
    for c in conns:
        c.close()


class IdealPool:
    """N spawned processes; ``step()`` runs one synchronized step (all slices, wait for all)."""

    def __init__(self, n_workers: int, n: int, seed: int = 0):
        self.conns, self.procs = [], []
        try:
            ready = start_children(n_workers, _ideal_worker, lambda rank: (rank, n_workers, n, seed),
                                   "gradwire-bench-ideal", self.conns, self.procs)
        except BaseException:
            self.close()
            raise
        self.pids = [r[1] for r in ready]
        self.blas_threads = [r[2] for r in ready]
        self.losses: list[float] = []

    def step(self) -> list[float]:
        for c in self.conns:
            c.send(1)
        out = [c.recv() for c in self.conns]
        self.losses = [loss for _, loss in out]
        return [t for t, _ in out]

    def close(self) -> None:
        stop_children(self.conns, self.procs)

    def __enter__(self) -> "IdealPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@workload("ray_scaling")
def ray_scaling(cfg: Config) -> list[Row]:
    """examples/s of MLP steps vs worker count, against N plain NumPy processes."""
    import gradwire as gw
    from .workloads_core import MLP_BATCH, MLP_QUICK_BATCH, mlp_data, mlp_graph, mlp_numpy

    n = MLP_QUICK_BATCH if cfg.quick else MLP_BATCH
    counts = worker_counts()
    repeats = scaled_repeats(cfg, "ray_scaling", SCALING_REPEATS)
    params, batch = mlp_data(n)
    graph = mlp_graph()
    ref_loss = mlp_numpy(params, batch)[0]
    gate = not cfg.quick
    results: dict[int, dict] = {}
    cfg.log(f"[ray_scaling] batch={n}, workers {counts} (cpu_count {os.cpu_count()}), 1 BLAS thread per "
            f"worker/process, {repeats} steps per variant interleaved per N")
    for workers in counts:
        shards = workers * math.ceil(8 / workers)  # >= 8 and a multiple of N: every worker gets equal work
        infos: list[dict] = []
        t0 = time.perf_counter()
        with ray_server(workers=workers, blas_threads=1, shards=shards) as (server, address), \
                IdealPool(workers, n) as ideal, gw.connect(address) as client:
            started = time.perf_counter() - t0
            sess = client.session(graph, params)

            driver_cpu: list[float] = []  # this process: the client, the gRPC server, the Ray driver

            def run_gradwire():
                (loss, grads, info), cpu = cpu_of(sess.value_and_grad, batch, return_info=True)
                driver_cpu.append(cpu)
                infos.append(info)
                return loss

            loss = run_gradwire()
            ok = _loss_close(loss, ref_loss)
            infos.clear()
            driver_cpu.clear()
            samples = timed({"gradwire": run_gradwire, "ideal": ideal.step}, repeats=repeats,
                            warmup=scaled_warmup(cfg))
            ideal_ok = _loss_close(sum(ideal.losses[r] * (b - a) / n for r, (a, b) in
                                       enumerate(_bounds(n, workers))), ref_loss)
        stats = {k: summarize(v) for k, v in samples.items()}
        res = results[workers] = {
            "stats": stats, "samples": samples, "shards": shards, "ok": ok and ideal_ok,
            "gw_eps": n / (stats["gradwire"]["median_ms"] / 1e3),
            "ideal_eps": n / (stats["ideal"]["median_ms"] / 1e3),
            "phases": phase_medians(infos), "shard_ms": _shard_ms(infos), "spread": _worker_spread(infos),
            "ideal_threads": ideal.blas_threads, "startup_s": started, "driver_cpu_ms": median(driver_cpu) * 1e3,
        }
        cfg.log(f"[ray_scaling] N={workers}: gradwire {res['gw_eps']:,.0f} ex/s, ideal {res['ideal_eps']:,.0f} "
                f"ex/s (ratio {res['gw_eps'] / res['ideal_eps']:.3f}); Ray up in {started:.1f}s; phase_ms "
                f"{fmt_phases(res['phases'])}; shard median {res['shard_ms']:.1f} ms; {res['spread']}; "
                f"ideal BLAS threads {ideal.blas_threads}; losses ok {res['ok']}")

    rows: list[Row] = []
    cfg.log("[ray_scaling]   N  gradwire ex/s  ideal ex/s  gradwire/ideal")
    for workers, res in results.items():
        ratio = res["gw_eps"] / res["ideal_eps"]
        # where the gap is: a worker's own shard compute per step (in-worker timings) bounds the
        # ratio even with free transport, and the rest of the step the worker waits
        worker_ms = res["shard_ms"] * res["shards"] / workers
        compute_bound = res["stats"]["ideal"]["median_ms"] / worker_ms
        busy = worker_ms / res["stats"]["gradwire"]["median_ms"]
        cfg.log(f"[ray_scaling] {workers:3d}  {res['gw_eps']:13,.0f}  {res['ideal_eps']:10,.0f}  {ratio:14.3f}")
        rows.append(row(f"ray_scaling/ideal numpy N={workers}", stats=res["stats"]["ideal"], ratio=1.0,
                        notes=f"baseline; {res['ideal_eps']:,.0f} examples/s; {workers} spawned process(es) x "
                              f"{n // workers} examples, BLAS threads {res['ideal_threads']}",
                        examples_per_s=res["ideal_eps"], workers=workers,
                        samples_ms=ms_list(res["samples"]["ideal"])))
        rows.append(row(f"ray_scaling/gradwire N={workers}", stats=res["stats"]["gradwire"], ratio=ratio,
                        target=f">= {IDEAL_TARGET:g}", passed=(ratio >= IDEAL_TARGET and res["ok"]) if gate else None,
                        notes=f"ratio = gradwire ex/s / ideal ex/s; {res['gw_eps']:,.0f} examples/s; shards "
                              f"{res['shards']}; paired "
                              f"{1 / paired_ratio(res['samples']['gradwire'], res['samples']['ideal']):.3f}; "
                              f"phase_ms {fmt_phases(res['phases'])}; loss ok {res['ok']}; a worker's shards "
                              f"take {worker_ms:.0f} ms per step (busy {busy:.0%} of it), which alone bounds the "
                              f"ratio at {compute_bound:.2f}; client + server + Ray driver use "
                              f"{res['driver_cpu_ms']:.0f} ms of CPU per step besides",
                        examples_per_s=res["gw_eps"], workers=workers, phase_ms=res["phases"],
                        compute_bound=compute_bound, worker_busy=busy, driver_cpu_ms=res["driver_cpu_ms"],
                        samples_ms=ms_list(res["samples"]["gradwire"])))
    if 1 in results and 2 in results:
        speedup = results[2]["gw_eps"] / results[1]["gw_eps"]
        ideal_speedup = results[2]["ideal_eps"] / results[1]["ideal_eps"]
        rows.append(row("ray_scaling/gradwire speedup 1->2 workers", ratio=speedup, target=f">= {SCALING_TARGET:g}",
                        passed=speedup >= SCALING_TARGET if gate else None,
                        notes=f"ratio = ex/s at 2 / ex/s at 1; the ideal reference's speedup 1->2 is "
                              f"{ideal_speedup:.3f} on this machine",
                        speedup=speedup, ideal_speedup=ideal_speedup))
    else:
        rows.append(row("ray_scaling/gradwire speedup 1->2 workers",
                        notes=f"not measured: worker counts {counts} do not include 1 and 2"))
    return rows


def _bounds(n: int, workers: int):
    from ..worker.shards import shard_bounds

    return shard_bounds(n, workers)
