"""Tensor metadata shared by the op table, the graph IR and the codec.

A dimension is an ``int`` or ``None`` (unknown until a batch arrives: the batch
dimension of an input). Shape rules work on ``TensorSpec`` only, so a graph can
be checked before any array exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The dtypes gradwire accepts anywhere: on the wire, in graphs, in kernels.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name) for name in ("float32", "float64", "int32", "int64", "bool")
}
FLOAT_DTYPES = frozenset({DTYPES["float32"], DTYPES["float64"]})
INT_DTYPES = frozenset({DTYPES["int32"], DTYPES["int64"]})

Shape = tuple[int | None, ...]


def as_dtype(dtype: object) -> np.dtype:
    """The numpy dtype for a name or dtype; ``ValueError`` if gradwire does not support it."""
    try:
        dt = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError as exc:
        raise ValueError(f"unsupported dtype {dtype!r}") from exc
    if dt.name not in DTYPES:
        raise ValueError(f"unsupported dtype {dt.name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[dt.name]


@dataclass(frozen=True)
class TensorSpec:
    shape: Shape
    dtype: np.dtype

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(d is not None for d in self.shape)

    @staticmethod
    def of(array: np.ndarray) -> "TensorSpec":
        return TensorSpec(tuple(int(d) for d in array.shape), np.dtype(array.dtype))


def num_elements(shape: Shape) -> int:
    """Exact element count (Python ints never overflow); unknown dims count as 1."""
    total = 1
    for d in shape:
        total *= 1 if d is None else d
    return total
