"""The executor: seed rules end to end, fan-out accumulation, deep graphs, liveness,
gradient ownership, fetched outputs, input gradients and the micro-shard plan."""

from __future__ import annotations

import dataclasses
import weakref

import numpy as np
import pytest

import gradwire as gw
from gradwire.worker.engine import Program
from gradwire.worker.graph import GraphDef, Node
from gradwire.worker.ops import OPS, Op
from gradwire.worker.shards import (
    combine,
    run_sharded,
    shard_batch,
    shard_bounds,
    shard_weight,
    tree_sum,
)
from gradwire.worker.spec import TensorSpec
from gradwire.worker.validate import GraphError

F64 = "float64"


# ------------------------------------------------------------------ the seed's rules, end to end


def _seed_graph(op: str):
    """loss = sum(G * op(x[, y])) with a random constant G, so dL/d op-output = G."""
    rng = np.random.default_rng(1)
    g = gw.Graph()
    x = g.input("x", shape=(3, 4), dtype=F64)
    y = g.input("y", shape=(3, 4), dtype=F64)
    G = g.const(rng.normal(size=(3, 4)), dtype=F64, name="G")
    out = gw.call(op, x, y) if op in ("add", "mul") else gw.call(op, x)
    g.set_loss(gw.sum(out * G))
    return g, g.graph_def.constants["G"]


@pytest.mark.parametrize("as_params", [False, True])
def test_seed_rules_via_engine(rng, as_params):
    X = rng.normal(size=(3, 4))
    X[0, :2] = 0.0  # relu's subgradient at 0
    Y = rng.normal(size=(3, 4))
    engine = gw.local()
    expected = {
        "add": lambda G: {"x": G, "y": G},
        "mul": lambda G: {"x": G * Y, "y": G * X},
        "relu": lambda G: {"x": G * (X > 0)},
        "sigmoid": lambda G: {"x": G * (s := 1 / (1 + np.exp(-X))) * (1 - s)},
    }
    for op, closed_form in expected.items():
        graph, G = _seed_graph(op)
        batch = {"x": X, "y": Y}
        if as_params:
            gd = graph.graph_def
            gd.params, gd.inputs = gd.inputs, {}
            result = engine.run(gd, batch, {})
            got = result.grads
            assert result.input_grads == {}
        else:
            result = engine.run(graph, {}, batch, wrt=("x", "y"))
            got = result.input_grads
            assert result.grads == {}
        want = closed_form(G)
        for name in ("x", "y"):
            np.testing.assert_allclose(got[name], want.get(name, np.zeros((3, 4))), rtol=1e-14, atol=1e-15,
                                       err_msg=f"{op} d/d{name}")
            assert got[name].dtype == np.float64


# ------------------------------------------------------------------ accumulation


def test_fan_out_same_value_used_twice(rng):
    g = gw.Graph()
    x = g.param("x", shape=(5,), dtype=F64)
    g.set_loss(gw.sum(x * x + (x + x)))
    X = rng.normal(size=5)
    loss, grads = gw.local().value_and_grad(g, {"x": X}, {})
    assert loss == pytest.approx(float(np.sum(X * X + 2 * X)), rel=1e-14)
    np.testing.assert_allclose(grads["x"], 2 * X + 2, rtol=1e-14)


def test_fan_out_value_feeds_two_branches(rng):
    g = gw.Graph()
    x = g.input("x", shape=(None, 4), dtype=F64)
    W = g.param("W", shape=(4, 3), dtype=F64)
    c = g.const(rng.normal(size=3), dtype=F64)
    h = gw.tanh(x @ W)
    g.set_loss(gw.sum(gw.relu(h)) + gw.sum(gw.sigmoid(h) * c), batch_reduction="sum")
    X, W0 = rng.normal(size=(6, 4)), rng.normal(size=(4, 3))
    C = g.graph_def.constants[c.name]
    loss, grads = gw.local().value_and_grad(g, {"W": W0}, {"x": X})
    H = np.tanh(X @ W0)
    S = 1 / (1 + np.exp(-H))
    assert loss == pytest.approx(float(np.maximum(H, 0).sum() + (S * C).sum()), rel=1e-13)
    dH = (H > 0) + C * S * (1 - S)
    np.testing.assert_allclose(grads["W"], X.T @ (dH * (1 - H * H)), rtol=1e-12)


