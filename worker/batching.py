"""How each value depends on the batch, and so whether the loss may be cut into shards.

Sharding is correct only when Σ_i weight_i · L(shard_i) = L(batch) as functions of the
parameters (then the gradients agree too). That is derived from the graph, never assumed:
every value gets one point of a small lattice (``Batch``),

* ``FREE``: independent of the batch (parameters, constants, inputs whose leading dim is
  known: those pass whole to every shard);
* ``ROWS(k)``: carries the batch along axis k, row i depending only on example i (batch
  inputs, whose leading dim is unknown, are ``ROWS(0)``);
* ``MEAN`` / ``SUM``: a batch-free shape equal to a mean / sum over per-example terms;
* ``COUPLED``: anything else (always a safe answer),

each op's ``Op.batch`` rule maps its inputs' points to its output's, and the loss's point
decides: ``MEAN`` shards with weights n_i/N, ``SUM`` with weight 1, anything else runs the
batch whole. This module imports nothing from the op table (the table imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .spec import TensorSpec


@dataclass(frozen=True)
class Batch:
    kind: str  # "free", "rows", "mean", "sum" or "coupled"
    axis: int | None = None  # ROWS: the batch axis
    # for messages only: COUPLED's cause, MEAN/SUM's originating node
    why: str = field(default="", compare=False)
    origin: str = field(default="", compare=False)

    @property
    def reduced(self) -> bool:
        """A mean or sum over the batch (batch-free shape)."""
        return self.kind in ("mean", "sum")

    def describe(self) -> str:
        if self.kind == "rows":
            return f"per-example rows along axis {self.axis}"
        if self.reduced:
            return f"a {self.kind} over the batch" + (f" from {self.origin}" if self.origin else "")
        return {"free": "batch-free", "coupled": "coupled"}[self.kind]

    def __repr__(self) -> str:
        return f"ROWS({self.axis})" if self.kind == "rows" else self.kind.upper()


FREE, MEAN, SUM = Batch("free"), Batch("mean"), Batch("sum")


def rows(axis: int) -> Batch:
    return Batch("rows", axis)


def coupled(why: str) -> Batch:
    return Batch("coupled", why=why)


# A rule: rule(ins, in_specs, out_spec, **attrs) -> Batch. The analysis calls it only when
# no input is COUPLED (coupling propagates) and not every input is FREE (FREE in, FREE out),
# so a rule handles mixes of ROWS, MEAN, SUM and FREE.


def broadcast_rows(ins: tuple[Batch, ...], specs: tuple[TensorSpec, ...], ndim: int) -> Batch:
    """ROWS and FREE inputs of a NumPy-broadcasting op with an output of rank ``ndim``: ROWS(k)
    when every ROWS input lands on output axis k and every FREE input has size 1 there (or no
    such axis): a FREE axis of fixed size would pair examples with rows by position."""
    axes = {b.axis + ndim - s.ndim for b, s in zip(ins, specs) if b.kind == "rows"}
    if len(axes) > 1:
        return coupled("pairs rows along different batch axes")
    k = axes.pop()
    for b, s in zip(ins, specs):
        j = k - (ndim - s.ndim)
        if b.kind == "free" and j >= 0 and s.shape[j] != 1:
            size = "?" if s.shape[j] is None else s.shape[j]
            return coupled(f"broadcasts the batch axis against a batch-free axis of size {size}")
    return rows(k)


def elementwise(ins, specs, out: TensorSpec, **_: Any) -> Batch:
    """The default rule: a (broadcasting) elementwise op, not linear in anything."""
    if any(b.reduced for b in ins):
        return coupled("applies a non-linear function to a mean or sum over the batch")
    return broadcast_rows(ins, specs, out.ndim)


def linear(ins, specs, out: TensorSpec, **attrs: Any) -> Batch:
    """add, sub: a mean plus a mean or a batch-free term is a mean (mean_b f_b + R =
    mean_b (f_b + R)); a sum plus a sum is a sum, but a sum plus R is not (each shard
    would add R once)."""
    kinds = {b.kind for b in ins} - {"free"}
    if kinds == {"mean"}:
        return MEAN
    if kinds == {"sum"}:
        if any(b.kind == "free" for b in ins):
            return coupled("adds a batch-free term to a sum over the batch (each shard would count it once)")
        return SUM
    if {"mean", "sum"} <= kinds:
        return coupled("mixes a mean and a sum over the batch")
    if kinds & {"mean", "sum"}:
        return coupled("mixes a mean or sum over the batch with per-example rows")
    return broadcast_rows(ins, specs, out.ndim)


def scaling(ins, specs, out: TensorSpec, **attrs: Any) -> Batch:
    """mul: a mean or sum times a batch-free factor keeps it."""
    reduced = [b for b in ins if b.reduced]
    if len(reduced) == 1 and all(b.kind == "free" for b in ins if not b.reduced):
        return reduced[0]
    return elementwise(ins, specs, out)


def dividing(ins, specs, out: TensorSpec, **attrs: Any) -> Batch:
    """div: a mean or sum divided by a batch-free divisor keeps it; nothing else is linear."""
    if ins[0].reduced and ins[1].kind == "free":
        return ins[0]
    return elementwise(ins, specs, out)


def unary_linear(ins, specs, out: TensorSpec, **attrs: Any) -> Batch:
    """neg and other linear one-input ops that keep every axis in place."""
    return ins[0] if ins[0].reduced else elementwise(ins, specs, out)


# ---------------------------------------------------------------- the analysis


def source_batch(spec: TensorSpec) -> Batch:
    """A batch input's point: the batch is cut along an unknown leading dim, else it passes whole."""
    return rows(0) if spec.shape and spec.shape[0] is None else FREE


