"""Shared measurement helpers for every workload: interleaved timing, robust statistics,
peak-memory measurement, BLAS/thread info and the result table.

Conventions every workload follows:

* Variants being compared run *interleaved* (A, B, C, then B, A, C, ...: each round runs
  every variant once, rounds cycle through all orders) after a warm-up, so slow drift and
  noise from the machine (another process, frequency scaling, a thread pool still spinning
  from the previous call) hit every variant equally instead of whichever ran last.
* Times are reported as the median (the headline), min, p50 and p99 of per-call wall time.
* Peak memory is the peak of bytes *added* during one call, measured with ``tracemalloc``
  (NumPy reports its data buffers to it, so arrays count, not just Python objects). It says
  nothing about memory a library allocates outside Python's view (e.g. PyTorch tensors).
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import random
import threading
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# ---------------------------------------------------------------- statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics
    (NumPy's default method), so p50 equals the median."""
    if not samples:
        raise ValueError("no samples")
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(samples: Sequence[float]) -> float:
    return percentile(samples, 50.0)


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Milliseconds: median, min, p50, p99, max, and the sample count."""
    ms = [s * 1e3 for s in seconds]
    return {
        "median_ms": median(ms),
        "min_ms": min(ms),
        "p50_ms": percentile(ms, 50.0),
        "p99_ms": percentile(ms, 99.0),
        "max_ms": max(ms),
        "n": len(ms),
    }


# ---------------------------------------------------------------- timing


def time_once(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call; its result is dropped *after* the clock stops."""
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    del out
    return elapsed


def round_orders(names: Sequence[str], rounds: int) -> list[tuple[str, ...]]:
    """The variant order of each of ``rounds`` rounds, in blocks of ``len(names)`` rounds
    that form a Latin square: within a block every variant runs once in every position (so
    none is always first, right after the collector, or always last), and each block's
    square is a fresh seeded shuffle, so a variant's predecessor changes from block to
    block (a fixed rotation would give it the same predecessor every round)."""
    names = tuple(names)
    rng = random.Random(0)
    orders: list[tuple[str, ...]] = []
    while len(orders) < rounds:
        base = rng.sample(names, len(names))
        block = [tuple(base[i:] + base[:i]) for i in range(len(names))]
        rng.shuffle(block)
        orders.extend(block)
    return orders[:rounds]