def test_unused_parameter_gets_zeros_of_its_shape_and_dtype(rng):
    g = gw.Graph()
    W = g.param("W", shape=(3,))
    g.param("unused32", shape=(2, 5))
    g.param("unused64", shape=(4,), dtype=F64)
    g.set_loss(gw.sum(W * W))
    params = {"W": np.ones(3, np.float32), "unused32": np.ones((2, 5), np.float32),
              "unused64": np.ones(4)}
    loss, grads = gw.local().value_and_grad(g, params, {})
    assert set(grads) == {"W", "unused32", "unused64"}
    for name, p in params.items():
        assert grads[name].shape == p.shape and grads[name].dtype == p.dtype
    np.testing.assert_array_equal(grads["unused32"], 0)
    np.testing.assert_array_equal(grads["unused64"], 0)
    np.testing.assert_array_equal(grads["W"], 2.0)


def test_parameter_only_reaching_the_loss_through_labels_gets_zeros():
    # the labels input of softmax_cross_entropy is not differentiated
    g = gw.Graph()
    z = g.param("z", shape=(2, 3), dtype=F64)
    labels = g.input("labels", shape=(2,), dtype="int64")
    g.set_loss(gw.softmax_cross_entropy(z, labels))
    result = gw.local().run(g, {"z": np.zeros((2, 3))}, {"labels": np.array([0, 2])})
    assert result.loss == pytest.approx(np.log(3.0))
    np.testing.assert_allclose(result.grads["z"], (np.full((2, 3), 1 / 3) - np.eye(3)[[0, 2]]) / 2)


# ------------------------------------------------------------------ deep graphs

DEPTH = 10_000


def test_ten_thousand_node_tanh_chain(rng):
    g = gw.Graph()
    x = g.param("x", shape=(3,), dtype=F64)
    v = x
    for _ in range(DEPTH):
        v = gw.tanh(v)
    g.set_loss(gw.sum(v))
    assert len(g.graph_def.nodes) == DEPTH + 1
    X = rng.uniform(-1, 1, size=3)
    loss, grads = gw.local().value_and_grad(g, {"x": X}, {})
    # closed form: product of tanh' along the chain
    v, d = X.copy(), np.ones(3)
    for _ in range(DEPTH):
        v = np.tanh(v)
        d *= 1 - v * v
    assert loss == pytest.approx(float(v.sum()), rel=1e-12)
    np.testing.assert_allclose(grads["x"], d, rtol=1e-10)


def test_ten_thousand_node_add_chain_listed_in_reverse_order():
    # nodes listed deepest first: ordering must not recurse
    nodes = [Node(f"a{i}", "add", (f"a{i - 1}" if i else "x", "one")) for i in range(DEPTH)]
    nodes.append(Node("loss", "sum", (f"a{DEPTH - 1}",)))
    gd = GraphDef(params={"x": TensorSpec((2,), np.dtype(F64))}, constants={"one": np.ones(())},
                  nodes=nodes[::-1], loss="loss")
    result = Program(gd).run({"x": np.array([0.5, -2.0])}, {})
    assert result.loss == pytest.approx(-1.5 + 2 * DEPTH)
    np.testing.assert_array_equal(result.grads["x"], [1.0, 1.0])


# ------------------------------------------------------------------ outputs and input gradients


def _mlp(batch_reduction="mean", loss="sce"):
    g = gw.Graph()
    x = g.input("x", shape=(None, 5), dtype=F64)
    W1 = g.param("W1", shape=(5, 4), dtype=F64)
    b1 = g.param("b1", shape=(4,), dtype=F64)
    W2 = g.param("W2", shape=(4, 3), dtype=F64)
    h = gw.relu(x @ W1 + b1, name="h")
    logits = gw.matmul(h, W2, name="logits")
    if loss == "sce":
        y = g.input("y", shape=(None,), dtype="int64")
        value = gw.softmax_cross_entropy(logits, y)
    else:
        t = g.input("t", shape=(None, 3), dtype=F64)
        per_example = gw.sum(gw.square(logits - t), axis=1)
        # a mean-reduced loss must be a per-example mean, a sum-reduced one a sum
        value = gw.sum(per_example) if batch_reduction == "sum" else gw.mean(per_example)
    g.set_loss(value, batch_reduction=batch_reduction)
    return g


