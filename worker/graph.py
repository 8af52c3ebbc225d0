"""The graph IR: plain data that the SDK builds, the wire carries and the engine runs.

Values share one namespace: batch inputs, parameters, constants and op nodes are all
referenced by name. Batch inputs may leave their leading dimension unknown (``None``);
the batch is split along it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .spec import TensorSpec

BATCH_REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphDef:
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    params: dict[str, TensorSpec] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    loss: str | None = None
    outputs: tuple[str, ...] = ()
    # How the loss treats the batch: "mean" (a per-example mean, the default) or "sum".
    # It decides how the losses and gradients of batch shards combine (docs/ARCHITECTURE.md).
    batch_reduction: str = "mean"

    def sources(self) -> dict[str, TensorSpec]:
        """Specs of every value that is not computed by a node."""
        out = dict(self.inputs)
        out.update(self.params)
        out.update({name: TensorSpec.of(value) for name, value in self.constants.items()})
        return out
