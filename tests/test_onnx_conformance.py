"""ONNX's own backend node tests, through ``gw.from_onnx``.

The wheel does not ship the node test data (``onnx/backend/test/data/node``), so the cases are
generated with ``collect_testcases``, as ONNX's own runner does. Only cases whose every op has
an entry in the import table are collected (the rest: see ``unsupported_summary``).

* forward: every output matches the expected one within the case's rtol/atol (1e-3/1e-7);
* gradient, for cases with float inputs and float outputs: the gradient of a random weighted
  sum of the float outputs w.r.t. the float inputs, on the graph converted to float64, matches
  central differences along two random directions.

A case that the import or gradwire's op table refuses (a missing gradwire op, a dtype gradwire
does not have, a non-constant shape input, ...) is skipped with the refusal as its reason.
"""

from __future__ import annotations

import collections
import copy
import re
import dataclasses
import functools
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from gradwire.client.onnx_io import IMPORTERS, OnnxError, from_onnx  # noqa: E402
from gradwire.worker.engine import Program  # noqa: E402
from gradwire.worker.graph import Node  # noqa: E402
from gradwire.worker.ops import OPS  # noqa: E402
from gradwire.worker.spec import TensorSpec  # noqa: E402
from gradwire.worker.validate import GraphError, infer, topological_order  # noqa: E402

# the cases' own data includes NaN and Inf results (pow of a negative base, log of 0)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}


def _collect():
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return collect_testcases(None)


ALL_CASES = _collect()


def _mapped(case) -> bool:
    return all(n.op_type in IMPORTERS and n.domain in ("", "ai.onnx") for n in case.model.graph.node)


def _graph_inputs(model):
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _has_float_io(case) -> bool:
    g = case.model.graph
    return (any(vi.type.tensor_type.elem_type in FLOAT_TYPES for vi in _graph_inputs(case.model))
            and any(vi.type.tensor_type.elem_type in FLOAT_TYPES for vi in g.output))


CASES = [c for c in ALL_CASES if _mapped(c)]
GRAD_CASES = [c for c in CASES if _has_float_io(c)]


def unsupported_summary() -> collections.Counter:
    """ONNX op types without an import entry, by how many cases they keep out."""
    return collections.Counter(n.op_type for c in ALL_CASES if not _mapped(c) for n in
                               {n.op_type: n for n in c.model.graph.node}.values() if n.op_type not in IMPORTERS)


_NEEDS_CONSTANT = re.compile(r"\(input \d+, '([^']+)'\) must be a constant")


@functools.lru_cache(maxsize=None)
def _imported(name: str, data_set: int = 0):
    """The case's model through ``from_onnx``. ONNX's node tests feed shape-like operands
    (axes, target shapes, pads, clip bounds) as graph inputs; gradwire needs them when
    building the graph, so each one the import asks for becomes an initializer holding the
    data set's value (a user would do the same: fix them in the model)."""
    case = next(c for c in CASES if c.name == name)
    model = case.model
    fixed: dict[str, np.ndarray] = {}
    inputs = dict(zip([vi.name for vi in _graph_inputs(case.model)], case.data_sets[data_set][0]))
    while True:
        try:
            g, params = from_onnx(model, trainable="none")
            return case, g, params, fixed
        except OnnxError as exc:
            m = _NEEDS_CONSTANT.search(str(exc))
            if m is None or m.group(1) not in inputs or m.group(1) in fixed:
                pytest.skip(str(exc))
            fixed[m.group(1)] = np.asarray(inputs[m.group(1)])
            model = _with_initializers(case.model, fixed)


def _with_initializers(model, values):
    model = copy.deepcopy(model)
    graph = model.graph
    keep = [vi for vi in graph.input if vi.name not in values]
    del graph.input[:]
    graph.input.extend(keep)
    graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in values.items())
    return model


def _feeds(case, g, inputs):
    names = [vi.name for vi in _graph_inputs(case.model)]
    feeds = {}
    for name, value in zip(names, inputs):
        if name not in g.graph_def.inputs:
            continue  # unused by the graph after translation
        feeds[name] = np.asarray(value)
    return feeds


def _program(gd) -> Program:
    try:
        return Program(gd)
    except GraphError as exc:
        pytest.skip(f"gradwire refuses the graph: {exc}")


def _check_dtypes(feeds, gd):
    for name, value in feeds.items():
        if np.dtype(value.dtype) != gd.inputs[name].dtype:
            pytest.skip(f"input {name!r} is {value.dtype}, the graph says {gd.inputs[name]}")


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_forward(name):
    case = next(c for c in CASES if c.name == name)
    for k, (inputs, expected) in enumerate(case.data_sets):
        case, g, params, _ = _imported(name, k)
        outs = [vi.name for vi in case.model.graph.output]
        gd = dataclasses.replace(g.graph_def, outputs=tuple(outs))
        zero = "__conformance_zero"
        gd.constants = {**gd.constants, zero: np.zeros((), np.float64)}
        gd.loss = zero
        program = _program(gd)
        feeds = _feeds(case, g, inputs)
        _check_dtypes(feeds, gd)
        try:
            result = program.run(params, feeds, wrt=())
        except GraphError as exc:
            pytest.skip(f"gradwire refuses the data: {exc}")
        for out, want in zip(outs, expected):
            got = result.outputs[out]
            want = np.asarray(want)
            assert got.dtype == want.dtype, f"{out}: {got.dtype} != {want.dtype}"
            assert got.shape == want.shape, f"{out}: {got.shape} != {want.shape}"
            np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol, err_msg=out)


