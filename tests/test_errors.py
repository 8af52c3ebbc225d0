"""One error hierarchy: the same fault raises the same class, with the same message, from the
graph builder, gw.local() and gw.connect()."""

from __future__ import annotations

import numpy as np
import pytest

import gradwire as gw
from gradwire.worker.graph import GraphDef, Node
from gradwire.worker.spec import TensorSpec

F32 = np.dtype("float32")


def _labels_out_of_range():
    g = gw.Graph()
    x, y = g.input("x", (None, 3)), g.input("y", (None,), "int64")
    g.set_loss(gw.softmax_cross_entropy(x @ g.param("w", (3, 4)), y))
    return g, {"w": np.zeros((3, 4), np.float32)}, {"x": np.ones((2, 3), np.float32), "y": np.array([0, 9])}


def _cycle():
    gd = GraphDef(inputs={"x": TensorSpec((None, 3), F32)},
                  nodes=[Node("a", "relu", ("b",)), Node("b", "relu", ("a",)), Node("s", "sum", ("b",))], loss="s")
    return gd, {}, {"x": np.ones((2, 3), np.float32)}


def _unknown_op():
    gd = GraphDef(inputs={"x": TensorSpec((None, 3), F32)},
                  nodes=[Node("a", "frobnicate", ("x",)), Node("s", "sum", ("a",))], loss="s")
    return gd, {}, {"x": np.ones((2, 3), np.float32)}


def _missing_param():
    g = gw.Graph()
    x = g.input("x", (None, 3))
    g.set_loss(gw.sum(x * g.param("w", (3,))), batch_reduction="sum")
    return g, {}, {"x": np.ones((2, 3), np.float32)}


def _wrong_param_shape():
    g = gw.Graph()
    x = g.input("x", (None, 3))
    g.set_loss(gw.sum(x * g.param("w", (3,))), batch_reduction="sum")
    return g, {"w": np.zeros(4, np.float32)}, {"x": np.ones((2, 3), np.float32)}


CASES = {"labels-out-of-range": _labels_out_of_range, "cycle": _cycle, "unknown-op": _unknown_op,
         "missing-param": _missing_param, "wrong-param-shape": _wrong_param_shape}


@pytest.fixture(scope="module")
def client(start_server):
    _, address = start_server()
    with gw.connect(address) as c:
        yield c


def _error(fn):
    with pytest.raises(gw.GradwireError) as err:
        fn()
    return err.value


@pytest.mark.parametrize("name", sorted(CASES))
def test_local_and_remote_raise_the_same_class_and_message(client, name):
    graph, params, batch = CASES[name]()
    local = _error(lambda: gw.local().value_and_grad(graph, params, batch))
    remote = _error(lambda: client.value_and_grad(graph, params, batch))
    assert isinstance(local, type(remote)) and local.code == remote.code, (type(local), type(remote))
    assert remote.message.split(": ", 1)[1] == local.message  # the remote one names the method first


def test_builder_mistakes_are_gradwire_errors_with_codes():
    g = gw.Graph()
    g.input("x", (None, 3))
    with pytest.raises(gw.InvalidGraph) as err:
        g.input("x", (None, 3))
    assert err.value.code.name == "INVALID_ARGUMENT" and "already has a value named 'x'" in str(err.value)
    with pytest.raises(gw.InvalidGraph):
        g.param("w", (-1, 3))
    assert issubclass(gw.LimitError, gw.ResourceExhausted) and issubclass(gw.GraphError, gw.GradwireError)