def _mlp_data(rng, n=10, loss="sce"):
    params = {"W1": rng.normal(size=(5, 4)), "b1": rng.normal(size=4), "W2": rng.normal(size=(4, 3))}
    batch = {"x": rng.normal(size=(n, 5))}
    if loss == "sce":
        batch["y"] = rng.integers(0, 3, size=n)
    else:
        batch["t"] = rng.normal(size=(n, 3))
    return params, batch


def test_fetched_outputs_are_returned(rng):
    g = _mlp()
    g.fetch(g["h"])
    params, batch = _mlp_data(rng)
    H = np.maximum(batch["x"] @ params["W1"] + params["b1"], 0)
    result = gw.local().run(g, params, batch)
    assert set(result.outputs) == {"h"}
    np.testing.assert_allclose(result.outputs["h"], H, rtol=1e-14)
    # an explicit fetch overrides the graph's
    result = gw.local().run(g, params, batch, fetch=("logits",))
    assert set(result.outputs) == {"logits"}
    np.testing.assert_allclose(result.outputs["logits"], H @ params["W2"], rtol=1e-13)


def test_fetched_outputs_do_not_alias_inputs(rng):
    g = gw.Graph()
    W = g.param("W", shape=(2, 3), dtype=F64)
    r = gw.reshape(W, shape=[3, 2])
    g.set_loss(gw.sum(r))
    g.fetch(W, r)
    W0 = rng.normal(size=(2, 3))
    keep = W0.copy()
    result = gw.local().run(g, {"W": W0}, {})
    result.outputs["W"][...] = 0
    result.outputs[r.name][...] = 0
    np.testing.assert_array_equal(W0, keep)


def test_bind_remembers_shapes_by_name_not_by_position():
    """A remembered answer must not be handed to a request whose tensors have the same
    shapes in another order, nor another dtype: each still gets the checks."""
    g = gw.Graph()
    x = g.input("x", shape=(None, 3))
    w, v = g.param("w", shape=(3, 2)), g.param("v", shape=(2, 3))
    g.set_loss(gw.sum(gw.matmul(gw.matmul(x, w), v)), batch_reduction="sum")
    program = Program(g.graph_def)
    f32 = np.float32
    good = {"w": np.ones((3, 2), f32), "v": np.ones((2, 3), f32)}
    batch = {"x": np.ones((4, 3), f32)}
    first, loss = program.order[0].name, program.graph.loss
    assert program.bind(good, batch)[first].shape == (4, 2) and program.bind(good, batch)[loss].shape == ()
    swapped = {"v": np.ones((3, 2), f32), "w": np.ones((2, 3), f32)}  # same shapes in the same dict order
    with pytest.raises(GraphError, match="'w'"):
        program.bind(swapped, batch)
    with pytest.raises(GraphError, match="'w'"):
        program.bind({**good, "w": np.ones((3, 2))}, batch)
    with pytest.raises(GraphError, match="unknown batch input"):
        program.bind(good, {**batch, "y": np.ones(3, f32)})
    assert program.bind(good, {"x": np.ones((7, 3), f32)})[first].shape == (7, 2)  # another batch size binds anew
    checked = []
    real_bind = program._bind
    program._bind = lambda *args: checked.append(1) or real_bind(*args)
    fresh = {k: v.copy() for k, v in good.items()}  # other arrays, same shapes: the remembered answer
    assert program.bind(fresh, {"x": np.zeros((4, 3), f32)}) is program.bind(good, batch) and checked == []


