"""The wire contract for other languages (docs/WIRE.md, the comments of gradwire.proto): ListOps
reports what a client must know to build nodes (broadcasting, the AttrValue field of each
attribute kind); WIRE.md follows the schema (every RPC, every message type); and a client that
builds its protobuf messages by hand, following only WIRE.md's rules, gets gw.local()'s numbers."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import numpy as np
import pytest

import gradwire as gw
from gradwire.protos import gradwire_pb2 as pb
from gradwire.server.servicer import list_ops
from gradwire.worker.ops import OPS

REPO = Path(__file__).resolve().parents[1]
WIRE = REPO / "docs" / "WIRE.md"
ATTR_FIELDS = {f.name for f in pb.AttrValue.DESCRIPTOR.oneofs_by_name["value"].fields}
SERVICE = pb.DESCRIPTOR.services_by_name["Gradwire"]
RECEIVE_LIMIT = [("grpc.max_receive_message_length", 64 << 20)]  # WIRE.md: unary answers are never chunked


@pytest.fixture(scope="module")
def address(start_server):
    return start_server()[1]


def _list_ops(address) -> dict[str, pb.OpInfo]:
    with grpc.insecure_channel(address, options=RECEIVE_LIMIT) as channel:
        call = channel.unary_unary("/gradwire.v1.Gradwire/ListOps", request_serializer=pb.ListOpsRequest.SerializeToString,
                                   response_deserializer=pb.ListOpsResponse.FromString)
        return {op.name: op for op in call(pb.ListOpsRequest(), timeout=30).ops}


def test_list_ops_reports_broadcasting_and_attribute_fields(address):
    ops = _list_ops(address)
    assert ops.keys() == OPS.keys()
    assert ops["add"].broadcast and ops["mul"].broadcast
    assert not ops["relu"].broadcast and not ops["tanh"].broadcast
    for name, op in OPS.items():
        assert ops[name].broadcast == op.broadcast, name
        for attr in ops[name].attrs:
            assert attr.kind == op.attrs[attr.name].kind
            assert attr.value_field, f"{name}.{attr.name}: kind {attr.kind!r} has no AttrValue field"
            assert set(attr.value_field.split("|")) <= ATTR_FIELDS, (name, attr.name, attr.value_field)
    fields = {a.name: a.value_field for a in ops["sum"].attrs}
    assert fields == {"axis": "ints|i", "keepdims": "b"}
    assert {a.name: a.value_field for a in ops["leaky_relu"].attrs} == {"alpha": "f"}
    assert {a.name: a.value_field for a in ops["reshape"].attrs} == {"shape": "ints"}
    # the SDK exposes them too
    with gw.connect(address) as client:
        by_name = {op["name"]: op for op in client.ops()}
    assert by_name["add"]["broadcast"] is True and by_name["relu"]["broadcast"] is False
    assert by_name["sum"]["attrs"]["keepdims"]["value_field"] == "b"


def test_every_attribute_kind_maps_to_an_attr_value_field():
    kinds = {attr.kind for op in OPS.values() for attr in op.attrs.values()}
    infos = {a.kind: a.value_field for op in list_ops().ops for a in op.attrs}
    assert kinds == set(infos)
    table = _attr_table()
    for kind in kinds:
        assert infos[kind] and set(infos[kind].split("|")) <= ATTR_FIELDS, kind
        assert kind in table, f"docs/WIRE.md's attribute table has no row for kind {kind!r}"
        assert set(table[kind]) == set(infos[kind].split("|")), (kind, table[kind], infos[kind])


def _attr_table() -> dict[str, list[str]]:
    """WIRE.md's attribute table: rows ``| `kind` | `field` (or `field`) | ... |``."""
    text = WIRE.read_text()
    section = text[text.index("## Attributes"):]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = re.findall(r"`(\w+)`", cells[1])
        elif rows and not line.startswith("|"):
            break
    return rows


def test_wire_md_names_every_rpc_and_message():
    text = WIRE.read_text()
    for method in SERVICE.methods:
        assert f"`{method.name}`" in text, f"docs/WIRE.md does not describe rpc {method.name}"
    for name in list(pb.DESCRIPTOR.message_types_by_name) + list(pb.DESCRIPTOR.enum_types_by_name):
        assert f"`{name}`" in text, f"docs/WIRE.md does not describe message {name}"
    for value in pb.DType.keys():
        assert value in text, f"docs/WIRE.md does not list DType {value}"


