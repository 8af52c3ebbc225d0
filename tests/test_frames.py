"""The zero-copy tensor framing: the same bytes as protobuf both ways, tensors received
whole are views of the message, and malformed messages are refused by name."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import gradwire as gw
from gradwire.protos import gradwire_pb2 as pb
from gradwire.worker import frames
from gradwire.worker.codec import Assembler, graph_to_proto, one_message, stream_messages
from gradwire.worker.validate import GraphError

TENSORS = {
    "a": np.arange(1000, dtype=np.float32).reshape(100, 10),
    "b": np.ones((3, 3)),
    "empty": np.zeros((0, 4), np.int32),
    "scalar": np.array(7, np.int64),
    "flags": np.array([True, False, True]),
    "big_endian": np.arange(6, dtype=">f8"),
}


@pytest.fixture(params=["walked", "parsed whole"])
def decode_path(request, monkeypatch):
    """Both ways ``decode`` reads a message: walking its fields (large messages, tensor data
    left in place) and protobuf's parser (small ones)."""
    monkeypatch.setattr(frames, "SMALL_MESSAGE", -1 if request.param == "walked" else 1 << 40)
    return request.param


def _messages(chunk_bytes=512, **kwargs):
    header = pb.ComputeHeader(graph_id="g-x", wrt=["w"], shards=3)
    return list(stream_messages(pb.ComputeRequest, {"header": header},
                                {"params": {"w": np.full((5, 7), 0.25)}, "batch": TENSORS}, chunk_bytes, **kwargs))


def _by_protobuf(message: frames.Outgoing):
    """The same message built and serialized by protobuf alone."""
    chunks = {field: [pb.TensorChunk(name=p.name, dtype=p.dtype, shape=p.shape, offset=p.offset, data=bytes(p.data))
                      for p in pieces] for field, pieces in message.pieces.items()}
    return message.cls(**message.fields, **chunks)


@pytest.mark.parametrize("chunk_bytes", [1, 7, 512, 1 << 20])
@pytest.mark.parametrize("row_interleave", [(), ("batch",)])
def test_protobuf_reads_the_encoding_as_the_message_it_would_have_built(chunk_bytes, row_interleave):
    for message in _messages(chunk_bytes, row_interleave=row_interleave):
        parsed = message.to_proto()
        for chunk in (*parsed.params, *parsed.batch):
            assert len(chunk.data) <= chunk_bytes and set(chunk.padding) <= {0}
            chunk.ClearField("padding")
        assert parsed == _by_protobuf(message)


def test_tensor_data_starts_16_byte_aligned_in_the_message(monkeypatch):
    monkeypatch.setattr(frames, "SMALL_MESSAGE", -1)  # read in place, to find where data starts
    for message in _messages(chunk_bytes=100):
        wire = message.encode()
        decoded = frames.decode(pb.ComputeRequest, wire)
        base = np.frombuffer(wire, np.uint8).ctypes.data
        for piece in (*decoded.params, *decoded.batch):
            if len(piece.data):
                assert (np.frombuffer(piece.data, np.uint8).ctypes.data - base) % frames.ALIGN == 0


@pytest.mark.parametrize("chunk_bytes", [7, 512, 1 << 20])
def test_decoding_reads_what_protobuf_reads(chunk_bytes, decode_path):
    for message in _messages(chunk_bytes):
        wire = _by_protobuf(message).SerializeToString()  # written by protobuf itself
        proto, ours = pb.ComputeRequest.FromString(wire), frames.decode(pb.ComputeRequest, wire)
        assert ours.HasField("header") == proto.HasField("header") and ours.header == proto.header
        for field in ("params", "batch"):
            assert [(p.name, p.dtype, tuple(p.shape), p.offset, bytes(p.data)) for p in getattr(ours, field)] == [
                (c.name, c.dtype, tuple(c.shape), c.offset, c.data) for c in getattr(proto, field)]


def test_streams_round_trip_exactly_through_the_framing(decode_path):
    assembler = Assembler()
    for message in _messages(chunk_bytes=100):
        assembler.add_message(frames.decode(pb.ComputeRequest, message.encode()), ("params", "batch"))
    out = assembler.result("batch")
    for name, array in TENSORS.items():
        assert out[name].dtype == array.dtype.newbyteorder("=") and out[name].shape == array.shape
        assert np.array_equal(out[name], array)
    assert np.array_equal(assembler.result("params")["w"], np.full((5, 7), 0.25))


