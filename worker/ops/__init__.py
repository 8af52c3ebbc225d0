"""The op table. Importing this package registers every op; ``OPS`` maps name -> ``Op``.

To add an op, register it in one of the modules below (see ``registry`` for the contract);
the engine, validator, wire format, SDK functions and registry-driven tests pick it up.
"""

from . import elementwise, reduce, shape  # noqa: F401  (registration)
from . import conv  # noqa: F401  (registration: conv2d, conv_transpose2d, pooling)
from . import norm  # noqa: F401  (registration: batch/layer/group/instance norm, dropout)
from . import math  # noqa: F401  (registration: comparisons, activations, reductions, gemm, einsum)
from . import indexing  # noqa: F401  (registration: gather, embedding, pad, split, ..., nll_loss)
from .registry import OPS, Attr, Op, Sample, ShapeError, unbroadcast

__all__ = ["OPS", "Attr", "Op", "Sample", "ShapeError", "unbroadcast"]
