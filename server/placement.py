"""Placement by cost: run a computation on the Ray workers, or in the coordinator process.

The determinism design makes the choice free of consequences for the answer: the same shard
plan with one BLAS thread per shard gives the same bits in this process as on any worker
(a Ray-backend server pins its own BLAS to the workers' thread count). So the only question
is time. A computation's floating-point work (the admission estimate) against two figures
measured when the backend starts: this process's rate for the engine's kind of work, and the
round trip of a task to a worker. Steps too small to gain from the workers run here.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from ..worker.validate import GraphError

MODES = ("auto", "ray", "local")
# a step on Ray costs more than a bare round trip: the parameters' put, one task per worker,
# collecting and summing their answers (measured: about 3 round trips of an empty task)
RAY_STEP_ROUND_TRIPS = 3.0


@dataclass(frozen=True)
class Placement:
    where: str  # "ray" or "local"
    estimated_ms: float
    reason: str

    def describe(self) -> str:
        return f"{self.where}: {self.reason}"


LOCAL = Placement("local", 0.0, "the local backend")


@dataclass(frozen=True)
class Planner:
    mode: str  # the server's --placement
    workers: int
    flops_per_ms: float  # this process, one BLAS thread
    round_trip_ms: float  # an empty task to a worker and back

    def place(self, flops: float, requested: str = "") -> Placement:
        mode = requested or self.mode
        if mode not in MODES:
            raise ValueError(f"placement must be one of {MODES}, got {mode!r}")
        here = flops / self.flops_per_ms
        there = here / max(1, self.workers) + RAY_STEP_ROUND_TRIPS * self.round_trip_ms
        figures = (f"~{here:.2f} ms here vs ~{there:.2f} ms on {self.workers} Ray workers "
                   f"(a round trip {self.round_trip_ms:.2f} ms)")
        if mode == "local":
            return Placement("local", here, f"placement local requested; {figures}")
        if mode == "ray":
            return Placement("ray", there, f"placement ray requested; {figures}")
        if here <= there:
            return Placement("local", here, f"too small to gain from the workers: {figures}")
        return Placement("ray", there, f"worth the workers: {figures}")


SHARD_FLOPS = 2e7  # a micro-shard's least work: below it a shard's fixed cost (~0.1 ms) outweighs its share


def shards_by_cost(flops: float, ceiling: int) -> int:
    """The micro-shard count for a computation of ``flops`` when nobody chose one: a power of two,
    each shard at least ``SHARD_FLOPS`` of work, at most ``ceiling``. It depends on the graph and
    the batch only (never on workers or placement), so the bits do too."""
    shards = 1
    while shards * 2 <= ceiling and flops / (shards * 2) >= SHARD_FLOPS:
        shards *= 2
    return shards


def check_placement(placement: str) -> None:
    """A request's or job's placement: empty (the server's) or one of ``MODES``."""
    if placement and placement not in MODES:
        raise GraphError(f"placement must be one of {MODES} (or empty: the server's), got {placement!r}")


def measure_flops_per_ms(repeats: int = 5) -> float:
    """This process's rate on a mid-sized float32 matmul plus an elementwise pass: the mix of
    an MLP step (the caller pins the BLAS threads first)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((128, 256), np.float32), rng.standard_normal((256, 256), np.float32)
    flops = 2 * 128 * 256 * 256 + 4 * 128 * 256
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.tanh(a @ b)
        times.append(time.perf_counter() - t)
    return flops / (min(times) * 1e3)


def measure_round_trip_ms(call, repeats: int = 5) -> float:
    """The median time of ``call()``, a blocking round trip to a worker, in ms."""
    call()  # warm: the first call pays for connections
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3
