"""The SDK's graph caches (``gw.local()``'s programs, ``gw.connect()``'s wire forms): every
change is seen, entries never outlive their bound, and a new graph never hits an old one's."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import numpy as np
import pytest

import gradwire as gw

W0 = np.array([1.0, -2.0, 3.0])


@pytest.fixture(scope="module")
def address(start_server):
    return start_server()[1]


@pytest.fixture(params=["local", "remote"])
def engine(request):
    """``gw.local()``, or ``gw.connect()`` to a local server: the same checks hold for both."""
    local = request.param == "local"
    with gw.local() if local else gw.connect(request.getfixturevalue("address")) as engine:
        yield engine


def _square_graph() -> tuple[gw.Graph, gw.Value]:
    g = gw.Graph()
    W = g.param("W", (3,), "float64")
    g.set_loss(gw.sum(W * W))
    return g, W


def _sees(engine, g: gw.Graph, params, batch=None) -> bool:
    """Whether the engine works on the graph as it is now, not as it was."""
    if isinstance(engine, gw.LocalEngine):
        gd = g.graph_def
        return set(engine.program(g).specs) == set(gd.sources()) | {n.name for n in gd.nodes}
    return engine.run(g, params, batch or {}).graph_id == g.id


def test_every_builder_method_is_a_new_revision():
    g = gw.Graph()
    seen = [g.revision]

    def bumped():
        seen.append(g.revision)
        return seen[-1] > seen[-2]

    x = g.input("x", (None, 3), "float64")
    assert bumped()
    W = g.param("W", (3,), "float64")
    assert bumped()
    g.const([1.0, 2.0, 3.0])
    assert bumped()
    y = x * W
    assert bumped()
    g.set_loss(gw.sum(y))
    assert bumped()
    g.set_loss(gw.sum(y), batch_reduction="sum")  # a new node, and the reduction
    assert bumped()
    g.fetch(y)
    assert bumped()
    assert gw.Graph()._token != g._token


def test_a_new_param_is_seen(engine):
    g, _ = _square_graph()
    engine.value_and_grad(g, {"W": W0}, {})
    g.param("V", (2,), "float64")  # no node
    loss, grads = engine.value_and_grad(g, {"W": W0, "V": np.ones(2)}, {})
    assert loss == 14.0
    np.testing.assert_array_equal(grads["W"], 2 * W0)
    np.testing.assert_array_equal(grads["V"], np.zeros(2))
    assert _sees(engine, g, {"W": W0, "V": np.ones(2)})


def test_a_new_input_is_seen(engine):
    g, W = _square_graph()
    engine.value_and_grad(g, {"W": W0}, {})
    g.input("x", (None, 3), "float64")  # no node
    batch = {"x": np.ones((4, 3))}
    loss, grads = engine.value_and_grad(g, {"W": W0}, batch)
    assert loss == 14.0
    assert _sees(engine, g, {"W": W0}, batch)


def test_a_new_constant_is_seen(engine):
    g, _ = _square_graph()
    engine.value_and_grad(g, {"W": W0}, {})
    g.const(np.arange(3.0), name="c")  # no node
    assert _sees(engine, g, {"W": W0})


def test_new_outputs_are_seen(engine):
    g, W = _square_graph()
    engine.value_and_grad(g, {"W": W0}, {})
    g.fetch(W)
    np.testing.assert_array_equal(engine.run(g, {"W": W0}, {}).outputs["W"], W0)


def test_an_edited_graph_def_is_seen(engine):
    """A bare GraphDef has no revision: it is keyed by content, so an in-place edit (here a
    node's attr, no node added) counts, and the entry made before does not follow the edit."""
    g = gw.Graph()
    W = g.param("W", (3,), "float64")
    g.set_loss(gw.sum(W ** 2.0))
    gd = g.graph_def
    assert engine.value_and_grad(gd, {"W": W0}, {})[0] == 14.0
    i = next(i for i, n in enumerate(gd.nodes) if n.op == "pow")
    before = gd.nodes[i]
    gd.nodes[i] = dataclasses.replace(before, attrs={**before.attrs, "exponent": 3.0})
    loss, grads = engine.value_and_grad(gd, {"W": W0}, {})
    assert loss == 1.0 - 8.0 + 27.0
    np.testing.assert_array_equal(grads["W"], 3 * W0 ** 2)
    gd.nodes[i] = before  # back to the first content: its entry still answers for it
    assert engine.value_and_grad(gd, {"W": W0}, {})[0] == 14.0


def _scaled_graph(scale: float) -> gw.Graph:
    """Graphs alike in every way the old revision check looked at (node count, loss name,
    outputs, reduction); only a constant differs."""
    g = gw.Graph()
    W = g.param("W", (3,), "float64")
    g.set_loss(gw.sum(W * scale))
    return g


def test_throwaway_graphs_keep_the_cache_bounded(engine):
    cache = engine._programs if isinstance(engine, gw.LocalEngine) else engine._graphs
    first = _scaled_graph(-1.0)
    engine.value_and_grad(first, {"W": W0}, {})
    first_def = weakref.ref(first.graph_def)
    del first
    for i in range(2000):
        loss, _ = engine.value_and_grad(_scaled_graph(float(i)), {"W": W0}, {})
        assert loss == 2.0 * i
        assert len(cache) <= 32
    gc.collect()
    assert first_def() is None  # nothing keeps an evicted graph alive


def test_a_graph_reusing_a_collected_graphs_id_gets_its_own_answer(engine):
    ids = set()
    reused = False
    for i in range(40):
        g = _scaled_graph(float(i))
        reused |= id(g) in ids or id(g.graph_def) in ids
        ids.update((id(g), id(g.graph_def)))
        loss, grads = engine.value_and_grad(g, {"W": W0}, {})
        assert loss == 2.0 * i
        np.testing.assert_array_equal(grads["W"], np.full(3, float(i)))
        del g
        gc.collect()  # a Graph and its Values form a cycle
    assert reused  # the loop did exercise id() reuse


def test_a_session_is_a_context_manager_and_an_evicted_one_says_so(start_server):
    import numpy as np

    import gradwire as gw

    g = gw.Graph()
    x, w = g.input("x", (None, 2)), g.param("w", (2,))
    g.set_loss(gw.sum(x * w), batch_reduction="sum")
    params, batch = {"w": np.ones(2, np.float32)}, {"x": np.ones((3, 2), np.float32)}
    _, address = start_server(max_sessions=2)
    with gw.connect(address) as client:
        with client.session(g, params) as session:
            assert session.value_and_grad(batch)[0] == 6.0
        with pytest.raises(gw.NotFound, match="unknown session id"):
            session.value_and_grad(batch)  # closed when the block ended
        first = client.session(g, params)
        client.session(g, params), client.session(g, params)  # two newer ones push the first out
        with pytest.raises(gw.NotFound, match=r"was evicted: the server keeps its 2 most recently used sessions"):
            first.value_and_grad(batch)
