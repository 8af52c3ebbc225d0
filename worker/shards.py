"""The micro-shard plan shared by every backend, so that their answers agree bitwise.

A batch of N examples is cut into ``n_shards`` contiguous slices whose sizes differ by at
most one (the plan depends on N and ``n_shards`` only, never on the worker count). Shard i
runs the engine with its backward pass seeded by its weight: ``n_i / N`` for a loss that is a
mean over the batch, 1 for a sum, so the weighted shard losses and gradients add up to the
whole batch's. Which one is derived from the graph (``Program.loss_batching``, see
``batching.py``), never taken from its declaration; a loss that is neither runs as one shard.
Results are summed in a fixed pairwise tree ordered by shard index: the same request gives
the same bits whichever worker ran which shard and in what order they finished.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .engine import Program, Result


def batch_size(program: Program, batch: dict[str, np.ndarray]) -> int | None:
    """The size of the batch dimension, or None when no input has an unknown leading dim."""
    for name, spec in program.graph.inputs.items():
        if spec.shape and spec.shape[0] is None:
            return int(batch[name].shape[0])
    return None


def shard_bounds(n_examples: int, n_shards: int) -> list[tuple[int, int]]:
    n_shards = max(1, min(n_shards, n_examples))
    base, extra = divmod(n_examples, n_shards)
    bounds, start = [], 0
    for i in range(n_shards):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def shard_batch(program: Program, batch: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """The shard's slice of every batched input (a view; unbatched inputs pass whole)."""
    inputs = program.graph.inputs
    return {k: v[start:stop] if inputs[k].shape and inputs[k].shape[0] is None else v for k, v in batch.items()}


@dataclass(frozen=True)
class Shard:
    """One micro-shard of a request: rows [start, stop) of the batch, its backward pass seeded
    by ``weight``. ``whole`` is the one shard of a request with no batch dimension: it takes
    every input whole (and start == stop == 0 then mean nothing)."""

    index: int
    start: int
    stop: int
    weight: float
    whole: bool = False

    def rows(self, program: Program, batch: dict[str, np.ndarray], base: int = 0) -> dict[str, np.ndarray]:
        """The shard's slice of ``batch``, which holds the batch's rows from ``base`` on."""
        return batch if self.whole else shard_batch(program, batch, self.start - base, self.stop - base)


WHOLE = Shard(0, 0, 0, 1.0, whole=True)


def plan_shards(program: Program, batch: dict[str, np.ndarray], n_shards: int, fetch=()) -> list[Shard]:
    """The request's shards: ``WHOLE`` when nothing is batched, else the plan of ``shard_plan``."""
    n = batch_size(program, batch)
    return [WHOLE] if n is None else plan_rows(program, n, n_shards, fetch)


def plan_rows(program: Program, n_examples: int, n_shards: int, fetch=()) -> list[Shard]:
    """The shards of a batch of ``n_examples`` rows; one whole-batch shard when a value fetched
    (``fetch``, else the graph's outputs) is not per-example."""
    if unshardable_fetch(program, fetch):
        n_shards = 1
    return [Shard(i, a, b, shard_weight(program, n_examples, a, b))
            for i, (a, b) in enumerate(shard_plan(program, n_examples, n_shards))]


def run_block(program: Program, params: dict[str, np.ndarray], batch: dict[str, np.ndarray],
              shards: Sequence[Shard], **run_kwargs) -> tuple[Result, list[float]]:
    """Consecutive shards of one request, ``batch`` holding exactly their rows, combined as the
    driver would combine them (an aligned block is a subtree of the fixed summation tree);
    with each shard's milliseconds."""
    base = shards[0].start
    results, ms = [], []
    for shard in shards:
        t = time.perf_counter()
        results.append(program.run(params, shard.rows(program, batch, base), loss_scale=shard.weight, **run_kwargs))
        ms.append((time.perf_counter() - t) * 1e3)
    return combine(results, program), ms


