"""Validation: every way a graph or request can be wrong is rejected before anything runs,
with a message naming the node, op and shapes at fault."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import gradwire as gw
from gradwire.worker.engine import ExecutionError, Program
from gradwire.worker.graph import GraphDef, Node
from gradwire.worker.spec import TensorSpec
from gradwire.worker.validate import GraphError, LimitError, Limits

F64, F32 = np.dtype("float64"), np.dtype("float32")


def spec(*shape, dtype=F64) -> TensorSpec:
    return TensorSpec(tuple(shape), np.dtype(dtype))


def graph(nodes, loss="l", params=None, inputs=None, **kw) -> GraphDef:
    return GraphDef(params=params if params is not None else {"x": spec(3)}, inputs=inputs or {},
                    nodes=list(nodes), loss=loss, **kw)


def m(text: str) -> str:
    return re.escape(text)


# ------------------------------------------------------------------ graph structure


def test_unknown_op():
    gd = graph([Node("n", "frobnicate", ("x",)), Node("l", "sum", ("n",))])
    with pytest.raises(GraphError, match=m("node 'n' (op 'frobnicate'): unknown op 'frobnicate'")) as info:
        Program(gd)
    assert info.value.node == "n" and info.value.op == "frobnicate"


def test_unknown_op_in_the_builder():
    g = gw.Graph()
    x = g.input("x", shape=(3,))
    with pytest.raises(GraphError, match=m("unknown op 'frobnicate'")):
        gw.call("frobnicate", x)


def test_cycle():
    gd = graph([Node("a", "add", ("x", "b")), Node("b", "add", ("a", "x")), Node("l", "sum", ("b",))])
    with pytest.raises(GraphError, match=m("node 'a' (op 'add'): cycle: a -> b -> a")):
        Program(gd)


def test_self_loop():
    gd = graph([Node("a", "tanh", ("a",)), Node("l", "sum", ("a",))])
    with pytest.raises(GraphError, match=m("node 'a' (op 'tanh'): cycle: a -> a")):
        Program(gd)


def test_dangling_reference():
    gd = graph([Node("a", "add", ("x", "nope")), Node("l", "sum", ("a",))])
    with pytest.raises(GraphError, match=m("node 'a' (op 'add'): input 'nope' is not defined (dangling reference)")):
        Program(gd)


def test_duplicate_value_name():
    gd = graph([Node("x", "tanh", ("x",)), Node("l", "sum", ("x",))])
    with pytest.raises(GraphError, match=m("node 'x' (op 'tanh'): duplicate value name")):
        Program(gd)


@pytest.mark.parametrize("node,want", [
    (Node("a", "add", ("x",)), "node 'a' (op 'add'): wrong arity: takes 2 input(s), got 1"),
    (Node("a", "tanh", ("x", "x")), "node 'a' (op 'tanh'): wrong arity: takes 1 input(s), got 2"),
    (Node("a", "concat", ()), "node 'a' (op 'concat'): wrong arity: takes at least 1 input(s), got 0"),
])
def test_wrong_arity(node, want):
    with pytest.raises(GraphError, match=m(want)):
        Program(graph([node, Node("l", "sum", ("a",))]))


@pytest.mark.parametrize("node,want", [
    (Node("l", "sum", ("x",), {"axis": "0"}), "node 'l' (op 'sum'): attribute 'axis' must be axes, got '0'"),
    (Node("l", "sum", ("x",), {"keepdims": 1}), "node 'l' (op 'sum'): attribute 'keepdims' must be bool, got 1"),
    (Node("l", "sum", ("x",), {"axis": [0.5]}), "node 'l' (op 'sum'): attribute 'axis' must be axes, got [0.5]"),
    (Node("l", "sum", ("x",), {"bogus": 1}),
     "node 'l' (op 'sum'): unknown attribute(s) ['bogus']; sum takes ['axis', 'keepdims']"),
    (Node("l", "tanh", ("x",), {"axis": 0}), "node 'l' (op 'tanh'): unknown attribute(s) ['axis']; tanh takes none"),
    (Node("l", "reshape", ("x",)), "node 'l' (op 'reshape'): missing required attribute 'shape' (ints)"),
    (Node("l", "pow", ("x",), {"exponent": True}), "node 'l' (op 'pow'): attribute 'exponent' must be float, got True"),
    (Node("l", "concat", ("x",), {"axis": True}), "node 'l' (op 'concat'): attribute 'axis' must be int, got True"),
])
def test_bad_attribute(node, want):
    with pytest.raises(GraphError, match=m(want)):
        Program(graph([node]))


def test_bad_attribute_in_the_builder():
    g = gw.Graph()
    x = g.input("x", shape=(None, 3))
    with pytest.raises(GraphError, match=r"op 'reshape'\): missing required attribute 'shape'"):
        gw.reshape(x)
    with pytest.raises(GraphError, match=r"op 'sum'\): unknown attribute\(s\) \['axes'\]"):
        gw.sum(x, axes=1)
    with pytest.raises(GraphError, match=r"op 'sum'\): attribute 'keepdims' must be bool, got 'yes'"):
        gw.sum(x, keepdims="yes")


def test_dtype_mismatch():
    gd = graph([Node("a", "add", ("x", "y")), Node("l", "sum", ("a",))],
               params={"x": spec(3, 4), "y": spec(3, 4, dtype=F32)})
    with pytest.raises(GraphError, match=m(
            "node 'a' (op 'add'): dtype mismatch: float64[3, 4] vs float32[3, 4] "
            "[inputs x: float64[3, 4], y: float32[3, 4]]")):
        Program(gd)


def test_dtype_mismatch_in_the_builder():
    g = gw.Graph()
    x = g.input("x", shape=(None, 4))  # float32
    w = g.param("w", shape=(4,), dtype="float64")
    with pytest.raises(GraphError, match=r"op 'mul'\): dtype mismatch: float32\[\?, 4\] vs float64\[4\]"):
        x * w


def test_shape_mismatch_matmul():
    gd = graph([Node("mm", "matmul", ("a", "b")), Node("l", "sum", ("mm",))],
               params={"a": spec(3, 4), "b": spec(5, 6)})
    with pytest.raises(GraphError, match=m(
            "node 'mm' (op 'matmul'): inner dimensions differ: (3, 4) @ (5, 6) "
            "[inputs a: float64[3, 4], b: float64[5, 6]]")):
        Program(gd)


def test_shape_mismatch_broadcast():
    gd = graph([Node("s", "add", ("a", "b")), Node("l", "sum", ("s",))],
               params={"a": spec(3, 4), "b": spec(5)})
    with pytest.raises(GraphError, match=m(
            "node 's' (op 'add'): shapes (3, 4) and (5,) do not broadcast [inputs a: float64[3, 4], b: float64[5]]")):
        Program(gd)


@pytest.mark.parametrize("build,want", [
    (lambda g, x: gw.reshape(x, shape=[4, 4]), "cannot reshape (3, 4) (12 elements) into (4, 4)"),
    (lambda g, x: gw.transpose(x, perm=[0, 0]), "perm [0, 0] is not a permutation of the 2 axes of (3, 4)"),
    (lambda g, x: gw.sum(x, axis=2), "axis 2 is out of range for a tensor of rank 2"),
    (lambda g, x: gw.concat(x, g.param("y", shape=(2, 5), dtype="float64"), axis=0),
     "concat inputs differ off the concat axis: (3, 4), (2, 5)"),
    (lambda g, x: gw.log(g.input("i", shape=(3,), dtype="int64")), "expected a float32 or float64 tensor, got int64[3]"),
    (lambda g, x: gw.softmax_cross_entropy(x, g.input("lab", shape=(5,), dtype="int64")),
     "logits (3, 4) and labels (5,) differ in batch size"),
    (lambda g, x: gw.softmax_cross_entropy(x, g.input("lab", shape=(3,), dtype="float64")),
     "labels must be an int32 or int64 tensor, got float64[3]"),
    (lambda g, x: gw.where(x, x, x), "condition must be a bool tensor, got float64[3, 4]"),
])
def test_shape_rules_in_the_builder(build, want):
    g = gw.Graph()
    x = g.param("x", shape=(3, 4), dtype="float64")
    with pytest.raises(GraphError, match=m(want)):
        build(g, x)


# ------------------------------------------------------------------ the loss and outputs


def test_non_scalar_loss():
    gd = graph([Node("t", "tanh", ("x",))], loss="t", params={"x": spec(3, 4)})
    with pytest.raises(GraphError, match=m("node 't' (op 'tanh'): the loss must be a float scalar, got float64[3, 4]")):
        Program(gd)


def test_non_scalar_loss_in_the_builder():
    g = gw.Graph()
    x = g.param("x", shape=(3, 4), dtype="float64")
    t = gw.tanh(x, name="t")
    with pytest.raises(GraphError, match=m("node 't' (op 'tanh'): the loss must be a float scalar, got float64[3, 4]")):
        g.set_loss(t)


def test_integer_loss():
    gd = graph([Node("l", "sum", ("x",))], params={}, inputs={"x": spec(3)})
    gd.constants["k"] = np.array(3, dtype=np.int64)
    gd.loss = "k"
    with pytest.raises(GraphError, match=m("node 'k': the loss must be a float scalar, got int64[]")):
        Program(gd)


def test_empty_graph():
    with pytest.raises(GraphError, match="empty graph"):
        Program(GraphDef())


def test_missing_loss():
    with pytest.raises(GraphError, match=m("the graph has no loss (call set_loss)")):
        Program(graph([Node("l", "sum", ("x",))], loss=None))


def test_loss_that_is_not_a_value():
    with pytest.raises(GraphError, match=m("loss 'q' is not a value of the graph")):
        Program(graph([Node("l", "sum", ("x",))], loss="q"))


def test_fetch_of_an_unknown_value():
    with pytest.raises(GraphError, match=m("fetched output 'zz' is not a value of the graph")):
        Program(graph([Node("l", "sum", ("x",))], outputs=("zz",)))


def test_bad_batch_reduction():
    with pytest.raises(GraphError, match=m("batch_reduction must be one of ('mean', 'sum'), got 'avg'")):
        Program(graph([Node("l", "sum", ("x",))], batch_reduction="avg"))
    g = gw.Graph()
    x = g.param("x", shape=(3,))
    with pytest.raises(GraphError, match="batch_reduction must be one of"):
        g.set_loss(gw.sum(x), batch_reduction="avg")


# ------------------------------------------------------------------ requests


@pytest.fixture
def program() -> Program:
    gd = GraphDef(inputs={"x": spec(None, 4), "y": spec(None, dtype=np.int64)},
                  params={"W": spec(4, 3), "b": spec(3)},
                  nodes=[Node("xw", "matmul", ("x", "W")), Node("z", "add", ("xw", "b")),
                         Node("l", "softmax_cross_entropy", ("z", "y"))],
                  loss="l")
    return Program(gd)


def _request(n=5):
    rng = np.random.default_rng(0)
    return ({"W": rng.normal(size=(4, 3)), "b": np.zeros(3)},
            {"x": rng.normal(size=(n, 4)), "y": rng.integers(0, 3, size=n)})


def test_valid_request_runs(program):
    params, batch = _request()
    assert np.isfinite(program.run(params, batch).loss)


def test_missing_param(program):
    params, batch = _request()
    del params["W"]
    with pytest.raises(GraphError, match=m("missing parameter(s) ['W']")):
        program.run(params, batch)


def test_missing_batch_input(program):
    params, batch = _request()
    del batch["y"]
    with pytest.raises(GraphError, match=m("missing batch input(s) ['y']")):
        program.run(params, batch)


def test_unknown_param(program):
    params, batch = _request()
    params["V"] = np.zeros(2)
    with pytest.raises(GraphError, match=m("unknown parameter(s) ['V']; the graph declares ['W', 'b']")):
        program.run(params, batch)


def test_wrong_param_dtype(program):
    params, batch = _request()
    params["W"] = params["W"].astype(np.float32)
    with pytest.raises(GraphError, match=m("tensor 'W' must be float64[4, 3], got float32[4, 3]")):
        program.run(params, batch)


@pytest.mark.parametrize("shape", [(4, 2), (4,), (4, 3, 1)])
def test_wrong_param_shape(program, shape):
    params, batch = _request()
    params["W"] = np.zeros(shape)
    dims = ", ".join(map(str, shape))
    with pytest.raises(GraphError, match=m(f"tensor 'W' must be float64[4, 3], got float64[{dims}]")):
        program.run(params, batch)


def test_wrong_batch_shape_and_dtype(program):
    params, batch = _request()
    with pytest.raises(GraphError, match=m("tensor 'x' must be float64[?, 4], got float64[5, 5]")):
        program.run(params, {**batch, "x": np.zeros((5, 5))})
    with pytest.raises(GraphError, match=m("tensor 'y' must be int64[?], got float64[5]")):
        program.run(params, {**batch, "y": np.zeros(5)})


def test_batch_sizes_disagree(program):
    params, batch = _request()
    batch["y"] = batch["y"][:4]
    with pytest.raises(GraphError, match=r"batch inputs disagree on the batch size: \{'x': 5, 'y': 4\}"):
        program.run(params, batch)


def test_request_errors_through_the_local_engine():
    g = gw.Graph()
    x = g.input("x", shape=(None, 4))
    W = g.param("W", shape=(4, 2))
    g.set_loss(gw.mean(x @ W))
    engine = gw.local(shards=3)
    X = np.ones((6, 4), np.float32)
    with pytest.raises(GraphError, match=m("missing parameter(s) ['W']")):
        engine.value_and_grad(g, {}, {"x": X})
    with pytest.raises(GraphError, match=m("tensor 'W' must be float32[4, 2], got float64[4, 2]")):
        engine.value_and_grad(g, {"W": np.ones((4, 2))}, {"x": X})
    with pytest.raises(GraphError, match=m("tensor 'x' must be float32[?, 4], got float32[6, 3]")):
        engine.value_and_grad(g, {"W": np.ones((4, 2), np.float32)}, {"x": X[:, :3]})


def test_wrt_must_name_a_source(program):
    params, batch = _request()
    with pytest.raises(GraphError, match=m("cannot differentiate with respect to ['z']: not a parameter or batch input")):
        program.run(params, batch, wrt=("z",))


def test_label_out_of_range_is_an_execution_error(program):
    params, batch = _request()
    batch["y"][0] = 7
    with pytest.raises(ExecutionError, match=m("node 'l' (op 'softmax_cross_entropy'): labels must lie in [0, 3)")):
        program.run(params, batch)


def test_check_finite_names_the_node():
    gd = graph([Node("lg", "log", ("x",)), Node("l", "sum", ("lg",))])
    program = Program(gd)
    with np.errstate(invalid="ignore"):
        assert np.isnan(program.run({"x": np.array([-1.0, 1.0, 2.0])}, {}).loss)
        with pytest.raises(ExecutionError, match=m("node 'lg' (op 'log'): produced a non-finite value (NaN or Inf)")):
            program.run({"x": np.array([-1.0, 1.0, 2.0])}, {}, check_finite=True)


# ------------------------------------------------------------------ limits


def test_limit_on_a_declared_tensor():
    gd = graph([Node("l", "sum", ("x",))], params={"x": spec(2**20, 2**20)})
    with pytest.raises(LimitError, match=m(
            "tensor 'x' float64[1048576, 1048576] would hold 1099511627776 elements; the limit is 2147483648")):
        Program(gd)


def test_limit_on_an_intermediate_at_build_time():
    gd = graph([Node("outer", "matmul", ("a", "b")), Node("l", "sum", ("outer",))],
               params={"a": spec(100_000, 1), "b": spec(1, 100_000)})
    with pytest.raises(LimitError, match=m("output of 'matmul' 'outer' float64[100000, 100000] would hold 10000000000")):
        Program(gd)


def test_limit_checked_against_the_concrete_batch_before_running():
    gd = GraphDef(inputs={"x": spec(None, 10)}, params={"W": spec(10, 50)},
                  nodes=[Node("h", "matmul", ("x", "W")), Node("l", "mean", ("h",))], loss="l")
    program = Program(gd, Limits(max_tensor_elements=1000))
    W = np.zeros((10, 50))
    assert program.run({"W": W}, {"x": np.zeros((20, 10))}).loss == 0.0  # h: 1000 elements
    with pytest.raises(LimitError, match=m("output of 'matmul' 'h' float64[21, 50] would hold 1050 elements; "
                                           "the limit is 1000")):
        program.run({"W": W}, {"x": np.zeros((21, 10))})
    with pytest.raises(LimitError, match=m("tensor 'x' float64[101, 10] would hold 1010 elements")):
        program.run({"W": W}, {"x": np.zeros((101, 10))})


def test_limit_on_node_count():
    nodes = [Node(f"t{i}", "tanh", (f"t{i - 1}" if i else "x",)) for i in range(10)]
    nodes.append(Node("l", "sum", ("t9",)))
    with pytest.raises(LimitError, match=m("graph has 11 nodes; the limit is 10")):
        Program(graph(nodes), Limits(max_nodes=10))
    Program(graph(nodes), Limits(max_nodes=11))


def test_limit_error_is_a_graph_error():
    assert issubclass(LimitError, GraphError) and issubclass(ExecutionError, GraphError)


# ------------------------------------------------------------------ hostile shapes and sizes
# Each was INTERNAL, a run-time error or silently accepted; each must be refused while
# decoding or validating, before anything runs, naming the tensor or node at fault.


def _program(gd: GraphDef, limits: Limits | None = None) -> Program:
    """Through the wire, as the server sees it: encode, decode with the limits, validate."""
    from gradwire.worker.codec import graph_from_proto, graph_to_proto
    return Program(graph_from_proto(graph_to_proto(gd), limits or Limits()), limits)


RANK_65 = (1,) * 65


@pytest.mark.parametrize("kind", ["params", "inputs"])
def test_rank_above_the_cap_in_a_source_spec(kind):
    gd = GraphDef(**{kind: {"x": spec(*RANK_65)}}, nodes=[Node("l", "sum", ("x",))], loss="l")
    with pytest.raises(LimitError, match=m("tensor 'x' float64[1, 1, 1, 1, 1, 1, 1, 1, ...] has rank 65; "
                                           "the limit is 64")):
        Program(gd)
    what = "parameter" if kind == "params" else "batch input"
    with pytest.raises(LimitError, match=m(f"{what} 'x': shape of rank 65 [1, 1, 1, 1, 1, 1, 1, 1]...; "
                                           "the limit is 64")):
        _program(gd)


def test_rank_above_the_cap_in_a_constant():
    gd = graph([Node("l", "sum", ("x",))])
    gd.constants["c"] = np.zeros(RANK_65[:32])
    from gradwire.worker.codec import graph_from_proto, graph_to_proto
    msg = graph_to_proto(gd)
    msg.constants[0].tensor.shape.extend([1] * 33)  # NumPy cannot even build it
    with pytest.raises(LimitError, match=m("constant 'c': shape of rank 65")):
        graph_from_proto(msg)


def test_rank_above_the_cap_of_a_node_output():
    """A rank-65 reshape passed validation and failed inside NumPy at run time."""
    gd = graph([Node("r", "reshape", ("x",), {"shape": [1] * 62 + [3, 1, 1]}), Node("l", "sum", ("r",))])
    with pytest.raises(LimitError, match=m("node 'r' (op 'reshape'): attribute 'shape' lists 65 entries; "
                                           "tensors have at most 64 dimensions")):
        _program(gd)
    Program(graph([Node("r", "reshape", ("x",), {"shape": [1] * 61 + [3, 1, 1]}), Node("l", "sum", ("r",))]))


def test_rank_above_the_cap_in_a_streamed_chunk():
    from gradwire.protos import gradwire_pb2 as pb
    from gradwire.worker.codec import Assembler
    chunk = pb.TensorChunk(name="x", dtype=pb.FLOAT64, shape=RANK_65, data=bytes(8))
    with pytest.raises(LimitError, match=m("batch tensor 'x': shape of rank 65 [1, 1, 1, 1, 1, 1, 1, 1]...; "
                                           "the limit is 64")):
        Assembler().add("batch", chunk)


def test_reshape_to_rank_a_million_is_refused_before_shape_inference():
    """Inferring it was quadratic in the rank (keepdims_shape searched a tuple per dim)."""
    gd = graph([Node("r", "reshape", ("x",), {"shape": [1] * 999_999 + [3]}),
                Node("l", "sum", ("r",), {"axis": list(range(64))})])
    with pytest.raises(LimitError, match=m("node 'r' (op 'reshape'): attribute 'shape' lists 1000000 entries; "
                                           "tensors have at most 64 dimensions")):
        _program(gd)


HUGE_BUT_EMPTY = (2**32, 2**32, 0)


def test_huge_dims_with_a_zero_product_in_a_spec():
    gd = graph([Node("l", "sum", ("x",))], params={"x": spec(*HUGE_BUT_EMPTY)})
    with pytest.raises(LimitError, match=m("tensor 'x' float64[4294967296, 4294967296, 0] has a dimension of "
                                           "4294967296; the limit is 2147483648")):
        _program(gd)


def test_huge_dims_with_a_zero_product_of_a_node_output():
    gd = graph([Node("r", "reshape", ("x",), {"shape": list(HUGE_BUT_EMPTY)}), Node("l", "sum", ("r",))],
               params={"x": spec(0)})
    with pytest.raises(LimitError, match=m("output of 'reshape' 'r' float64[4294967296, 4294967296, 0] has a "
                                           "dimension of 4294967296; the limit is 2147483648")):
        _program(gd)


def test_huge_dims_with_a_zero_product_in_a_chunk_and_a_constant():
    from gradwire.protos import gradwire_pb2 as pb
    from gradwire.worker.codec import Assembler, tensor_from_proto
    with pytest.raises(LimitError, match=m("batch tensor 'x': shape (4294967296, 4294967296, 0) has a dimension "
                                           "of 4294967296; the limit is 2147483648")):
        Assembler().add("batch", pb.TensorChunk(name="x", dtype=pb.FLOAT64, shape=HUGE_BUT_EMPTY))
    with pytest.raises(LimitError, match=m("constant 'c': shape (4294967296, 4294967296, 0) has a dimension")):
        tensor_from_proto(pb.Tensor(dtype=pb.FLOAT64, shape=HUGE_BUT_EMPTY), "constant 'c'", 2**31)


def test_no_dim_above_2_62_even_under_a_larger_element_limit():
    gd = graph([Node("l", "sum", ("x",))], params={"x": spec(2**63, 0)})
    with pytest.raises(LimitError, match=m("has a dimension of 9223372036854775808; the limit is 4611686018427387904")):
        Program(gd, Limits(max_tensor_elements=2**70))


@pytest.mark.parametrize("tables,want", [
    ({"inputs": {"x": spec(None, 3)}, "params": {"x": spec(3)}}, "parameter 'x' has the same name as a batch input"),
    ({"params": {"x": spec(3)}, "constants": {"x": np.zeros(3)}}, "constant 'x' has the same name as a parameter"),
    ({"params": {"w": spec(3)}, "inputs": {"x": spec(3)}, "constants": {"x": np.zeros(3)}},
     "constant 'x' has the same name as a batch input"),
])
def test_sources_with_the_same_name(tables, want):
    gd = GraphDef(**tables, nodes=[Node("l", "sum", ("x",))], loss="l")
    with pytest.raises(GraphError, match=m(want)):
        Program(gd)
    with pytest.raises(GraphError, match=m(want)):
        _program(gd)


def test_duplicate_constant_names_on_the_wire():
    from gradwire.worker.codec import graph_from_proto, graph_to_proto
    gd = graph([Node("l", "sum", ("x",))])
    gd.constants["c"] = np.zeros(3)
    msg = graph_to_proto(gd)
    msg.constants.add().CopyFrom(msg.constants[0])
    with pytest.raises(GraphError, match=m("duplicate constant name 'c'")):
        graph_from_proto(msg)


def test_param_with_an_unknown_dim():
    gd = graph([Node("l", "sum", ("w",))], params={"w": spec(None, 3, dtype=F32)})
    with pytest.raises(GraphError, match=m("parameter 'w' float32[?, 3] has an unknown (-1) dimension; "
                                           "parameters must have a static shape")):
        _program(gd)


def _tiny_nodes_message(n: int) -> bytes:
    """A serialized graph of ``n`` one-letter nodes: repeated fields concatenate on the wire."""
    from gradwire.protos import gradwire_pb2 as pb
    return pb.Graph(nodes=[pb.Node(name="a", op="relu", inputs=["x"])]).SerializeToString() * n


def test_node_count_is_checked_on_the_message_before_converting(monkeypatch):
    """A 46 MiB graph of 2.5M nodes took 72 s and 1.7 GB to be refused after decoding."""
    from gradwire.worker import codec

    def no_conversion(*args):
        raise AssertionError("a node was converted")

    monkeypatch.setattr(codec, "Node", no_conversion)
    data = _tiny_nodes_message(300_000)
    with pytest.raises(LimitError, match=m("graph has 300000 nodes; the limit is 100000 (refused before decoding)")):
        codec.graph_from_bytes(data, Limits(max_nodes=100_000))
    msg = codec.pb.Graph.FromString(data)
    with pytest.raises(LimitError, match=m("graph has 300000 nodes; the limit is 100000")):
        codec.graph_from_proto(msg, Limits(max_nodes=100_000))


def test_constant_count_and_bytes_are_checked_before_converting(monkeypatch):
    from gradwire.protos import gradwire_pb2 as pb
    from gradwire.worker import codec
    monkeypatch.setattr(codec, "tensor_from_proto", lambda *a: pytest.fail("a constant was converted"))
    msg = pb.Graph(constants=[pb.NamedTensor(name=f"c{i}", tensor=pb.Tensor(dtype=pb.FLOAT64, shape=[1], data=bytes(8)))
                              for i in range(11)])
    with pytest.raises(LimitError, match=m("graph has 11 constants; the limit is 10 (refused before decoding)")):
        codec.graph_from_proto(msg, Limits(max_nodes=10))
    with pytest.raises(LimitError, match=r"graph's constants take \d+ bytes; the limit is 50 \(refused before decoding\)"):
        codec.graph_from_proto(msg, Limits(max_constant_bytes=50))


# ------------------------------------------------------------------ optimizer configs (training jobs)


BAD_OPTIMIZER_JSON = [
    ("[" * 100_000 + "]" * 100_000, "config of 200000 bytes; the limit is 65536"),
    ("[" * 20_000 + "]" * 20_000, "config is nested too deeply"),
    ('{"name": "sgd", "lr": Infinity}', "non-finite number Infinity"),
    ('{"name": "sgd", "lr": NaN}', "non-finite number NaN"),
    ('{"name": "sgd", "lr": 1e999}', "sgd: lr must be a finite number, got inf"),
    ('{"name": "sgd", "lr": ' + "9" * 400 + "}", "sgd: lr must be a finite number, got an integer of 1329 bits"),
    ('["sgd", 0.1]', "config must be a JSON object, got list"),
    ('"sgd"', "config must be a JSON object, got str"),
    ('{"name": "sgd", "lr": 0.1', "config is not valid JSON"),
    ('{"name": "rmsprop", "lr": 0.1}', "unknown optimizer 'rmsprop'"),
    ('{"name": ["sgd"], "lr": 0.1}', "optimizer name must be a string, got ['sgd']"),
    ('{"name": "sgd", "lr": 0.1, "gamma": 2}', "unknown sgd setting(s) ['gamma']"),
    ('{"name": "sgd", "lr": 0.1, "momentum": "x"}', "sgd: momentum must be a number, got 'x'"),
    ('{"name": "sgd", "lr": true}', "sgd: lr must be a number, got True"),
    ('{"name": "sgd", "lr": 0.1, "nesterov": 1, "momentum": 0.9}', "sgd: nesterov must be true or false, got 1"),
    ('{"name": "adam", "lr": 0.1, "betas": 0.9}', "adam: betas must be two numbers, got 0.9"),
    ('{"name": "adam", "lr": 0.1, "betas": [0.9, "x"]}', "adam: betas must be a number, got 'x'"),
    ('{"name": "adam", "lr": 0.1, "eps": null}', "adam: eps must be a number, got None"),
    ('{"name": "sgd", "lr": -0.5}', "SGD: lr must be > 0, got -0.5"),
    ('{"name": "sgd", "lr": 0.1, "momentum": -0.9}', "SGD: momentum must be >= 0, got -0.9"),
    ('{"name": "adamw", "lr": 0.1, "weight_decay": -1}', "AdamW: weight_decay must be >= 0, got -1.0"),
]


@pytest.mark.parametrize("text,want", BAD_OPTIMIZER_JSON, ids=[want[:40] for _, want in BAD_OPTIMIZER_JSON])
def test_bad_optimizer_json(text, want):
    from gradwire.worker.optim import optimizer_from_json
    with pytest.raises(GraphError, match=m(want)) as info:
        optimizer_from_json(text)
    assert str(info.value).startswith("optimizer: ")


def test_good_optimizer_json_round_trips():
    from gradwire.worker.optim import SGD, from_config, optimizer_from_json, to_config
    config = optimizer_from_json('{"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": true}')
    assert from_config(config) == SGD(lr=0.1, momentum=0.9, nesterov=True)
    assert optimizer_from_json(json.dumps(to_config(SGD(lr=0.5)))) == to_config(SGD(lr=0.5))
