"""Tensor-carrying messages on the wire without copying their tensor bytes.

Protobuf's Python API copies a ``bytes`` field when a message is built, when it is
serialized, when it is parsed and on every read: four copies of each tensor byte per hop,
the largest cost of moving big tensors. The wire format stays exactly ``gradwire.v1``,
because an encoded protobuf message is just the concatenation of its encoded fields:

* ``Outgoing.encode`` serializes the small fields with protobuf and writes each
  ``TensorChunk`` itself (key, length, the chunk's small fields, a ``padding`` field that
  makes ``data`` start 16-byte aligned, then ``data`` taken straight from the array's
  buffer): one copy, into the bytes gRPC sends.
* ``decode`` walks the top-level fields of a large message, has protobuf parse the small
  ones and returns every chunk's ``data`` as a memoryview into the received message: a
  tensor that arrives in one piece is a zero-copy view of it, 16-byte aligned as NumPy
  would allocate it. (The ``Assembler`` copies a view that is not so aligned, from other
  writers: NumPy hands no unaligned array to BLAS, and the bits of a matmul would change.)
  The result, an ``Incoming``, reads like the message field by field but is not a protobuf
  message (no ``SerializeToString``, ``MergeFrom``, ...). Small messages, messages of many
  small pieces and anything the walk cannot read are left to protobuf's own parser.

Any protobuf peer (grpcurl, other languages) reads and writes the same bytes. TensorFlow's
``grpc_tensor_coding`` does the same for its tensors.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from ..protos import gradwire_pb2 as pb
from .validate import GraphError

ALIGN = 16  # where tensor data starts in an encoded message (received bytes objects are 16-aligned too)
SMALL_MESSAGE = 64 << 10  # bytes up to which a message is plain protobuf both ways (no framing)
MAX_WALKED_PIECES, MIN_WALKED_PIECE_BYTES = 64, 64 << 10  # beyond 64 + size/64 KiB pieces: protobuf parses
_LEN = 2  # protobuf wire type of length-delimited fields
_FIXED = {1: 8, 5: 4}  # wire type -> byte width
_DATA = pb.TensorChunk.DESCRIPTOR.fields_by_name["data"].number


class Piece(NamedTuple):
    """One ``TensorChunk``: the tensor's name, its dtype enum and shape (set on the piece
    at offset 0 only), the byte offset of this piece and its bytes."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    offset: int
    data: Any  # bytes-like: a memoryview into an array going out, or into a message received


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _padding(before_data: int, body: int) -> bytes:
    """The padding field after which data starts ALIGN-aligned: data would start at
    ``before_data`` plus the length prefix of the padded body plus the padding."""
    prefix = _varint_size(body)
    padding = _SHORTEST_PADDING[-(before_data + prefix) % ALIGN]
    if _varint_size(body + len(padding)) == prefix:
        return padding
    for padding in _PADDINGS:  # the padding lengthened the prefix: search
        if (before_data + _varint_size(body + len(padding)) + len(padding)) % ALIGN == 0:
            return padding
    raise AssertionError("unreachable: the paddings cover every remainder, twice")


def _key(number: int, wire_type: int = _LEN) -> bytes:
    return _varint(number << 3 | wire_type)


_DATA_KEY = _key(_DATA)
_PAD_KEY = _key(pb.TensorChunk.DESCRIPTOR.fields_by_name["padding"].number)
# no padding field, or one of 2..33 bytes: every remainder modulo ALIGN, whatever the length
# prefix of the body (which the padding may lengthen by a byte)
_PADDINGS = (b"", *(_PAD_KEY + _varint(n) + bytes(n) for n in range(2 * ALIGN)))
_SHORTEST_PADDING = {r: min((p for p in _PADDINGS if len(p) % ALIGN == r), key=len) for r in range(ALIGN)}


@lru_cache(maxsize=None)
def tensor_fields(cls) -> dict[str, int]:
    """The message type's ``repeated TensorChunk`` fields: name -> field number."""
    return {f.name: f.number for f in cls.DESCRIPTOR.fields if f.message_type is pb.TensorChunk.DESCRIPTOR}


# ---------------------------------------------------------------- out


class Outgoing:
    """A message to send: ``cls(**fields)`` plus the pieces of its tensor fields."""

    __slots__ = ("cls", "fields", "pieces")

    def __init__(self, cls, fields: dict | None = None, pieces: dict[str, list[Piece]] | None = None):
        self.cls, self.fields, self.pieces = cls, dict(fields or {}), dict(pieces or {})

    def encode(self) -> bytes:
        if sum(len(p.data) for pieces in self.pieces.values() for p in pieces) <= SMALL_MESSAGE:
            return self.build().SerializeToString()  # protobuf's C encoder; small copies cost less
        # a large message is framed however many pieces it has; a reader that finds too many
        # pieces per byte hands it to protobuf's parser
        numbers = tensor_fields(self.cls)
        parts = [self.cls(**self.fields).SerializeToString()]
        position = len(parts[0])
        for field in sorted(self.pieces, key=numbers.__getitem__):
            key = _key(numbers[field])
            for piece in self.pieces[field]:
                head = pb.TensorChunk(name=piece.name, dtype=piece.dtype, shape=piece.shape,
                                      offset=piece.offset).SerializeToString()
                size = len(piece.data)
                data_key = _DATA_KEY + _varint(size) if size else b""  # proto3 omits empty bytes
                before_data = position + len(key) + len(head) + len(data_key)  # then the body's length, padding
                padding = _padding(before_data, len(head) + len(data_key) + size) if size else b""
                body = len(head) + len(padding) + len(data_key) + size
                start = before_data + _varint_size(body) + len(padding)
                parts += [key, _varint(body), head, padding, data_key, piece.data]
                position = start + size
        return b"".join(parts)

    def build(self):
        """The same message built by protobuf (tensor data copied into it)."""
        return self.cls(**self.fields, **{
            field: [pb.TensorChunk(name=p.name, dtype=p.dtype, shape=p.shape, offset=p.offset, data=bytes(p.data))
                    for p in pieces] for field, pieces in self.pieces.items()})

    def to_proto(self):
        """The message as a protobuf peer would parse it off the wire."""
        return self.cls.FromString(self.encode())