def test_one_message_is_the_stream_in_one_plain_protobuf():
    """The small-request form carries every tensor whole with the bytes the framer sends
    (little-endian, C order: a transposed view and a big-endian array too), and an empty
    group stays empty."""
    tensors = {**TENSORS, "transposed": np.arange(12.0).reshape(3, 4).T}
    header = pb.ComputeHeader(graph_id="g-x")
    message = one_message(pb.ComputeRequest, {"header": header}, {"params": {}, "batch": tensors})
    streamed = Assembler()
    for m in stream_messages(pb.ComputeRequest, {"header": header}, {"params": {}, "batch": tensors}, 1 << 30):
        streamed.add_message(pb.ComputeRequest.FromString(m.encode()), ("params", "batch"))
    assert [(c.name, c.offset) for c in message.batch] == [(name, 0) for name in tensors] and not message.params
    assert pb.ComputeRequest.FromString(message.SerializeToString()) == message and message.header == header
    whole = Assembler()
    whole.add_message(message, ("params", "batch"))
    for name, array in tensors.items():
        got = whole.result("batch")[name]
        assert got.dtype == array.dtype.newbyteorder("=") and got.shape == array.shape and np.array_equal(got, array)
        assert got.tobytes() == streamed.result("batch")[name].tobytes()
    assert whole.result("params") == {}


def test_a_tensor_received_whole_is_a_view_of_the_message():
    big = np.arange(1 << 16, dtype=np.float64)  # 512 KiB: a message read in place
    wire = next(stream_messages(pb.ComputeRequest, {}, {"batch": {**TENSORS, "a": big}}, 1 << 20)).encode()
    assert len(wire) > frames.SMALL_MESSAGE
    assembler = Assembler()
    assembler.add_message(frames.decode(pb.ComputeRequest, wire), ("batch",))
    a = assembler.result("batch")["a"]
    assert np.array_equal(a, big) and np.shares_memory(a, np.frombuffer(wire, np.uint8)) and not a.flags.writeable


def test_fields_in_any_order_and_repeated_scalars_follow_protobuf(decode_path):
    """Protobuf accepts fields in any order, and the last of a repeated scalar wins."""
    chunk = pb.TensorChunk(name="x", dtype=pb.FLOAT32, shape=[2], data=np.ones(2, np.float32).tobytes())
    chunk_bytes = (pb.TensorChunk(data=b"\x00" * 8).SerializeToString()  # data first, then overridden
                   + pb.TensorChunk(name="x", dtype=pb.FLOAT32, shape=[2]).SerializeToString()
                   + pb.TensorChunk(data=chunk.data).SerializeToString())
    batch_field = frames._key(pb.ComputeRequest.DESCRIPTOR.fields_by_name["batch"].number)
    wire = (batch_field + frames._varint(len(chunk_bytes)) + chunk_bytes
            + pb.ComputeRequest(header=pb.ComputeHeader(graph_id="g-1")).SerializeToString())
    ours = frames.decode(pb.ComputeRequest, wire)
    assert pb.ComputeRequest.FromString(wire).batch[0] == chunk
    assert ours.header.graph_id == "g-1"
    (piece,) = ours.batch
    assert (piece.name, piece.dtype, tuple(piece.shape), bytes(piece.data)) == ("x", pb.FLOAT32, (2,), chunk.data)


@pytest.mark.parametrize("garbage", [
    b"\xff",  # a truncated varint
    b"\x1a\x10abc",  # a length running past the end
    b"\x1b",  # wire type 3 (groups)
    b"\x00\x01",  # field number 0
    b"\x1a\x03\x2a\x10a",  # a chunk whose data field runs past its end
])
def test_malformed_bytes_raise_a_decode_error_and_a_named_request_error(garbage, decode_path):
    with pytest.raises(frames.DecodeError):
        frames.decode(pb.ComputeRequest, garbage)
    request = frames.lenient_decoder(pb.ComputeRequest)(garbage)
    with pytest.raises(GraphError, match="malformed ComputeRequest message"):
        request.HasField("header")


def test_a_server_answers_malformed_bytes_with_invalid_argument_and_keeps_serving(start_server, example_graph):
    _, address = start_server()
    with grpc.insecure_channel(address) as channel:
        raw = channel.unary_unary("/gradwire.v1.Gradwire/Compute")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\x1a\x10abc", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ComputeRequest message" in err.value.details()
    graph, params, batch = example_graph("seed")
    with gw.connect(address) as client:
        loss, _ = client.value_and_grad(graph, params, batch)
    assert loss == gw.local().value_and_grad(graph, params, batch)[0]