def _float64(gd):
    """The graph with its float32 sources, constants and dtype attributes made float64."""
    def wide(spec):
        return TensorSpec(spec.shape, np.dtype(np.float64)) if spec.dtype == np.float32 else spec
    nodes = [dataclasses.replace(n, attrs={k: ("float64" if v == "float32" else v) for k, v in n.attrs.items()})
             for n in gd.nodes]
    return dataclasses.replace(
        gd, inputs={k: wide(s) for k, s in gd.inputs.items()}, params={k: wide(s) for k, s in gd.params.items()},
        constants={k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in gd.constants.items()},
        nodes=nodes)


@pytest.mark.parametrize("name", [c.name for c in GRAD_CASES])
def test_gradient(name):
    case, g, params, _ = _imported(name)
    rng = np.random.default_rng(0)
    gd = _float64(g.graph_def)
    inputs, _ = case.data_sets[0]
    feeds = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in _feeds(case, g, inputs).items()}
    params64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in params.items()}
    _check_dtypes(feeds, gd)
    # inputs gradwire differentiates (not, e.g., batch_norm's running statistics)
    used = collections.defaultdict(set)
    for node in gd.nodes:
        for ref, d in zip(node.inputs, OPS[node.op].differentiable(len(node.inputs))):
            used[ref].add(d)
    floats = tuple(k for k, v in feeds.items() if v.dtype == np.float64 and v.size and True in used[k])
    if not floats:
        pytest.skip("no float input is differentiated")
    # loss = sum_i sum(w_i * out_i) over the float outputs, random weights
    try:
        specs, _ = _infer(gd)
    except GraphError as exc:
        pytest.skip(f"gradwire refuses the float64 graph: {exc}")
    terms = []
    for i, vi in enumerate(case.model.graph.output):
        spec = specs.get(vi.name)
        if spec is None or spec.dtype != np.float64 or None in spec.shape:
            continue
        w = f"__w{i}"
        gd.constants[w] = rng.uniform(0.5, 1.5, spec.shape)
        gd.nodes.append(Node(f"__wx{i}", "mul", (vi.name, w)))
        gd.nodes.append(Node(f"__s{i}", "sum", (f"__wx{i}",)))
        terms.append(f"__s{i}")
    if not terms:
        pytest.skip("no float output")
    loss = terms[0]
    for k, t in enumerate(terms[1:]):
        gd.nodes.append(Node(f"__l{k}", "add", (loss, t)))
        loss = f"__l{k}"
    gd.loss = loss
    program = _program(gd)
    try:
        result = program.run(params64, feeds, wrt=floats)
    except GraphError as exc:
        pytest.skip(f"gradwire refuses the data: {exc}")
    if not np.isfinite(result.loss):
        pytest.skip("the outputs are not finite at the test point")

    def f(offsets, eps):
        moved = dict(feeds)
        for k in floats:
            moved[k] = feeds[k] + eps * offsets[k]
        return program.run(params64, moved, wrt=()).loss

    f0 = f({k: np.zeros_like(feeds[k]) for k in floats}, 0.0)
    for _ in range(2):
        v = {k: rng.normal(size=feeds[k].shape) for k in floats}
        analytic = sum(float(np.sum(result.input_grads[k] * v[k])) for k in floats)
        if not np.isfinite(analytic):
            # e.g. a softmax over a fully masked row, replaced by where: the forward value is
            # finite, the gradient through the masked NaN branch is not (as in PyTorch and JAX)
            pytest.skip("the gradient is not finite at the test point (NaN through a masked branch)")
        eps = 1e-6
        up, down = f(v, eps), f(v, -eps)
        central = (up - down) / (2 * eps)
        finer = (f(v, eps / 10) - f(v, -eps / 10)) / (eps / 5)
        if not np.isfinite([central, finer]).all():
            pytest.skip("the outputs are not finite near the test point")
        scale = max(1.0, abs(analytic), abs(central))
        # one-sided differences that disagree (a kink: relu at 0, a tied max), or central ones
        # that change with the step (a jump: sign at 0): not a smooth point along v
        if abs((up - f0) / eps - (f0 - down) / eps) > 1e-3 * scale or abs(central - finer) > 1e-3 * scale:
            pytest.skip("the test point is not a smooth point of the outputs")
        assert abs(central - analytic) <= 1e-5 * scale, \
            f"directional derivative {analytic} != central difference {central}"


def _infer(gd):
    return infer(gd, topological_order(gd), gd.sources())
