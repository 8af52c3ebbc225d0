"""A training job's batches: which rows each step takes, and gathering them.

Epoch e visits the examples in the order ``default_rng([seed, e]).permutation(N)``; step i
of an epoch takes its rows ``[i*B, (i+1)*B)`` of that order, sorted. The coordinator and
every worker compute the same order from the same three numbers, so a step needs to send
only its number: each worker gathers the rows of its own shards itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchOrder:
    seed: int
    n_examples: int
    batch_size: int

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_examples / self.batch_size)

    def rows(self, step: int, permutations: dict | None = None) -> np.ndarray:
        """The sorted example indices of ``step``; ``permutations`` (epoch -> order) caches an
        epoch's permutation for the steps after (it costs as much as a small step)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = None if permutations is None else permutations.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_examples)
            if permutations is not None:
                permutations.clear()  # one epoch at a time
                permutations[epoch] = order
        return np.sort(order[index * self.batch_size:(index + 1) * self.batch_size])


def gather(data: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of every dataset array, each a fresh C-contiguous array (from memory maps too)."""
    return {name: np.ascontiguousarray(array[rows]) for name, array in data.items()}