def test_a_plain_protobuf_client_gets_plain_protobuf_answers(start_server, example_graph):
    """The generated stub (protobuf's own serializers) against the framing server."""
    from gradwire.protos import gradwire_pb2_grpc as pb_grpc

    _, address = start_server()
    graph, params, batch = example_graph("mlp", n=50)
    header = pb.ComputeHeader(graph=graph_to_proto(graph.graph_def))
    requests = [m.to_proto() for m in stream_messages(pb.ComputeRequest, {"header": header},
                                                        {"params": params, "batch": batch}, 1024)]
    with grpc.insecure_channel(address) as channel:
        responses = list(pb_grpc.GradwireStub(channel).ValueAndGrad(iter(requests), timeout=30))
    assembler = Assembler()
    for response in responses:
        for chunk in response.grads:
            assembler.add("grads", chunk)
    loss, want = gw.local().value_and_grad(graph, params, batch)
    assert responses[-1].summary.loss == loss
    got = assembler.result("grads")
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_every_piece_size_and_position_gets_aligned_data(monkeypatch):
    """Across the byte counts where the length prefixes grow (127/128, 16383/16384)."""
    monkeypatch.setattr(frames, "SMALL_MESSAGE", -1)  # read in place, to find where data starts
    for size in (*range(100, 140), *range(16350, 16400)):
        for name in ("a", "b" * 20):
            piece = frames.Piece(name, pb.FLOAT32, (size,), 0, memoryview(bytes(range(256)) * (size // 256 + 1))[:size])
            message = frames.Outgoing(pb.ComputeRequest, {"header": pb.ComputeHeader(graph_id="g" * (size % 37))},
                                      {"batch": [piece, piece._replace(name="c")]})
            wire = message.encode()
            base = np.frombuffer(wire, np.uint8).ctypes.data
            for got in frames.decode(pb.ComputeRequest, wire).batch:
                assert bytes(got.data) == bytes(piece.data)
                assert (np.frombuffer(got.data, np.uint8).ctypes.data - base) % frames.ALIGN == 0


def test_many_tiny_pieces_go_to_protobufs_parser_and_are_refused_by_name(start_server):
    """A walk in Python costs microseconds a piece before any limit is checked: a message of
    very many pieces per byte is left to protobuf's C parser, and the Assembler refuses the
    repeated tensor at its second piece."""
    wire = pb.ComputeRequest(header=pb.ComputeHeader(graph_id="g-x")).SerializeToString() + b"\x1a\x00" * 100_000
    assert len(wire) > frames.SMALL_MESSAGE
    message = frames.decode(pb.ComputeRequest, wire)
    assert isinstance(message, pb.ComputeRequest) and len(message.batch) == 100_000
    _, address = start_server()
    with grpc.insecure_channel(address) as channel:
        raw = channel.unary_unary("/gradwire.v1.Gradwire/Compute")
        with pytest.raises(grpc.RpcError) as err:
            raw(wire, timeout=30)
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


def test_the_assembler_copies_views_that_are_misaligned_or_small_in_their_message(monkeypatch):
    monkeypatch.setattr(frames, "SMALL_MESSAGE", -1)  # read in place
    small, big = np.arange(10, dtype=np.float64), np.arange(1 << 16, dtype=np.float64)
    wire = next(stream_messages(pb.ComputeRequest, {}, {"batch": {"small": small, "big": big}}, 1 << 20)).encode()
    assembler = Assembler()
    assembler.add_message(frames.decode(pb.ComputeRequest, wire), ("batch",))
    out = assembler.result("batch")
    message = np.frombuffer(wire, np.uint8)
    assert np.shares_memory(out["big"], message)  # most of the message: kept in place
    assert not np.shares_memory(out["small"], message)  # would pin 512 KiB for 80 bytes: copied
    # data placed off the 16-byte grid (a writer without padding): copied onto it
    raw = bytes(1) + big.tobytes()
    piece = frames.Piece("x", pb.FLOAT64, big.shape, 0, memoryview(raw)[1:])
    assembler = Assembler()
    assembler.add("batch", piece)
    x = assembler.result("batch")["x"]
    assert np.array_equal(x, big) and x.ctypes.data % frames.ALIGN == 0
    assert not np.shares_memory(x, np.frombuffer(raw, np.uint8))
