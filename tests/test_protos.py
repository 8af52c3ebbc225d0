"""The wire format: generated code in sync with gradwire.proto, importable under
``gradwire.protos``; graphs and tensors round-trip through their protobuf form exactly."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import gradwire as gw
from gradwire.worker import frames
from gradwire.worker.codec import (
    Assembler, graph_from_bytes, graph_id, graph_to_proto, stream_messages, tensor_chunks, tensor_from_proto,
    tensor_to_proto,
)
from gradwire.worker.validate import GraphError

REPO = Path(__file__).resolve().parents[1]


def _load_generate():
    spec = importlib.util.spec_from_file_location("gradwire_protos_generate", REPO / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_the_proto():
    """Regenerating from gradwire.proto with the pinned grpcio-tools changes nothing."""
    stale = _load_generate().check()
    assert stale == [], f"stale generated files {stale}: run python protos/generate.py"


def test_generated_modules_import_under_gradwire_protos():
    pb = importlib.import_module("gradwire.protos.gradwire_pb2")
    pb_grpc = importlib.import_module("gradwire.protos.gradwire_pb2_grpc")
    assert Path(pb.__file__).resolve() == REPO / "protos" / "gradwire_pb2.py"
    assert pb.DESCRIPTOR.package == "gradwire.v1"
    assert pb.DESCRIPTOR.name == "gradwire/protos/gradwire.proto"
    service = pb.DESCRIPTOR.services_by_name["Gradwire"]
    assert service.full_name == "gradwire.v1.Gradwire"
    assert {"RegisterGraph", "ValueAndGrad", "ListOps"} <= set(service.methods_by_name)
    for name in ("GradwireStub", "GradwireServicer", "add_GradwireServicer_to_server"):
        assert hasattr(pb_grpc, name)
    assert pb_grpc.gradwire_dot_protos_dot_gradwire__pb2 is pb  # imported by its package path
    assert (REPO / "protos" / "gradwire.proto").is_file()


def _rich_graph():
    """A graph using every kind of attribute and a constant array."""
    g = gw.Graph()
    x = g.input("x", (None, 4), "float64")
    w = g.param("w", (4, 6), "float64")
    table = g.const(np.linspace(-1, 1, 6), "float64", name="table")
    h = gw.pow(gw.sigmoid(x @ w) + table, exponent=2.0)  # float attr
    h = gw.transpose(gw.reshape(h, shape=[-1, 3, 2]), perm=[0, 2, 1])  # ints attrs
    h = gw.sum(h, axis=[1], keepdims=True)  # axes + bool attrs
    h = gw.slice(gw.concat(h, h * 0.5, axis=1), starts=[-1], ends=[0], axes=[2], steps=[-1])
    loss = gw.sum(gw.log_softmax(gw.reshape(h, shape=[-1, 4]), axis=-1)) * -1.0
    g.set_loss(loss, batch_reduction="sum")  # a sum over the batch: the non-default reduction round-trips
    g.fetch(h)
    rng = np.random.default_rng(2)
    return g, {"w": rng.standard_normal((4, 6))}, {"x": rng.standard_normal((9, 4))}


@pytest.mark.parametrize("kind", ["seed", "mlp", "mse", "rich"])
def test_graph_round_trip(example_graph, kind):
    graph, params, batch = _rich_graph() if kind == "rich" else example_graph(kind)
    data = graph.to_bytes()
    assert data == graph.to_bytes()  # deterministic
    again = gw.Graph.from_bytes(data)
    assert again.id == graph.id == graph_id(graph_from_bytes(data))
    assert again.to_bytes() == data
    assert again.graph_def.batch_reduction == graph.graph_def.batch_reduction
    assert again.graph_def.outputs == graph.graph_def.outputs
    assert [(n.name, n.op, n.inputs) for n in again.graph_def.nodes] == \
        [(n.name, n.op, n.inputs) for n in graph.graph_def.nodes]
    for engine in (gw.local(), gw.local(shards=4)):
        a, b = engine.run(graph, params, batch), engine.run(again, params, batch)
        assert a.loss == b.loss
        for name in a.grads:
            assert a.grads[name].dtype == b.grads[name].dtype and np.array_equal(a.grads[name], b.grads[name])
        for name in a.outputs:
            assert np.array_equal(a.outputs[name], b.outputs[name])


def test_graph_id_changes_with_content(example_graph):
    graph, _, _ = example_graph("seed")
    before = graph.id
    other, _, _ = example_graph("seed", dtype="float64")
    assert other.id != before
    graph.fetch(graph[graph.graph_def.nodes[0].name])
    assert graph.id != before


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 0, 2), (7, 11)])
def test_tensor_round_trip(dtype, shape):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal(shape) * 100).astype(dtype) if dtype != "bool" else rng.random(shape) > 0.5
    back = tensor_from_proto(tensor_to_proto(array), "t", 2**31)
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    assembler = Assembler()
    for chunk in tensor_chunks("t", array, chunk_bytes=7):  # pieces that split elements
        assembler.add("batch", chunk)
    pieced = assembler.result("batch")["t"]
    assert pieced.dtype == array.dtype and pieced.shape == array.shape and np.array_equal(pieced, array)


def test_big_endian_and_strided_arrays_go_out_little_endian_c_order():
    array = np.arange(24, dtype=">f8").reshape(4, 6)[:, ::2]
    back = tensor_from_proto(tensor_to_proto(array), "t", 2**31)
    assert back.dtype == np.float64 and np.array_equal(back, array)
    assert tensor_to_proto(array).data == np.ascontiguousarray(array, "<f8").tobytes()


def test_stream_messages_respect_the_chunk_size():
    tensors = {"a": np.arange(1000, dtype=np.float32), "b": np.ones((3, 3)), "c": np.zeros(0, np.int32)}
    from gradwire.protos import gradwire_pb2 as pb

    messages = [frames.decode(pb.ComputeRequest, m.encode()) for m in stream_messages(
        pb.ComputeRequest, {"header": pb.ComputeHeader(graph_id="g-x")}, {"batch": tensors}, chunk_bytes=512)]
    assert messages[0].HasField("header") and not any(m.HasField("header") for m in messages[1:])
    assert all(sum(len(c.data) for c in m.batch) <= 512 for m in messages)
    assembler = Assembler()
    for m in messages:
        for chunk in m.batch:
            assembler.add("batch", chunk)
    out = assembler.result("batch")
    assert out.keys() == tensors.keys()
    for k in tensors:
        assert out[k].dtype == tensors[k].dtype and np.array_equal(out[k], tensors[k])


def test_assembler_rejects_a_stream_over_its_byte_limit():
    from gradwire.worker.validate import LimitError

    assembler = Assembler(max_bytes=100)
    chunks = list(tensor_chunks("big", np.zeros(64, np.float32), chunk_bytes=64))
    with pytest.raises(LimitError, match="'big'"):
        for chunk in chunks:
            assembler.add("params", chunk)


def test_graph_proto_rejects_duplicate_names():
    from gradwire.protos import gradwire_pb2 as pb

    graph, _, _ = _rich_graph()
    proto = graph_to_proto(graph.graph_def)
    proto.params.add().CopyFrom(proto.params[0])
    with pytest.raises(GraphError, match="duplicate parameter name 'w'"):
        graph_from_bytes(proto.SerializeToString())
    assert isinstance(proto, pb.Graph)