def test_the_grpcurl_example_gives_the_documented_answer(address):
    """WIRE.md's grpcurl -d JSON is a valid ComputeRequest, and its answer is what the page says."""
    import base64
    import json

    from google.protobuf import json_format

    text = WIRE.read_text()
    body = re.search(r"gradwire\.v1\.Gradwire/ListOps\n```.*?-d '(\{.*?\})' 127\.0\.0\.1:50051 gradwire\.v1\.Gradwire/Compute",
                     text, re.S).group(1)
    request = json_format.Parse(body, pb.ComputeRequest())
    with grpc.insecure_channel(address, options=RECEIVE_LIMIT) as channel:
        compute = channel.unary_unary("/gradwire.v1.Gradwire/Compute",
                                      request_serializer=pb.ComputeRequest.SerializeToString,
                                      response_deserializer=pb.ComputeResponse.FromString)
        answer = compute(request, timeout=60)
    assert answer.summary.loss == -4.0
    (grad,) = answer.grads
    documented = re.search(r'`grads` `w` with `data` `"([A-Za-z0-9+/=]+)"`', text).group(1)
    assert grad.name == "w" and grad.data == base64.b64decode(documented)
    assert np.array_equal(np.frombuffer(grad.data, "<f8"), [4.0, 6.0])
    assert json.loads(json_format.MessageToJson(answer))["grads"][0]["data"] == documented


# ---------------------------------------------------------------- a client from the docs alone


def _f64(array) -> bytes:
    """WIRE.md: little-endian, C order."""
    return np.ascontiguousarray(array, "<f8").tobytes()


def _spec(name, shape):
    return pb.NamedSpec(name=name, spec=pb.TensorSpec(dtype=pb.FLOAT64, shape=shape))


def _raw_graph(c: np.ndarray) -> pb.Graph:
    """loss = sum(sum(pow(tanh(x * w + b), 2) * c, axis=1)), batch_reduction sum; nodes listed
    out of order (the server orders them), attributes in the fields WIRE.md's table names."""
    return pb.Graph(
        inputs=[_spec("x", [-1, 3])],
        params=[_spec("w", [3]), _spec("b", [3])],
        constants=[pb.NamedTensor(name="c", tensor=pb.Tensor(dtype=pb.FLOAT64, shape=[3], data=_f64(c)))],
        nodes=[
            pb.Node(name="loss", op="sum", inputs=["rows"]),
            pb.Node(name="rows", op="sum", inputs=["weighted"], attrs={"axis": pb.AttrValue(ints=pb.Ints(values=[1])),
                                                                          "keepdims": pb.AttrValue(b=False)}),
            pb.Node(name="weighted", op="mul", inputs=["sq", "c"]),
            pb.Node(name="sq", op="pow", inputs=["h"], attrs={"exponent": pb.AttrValue(f=2.0)}),
            pb.Node(name="h", op="tanh", inputs=["z"]),
            pb.Node(name="z", op="add", inputs=["xw", "b"]),
            pb.Node(name="xw", op="mul", inputs=["x", "w"]),
        ],
        loss="loss", outputs=["h"], batch_reduction="sum")


def _pieces(name: str, array: np.ndarray, size: int, dtype=pb.FLOAT64) -> list[pb.TensorChunk]:
    """WIRE.md: dtype and shape on the piece at offset 0; offsets in bytes; in order."""
    data = _f64(array)
    return [pb.TensorChunk(name=name, dtype=dtype, shape=array.shape, offset=0, data=data[:size])] + \
        [pb.TensorChunk(name=name, offset=at, data=data[at:at + size]) for at in range(size, len(data), size)]


def _collect(messages, field: str) -> dict[str, np.ndarray]:
    """Tensors from pieces, by WIRE.md's rules (the first piece declares; bytes follow in order)."""
    declared, buffers = {}, {}
    for message in messages:
        for chunk in getattr(message, field):
            if chunk.offset == 0:
                assert chunk.name not in declared
                declared[chunk.name] = (chunk.dtype, tuple(chunk.shape))
                buffers[chunk.name] = bytearray()
            assert chunk.offset == len(buffers[chunk.name])
            buffers[chunk.name] += chunk.data
    out = {}
    for name, (dtype, shape) in declared.items():
        assert dtype == pb.FLOAT64
        out[name] = np.frombuffer(bytes(buffers[name]), "<f8").reshape(shape)
    return out


def _local_answer(c, params, x):
    g = gw.Graph()
    xs, w, b = g.input("x", (None, 3), "float64"), g.param("w", (3,), "float64"), g.param("b", (3,), "float64")
    h = gw.tanh(xs * w + b)
    g.set_loss(gw.sum(gw.sum(gw.pow(h, exponent=2.0) * g.const(c, "float64", name="c"), axis=[1])),
               batch_reduction="sum")
    g.fetch(h)
    return gw.local().run(g, params, {"x": x})