def serialize(message) -> bytes:
    """gRPC serializer for both kinds of message a handler or caller produces."""
    return message.encode() if isinstance(message, Outgoing) else message.SerializeToString()


# ---------------------------------------------------------------- in


class Incoming:
    """A received message that reads like the protobuf message, except that its tensor
    fields are lists of ``Piece`` whose data are views into the received bytes."""

    __slots__ = ("message", "pieces")

    def __init__(self, message, pieces: dict[str, list[Piece]]):
        self.message, self.pieces = message, pieces

    def __getattr__(self, name: str):
        pieces = object.__getattribute__(self, "pieces")
        return pieces[name] if name in pieces else getattr(object.__getattribute__(self, "message"), name)


class Malformed:
    """Stands in for a request that is not valid protobuf: touching it raises a
    ``GraphError`` (INVALID_ARGUMENT), where failing inside gRPC's deserializer would
    answer INTERNAL with no message."""

    def __init__(self, what: str, error: Exception):
        self._error = f"malformed {what} message: {error}"

    def __getattr__(self, name: str):
        raise GraphError(object.__getattribute__(self, "_error"))


def _fields(view: memoryview):
    """(number, wire type, start, value start, end) of every field, in order."""
    pos, size = 0, len(view)
    while pos < size:
        start = pos
        key, pos = _read_varint(view, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError(f"field number 0 at byte {start}")
        if wire == 0:
            _, end = _read_varint(view, pos)
        elif wire == _LEN:
            length, pos = _read_varint(view, pos)
            end = pos + length
        elif wire in _FIXED:
            end = pos + _FIXED[wire]
        else:
            raise DecodeError(f"unsupported wire type {wire} at byte {start}")
        if end > size:
            raise DecodeError(f"field {number} at byte {start} runs past the end of the message")
        yield number, wire, start, pos, end
        pos = end


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise DecodeError(f"truncated or overlong varint at byte {pos}")
        byte = view[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _piece(view: memoryview) -> Piece:
    rest, data = [], b""
    for number, wire, start, value_start, end in _fields(view):
        if number == _DATA and wire == _LEN:
            data = view[value_start:end]  # the last occurrence wins, as in protobuf
        else:
            rest.append(view[start:end])
    head = pb.TensorChunk.FromString(b"".join(rest))
    return Piece(head.name, head.dtype, tuple(head.shape), head.offset, data)


class _TooManyPieces(Exception):
    """A message of many small pieces: protobuf's C parser handles it better than a walk."""


def decode(cls, data: bytes):
    """``cls.FromString(data)``; for a type with tensor fields and a large message, an
    ``Incoming`` whose tensor data are views into ``data``. Protobuf's parser stays the
    arbiter: it reads small messages, messages of many small pieces (a walk in Python
    would cost ~8 us a piece, before any limit is checked) and whatever the walk cannot
    read; it raises ``DecodeError`` on bytes that are not a ``cls``."""
    numbers = tensor_fields(cls)
    if not numbers or len(data) <= SMALL_MESSAGE:
        return cls.FromString(data)  # tensor fields then hold pb.TensorChunks (small copies)
    try:
        return _decode_in_place(cls, numbers, memoryview(data))
    except (DecodeError, _TooManyPieces):
        return cls.FromString(data)


def _decode_in_place(cls, numbers: dict[str, int], view: memoryview) -> Incoming:
    names = {number: name for name, number in numbers.items()}
    rest: list[memoryview] = []
    pieces: dict[str, list[Piece]] = {name: [] for name in numbers}
    budget = MAX_WALKED_PIECES + len(view) // MIN_WALKED_PIECE_BYTES
    for number, wire, start, value_start, end in _fields(view):
        if number in names and wire == _LEN:
            budget -= 1
            if budget < 0:
                raise _TooManyPieces
            pieces[names[number]].append(_piece(view[value_start:end]))
        else:
            rest.append(view[start:end])
    return Incoming(cls.FromString(b"".join(rest)), pieces)


def lenient_decoder(cls):
    """A server's request deserializer: malformed bytes become a ``Malformed`` request."""
    def decode_request(data: bytes):
        try:
            return decode(cls, data)
        except (DecodeError, ValueError) as exc:
            return Malformed(cls.DESCRIPTOR.name, exc)
    return decode_request