def interleaved(variants: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Per-call seconds of every variant, ``repeats`` samples each.

    Each variant first runs ``warmup`` times (caches, lazy imports, thread pools, first-touch
    page faults). Then every round runs each variant once, in an order that cycles through
    ``round_orders``: a call is measurably slowed by what ran just before it (one library's
    thread pool still spinning while another's starts: on a 2-CPU machine, 5-10%), so a
    fixed order, even rotated, would charge that to whichever variant always follows the
    same neighbour. The garbage collector is off while timing (and run between rounds), so
    a collection never lands in one sample.
    """
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    orders = round_orders(names, repeats)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            for name in orders[r]:
                samples[name].append(time_once(variants[name]))
            gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


# ---------------------------------------------------------------- memory


def peak_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated above the starting level during one call of ``fn`` (tracemalloc;
    includes NumPy array buffers and the call's results while they are alive)."""
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
        del out
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return peak - start


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20


# ---------------------------------------------------------------- environment


def blas_info() -> list[dict[str, Any]]:
    """The native thread pools loaded in this process (BLAS, OpenMP), via threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return []
    return [
        {k: info.get(k) for k in ("user_api", "internal_api", "version", "num_threads",
                                  "threading_layer", "architecture", "prefix")}
        for info in threadpool_info()
    ]


def blas_threads() -> int | None:
    """NumPy's BLAS thread count (the first BLAS pool loaded), or None if none is visible."""
    for info in blas_info():
        if info["user_api"] == "blas":
            return info["num_threads"]
    return None


def describe_pools(pools: list[dict[str, Any]]) -> list[str]:
    out = []
    for p in pools:
        extra = ", ".join(f"{k}={p[k]}" for k in ("version", "threading_layer", "architecture") if p.get(k))
        out.append(f"{p['internal_api']} ({p['user_api']}, {p['prefix']}): "
                   f"num_threads={p['num_threads']}" + (f", {extra}" if extra else ""))
    return out


def _system_busy_seconds() -> float | None:
    """CPU-seconds all CPUs spent busy since boot (Linux /proc/stat; steal counts as busy)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()  # this process's threads; its children are sampled (``_descendants_cpu``)
    return t.user + t.system


def _descendants_cpu() -> dict[int, float]:
    """CPU-seconds of every live process descending from this one, by pid (Linux /proc):
    the servers, Ray's raylet and workers a workload starts are its own work, not contention.
    Walks the tree through each task's ``children`` list, so its cost follows the tree's size,
    not the machine's process count."""
    tick = os.sysconf("SC_CLK_TCK")
    ours: dict[int, float] = {}
    frontier = [os.getpid()]
    while frontier:
        pid = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # gone meanwhile
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    frontier.extend(int(child) for child in f.read().split())
            except OSError:
                pass
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        ours[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return ours


class Contention:
    """How much CPU *other* work used while a block ran: system busy time minus this
    process's own (all its threads) and its descendants' (sampled every ``interval`` s, so a
    descendant that lives shorter than that is missed), per second of wall time.
    ``with Contention() as c:`` then ``c.foreign_cpus`` (None where /proc/stat is
    unavailable) and ``c.load_1min``."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval

    def __enter__(self) -> "Contention":
        self.foreign_cpus: float | None = None
        self.load_1min: float | None = None
        try:
            self.load_1min = os.getloadavg()[0]
        except (AttributeError, OSError):
            pass
        self._start = (time.perf_counter(), _system_busy_seconds(), _own_seconds())
        self._last: dict[int, float] = {}
        self._sample()
        self._first = dict(self._last)  # CPU they had used before the block is not the block's
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._run, name="bench-contention", daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        try:
            self._last.update(_descendants_cpu())
        except OSError:  # no /proc: only this process counts as own
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sampler.join()
        self._sample()
        wall0, busy0, own0 = self._start
        busy1 = _system_busy_seconds()
        wall = time.perf_counter() - wall0
        own1 = _own_seconds()
        descendants = sum(cpu - self._first.get(pid, 0.0) for pid, cpu in self._last.items())
        if busy0 is not None and busy1 is not None and wall > 0:
            self.foreign_cpus = max(0.0, ((busy1 - busy0) - (own1 - own0) - descendants) / wall)


def busy_warning(foreign_cpus: Sequence[float | None], cpus: int | None = None) -> str | None:
    """A warning when other work took more than 10% of the machine while timing: medians
    then measure the contention as much as the code (BLAS threads wait for each other)."""
    cpus = cpus or os.cpu_count() or 1
    seen = [x for x in foreign_cpus if x is not None]
    if seen and max(seen) > 0.1 * cpus:
        return (f"WARNING: other processes used {max(seen):.2f} of {cpus} CPUs while timing; medians "
                f"and ratios are unreliable (compare min_ms, or rerun on an idle machine)")
    return None


# ---------------------------------------------------------------- table

COLUMNS = ("name", "median_ms", "min_ms", "ratio", "target", "pass", "notes")


def _cell(row: Mapping[str, Any], col: str) -> str:
    value = row.get(col)
    if value is None:
        return "-"
    if col == "pass":
        return "PASS" if value else "FAIL"
    if col in ("median_ms", "min_ms"):
        return f"{value:.2f}"
    if col == "ratio":
        return f"{value:.3f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    cells = [[_cell(r, c) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(COLUMNS)]
    right = {"median_ms", "min_ms", "ratio"}

    def line(values):
        return "  ".join(v.rjust(w) if c in right else v.ljust(w)
                         for c, v, w in zip(COLUMNS, values, widths)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(COLUMNS), sep, *(line(v) for v in cells)])