def test_a_raw_protobuf_client_gets_the_local_answer(address):
    rng = np.random.default_rng(7)
    c = rng.standard_normal(3)
    params = {"w": rng.standard_normal(3), "b": rng.standard_normal(3)}
    x = rng.standard_normal((11, 3))
    expected = _local_answer(c, params, x)
    graph = _raw_graph(c)
    metadata = (("gradwire-request-id", "raw-client-1"),)

    with grpc.insecure_channel(address, options=RECEIVE_LIMIT) as channel:
        compute = channel.unary_unary("/gradwire.v1.Gradwire/Compute",
                                      request_serializer=pb.ComputeRequest.SerializeToString,
                                      response_deserializer=pb.ComputeResponse.FromString)
        value_and_grad = channel.stream_stream("/gradwire.v1.Gradwire/ValueAndGrad",
                                               request_serializer=pb.ComputeRequest.SerializeToString,
                                               response_deserializer=pb.ComputeResponse.FromString)
        register = channel.unary_unary("/gradwire.v1.Gradwire/RegisterGraph",
                                       request_serializer=pb.RegisterGraphRequest.SerializeToString,
                                       response_deserializer=pb.RegisterGraphResponse.FromString)

        # Compute: one message, each tensor whole (one piece at offset 0)
        request = pb.ComputeRequest(
            header=pb.ComputeHeader(graph=graph, request_id="raw-unary", fetch=["h"]),
            params=[pb.TensorChunk(name=k, dtype=pb.FLOAT64, shape=v.shape, data=_f64(v)) for k, v in params.items()],
            batch=[pb.TensorChunk(name="x", dtype=pb.FLOAT64, shape=x.shape, data=_f64(x))])
        answer = compute(request, timeout=60, metadata=metadata)
        unary = (answer.summary.loss, _collect([answer], "grads"), _collect([answer], "outputs"))
        assert answer.summary.request_id == "raw-unary"

        # ValueAndGrad: the header alone first, then every parameter, then the batch, in pieces of
        # 5 bytes (they split elements), by a registered graph's id
        graph_id = register(pb.RegisterGraphRequest(graph=graph), timeout=60).graph_id
        messages = [pb.ComputeRequest(header=pb.ComputeHeader(graph_id=graph_id, fetch=["h"]))]
        messages += [pb.ComputeRequest(params=[piece]) for name in ("w", "b") for piece in _pieces(name, params[name], 5)]
        messages += [pb.ComputeRequest(batch=_pieces("x", x, 5)[i:i + 4]) for i in range(0, 60, 4)]
        assert sum(len(m.batch) for m in messages) == len(_pieces("x", x, 5))
        replies = list(value_and_grad(iter(messages), timeout=60, metadata=metadata))
        summaries = [m.summary for m in replies if m.HasField("summary")]
        assert len(summaries) == 1  # on one message (which one is not part of the contract)
        streamed = (summaries[0].loss, _collect(replies, "grads"), _collect(replies, "outputs"))
        assert summaries[0].graph_id == graph_id and summaries[0].request_id == "raw-client-1"

    for loss, grads, outputs in (unary, streamed):
        assert loss == expected.loss
        assert grads.keys() == {"w", "b"}
        for name in grads:
            assert grads[name].shape == expected.grads[name].shape
            assert np.array_equal(grads[name], expected.grads[name]), name
        (local_h,) = expected.outputs.values()
        assert np.array_equal(outputs["h"], local_h)


def test_the_documented_rules_are_enforced(address):
    """What WIRE.md says is refused is refused: a parameter after the batch began, a loss that
    is not a float scalar, a clash in the one namespace."""
    c = np.ones(3)
    graph = _raw_graph(c)
    with grpc.insecure_channel(address, options=RECEIVE_LIMIT) as channel:
        value_and_grad = channel.stream_stream("/gradwire.v1.Gradwire/ValueAndGrad",
                                               request_serializer=pb.ComputeRequest.SerializeToString,
                                               response_deserializer=pb.ComputeResponse.FromString)
        register = channel.unary_unary("/gradwire.v1.Gradwire/RegisterGraph",
                                       request_serializer=pb.RegisterGraphRequest.SerializeToString,
                                       response_deserializer=pb.RegisterGraphResponse.FromString)
        late = [pb.ComputeRequest(header=pb.ComputeHeader(graph=graph)),
                pb.ComputeRequest(params=_pieces("w", np.ones(3), 24)),
                pb.ComputeRequest(batch=_pieces("x", np.ones((2, 3)), 48)),
                pb.ComputeRequest(params=_pieces("b", np.ones(3), 24))]
        with pytest.raises(grpc.RpcError) as info:
            list(value_and_grad(iter(late), timeout=60))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert re.search(r"before the batch|missing parameter\(s\) \['b'\]", info.value.details())

        not_scalar = pb.Graph()
        not_scalar.CopyFrom(graph)
        not_scalar.loss = "rows"
        with pytest.raises(grpc.RpcError) as info:
            register(pb.RegisterGraphRequest(graph=not_scalar), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "float scalar" in info.value.details()

        clash = pb.Graph()
        clash.CopyFrom(graph)
        clash.nodes[-1].name = "c"  # a node named as a constant
        clash.nodes[-2].inputs[0] = "c"
        with pytest.raises(grpc.RpcError) as info:
            register(pb.RegisterGraphRequest(graph=clash), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_optimizer_table_is_the_registry():
    """WIRE.md's optimizer table lists exactly the registered optimizers and their settings."""
    from gradwire.worker.optim import OPTIMIZERS, settings

    text = (Path(__file__).resolve().parents[1] / "docs" / "WIRE.md").read_text()
    rows = dict(re.findall(r"^  \| `(\w+)` \| (.+) \|$", text, re.M))
    assert set(rows) == set(OPTIMIZERS)
    for name, cell in rows.items():
        assert re.findall(r"`(\w+)`", cell) == list(settings(name)), name