def node_batch(node, op, ins: tuple[Batch, ...], in_specs: tuple[TensorSpec, ...], out_spec: TensorSpec,
               attrs: dict[str, Any]) -> Batch:
    """One node's point from its inputs', by its op's rule, with provenance for messages."""
    for b in ins:
        if b.kind == "coupled":
            return b  # nothing undoes a coupling
    if all(b.kind == "free" for b in ins):
        return FREE
    out = op.batch(ins, in_specs, out_spec, **attrs)
    if out.kind == "coupled":
        args = "; ".join(f"{ref!r} {b.describe()}" for ref, b in zip(node.inputs, ins))
        return replace(out, why=f"node {node.name!r} (op {node.op!r}) {out.why} (inputs: {args})")
    if out.reduced:
        origin = next((b.origin for b in ins if b.kind == out.kind and b.origin), f"node {node.name!r}, op {node.op!r}")
        return replace(out, origin=origin)
    return out


def value_batching(graph, order, specs: dict[str, TensorSpec], attrs: list[dict], ops) -> dict[str, Batch]:
    """Every value's point, in the program's topological order."""
    values = {name: source_batch(spec) for name, spec in graph.inputs.items()}
    values.update({name: FREE for name in (*graph.params, *graph.constants)})
    for node, op, node_attrs in zip(order, ops, attrs):
        ins = tuple(values[ref] for ref in node.inputs)
        values[node.name] = node_batch(node, op, ins, tuple(specs[ref] for ref in node.inputs),
                                       specs[node.name], node_attrs)
    return values


@dataclass(frozen=True)
class LossBatching:
    """How the loss decomposes over the batch: ``reduction`` "mean" (shard weight n_i/N),
    "sum" (weight 1) or None (the batch must run as one shard), and why, for people."""

    reduction: str | None
    reason: str
    values: dict = field(default_factory=dict, compare=False, repr=False)  # every value's Batch

    def fetch_reason(self, specs: dict[str, TensorSpec], fetched) -> str | None:
        """Why fetching these values forbids cutting the batch, if it does: combining concatenates
        a fetched value's shards along its batch (unknown) axis, or stacks them when it has none,
        so a value that couples examples, or carries the batch along another axis, must be whole."""
        for name in fetched:
            b = self.values.get(name)
            if b is None:
                continue
            axis = specs[name].shape.index(None) if None in specs[name].shape else None
            if b.kind == "coupled" or (b.kind == "rows" and b.axis != axis):
                return f"fetched value {name!r} is not per-example ({b.describe()}{': ' + b.why if b.why else ''})"
        return None

    @property
    def summary(self) -> str:
        if self.reduction is None:
            return f"unsharded: {self.reason}"
        weight = "n_i/N" if self.reduction == "mean" else "1"
        return f"sharded: {self.reason}; shard i weighs {weight}"


def loss_batching(graph, order, specs, attrs, ops) -> LossBatching:
    values = value_batching(graph, order, specs, attrs, ops)
    b = values[graph.loss]
    if b.reduced:
        return LossBatching(b.kind, f"the loss is a {b.kind} over the batch ({b.origin})", values)
    if b.kind == "free":
        return LossBatching(None, "the loss does not depend on the batch", values)
    if b.kind == "rows":  # a scalar loss has no axis; kept for completeness
        return LossBatching(None, "the loss keeps the batch axis", values)
    return LossBatching(None, f"the loss couples examples: {b.why}", values)


def analyse(program) -> LossBatching:
    """``program``'s loss decomposition; a declared ``batch_reduction`` that contradicts a
    derived one is refused (``GraphError``). A loss that must run whole accepts either."""
    from .validate import GraphError  # validate imports the op table, which imports this

    graph = program.graph
    lb = loss_batching(graph, program.order, program.specs, program.attrs, program.ops)
    if lb.reduction is not None and lb.reduction != graph.batch_reduction:
        raise GraphError(f"{lb.reason} but the graph declares batch_reduction={graph.batch_reduction!r}; "
                         f"declare {lb.reduction!r}")
    return lb