def test_input_gradients_on_request(rng):
    g = _mlp()
    params, batch = _mlp_data(rng)
    engine = gw.local()
    only_x = engine.run(g, params, batch, wrt=("x",))
    assert only_x.grads == {} and set(only_x.input_grads) == {"x"}
    assert only_x.input_grads["x"].shape == batch["x"].shape
    both = engine.run(g, params, batch, wrt=("W1", "x"))
    assert set(both.grads) == {"W1"} and set(both.input_grads) == {"x"}
    np.testing.assert_allclose(both.input_grads["x"], only_x.input_grads["x"], rtol=1e-15)
    default = engine.run(g, params, batch)
    assert set(default.grads) == {"W1", "b1", "W2"} and default.input_grads == {}
    np.testing.assert_allclose(both.grads["W1"], default.grads["W1"], rtol=1e-15)
    # against central differences in a random direction
    v = rng.normal(size=batch["x"].shape)
    eps = 1e-6
    up = engine.run(g, params, {**batch, "x": batch["x"] + eps * v}).loss
    down = engine.run(g, params, {**batch, "x": batch["x"] - eps * v}).loss
    assert float(np.sum(only_x.input_grads["x"] * v)) == pytest.approx((up - down) / (2 * eps), rel=1e-6)


# ------------------------------------------------------------------ liveness


def _record(monkeypatch, op_name, alive):
    """Swap in a copy of ``op_name`` whose forward records a weakref to every output."""
    base = OPS[op_name]

    def forward(*xs, **attrs):
        y = np.array(base.forward(*xs, **attrs))  # a fresh array owned by the engine
        alive.append(weakref.ref(y))
        return y

    monkeypatch.setitem(OPS, op_name, dataclasses.replace(base, forward=forward))


def _probe(monkeypatch, alive, seen):
    """An identity op that counts live recorded arrays in its forward and its vjp."""

    def forward(x):
        seen["forward"] = sum(r() is not None for r in alive)
        return x.copy()

    def vjp(g, y, x):
        seen["backward"] = sum(r() is not None for r in alive)
        return g

    monkeypatch.setitem(OPS, "probe", Op("probe", forward, lambda x: x, (vjp,), lambda rng: [], saves=()))


def _chain(op, first, second):
    nodes, prev = [], "x"
    for i in range(first):
        nodes.append(Node(f"a{i}", op, (prev, "c") if op == "add" else (prev,)))
        prev = f"a{i}"
    nodes.append(Node("p", "probe", (prev,)))
    prev = "p"
    for i in range(first, first + second):
        nodes.append(Node(f"a{i}", op, (prev, "c") if op == "add" else (prev,)))
        prev = f"a{i}"
    nodes.append(Node("loss", "sum", (prev,)))
    return GraphDef(params={"x": TensorSpec((4,), np.dtype(F64))}, constants={"c": np.ones(4)},
                    nodes=nodes, loss="loss")


def test_activations_of_ops_without_saves_are_freed_in_forward(monkeypatch):
    alive, seen = [], {}
    _record(monkeypatch, "add", alive)
    _probe(monkeypatch, alive, seen)
    program = Program(_chain("add", 20, 0))
    plan = program.backward_plan(("x",))
    assert not any(k.startswith("a") for k in plan.saved_last_use), plan.saved_last_use
    result = program.run({"x": np.zeros(4)}, {})
    assert len(alive) == 20
    assert seen["forward"] == 1  # only the probe's own input is still held
    assert seen["backward"] == 0
    np.testing.assert_array_equal(result.grads["x"], 1.0)
    assert sum(r() is not None for r in alive) == 0


def test_saved_activations_are_kept_for_backward_then_freed(monkeypatch):
    alive, seen = [], {}
    _record(monkeypatch, "tanh", alive)
    _probe(monkeypatch, alive, seen)
    program = Program(_chain("tanh", 10, 10))
    plan = program.backward_plan(("x",))
    assert {f"a{i}" for i in range(20)} <= set(plan.saved_last_use)
    X = np.linspace(-1, 1, 4)
    result = program.run({"x": X}, {})
    assert seen["forward"] == 10  # a0..a9, all read by tanh's vjp later
    assert seen["backward"] == 10  # a10..a19 were released once their vjps ran
    assert sum(r() is not None for r in alive) == 0  # the result keeps nothing
    v, d = X.copy(), np.ones(4)
    for _ in range(20):
        v = np.tanh(v)
        d *= 1 - v * v
    np.testing.assert_allclose(result.grads["x"], d, rtol=1e-13)


