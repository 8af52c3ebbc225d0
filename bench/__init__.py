"""``gradwire bench``: run registered workloads, print a table, write JSON.

    gradwire bench [--only NAME ...] [--repeats N] [--quick] [--out PATH]

Workloads live in ``bench/workloads_*.py`` and register themselves with
``@workload(name)`` (see ``registry``); a new module is added to ``WORKLOAD_MODULES``.
Shared timing/memory helpers are in ``timing``. The exit status is 1 if any row with a
target fails, so CI can gate on it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from .registry import WORKLOADS, Config, Row, row
from .timing import Contention, blas_info, busy_warning, format_table

# Each module registers its workloads on import; add one line per new module.
WORKLOAD_MODULES = (
    "gradwire.bench.workloads_core",
    "gradwire.bench.workloads_service",
    "gradwire.bench.workloads_ray",
    "gradwire.bench.workloads_train",
    "gradwire.bench.workloads_jobs",
    "gradwire.bench.workloads_robust",
    "gradwire.bench.workloads_security",
    "gradwire.bench.workloads_cnn",
)


def load_workloads() -> dict:
    for module in WORKLOAD_MODULES:
        importlib.import_module(module)
    return WORKLOADS


def _parser(names: list[str], parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser_class(prog="gradwire bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", metavar="NAME", choices=names,
                   help=f"run only this workload (repeatable; choices: {', '.join(names)})")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="timed calls per variant (default 24; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, metavar="N",
                   help="untimed calls per variant first (default 2; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: small sizes, few repeats")
    p.add_argument("--out", default="bench-results.json", metavar="PATH",
                   help="JSON results file (default: bench-results.json)")
    return p


def _environment() -> dict[str, Any]:
    import numpy as np

    env_vars = {k: v for k, v in os.environ.items()
                if k.startswith(("OPENBLAS", "OMP_", "MKL", "GOTO", "BLIS", "NVPL", "VECLIB"))}
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "env": env_vars,
        "threadpools": blas_info(),
    }


def main(argv: list[str] | None = None, parser_class=argparse.ArgumentParser) -> int:
    """``gradwire bench`` (the command line passes its own parser class: one-line errors)."""
    workloads = load_workloads()
    parser = _parser(list(workloads), parser_class)
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    cfg = Config(
        repeats=args.repeats if args.repeats is not None else (3 if args.quick else 24),
        warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
        quick=args.quick,
    )
    selected = args.only or list(workloads)
    results: list[Row] = []
    errors: dict[str, str] = {}
    started = time.time()
    contention: dict[str, dict[str, float | None]] = {}
    for name in selected:
        t0 = time.perf_counter()
        with Contention() as busy:
            try:
                rows = workloads[name](cfg)
            except Exception as exc:  # noqa: BLE001 - one broken workload must not hide the others
                errors[name] = f"{type(exc).__name__}: {exc}"
                rows = [row(f"{name}/error", passed=False, notes=errors[name])]
        contention[name] = {"foreign_cpus": busy.foreign_cpus, "load_1min_before": busy.load_1min}
        for r in rows:
            r.setdefault("workload", name)
        results.extend(rows)
        cfg.log(f"[{name}] done in {time.perf_counter() - t0:.1f}s; other processes used "
                f"{_fmt(busy.foreign_cpus)} CPUs meanwhile (1-min load before: {_fmt(busy.load_1min)})")

    print()
    print(format_table(results))
    failed = [r["name"] for r in results if r.get("pass") is False]
    print()
    print(f"{len(results)} rows, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    warning = busy_warning([c["foreign_cpus"] for c in contention.values()])
    if warning:
        print(warning)
    if cfg.quick:
        print("--quick: a smoke run at toy sizes; timing and memory targets are not judged")

    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 3),
        "config": {"repeats": cfg.repeats, "warmup": cfg.warmup, "quick": cfg.quick, "only": selected},
        "environment": _environment(),
        "contention": contention,
        "warnings": [warning] if warning else [],
        "rows": results,
        "errors": errors,
    }
    out = Path(args.out)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


def _fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}"


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


__all__ = ["main", "WORKLOADS", "WORKLOAD_MODULES", "Config", "row"]
