"""The executor: forward in topological order, backward in reverse, accumulating gradients.

It knows no op by name: everything op-specific comes from the op table. ``Program`` holds
what depends only on the graph (order, attrs, liveness), so a cached program runs a
request with no analysis beyond a metadata-only shape check of the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
import numpy as np

from .batching import analyse as analyse_batching
from .cancel import NEVER, CancelToken
from .graph import GraphDef
from .ops import OPS
from .spec import TensorSpec
from .validate import GraphError, Limits, check_outputs, infer, topological_order


class ExecutionError(GraphError):
    """A kernel rejected its data at run time (e.g. a label out of range, a non-finite value)."""


@dataclass
class Result:
    loss: float
    grads: dict[str, np.ndarray]
    input_grads: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class _Backward:
    """Which nodes the backward pass visits for one choice of differentiated sources."""

    nodes: tuple[int, ...]  # indices into the program's order, in reverse topological order
    needs: tuple[tuple[bool, ...], ...]  # per visited node: which inputs want a gradient
    saved_last_use: dict[str, int]  # value -> the backward position after which it is dead


@dataclass(frozen=True)
class _Schedule:
    """One choice of ``wrt`` and ``fetch`` resolved once into flat steps, so a run does no
    lookups beyond its values: per forward node (name, op, kernel, inputs, attrs, values
    dead after it); per backward step (name, inputs, VJP specialised to the inputs that
    want a gradient, attrs, values dead after it)."""

    forward: tuple[tuple[str, str, Callable, tuple[str, ...], dict, tuple[str, ...]], ...]
    backward: tuple[tuple[str, tuple[str, ...], Callable, dict, tuple[str, ...]], ...]
    fetch: tuple[str, ...]
    param_grads: tuple[str, ...]  # wrt's parameters, in wrt's order
    input_grads: tuple[str, ...]  # wrt's batch inputs


@lru_cache(maxsize=4096)  # read-only views: safe to share, and cheaper than rebuilding per call
def _placeholder(spec: TensorSpec) -> np.ndarray:
    # A freed activation's stand-in: right shape and dtype, no memory. VJPs that declared
    # they do not save a value only ever read its shape.
    return np.broadcast_to(np.zeros((), spec.dtype), spec.shape)


class Program:
    def __init__(self, graph: GraphDef, limits: Limits | None = None):
        self.graph = graph
        self.limits = limits or Limits()
        self.order = topological_order(graph)
        self.specs, self.attrs = infer(graph, self.order, graph.sources(), self.limits)
        check_outputs(graph, self.specs)
        self.ops = [OPS[node.op] for node in self.order]
        self.loss_batching = analyse_batching(self)  # how shards combine; refuses a mis-declared reduction
        # Forward liveness: the last node (by position) that reads each value.
        self.forward_last_use: dict[str, int] = {}
        for i, node in enumerate(self.order):
            for ref in node.inputs:
                self.forward_last_use[ref] = i
        self._backward_plans: dict[tuple[str, ...], _Backward] = {}
        self._schedules: dict[tuple, _Schedule] = {}
        self._bound: dict[tuple, dict[str, TensorSpec]] = {}
        self._budgets: dict[tuple, tuple] = {}  # worker.budget's estimates, per specs, wrt and fetch

    # ------------------------------------------------------------------ checks

    def bind(self, params: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> dict[str, TensorSpec]:
        """Check params and batch against the graph and infer every concrete spec (no allocation)."""
        g = self.graph
        if params.keys() == g.params.keys() and batch.keys() == g.inputs.keys():
            # The answer depends only on the sources' shapes and dtypes, which repeat from
            # request to request: remember the last few (checked when first computed).
            key = (tuple((params[n].shape, params[n].dtype) for n in g.params),
                   tuple((batch[n].shape, batch[n].dtype) for n in g.inputs))
            specs = self._bound.get(key)
            if specs is None:
                specs = _remember(self._bound, key, self._bind(params, batch), capacity=8)  # a handful of shapes in use
            return specs
        return self._bind(params, batch)

    def _bind(self, params: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> dict[str, TensorSpec]:
        g = self.graph
        for kind, declared, given in (("parameter", g.params, params), ("batch input", g.inputs, batch)):
            missing = sorted(set(declared) - set(given))
            if missing:
                raise GraphError(f"missing {kind}(s) {missing}")
            extra = sorted(set(given) - set(declared))
            if extra:
                raise GraphError(f"unknown {kind}(s) {extra}; the graph declares {sorted(declared)}")
        sources: dict[str, TensorSpec] = {}
        for name, spec in list(g.params.items()) + list(g.inputs.items()):
            value = params[name] if name in g.params else batch[name]
            got = TensorSpec.of(value)
            if got.dtype != spec.dtype or len(got.shape) != len(spec.shape) or any(
                d is not None and d != e for d, e in zip(spec.shape, got.shape)
            ):
                raise GraphError(f"tensor {name!r} must be {spec}, got {got}")
            sources[name] = got
        batch_sizes = {n: batch[n].shape[0] for n, s in g.inputs.items() if s.shape and s.shape[0] is None}
        if len(set(batch_sizes.values())) > 1:
            raise GraphError(f"batch inputs disagree on the batch size: {batch_sizes}")
        if batch_sizes and not any(batch_sizes.values()) and g.batch_reduction == "mean":
            raise GraphError(f"empty batch: batch input(s) {sorted(batch_sizes)} hold 0 examples; "
                             "a mean over 0 examples is undefined")
        sources.update({n: TensorSpec.of(v) for n, v in g.constants.items()})
        specs, _ = infer(g, self.order, sources, self.limits)
        return specs

    # ------------------------------------------------------------------ backward plan

    def backward_plan(self, wrt: tuple[str, ...]) -> _Backward:
        plan = self._backward_plans.get(wrt)
        if plan is None:
            plan = _remember(self._backward_plans, wrt, self._make_backward_plan(wrt))
        return plan

    def _make_backward_plan(self, wrt: tuple[str, ...]) -> _Backward:
        unknown = [w for w in wrt if w not in self.graph.params and w not in self.graph.inputs]
        if unknown:
            raise GraphError(f"cannot differentiate with respect to {unknown}: not a parameter or batch input")
        requires = set(wrt)
        for i, node in enumerate(self.order):
            diff = self.ops[i].differentiable(len(node.inputs))
            if any(ref in requires and d for ref, d in zip(node.inputs, diff)):
                requires.add(node.name)
        # Walk back from the loss: only nodes on a path from a differentiated source to it.
        reaches_loss = {self.graph.loss}
        visited, needs = [], []
        for i in range(len(self.order) - 1, -1, -1):
            node = self.order[i]
            if node.name not in reaches_loss or node.name not in requires:
                continue
            diff = self.ops[i].differentiable(len(node.inputs))
            need = tuple(ref in requires and d for ref, d in zip(node.inputs, diff))
            reaches_loss.update(ref for ref, n in zip(node.inputs, need) if n)
            visited.append(i)
            needs.append(need)
        last_use: dict[str, int] = {}
        for step, i in enumerate(visited):
            for ref in self._saved(i):
                last_use[ref] = step  # later steps overwrite: the final reader wins
        return _Backward(tuple(visited), tuple(needs), last_use)

    def _saved(self, i: int) -> list[str]:
        node, op = self.order[i], self.ops[i]
        if op.saves is None:
            return [node.name, *node.inputs]
        return [node.name if s == "y" else node.inputs[s] for s in op.saves]

    def _schedule(self, wrt: tuple[str, ...], fetch: tuple[str, ...]) -> _Schedule:
        """The steps of a run for ``wrt`` and ``fetch`` (computed once per choice). A value
        a VJP saves lives until its last backward reader, fetched values and the loss until
        the end; everything else is freed right after its last forward reader."""
        key = (wrt, fetch)
        schedule = self._schedules.get(key)
        if schedule is not None:
            return schedule
        g = self.graph
        plan = self.backward_plan(wrt)
        keep = set(plan.saved_last_use) | set(fetch) | {g.loss}
        forward = tuple(
            (node.name, node.op, self.ops[i].forward, node.inputs, self.attrs[i],
             tuple(ref for ref in dict.fromkeys(node.inputs) if self.forward_last_use[ref] == i and ref not in keep))
            for i, node in enumerate(self.order))
        backward = tuple(
            (self.order[i].name, self.order[i].inputs, self.ops[i].vjp_for(need), self.attrs[i],
             tuple(ref for ref in dict.fromkeys(self._saved(i))
                   if plan.saved_last_use.get(ref) == step and ref not in fetch))
            for step, (i, need) in enumerate(zip(plan.nodes, plan.needs)))
        schedule = _Schedule(forward, backward, fetch, tuple(w for w in wrt if w in g.params),
                             tuple(w for w in wrt if w in g.inputs))
        return _remember(self._schedules, key, schedule)

    # ------------------------------------------------------------------ run

    def run(self, params: dict[str, np.ndarray], batch: dict[str, np.ndarray], *,
            wrt: tuple[str, ...] | None = None, fetch: tuple[str, ...] = (),
            loss_scale: float = 1.0, check_finite: bool = False,
            specs: dict[str, TensorSpec] | None = None, cancel: CancelToken | None = None) -> Result:
        """Loss and gradients for ``wrt`` (default: every parameter). ``loss_scale`` seeds the
        backward pass (a shard's weight in the batch); the returned loss is scaled alike.
        ``cancel`` is checked before every node, forward and backward (``Cancelled``)."""
        specs = specs or self.bind(params, batch)
        wrt = tuple(self.graph.params) if wrt is None else tuple(wrt)
        schedule = self._schedule(wrt, tuple(fetch) or self.graph.outputs)

        env: dict[str, np.ndarray] = {**self.graph.constants, **params, **batch}
        check = (cancel or NEVER).check
        for name, op_name, forward, inputs, attrs, frees in schedule.forward:
            check()
            try:
                y = forward(*[env[ref] for ref in inputs], **attrs)
            except (ValueError, FloatingPointError, IndexError, TypeError) as exc:  # the data at fault, not the engine
                raise ExecutionError(str(exc), name, op_name) from None
            if type(y) is not np.ndarray:  # reductions give NumPy scalars
                y = np.asarray(y)
            if check_finite and y.dtype.kind == "f" and not np.isfinite(y).all():
                raise ExecutionError("produced a non-finite value (NaN or Inf)", name, op_name)
            env[name] = y
            for ref in frees:
                env.pop(ref, None)

        loss_name = self.graph.loss
        loss = float(env[loss_name]) * loss_scale
        outputs = {name: np.array(env[name]) for name in schedule.fetch}
        grads: dict[str, np.ndarray] = {loss_name: np.asarray(loss_scale, specs[loss_name].dtype)}
        for name, inputs, input_grads, attrs, frees in schedule.backward:
            check()
            g = grads.pop(name)
            y = env.get(name)
            if y is None:
                y = _placeholder(specs[name])
            xs = [env[ref] if ref in env else _placeholder(specs[ref]) for ref in inputs]
            for ref, grad in zip(inputs, input_grads(g, y, xs, attrs)):
                if grad is not None:
                    # accumulate, never overwrite: a value read twice gets both contributions
                    grads[ref] = grads[ref] + grad if ref in grads else grad
            for ref in frees:
                env.pop(ref, None)

        handed_out: set[int] = set()
        return Result(loss=loss, grads=_owned(schedule.param_grads, grads, specs, handed_out),
                      input_grads=_owned(schedule.input_grads, grads, specs, handed_out), outputs=outputs)


def _remember(cache: dict, key, value, capacity: int = 64):
    """``cache[key] = value``, emptying a full cache first: keys come from requests (shapes,
    the order of ``wrt``), so a client must not be able to grow it without bound.
    ``clear()`` and assignment are each atomic: safe for concurrent requests."""
    if len(cache) >= capacity:
        cache.clear()
    cache[key] = value
    return value


def _owned(names: tuple[str, ...], grads: dict[str, np.ndarray], specs: dict[str, TensorSpec],
           handed_out: set[int]) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        out[name] = _own(grads.get(name), specs[name], handed_out)
        handed_out.add(id(out[name]))
    return out


def _own(grad: np.ndarray | None, spec: TensorSpec, handed_out: set[int]) -> np.ndarray:
    """A fresh, writable array of the value's exact shape and dtype (zeros if no gradient
    flowed): gradients may be views shared between values, never hand those out."""
    if grad is None:
        return np.zeros(spec.shape, spec.dtype)
    exact = grad.dtype == spec.dtype and grad.shape == spec.shape
    if exact and id(grad) not in handed_out and grad.flags.owndata and grad.flags.writeable and grad.flags.c_contiguous:
        return grad
    if exact:
        return grad.copy(order="C")
    return np.array(np.broadcast_to(grad, spec.shape), dtype=spec.dtype, order="C")
