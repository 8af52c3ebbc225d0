"""Wire codec: graphs and tensors to and from ``gradwire.v1`` protobufs, and tensor streams.

Tensor bytes are raw little-endian, decoded with ``np.frombuffer``; nothing the client
sends is ever unpickled. Every length, dtype and dimension is checked against the
declared spec and the configured limits *before* memory is allocated for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..protos import gradwire_pb2 as pb
from .frames import ALIGN, Outgoing, Piece
from .graph import GraphDef, Node
from .spec import DTYPES, TensorSpec, num_elements
from .validate import MAX_DIM, GraphError, LimitError, Limits

_TO_ENUM = {
    DTYPES["float32"]: pb.FLOAT32, DTYPES["float64"]: pb.FLOAT64,
    DTYPES["int32"]: pb.INT32, DTYPES["int64"]: pb.INT64, DTYPES["bool"]: pb.BOOL,
}
_FROM_ENUM = {v: k for k, v in _TO_ENUM.items()}
_WIRE_DTYPE = {dtype: dtype.newbyteorder("<") for dtype in _TO_ENUM}  # how the bytes on the wire read
# Tensor bytes per streamed message. Measured for 256 MiB up and down: 4, 8 and 16 MiB
# within noise of each other; in separate processes smaller messages pipeline better.
DEFAULT_CHUNK_BYTES = 4 << 20


def dtype_to_proto(dtype: np.dtype) -> int:
    value = _TO_ENUM.get(dtype)  # native dtypes, the common case: one lookup
    return _TO_ENUM[np.dtype(dtype).newbyteorder("=")] if value is None else value  # '>f8' is float64 too


def dtype_from_proto(value: int, what: str) -> np.dtype:
    if value not in _FROM_ENUM:
        raise GraphError(f"{what}: unknown or unspecified dtype enum {value}")
    return _FROM_ENUM[value]


def _little(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


# ---------------------------------------------------------------- graph


def spec_to_proto(spec: TensorSpec) -> pb.TensorSpec:
    return pb.TensorSpec(dtype=dtype_to_proto(spec.dtype), shape=[-1 if d is None else d for d in spec.shape])


def spec_from_proto(msg: pb.TensorSpec, what: str, max_rank: int = Limits.max_rank) -> TensorSpec:
    if len(msg.shape) > max_rank:  # before anything linear in the rank
        raise LimitError(f"{what}: shape of rank {len(msg.shape)} {list(msg.shape[:8])}...; the limit is {max_rank}")
    if any(d < -1 for d in msg.shape):
        raise GraphError(f"{what}: negative dimension in shape {list(msg.shape)}")
    return TensorSpec(tuple(None if d == -1 else int(d) for d in msg.shape), dtype_from_proto(msg.dtype, what))


def tensor_to_proto(array: np.ndarray) -> pb.Tensor:
    array = np.asarray(array)
    return pb.Tensor(dtype=dtype_to_proto(array.dtype), shape=array.shape, data=_little(array).tobytes())


def tensor_from_proto(msg: pb.Tensor, what: str, max_elements: int, max_rank: int = Limits.max_rank) -> np.ndarray:
    dtype = dtype_from_proto(msg.dtype, what)
    shape = _checked_shape(msg.shape, what, max_elements, max_rank)
    return _from_bytes(msg.data, dtype, shape, what)


def _checked_shape(dims, what: str, max_elements: int, max_rank: int = Limits.max_rank) -> tuple[int, ...]:
    if len(dims) > max_rank:  # before anything linear in the rank
        raise LimitError(f"{what}: shape of rank {len(dims)} {list(dims[:8])}...; the limit is {max_rank}")
    shape = tuple(map(int, dims))
    if shape and min(shape) < 0:
        raise GraphError(f"{what}: negative dimension in shape {shape}")
    n = num_elements(shape)  # exact: (2**32, 2**32) is 2**64, not an overflowed 0
    if n > max_elements:
        raise LimitError(f"{what}: shape {shape} holds {n} elements; the limit is {max_elements}")
    if n == 0 and shape and max(shape) > min(max_elements, MAX_DIM):  # a 0 hides huge dims from n
        raise LimitError(f"{what}: shape {shape} has a dimension of {max(shape)}; "
                         f"the limit is {min(max_elements, MAX_DIM)}")
    return shape


def _from_bytes(data: bytes, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
    expected = num_elements(shape) * dtype.itemsize
    if len(data) != expected:
        raise GraphError(f"{what}: {dtype.name}{list(shape)} needs {expected} bytes, got {len(data)}")
    array = np.frombuffer(data, dtype=_WIRE_DTYPE[dtype]).reshape(shape)
    _check_bool(array, what)
    # Keep the zero-copy view only if it is aligned as NumPy allocates (a misaligned array
    # reaches no BLAS: other bits) and fills most of its buffer (a small view would keep a
    # whole received message alive); a big-endian host needs a byte swap anyway.
    buffer_bytes = len(data.obj) if isinstance(data, memoryview) else len(data)
    if dtype.isnative and array.ctypes.data % ALIGN == 0 and 2 * array.nbytes >= buffer_bytes:
        return array
    return array.astype(dtype)  # a copy


def _check_bool(array: np.ndarray, what: str) -> None:
    if array.dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
        raise GraphError(f"{what}: bool tensor holds bytes other than 0 and 1")


def _attr_to_proto(value) -> pb.AttrValue:
    if isinstance(value, bool):
        return pb.AttrValue(b=value)
    if isinstance(value, int):
        return pb.AttrValue(i=value)
    if isinstance(value, float):
        return pb.AttrValue(f=value)
    if isinstance(value, str):
        return pb.AttrValue(s=value)
    return pb.AttrValue(ints=pb.Ints(values=[int(v) for v in value]))


def _attr_from_proto(msg: pb.AttrValue):
    kind = msg.WhichOneof("value")
    if kind == "ints":
        return list(msg.ints.values)
    return None if kind is None else getattr(msg, kind)


def graph_to_proto(graph: GraphDef) -> pb.Graph:
    return pb.Graph(
        inputs=[pb.NamedSpec(name=n, spec=spec_to_proto(s)) for n, s in graph.inputs.items()],
        params=[pb.NamedSpec(name=n, spec=spec_to_proto(s)) for n, s in graph.params.items()],
        constants=[pb.NamedTensor(name=n, tensor=tensor_to_proto(v)) for n, v in graph.constants.items()],
        nodes=[pb.Node(name=n.name, op=n.op, inputs=n.inputs,
                       attrs={k: _attr_to_proto(v) for k, v in n.attrs.items()}) for n in graph.nodes],
        loss=graph.loss or "",
        outputs=graph.outputs,
        batch_reduction=graph.batch_reduction,
    )


def graph_from_proto(msg: pb.Graph, limits: Limits | int | None = None) -> GraphDef:
    """The IR of a wire graph (structure only; the validator checks the rest). Counts and
    constant bytes are checked on the message first, before any of it is converted.
    ``limits`` may still be a bare int: the old ``max_elements`` argument."""
    if not isinstance(limits, Limits):
        limits = Limits() if limits is None else Limits(max_tensor_elements=limits)
    check_graph_size(msg, limits)

    def specs(entries, kind):
        out = {}
        for e in entries:
            if e.name in out:
                raise GraphError(f"duplicate {kind} name {e.name!r}")
            out[e.name] = spec_from_proto(e.spec, f"{kind} {e.name!r}", limits.max_rank)
        return out

    constants = {}
    for c in msg.constants:
        if c.name in constants:
            raise GraphError(f"duplicate constant name {c.name!r}")
        constants[c.name] = tensor_from_proto(c.tensor, f"constant {c.name!r}", limits.max_tensor_elements,
                                              limits.max_rank)
    return GraphDef(
        inputs=specs(msg.inputs, "batch input"),
        params=specs(msg.params, "parameter"),
        constants=constants,
        nodes=[Node(n.name, n.op, tuple(n.inputs), {k: _attr_from_proto(v) for k, v in n.attrs.items()})
               for n in msg.nodes],
        loss=msg.loss or None,
        outputs=tuple(msg.outputs),
        batch_reduction=msg.batch_reduction or "mean",
    )


def check_graph_size(msg: pb.Graph, limits: Limits) -> None:
    """Refuse a graph message whose size alone is over the limits: a few len() calls on the
    parsed message, where converting 2.5M nodes would take a minute and gigabytes."""
    for count, kind in ((len(msg.nodes), "nodes"), (len(msg.constants), "constants"),
                        (len(msg.inputs) + len(msg.params), "inputs and parameters")):
        if count > limits.max_nodes:
            raise LimitError(f"graph has {count} {kind}; the limit is {limits.max_nodes} "
                             "(refused before decoding)")
    nbytes = sum(c.tensor.ByteSize() for c in msg.constants)  # no copy of the data, unlike .data
    if nbytes > limits.max_constant_bytes:
        raise LimitError(f"graph's constants take {nbytes} bytes; the limit is {limits.max_constant_bytes} "
                         "(refused before decoding)")


def graph_from_bytes(data: bytes, limits: Limits | None = None) -> GraphDef:
    return graph_from_proto(pb.Graph.FromString(data), limits)


def graph_id_of_proto(msg: pb.Graph) -> str:
    """Content hash: the same graph always serializes (deterministically) to the same id."""
    return "g-" + hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()[:32]


def graph_id(graph: GraphDef) -> str:
    return graph_id_of_proto(graph_to_proto(graph))


# ---------------------------------------------------------------- tensor streams


def tensor_chunks(name: str, array: np.ndarray, chunk_bytes: int) -> Iterator[pb.TensorChunk]:
    """The pieces of one tensor as protobuf ``TensorChunk`` messages (each a copy: for
    building messages by hand; streams use ``stream_messages``)."""
    array = np.asarray(array)
    for p in _pieces(name, array, [(0, max(1, _nbytes(array)))], chunk_bytes):
        yield pb.TensorChunk(name=p.name, dtype=p.dtype, shape=p.shape, offset=p.offset, data=bytes(p.data))


def one_message(cls, fields: dict, groups: dict[str, dict[str, np.ndarray]]):
    """A ``cls`` protobuf carrying ``fields`` and every tensor of ``groups`` whole: the
    cheap form of a small message (a unary call); large ones go through ``stream_messages``."""
    message = cls(**fields)
    for group, tensors in groups.items():
        chunks = getattr(message, group)
        for name, value in tensors.items():
            array = np.asarray(value)
            chunks.add(name=name, dtype=dtype_to_proto(array.dtype), shape=array.shape, data=_little(array).tobytes())
    return message


def _nbytes(array: np.ndarray) -> int:
    return array.size * array.dtype.itemsize


def _pieces(name: str, array: np.ndarray, spans, chunk_bytes: int) -> Iterator[Piece]:
    """Pieces covering byte ``spans`` of ``array``, each a view of at most ``chunk_bytes``
    of it (no copy); the one at offset 0 declares the tensor."""
    shape = array.shape  # before _little: ascontiguousarray turns a 0-d scalar into shape (1,)
    array = _little(array)
    raw = memoryview(array).cast("B") if array.size else memoryview(b"")
    for start, stop in spans:
        for offset in range(start, max(start + 1, stop), chunk_bytes):
            data = raw[offset:min(stop, offset + chunk_bytes)]
            if offset == 0:
                yield Piece(name, dtype_to_proto(array.dtype), shape, 0, data)
            elif len(data):
                yield Piece(name, 0, (), offset, data)


def row_interleaved_chunks(tensors: dict[str, np.ndarray], chunk_bytes: int) -> Iterator[Piece]:
    """The tensors' pieces, those sharing the largest tensor's leading dimension (the batch)
    interleaved by blocks of rows: a receiver can start on the first examples while the
    rest are still in flight. Other tensors go first, whole."""
    arrays = {k: np.asarray(v) for k, v in tensors.items()}
    batched = [k for k, v in arrays.items() if v.ndim]
    if batched:
        rows = arrays[max(batched, key=lambda k: _nbytes(arrays[k]))].shape[0]
        batched = [k for k in batched if arrays[k].shape[0] == rows]
    for name, array in arrays.items():
        if name not in batched:
            yield from _pieces(name, array, [(0, max(1, _nbytes(array)))], chunk_bytes)
    if not batched:
        return
    row_bytes = {k: _nbytes(arrays[k]) // max(1, rows) for k in batched}
    block = max(1, chunk_bytes // max(1, sum(row_bytes.values())))
    iters = [
        (k, [(r * row_bytes[k], min(rows, r + block) * row_bytes[k]) for r in range(0, max(rows, 1), block)])
        for k in batched
    ]
    for i in range(len(iters[0][1])):
        for name, spans in iters:
            yield from _pieces(name, arrays[name], [spans[i]], chunk_bytes)


def stream_messages(cls, first: dict, groups: dict[str, dict[str, np.ndarray]],
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES, row_interleave: tuple[str, ...] = ()) -> Iterator[Outgoing]:
    """Messages of type ``cls`` carrying the fields ``first`` plus every tensor of ``groups``
    (field name -> {tensor name -> array}), packing pieces up to ``chunk_bytes`` per message.
    Groups named in ``row_interleave`` are sent row block by row block. The messages hold
    views of the arrays; ``frames.serialize`` writes them out with one copy."""
    pending: dict[str, list[Piece]] = {}
    size = 0
    header = dict(first)
    for field, tensors in groups.items():
        if field in row_interleave:
            pieces = row_interleaved_chunks(tensors, chunk_bytes)
        else:
            pieces = (p for name, array in tensors.items()
                      for p in _pieces(name, np.asarray(array), [(0, max(1, _nbytes(np.asarray(array))))], chunk_bytes))
        for piece in pieces:
            if size and size + len(piece.data) > chunk_bytes:
                yield Outgoing(cls, header, pending)
                header, pending, size = {}, {}, 0
            pending.setdefault(field, []).append(piece)
            size += len(piece.data)
    if pending or header:
        yield Outgoing(cls, header, pending)


@dataclass
class _Partial:
    array: np.ndarray
    filled: int
    whole: bool = False  # arrived in one piece: a zero-copy view of the message bytes


class Assembler:
    """Collects the TensorChunks of a stream into arrays, enforcing the limits as it goes."""

    def __init__(self, max_elements: int = 2**31, max_bytes: int = 1 << 62, reserve=None):
        """``reserve(nbytes, what)``, when given, is charged each tensor's bytes as the tensor
        is declared (its first piece), before they are allocated or arrive; it raises to refuse."""
        self.max_elements, self.max_bytes = max_elements, max_bytes
        self._reserve = reserve
        self.total_bytes = 0
        self._parts: dict[str, dict[str, _Partial]] = {}

    def add(self, field: str, chunk: Piece | pb.TensorChunk) -> None:
        # NOTE: every read of a protobuf bytes field copies it; read `data` once per piece.
        data = chunk.data
        parts = self._parts.setdefault(field, {})
        what = f"{field} tensor {chunk.name!r}"
        self.total_bytes += len(data)
        if self.total_bytes > self.max_bytes:
            raise LimitError(f"request carries more than {self.max_bytes} bytes of tensors (at {what})")
        if chunk.offset == 0:
            if chunk.name in parts:
                raise GraphError(f"{what} sent twice")
            dtype = dtype_from_proto(chunk.dtype, what)
            shape = _checked_shape(chunk.shape, what, self.max_elements)
            nbytes = num_elements(shape) * dtype.itemsize
            if len(data) > nbytes:
                raise GraphError(f"{what}: {dtype.name}{list(shape)} needs {nbytes} bytes, got at least {len(data)}")
            if nbytes > self.max_bytes:
                raise LimitError(f"{what}: {dtype.name}{list(shape)} needs {nbytes} bytes; the limit is {self.max_bytes}")
            if self._reserve is not None:
                self._reserve(nbytes, f"{what} {dtype.name}{list(shape)}")
            if len(data) == nbytes:
                parts[chunk.name] = _Partial(_from_bytes(data, dtype, shape, what), nbytes, whole=True)
                return
            parts[chunk.name] = _Partial(np.empty(shape, dtype), 0)
        part = parts.get(chunk.name)
        if part is None:
            raise GraphError(f"{what}: piece at offset {chunk.offset} before its first piece")
        flat = part.array.reshape(-1).view(np.uint8)
        if chunk.offset != part.filled or part.filled + len(data) > flat.size:
            raise GraphError(f"{what}: piece at offset {chunk.offset} with {len(data)} bytes does not "
                             f"continue the {part.filled} of {flat.size} bytes received")
        if len(data):  # an empty piece adds nothing (and a whole tensor is a read-only view)
            flat[part.filled:part.filled + len(data)] = np.frombuffer(data, np.uint8)
            part.filled += len(data)

    def add_message(self, message, fields: tuple[str, ...]) -> None:
        """Every piece that ``message`` carries in these tensor fields."""
        for field in fields:
            for chunk in getattr(message, field):
                self.add(field, chunk)

    def arrays(self, field: str) -> dict[str, np.ndarray]:
        """The field's tensors declared so far, complete or not (filled in place as pieces arrive)."""
        return {name: part.array for name, part in self._parts.get(field, {}).items()}

    def rows_filled(self, field: str, name: str) -> int:
        """How many leading rows of a declared tensor have fully arrived."""
        part = self._parts[field][name]
        complete = part.filled == part.array.nbytes
        if part.array.ndim == 0:
            return int(complete)
        if complete:
            return part.array.shape[0]
        return part.filled // (part.array.nbytes // part.array.shape[0])

    def result(self, field: str) -> dict[str, np.ndarray]:
        out = {}
        for name, part in self._parts.get(field, {}).items():
            expected = part.array.nbytes
            if part.filled != expected:
                raise GraphError(f"{field} tensor {name!r}: {part.array.dtype.name}{list(part.array.shape)} "
                                 f"needs {expected} bytes, got {part.filled}")
            if not part.whole:
                _check_bool(part.array, f"{field} tensor {name!r}")
            out[name] = part.array
        return out


def assemble(messages, field: str) -> dict[str, np.ndarray]:
    """One tensor field of a whole stream of messages, as complete arrays."""
    assembler = Assembler()
    for message in messages:
        assembler.add_message(message, (field,))
    return assembler.result(field)