# ------------------------------------------------------------------ gradient ownership


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("shards", [1, 3])
def test_returned_gradients_never_alias(scaled, shards, rng):
    g = gw.Graph()
    x = g.input("x", shape=(None,), dtype=F64)
    W1 = g.param("W1", shape=(3, 4), dtype=F64)
    W2 = g.param("W2", shape=(3, 4), dtype=F64)
    c = g.const(rng.normal(size=(3, 4)), dtype=F64)
    s = W1 + W2
    # the scaled form makes mul hand add one owned array, which add passes to both inputs
    g.set_loss(gw.sum(s * c if scaled else s) + gw.sum(x))
    params = {"W1": rng.normal(size=(3, 4)), "W2": rng.normal(size=(3, 4))}
    kept = {k: v.copy() for k, v in params.items()}
    _, grads = gw.local(shards=shards).value_and_grad(g, params, {"x": np.ones(7)})
    a, b = grads["W1"], grads["W2"]
    assert not np.shares_memory(a, b)
    for p in params.values():
        assert not np.shares_memory(a, p) and not np.shares_memory(b, p)
    expected = np.array(b)
    a += 100.0  # gradients are writable and independent
    np.testing.assert_array_equal(b, expected)
    for k in params:
        np.testing.assert_array_equal(params[k], kept[k])


def test_gradients_are_fresh_c_contiguous_arrays(rng):
    g = gw.Graph()
    W = g.param("W", shape=(3, 4), dtype=F64)
    g.set_loss(gw.sum(gw.transpose(W)))  # the transpose vjp yields a view
    _, grads = gw.local().value_and_grad(g, {"W": rng.normal(size=(3, 4))}, {})
    assert grads["W"].flags.c_contiguous and grads["W"].flags.writeable and grads["W"].flags.owndata


# ------------------------------------------------------------------ micro-shard plan


