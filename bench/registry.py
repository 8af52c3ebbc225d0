"""The workload registry: ``WORKLOADS`` maps a name to a function ``fn(config) -> rows``.

Adding a workload is one decorated function in a ``bench/workloads_*.py`` module (listed in
``gradwire.bench.WORKLOAD_MODULES``)::

    @workload("echo")
    def echo(cfg: Config) -> list[dict]:
        ...
        return [row("echo/server", stats=summarize(samples), ratio=..., target=1.5)]

Workload modules import heavy or optional dependencies (torch, ray, grpc) *inside* the
function, so ``--only NAME`` never pays for, or fails on, another workload's imports.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]
AUTO: Any = object()  # ``row(passed=AUTO)``: decide pass/fail from ratio and a numeric target


@dataclass
class Config:
    repeats: int = 24
    warmup: int = 2
    quick: bool = False  # a tiny smoke run: small sizes, few repeats; numbers mean nothing
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stdout, flush=True))


Workload = Callable[[Config], list[Row]]
WORKLOADS: dict[str, Workload] = {}


def workload(name: str) -> Callable[[Workload], Workload]:
    def register(fn: Workload) -> Workload:
        if name in WORKLOADS:
            raise ValueError(f"workload {name!r} registered twice")
        WORKLOADS[name] = fn
        return fn

    return register


def row(name: str, *, stats: dict[str, float] | None = None, ratio: float | None = None,
        target: float | str | None = None, passed: bool | None = AUTO, notes: str = "",
        **extra: Any) -> Row:
    """One result line. ``target`` given as a number means "ratio <= target" and decides
    ``pass`` unless ``passed`` is given (None: not judged); a string target is descriptive."""
    if passed is AUTO:
        passed = ratio <= target if isinstance(target, (int, float)) and ratio is not None else None
    out: Row = {
        "name": name,
        "median_ms": None if stats is None else stats["median_ms"],
        "min_ms": None if stats is None else stats["min_ms"],
        "ratio": ratio,
        "target": None if target is None else (f"<= {target:g}" if isinstance(target, (int, float)) else target),
        "pass": passed,
        "notes": notes,
    }
    if stats is not None:
        out["stats"] = stats
    out.update(extra)
    return out
