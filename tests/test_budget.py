"""Admission estimates (worker/budget.py): memory and FLOPs known, and refused, before a run
allocates anything; the memory estimate bounds what a run really holds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import gradwire as gw
from gradwire.worker.budget import Budget, check, estimate, fmt_bytes, static_estimate
from gradwire.worker.engine import Program
from gradwire.worker.graph import GraphDef, Node
from gradwire.worker.spec import TensorSpec
from gradwire.worker.validate import LimitError

F64 = np.dtype("float64")
GiB = 1 << 30


def _traced(fn):
    """``fn()`` and the peak bytes Python and NumPy allocated while it ran."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def peaks():
    """Every peak this module compares with, measured in a fresh interpreter: tracemalloc counts the
    allocations of all threads, and in a full suite other tests' servers and Ray's threads allocate
    while a run is traced (CI measured 10.1 MB for a run that holds 3.8 MB)."""
    done = subprocess.run([sys.executable, __file__, *MEASURED], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# ---------------------------------------------------------------- hostile requests, refused before they allocate


def _concat_doublings(n=31) -> GraphDef:
    """An 836-byte request: a scalar doubled 31 times by concat, 2**31 float64 (16 GiB) at the end."""
    nodes, prev = [Node("r", "reshape", ("p",), {"shape": [1]})], "r"
    for i in range(n):
        nodes.append(Node(f"c{i}", "concat", (prev, prev)))
        prev = f"c{i}"
    nodes.append(Node("l", "sum", (prev,)))
    return GraphDef(params={"p": TensorSpec((), F64)}, nodes=nodes, loss="l")


def _admit_concat_doublings():
    program = Program(_concat_doublings())
    return estimate(program, program.bind({"p": np.zeros(())}, {}))


def test_concat_doublings_are_refused_without_allocating(peaks):
    budget = _admit_concat_doublings()
    assert peaks["admit:concat"] < 20 << 20  # metadata only: nothing near the 16 GiB the run would need
    assert budget.peak_bytes >= 2**34 + 2**33  # c30's output, and its input still live
    assert (budget.peak_node, budget.peak_op) == ("c30", "concat")
    with pytest.raises(LimitError, match=r"^request needs an estimated [\d.]+ GB of memory at its peak "
                                         r"\(backward of node 'c30', op 'concat'\); the limit is 6\.0 GB$") as info:
        check(budget, max_bytes=6 * 10**9)
    assert (info.value.node, info.value.op) == ("c30", "concat")


def _admit_broadcast_exp():
    """104 bytes on the wire, 2 GB when run: exp(broadcast_to(p, [2**14, 2**14]))."""
    g = gw.Graph()
    p = g.param("p", ())
    g.set_loss(gw.sum(gw.exp(gw.broadcast_to(p, shape=[2**14, 2**14]), name="e")))
    program = Program(g.graph_def)
    return estimate(program, program.bind({"p": np.zeros((), np.float32)}, {}))


def test_a_broadcast_then_exp_is_refused_without_allocating(peaks):
    budget = _admit_broadcast_exp()
    assert peaks["admit:broadcast"] < 20 << 20
    assert budget.peak_bytes >= 2 * 2**30  # the broadcast (counted whole) and exp's output
    with pytest.raises(LimitError, match=r"request needs an estimated [\d.]+ GB of memory at its peak "
                                         r"\((backward of )?node 'e', op 'exp'\); the limit is 1\.1 GB"):
        check(budget, max_bytes=GiB)


def _admit_big_kernel_conv(wrt=None):
    """2 MB of image and 32 KB of kernel, 6.6 GB when run: conv2d's im2col columns of x (1, 1, 512, 512)
    for a 64x64 kernel hold 449*449 windows of 4096 elements each, 3150 times x."""
    g = gw.Graph()
    x, w = g.param("x", (1, 1, 512, 512), "float64"), g.param("w", (1, 1, 64, 64), "float64")
    g.set_loss(gw.sum(gw.conv2d(x, w, name="c")))
    program = Program(g.graph_def)
    specs = program.bind({"x": np.zeros((1, 1, 512, 512)), "w": np.zeros((1, 1, 64, 64))}, {})
    return estimate(program, specs, wrt=wrt)


def test_a_conv_whose_columns_are_gigabytes_is_refused_without_allocating(peaks):
    budget = _admit_big_kernel_conv()
    assert peaks["admit:conv"] < 20 << 20
    columns = 449 * 449 * 64 * 64 * 8  # ~825M float64
    assert budget.peak_bytes >= columns
    forward = _admit_big_kernel_conv(wrt=())  # no backward pass: the forward kernel's columns alone
    assert forward.peak_bytes >= columns and (forward.peak_node, forward.peak_phase) == ("c", "forward")
    assert (budget.peak_node, budget.peak_op) == ("c", "conv2d")
    with pytest.raises(LimitError, match=r"^request needs an estimated [\d.]+ GB of memory at its peak "
                                         r"\((backward of )?node 'c', op 'conv2d'\); the limit is 1\.1 GB$") as info:
        check(budget, max_bytes=GiB)
    assert (info.value.node, info.value.op) == ("c", "conv2d")


def test_flops_over_the_limit():
    g = gw.Graph()
    a, b = g.param("a", (1000, 1000), "float64"), g.param("b", (1000, 1000), "float64")
    g.set_loss(gw.sum(a @ b))
    program = Program(g.graph_def)
    budget = estimate(program, wrt=())
    with pytest.raises(LimitError, match=re.escape("request needs an estimated 2e+09 floating-point operations; "
                                                   "the limit is 1e+09")):
        check(budget, max_bytes=GiB, max_flops=1e9)
    assert check(budget, max_bytes=GiB, max_flops=1e10) is budget
    assert check(budget) is budget  # no limits


def test_fmt_bytes():
    assert [fmt_bytes(n) for n in (999, 17_179_869_184, 6 * 10**9, 2**50)] == ["999 B", "17.2 GB", "6.0 GB", "1.1 PB"]


# ---------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("a_shape,b_shape", [((30, 40), (40, 50)), ((7, 30, 40), (40, 50)), ((7, 30, 40), (7, 40, 50))])
def test_matmul_flops_are_2mnk_with_batch_dims(a_shape, b_shape):
    g = gw.Graph()
    a, b = g.param("a", a_shape, "float64"), g.param("b", b_shape, "float64")
    g.set_loss(gw.sum(a @ b))
    program = Program(g.graph_def)
    batch = a_shape[0] if len(a_shape) == 3 else 1
    m, k, n = a_shape[-2], a_shape[-1], b_shape[-1]
    forward = 2 * batch * m * n * k + batch * m * n  # the matmul, then the sum reads its output
    assert estimate(program, wrt=()).flops == forward  # no backward pass
    assert estimate(program).flops == 3 * forward  # the backward pass counts twice the forward


# ---------------------------------------------------------------- the estimate against real runs


def _mlp(n=4096, d=64, h=512, classes=10, layers=2, act=gw.relu):
    g = gw.Graph()
    x, y = g.input("x", (None, d), "float64"), g.input("y", (None,), "int64")
    rng = np.random.default_rng(0)
    params, hidden, dims = {}, x, [d] + [h] * layers
    for i in range(layers):
        w, b = g.param(f"W{i}", (dims[i], dims[i + 1]), "float64"), g.param(f"b{i}", (dims[i + 1],), "float64")
        params[f"W{i}"], params[f"b{i}"] = rng.normal(size=(dims[i], dims[i + 1])) / 10, np.zeros(dims[i + 1])
        hidden = act(hidden @ w + b)
    wo = g.param("Wo", (h, classes), "float64")
    params["Wo"] = rng.normal(size=(h, classes)) / 10
    g.set_loss(gw.softmax_cross_entropy(hidden @ wo, y))
    return Program(g.graph_def), params, {"x": rng.normal(size=(n, d)), "y": rng.integers(0, classes, n)}


def _measured_peak(program, params, batch, **kw) -> int:
    """What a run holds at its peak: its own allocations (traced) plus the sources it is given."""
    program.run(params, batch, **kw)  # warm: schedules and caches are not the run's
    _, peak = _traced(lambda: program.run(params, batch, **kw))
    return peak + sum(a.nbytes for a in params.values()) + sum(a.nbytes for a in batch.values())


ACTIVATIONS = {"relu": gw.relu, "tanh": gw.tanh, "sigmoid": gw.sigmoid}


@pytest.mark.parametrize("act", ACTIVATIONS.values(), ids=ACTIVATIONS)
def test_an_mlp_estimate_is_within_3x_above_its_measured_peak(act, peaks):
    program, params, batch = _mlp(act=act)
    budget = estimate(program, program.bind(params, batch))
    measured = peaks[f"mlp:{act.__name__}"]
    assert measured <= budget.peak_bytes <= 3 * measured, (budget, measured)


N = 400
_rng = np.random.default_rng(1)
X, Y, POS = _rng.normal(size=(N, N)) / 4, _rng.normal(size=(N, N)), _rng.uniform(0.5, 2.0, (N, N))
IMAGES, SMALL_IMAGES = _rng.normal(size=(8, 16, 32, 32)), _rng.normal(size=(32, 32, 8, 8))
# convolution and pooling: im2col columns kh*kw times their input, padded copies of x (each under-counted
# by the default rule; conv2d's and the pools' estimate stay within 4x of the measured peak)
CONV_CASES = {
    "conv2d-3x3": (lambda v: gw.conv2d(v["x"], v["w"], padding=[1, 1]),
                   {"x": IMAGES, "w": _rng.normal(size=(16, 16, 3, 3))}),
    "conv2d-9x9": (lambda v: gw.conv2d(v["x"], v["w"]), {"x": _rng.normal(size=(2, 4, 64, 64)),
                                                          "w": _rng.normal(size=(4, 4, 9, 9))}),
    "conv2d-dilated": (lambda v: gw.conv2d(v["x"], v["w"], dilation=[4, 4]),
                       {"x": _rng.normal(size=(2, 2, 64, 64)), "w": _rng.normal(size=(2, 2, 5, 5))}),
    "conv2d-groups-padded": (lambda v: gw.conv2d(v["x"], v["w"], v["b"], groups=4, padding=[2, 2]),
                             {"x": IMAGES[:4, :8].copy(), "w": _rng.normal(size=(8, 2, 5, 5)),
                              "b": _rng.normal(size=8)}),
    "conv_transpose2d": (lambda v: gw.conv_transpose2d(v["x"], v["w"], stride=[2, 2], padding=[1, 1]),
                         {"x": IMAGES[:4, :8, :16, :16].copy(), "w": _rng.normal(size=(8, 4, 5, 5))}),
    "max_pool2d-padded": (lambda v: gw.max_pool2d(v["x"], kernel=[3, 3], stride=[4, 4], dilation=[4, 4],
                                                  padding=[8, 8]), {"x": SMALL_IMAGES}),  # padded: 9 times x
    "avg_pool2d-padded": (lambda v: gw.avg_pool2d(v["x"], kernel=[8, 8], stride=[8, 8], padding=[7, 7]),
                          {"x": SMALL_IMAGES}),
}
BOUND_CASES = {
    "sigmoid": (lambda v: gw.sigmoid(v["x"]), {"x": X}),
    "exp": (lambda v: gw.exp(v["x"]), {"x": X}),
    "div": (lambda v: gw.div(v["x"], v["y"]), {"x": X, "y": POS}),
    "maximum": (lambda v: gw.maximum(v["x"], v["y"]), {"x": X, "y": Y}),
    "broadcasting-add": (lambda v: gw.add(v["x"], v["y"]), {"x": X[:, :1].copy(), "y": Y[:1].copy()}),
    "x*x": (lambda v: v["x"] * v["x"], {"x": X}),
    "matmul": (lambda v: v["x"] @ v["y"], {"x": X, "y": Y}),
    "max": (lambda v: gw.max(v["x"], axis=1), {"x": X}),
    "softmax": (lambda v: gw.softmax(v["x"]), {"x": X}),
    "bce": (lambda v: gw.binary_cross_entropy_with_logits(v["x"], v["y"]), {"x": X, "y": POS / 2}),
    "concat": (lambda v: gw.tanh(gw.concat(v["x"], v["y"], axis=1)), {"x": X, "y": Y}),
    "slice-of-exp": (lambda v: gw.slice(gw.exp(v["x"]), starts=[0], ends=[1]), {"x": X}),
    "broadcast_to": (lambda v: gw.exp(gw.broadcast_to(v["x"], shape=[N, N])), {"x": X[:1].copy()}),
    # ops that declare their workspace (Op.workspace): the default rule (3 buffers as large as the largest
    # operand) under-counts each of these
    "matmul-broadcast": (lambda v: v["x"] @ v["y"],  # the gradient of x before unbroadcast: (50, 200, 200)
                         {"x": _rng.normal(size=(1, 200, 200)), "y": _rng.normal(size=(50, 200, 2))}),
    "gelu": (lambda v: gw.gelu(v["x"]), {"x": X}),
    "layer_norm-of-one": (lambda v: gw.layer_norm(v["x"], v["s"], v["b"]),
                          {"x": X.reshape(-1, 1), "s": np.ones(1), "b": np.zeros(1)}),
    **{f"conv:{name}": case for name, case in CONV_CASES.items()},
}


def _bound_case(case):
    build, arrays = BOUND_CASES[case]
    g = gw.Graph()
    out = build({k: g.param(k, a.shape, "float64") for k, a in arrays.items()})
    g.set_loss(out if out.spec.shape == () else gw.sum(out))
    return Program(g.graph_def), arrays


@pytest.mark.parametrize("case", sorted(BOUND_CASES))
def test_the_estimate_bounds_the_measured_peak(case, peaks):
    program, arrays = _bound_case(case)
    budget = estimate(program, program.bind(arrays, {}))
    assert budget.peak_bytes >= peaks[f"case:{case}"], budget


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_a_conv_estimate_is_within_4x_above_its_measured_peak(case, peaks):
    program, arrays = _bound_case(f"conv:{case}")
    budget = estimate(program, program.bind(arrays, {}))
    measured = peaks[f"case:conv:{case}"]
    assert measured <= budget.peak_bytes <= 4 * measured, (budget, measured)


def _fetching_mlp():
    program, params, batch = _mlp(n=1024)
    name = program.order[0].name  # the first hidden layer's matmul: (1024, 512) float64
    return program, params, batch, {"fetch": (name,), "wrt": (*params, "x")}


def test_fetched_outputs_and_differentiated_inputs_are_counted(peaks):
    program, params, batch, kw = _fetching_mlp()
    specs = program.bind(params, batch)
    plain = estimate(program, specs)
    fetched = estimate(program, specs, fetch=kw["fetch"])
    assert fetched.peak_bytes >= plain.peak_bytes + 1024 * 512 * 8
    assert estimate(program, specs, wrt=kw["wrt"]).peak_bytes >= plain.peak_bytes
    assert peaks["fetching-mlp"] <= estimate(program, specs, **kw).peak_bytes


def test_the_sources_are_live_from_the_start():
    g = gw.Graph()
    g.param("big", (1000, 1000), "float64")  # held by the caller all along, read by no node
    g.set_loss(gw.sum(g.param("s", (3,), "float64")))
    program = Program(g.graph_def)
    assert estimate(program, wrt=("s",)).peak_bytes >= 8 * 10**6
    assert estimate(program).peak_bytes >= 2 * 8 * 10**6  # and its (zero) gradient is returned


# ---------------------------------------------------------------- registration and caching


def test_static_estimate_at_registration():
    g = gw.Graph()
    a, b = g.param("a", (30, 40), "float64"), g.param("b", (40, 50), "float64")
    g.set_loss(gw.sum(a @ b))
    program = Program(g.graph_def)
    arrays = {"a": np.zeros((30, 40)), "b": np.zeros((40, 50))}
    assert static_estimate(program) == estimate(program, program.bind(arrays, {}))
    batched, _, _ = _mlp(n=8)
    assert static_estimate(batched) is None  # the batch size is not known yet


def test_estimates_are_cached_per_specs_and_bounded():
    program, params, batch = _mlp(n=64, h=32)
    specs = program.bind(params, batch)
    first = estimate(program, specs)
    assert estimate(program, specs) is first  # a repeated request: one lookup
    assert estimate(program, program.bind(params, batch)) is first  # bind hands back the same specs
    smaller = program.bind(params, {"x": batch["x"][:32], "y": batch["y"][:32]})
    assert estimate(program, smaller).peak_bytes < first.peak_bytes
    for n in range(1, 40):
        estimate(program, program.bind(params, {"x": batch["x"][:n], "y": batch["y"][:n]}))
    assert len(program._budgets) <= 16


def test_budget_is_plain_data():
    b = Budget(10, 2.0, "n", "add", "forward")
    assert b.where == "node 'n', op 'add'"
    assert Budget(10, 2.0, "n", "add", "backward").where == "backward of node 'n', op 'add'"
    assert Budget(10, 2.0, peak_phase="sources").where == "its inputs and parameters"


# ---------------------------------------------------------------- measured in a fresh interpreter (see ``peaks``)


def _measure(key: str) -> int:
    kind, _, arg = key.partition(":")
    if kind == "admit":
        admit = {"concat": _admit_concat_doublings, "broadcast": _admit_broadcast_exp, "conv": _admit_big_kernel_conv}
        return _traced(admit[arg])[1]
    if kind == "mlp":
        return _measured_peak(*_mlp(act=ACTIVATIONS[arg]))
    if kind == "case":
        program, arrays = _bound_case(arg)
        return _measured_peak(program, arrays, {})
    program, params, batch, kw = _fetching_mlp()
    return _measured_peak(program, params, batch, **kw)


MEASURED = ("admit:concat", "admit:broadcast", "admit:conv", *(f"mlp:{a}" for a in ACTIVATIONS),
            *(f"case:{c}" for c in BOUND_CASES), "fetching-mlp")

if __name__ == "__main__":
    print(json.dumps({key: _measure(key) for key in sys.argv[1:]}))