def test_shard_bounds_partition_the_batch():
    for n in (1, 7, 10, 33):
        for k in (1, 2, 3, 4, 10, 50):
            bounds = shard_bounds(n, k)
            assert len(bounds) == min(n, k)
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize("reduction,loss", [("mean", "sce"), ("mean", "sq"), ("sum", "sq")])
@pytest.mark.parametrize("shards", [1, 3, 4, 10, 16])
def test_sharded_matches_unsharded(shards, reduction, loss, rng):
    g = _mlp(reduction, loss)
    g.fetch(g["logits"])
    params, batch = _mlp_data(rng, n=10, loss=loss)
    whole = gw.local(shards=1).run(g, params, batch, wrt=("W1", "b1", "W2", "x"))
    split = gw.local(shards=shards).run(g, params, batch, wrt=("W1", "b1", "W2", "x"))
    assert split.loss == pytest.approx(whole.loss, rel=1e-12, abs=1e-12)
    assert set(split.grads) == set(whole.grads) == {"W1", "b1", "W2"}
    for k in whole.grads:
        np.testing.assert_allclose(split.grads[k], whole.grads[k], rtol=1e-12, atol=1e-12, err_msg=k)
        assert split.grads[k].shape == params[k].shape and split.grads[k].dtype == np.float64
    np.testing.assert_allclose(split.input_grads["x"], whole.input_grads["x"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(split.outputs["logits"], whole.outputs["logits"], rtol=1e-12, atol=1e-12)


def test_sum_reduction_is_n_times_the_mean(rng):
    params, batch = _mlp_data(rng, n=10, loss="sq")
    mean_graph, sum_graph = _mlp("mean", "sq"), _mlp("sum", "sq")
    for shards in (1, 3, 4):
        m = gw.local(shards=shards).run(mean_graph, params, batch)
        s = gw.local(shards=shards).run(sum_graph, params, batch)
        assert s.loss == pytest.approx(10 * m.loss, rel=1e-12)
        for k in params:
            np.testing.assert_allclose(s.grads[k], 10 * m.grads[k], rtol=1e-12, atol=1e-12)


def test_sharded_gradient_of_an_unbatched_input_is_summed(rng):
    g = gw.Graph()
    x = g.input("x", shape=(None, 3), dtype=F64)
    c = g.input("c", shape=(3,), dtype=F64)
    W = g.param("W", shape=(3,), dtype=F64)
    g.set_loss(gw.mean(gw.tanh(x * c * W)))
    params, batch = {"W": rng.normal(size=3)}, {"x": rng.normal(size=(10, 3)), "c": rng.normal(size=3)}
    whole = gw.local().run(g, params, batch, wrt=("W", "c", "x"))
    for shards in (2, 3):
        split = gw.local(shards=shards).run(g, params, batch, wrt=("W", "c", "x"))
        for k in ("c", "x"):
            assert split.input_grads[k].shape == batch[k].shape
            np.testing.assert_allclose(split.input_grads[k], whole.input_grads[k], rtol=1e-12, atol=1e-14)


def test_sharded_fetched_outputs_combine_by_their_batch_dimension(rng):
    g = gw.Graph()
    x = g.input("x", shape=(None, 3), dtype=F64)
    W = g.param("W", shape=(3, 2), dtype=F64)
    h = x @ W  # (?, 2): concatenates along the batch
    ht = gw.transpose(h)  # (2, ?): concatenates along its unknown axis
    per_shard = gw.mean(h)  # a scalar: one value per shard
    g.set_loss(per_shard)
    g.fetch(h, ht, per_shard, W)
    params, batch = {"W": rng.normal(size=(3, 2))}, {"x": rng.normal(size=(10, 3))}
    whole = gw.local().run(g, params, batch)
    split = gw.local(shards=3).run(g, params, batch)
    np.testing.assert_allclose(split.outputs[h.name], whole.outputs[h.name], rtol=1e-15)
    np.testing.assert_allclose(split.outputs[ht.name], whole.outputs[ht.name], rtol=1e-15)
    H = whole.outputs[h.name]
    np.testing.assert_allclose(split.outputs[per_shard.name], [H[0:4].mean(), H[4:7].mean(), H[7:10].mean()],
                               rtol=1e-14)
    # a batch-independent value is not concatenated into a longer tensor: it stacks by shard
    np.testing.assert_array_equal(split.outputs["W"], np.stack([params["W"]] * 3))


def test_tree_sum_has_a_fixed_pairwise_order():
    parts = [np.float64(v) for v in (1.0, 1e100, -1e100, 1.0, 3.0)]
    # ((p0 + p1) + (p2 + p3)) + p4, not a left fold (which would give 4.0 here)
    assert tree_sum(parts) == ((parts[0] + parts[1]) + (parts[2] + parts[3])) + parts[4] == 3.0
    assert tree_sum(parts[:1]) == parts[0]
    with pytest.raises(ValueError):
        tree_sum([])
    arrays = [np.full(3, v) for v in (1.0, 1e100, -1e100, 1.0, 3.0)]
    np.testing.assert_array_equal(tree_sum(arrays), 3.0)


def test_sharded_run_is_the_fixed_tree_of_weighted_shards_bitwise(rng):
    g = _mlp("mean", "sce")
    params, batch = _mlp_data(rng, n=10)
    program = gw.local().program(g)
    parts = [program.run(params, shard_batch(program, batch, a, b), loss_scale=shard_weight(program, 10, a, b))
             for a, b in shard_bounds(10, 4)]
    assert [shard_weight(program, 10, a, b) for a, b in shard_bounds(10, 4)] == [0.3, 0.3, 0.2, 0.2]
    first = gw.local(shards=4).run(g, params, batch)
    again = run_sharded(program, params, batch, n_shards=4)
    manual = combine(parts, program)
    for r in (again, manual):
        assert r.loss == first.loss  # bitwise
        for k in first.grads:
            np.testing.assert_array_equal(r.grads[k], first.grads[k])
    assert first.loss == float(tree_sum([np.float64(p.loss) for p in parts]))


def test_aligned_blocks_are_subtrees_of_the_summation_tree():
    """The Ray backend sums blocks of shards on the workers: that must not change a bit."""
    from gradwire.worker.shards import aligned_blocks, tree_sum

    rng = np.random.default_rng(3)
    for n in range(1, 34):
        parts = [(rng.normal(size=7) * 10.0 ** rng.integers(-4, 4)).astype(np.float32) for _ in range(n)]
        whole = tree_sum(parts)
        for block in (1, 2, 4, 8, 16):
            sums = [tree_sum(parts[a:b]) for a, b in aligned_blocks(n, block)]
            assert np.array_equal(tree_sum(sums), whole), (n, block)
    with pytest.raises(ValueError, match="power of two"):
        aligned_blocks(8, 3)