def unshardable_fetch(program: Program, fetch=()) -> str | None:
    """Why the fetched values keep the batch whole, if they do."""
    return program.loss_batching.fetch_reason(program.specs, tuple(fetch) or program.graph.outputs)


def shard_plan(program: Program, n_examples: int, n_shards: int) -> list[tuple[int, int]]:
    """``shard_bounds``, or one whole-batch shard when the loss does not decompose."""
    if program.loss_batching.reduction is None:
        return [(0, n_examples)]
    return shard_bounds(n_examples, n_shards)


def shard_weight(program: Program, n_examples: int, start: int, stop: int) -> float:
    # by the derived reduction: 1 for a sum and for a lone whole-batch shard
    if program.loss_batching.reduction == "mean":
        return (stop - start) / n_examples
    return 1.0


def tree_sum(parts: Sequence):
    """Pairwise sum in a fixed order: ((p0 + p1) + (p2 + p3)) + ... by index."""
    parts = list(parts)
    if not parts:
        raise ValueError("nothing to sum")
    while len(parts) > 1:
        parts = [parts[i] + parts[i + 1] if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


def aligned_blocks(n_shards: int, block: int) -> list[tuple[int, int]]:
    """Consecutive shard index ranges of ``block`` (a power of two) shards, the last one
    clipped. Such an aligned block is a subtree of ``tree_sum``'s pairing, so summing each
    block first and then the block sums (in order) gives the very same bits."""
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    return [(i, min(i + block, n_shards)) for i in range(0, n_shards, block)]


def combine(results: Sequence[Result], program: Program | None = None) -> Result:
    """Sum weighted shard results (ordered by shard index); fetched outputs concatenate.

    With ``program``, batch-independent values are told apart by their specs: gradients of
    unbatched inputs are summed like parameters', and fetched values without an unknown
    (batch) dimension stack by shard instead of being concatenated."""
    first = results[0]
    if len(results) == 1:
        return first
    loss = float(tree_sum([np.float64(r.loss) for r in results]))
    grads = {k: tree_sum([r.grads[k] for r in results]) for k in first.grads}
    input_grads = {}
    for k in first.input_grads:
        parts = [r.input_grads[k] for r in results]
        spec = None if program is None else program.graph.inputs.get(k)
        batched = spec is None or (bool(spec.shape) and spec.shape[0] is None)
        input_grads[k] = np.concatenate(parts) if batched else tree_sum(parts)
    outputs = {}
    for k in first.outputs:
        spec = None if program is None else program.specs.get(k)
        outputs[k] = _concat_or_stack([r.outputs[k] for r in results], None if spec is None else spec.shape)
    return Result(loss, grads, input_grads, outputs)


def _concat_or_stack(values: list[np.ndarray], shape: tuple | None) -> np.ndarray:
    # batched outputs concatenate along the batch; per-shard scalars (and, when the spec is
    # known, any value without a batch dimension) stack by shard
    if shape is None:
        return np.concatenate(values) if values[0].ndim else np.stack(values)
    if None in shape:
        return np.concatenate(values, axis=shape.index(None))
    return np.stack(values)


def run_sharded(program: Program, params: dict[str, np.ndarray], batch: dict[str, np.ndarray],
                n_shards: int = 1, **run_kwargs) -> Result:
    """Run every shard in this process and combine: the in-process twin of the Ray backend."""
    n = batch_size(program, batch)
    if n is None or n_shards <= 1 or program.loss_batching.reduction is None or \
            unshardable_fetch(program, run_kwargs.get("fetch", ())):
        return program.run(params, batch, **run_kwargs)
    program.bind(params, batch)  # reject a bad request once, before any shard runs
    results = [
        program.run(params, shard_batch(program, batch, a, b), loss_scale=shard_weight(program, n, a, b), **run_kwargs)
        for a, b in shard_bounds(n, n_shards)
    ]
    return combine(results, program)
