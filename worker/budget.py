"""Admission estimates: a run's peak memory and floating-point work, from metadata alone.

``estimate(program, specs, wrt, fetch)`` replays, on the concrete specs ``Program.bind``
returns, the very schedule ``Program.run`` follows (its steps and their ``frees`` lists), so
it sees what a run will hold at every step without allocating anything. ``check`` refuses a
budget over the limits with a ``LimitError`` naming the figure, where it peaks and the limit.

The memory model is an upper bound, not a measurement (every buffer the size of its spec):

* the sources (parameters, batch inputs, constants) are live throughout: the caller holds them;
* forward step: the live values + the step's output + its workspace, the kernel's temporaries:
  the op's own ``Op.workspace`` where it declares one (see ``ops/registry.py``: conv2d's im2col
  columns are kh*kw times its input, a padded pooling copies x, erf holds ~13 float64 buffers),
  else ``WORKSPACE`` buffers as large as its largest operand (sigmoid's VJP holds two, the
  logistic loss three); + ``BUFFERS`` for NumPy's ufunc buffers and array objects. The output
  then joins the live values and the step's ``frees`` leave them. Outputs that are views
  (reshape, transpose, broadcast_to) count as buffers of their own, a broadcast at its full
  size: over-counted, never under (``slice`` copies, so a small slice never keeps a large value
  alive unseen);
* fetched outputs are copied once the forward pass is done, and stay;
* backward step: the live values + one gradient buffer per value with a pending gradient (its
  value's size) + the step's transients: each gradient it makes (for a broadcasting op also
  one of the output's size, before ``unbroadcast``, unless its declared workspace counts the
  product: matmul's is (batch, M, K), not the output), one more where it accumulates into an
  existing gradient, and the workspace (a declared one is the VJP's, every rule run, its
  gradients included at their full size). Then its output's gradient is dropped, the new ones
  join, saved values it read last leave;
* at the end the returned gradients may be copies (``engine._own``): + their sizes.

FLOPs: each forward node counts ``Op.flops`` (default: one per element of its largest
operand, input or output; matmul 2·M·N·K with batch dims), each node the backward pass visits
``BACKWARD_FLOPS`` times that. Sizes are Python ints (no overflow).

Estimates are cached on the program per (specs object, wrt, fetch): ``bind`` hands back the
same specs object for shapes it has seen, so a repeated small request costs a dict lookup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .engine import Program, _remember
from .ops import Op
from .spec import TensorSpec, num_elements
from .validate import LimitError

WORKSPACE = 3  # operand-sized temporaries a kernel or VJP may hold besides its result (no Op.workspace)
BUFFERS = 1 << 18  # a step's NumPy ufunc buffers (8192 elements for each of 3 operands: 192 KiB) and views
BACKWARD_FLOPS = 2  # a VJP costs about twice its forward: one product per input


@dataclass(frozen=True)
class Budget:
    peak_bytes: int
    flops: float
    peak_node: str | None = None  # the node whose step reaches the peak
    peak_op: str | None = None
    peak_phase: str = "forward"  # "sources", "forward", "backward" or "results"

    @property
    def where(self) -> str:
        if self.peak_phase == "sources":
            return "its inputs and parameters"
        if self.peak_phase == "results":
            return "returning the gradients"
        prefix = "backward of " if self.peak_phase == "backward" else ""
        return f"{prefix}node {self.peak_node!r}, op {self.peak_op!r}"


def estimate(program: Program, specs: dict[str, TensorSpec] | None = None,
             wrt: tuple[str, ...] | None = None, fetch: tuple[str, ...] = ()) -> Budget:
    """The budget of ``program.run(params, batch, wrt=wrt, fetch=fetch)`` where ``specs`` is
    ``program.bind(params, batch)`` (default: the program's own specs, whose unknown dims
    count as 1; see ``static_estimate``). ``wrt`` and ``fetch`` default as in ``run``."""
    specs = program.specs if specs is None else specs
    wrt = tuple(program.graph.params) if wrt is None else tuple(wrt)
    fetch = tuple(fetch) or program.graph.outputs
    key = (id(specs), wrt, fetch)
    hit = program._budgets.get(key)
    if hit is not None and hit[0] is specs:  # the specs object is held by the entry: its id is not reused
        return hit[1]
    budget = _estimate(program, specs, wrt, fetch)
    _remember(program._budgets, key, (specs, budget), capacity=16)
    return budget


def static_estimate(program: Program, wrt: tuple[str, ...] | None = None,
                    fetch: tuple[str, ...] = ()) -> Budget | None:
    """The budget at registration, when every shape is known already; else ``None``."""
    if not all(spec.is_static for spec in program.specs.values()):
        return None
    return estimate(program, None, wrt, fetch)


def check(budget: Budget, max_bytes: int | None = None, max_flops: float | None = None) -> Budget:
    """``budget`` if within the limits (``None``: no limit), else ``LimitError``."""
    if max_bytes is not None and budget.peak_bytes > max_bytes:
        error = LimitError(f"request needs an estimated {fmt_bytes(budget.peak_bytes)} of memory at its peak "
                           f"({budget.where}); the limit is {fmt_bytes(max_bytes)}")
        error.node, error.op = budget.peak_node, budget.peak_op
        raise error
    if max_flops is not None and budget.flops > max_flops:
        raise LimitError(f"request needs an estimated {budget.flops:.3g} floating-point operations; "
                         f"the limit is {max_flops:.3g}")
    return budget


def fmt_bytes(n: float) -> str:
    """Decimal units, as the server's admission messages: 17179869184 -> '17.2 GB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


# ---------------------------------------------------------------- the replay


class _Peak:
    def __init__(self, nbytes: int):
        self.bytes, self.node, self.op, self.phase = nbytes, None, None, "sources"

    def see(self, nbytes: int, node, op, phase: str) -> None:
        if nbytes > self.bytes:
            self.bytes, self.node, self.op, self.phase = nbytes, node, op, phase


def _estimate(program: Program, specs: dict[str, TensorSpec], wrt, fetch) -> Budget:
    schedule = program._schedule(wrt, fetch)
    elements = {name: num_elements(spec.shape) for name, spec in specs.items()}
    size = {name: n * specs[name].dtype.itemsize for name, n in elements.items()}
    g = program.graph
    held = {*g.inputs, *g.params, *g.constants}  # the caller's: never freed by the run
    peak = _Peak(sum(size[name] for name in held))
    live, flops = _forward(program, schedule, specs, elements, size, held, peak)
    live += sum(size[name] for name in schedule.fetch)  # copied out of the run's values
    live, backward_flops = _backward(program, schedule, plan=program.backward_plan(wrt), specs=specs,
                                     elements=elements, size=size, held=held, peak=peak, live=live)
    peak.see(live + sum(size[w] for w in wrt), None, None, "results")
    return Budget(peak.bytes, _as_float(flops + backward_flops), peak.node, peak.op, peak.phase)


def _forward(program, schedule, specs, elements, size, held, peak) -> tuple[int, int]:
    live, flops = peak.bytes, 0
    for i, (name, op_name, _, inputs, attrs, frees) in enumerate(schedule.forward):
        op, out = program.ops[i], size[name]
        work = _workspace(op, "forward", specs, size, name, inputs, attrs)
        peak.see(live + out + work, name, op_name, "forward")
        live += out - sum(size[r] for r in frees if r not in held)
        flops += _node_flops(op, specs, elements, name, inputs, attrs)
    return live, flops


def _backward(program, schedule, plan, specs, elements, size, held, peak, live) -> tuple[int, int]:
    loss = program.graph.loss
    grads = {loss: size[loss]}  # pending gradients, by value
    live, flops = live + size[loss], 0
    for (name, inputs, _, attrs, frees), i, need in zip(schedule.backward, plan.nodes, plan.needs):
        op = program.ops[i]
        made, here = _made(op, size[name], [ref for ref, wanted in zip(inputs, need) if wanted], size, grads)
        work = _workspace(op, "backward", specs, size, name, inputs, attrs)
        peak.see(live + made + work, name, op.name, "backward")
        live -= grads.pop(name, 0)
        for ref in here:
            if ref not in grads:
                grads[ref] = size[ref]
                live += size[ref]
        live -= sum(size[r] for r in frees if r not in held)
        flops += BACKWARD_FLOPS * _node_flops(op, specs, elements, name, inputs, attrs)
    return live, flops


def _made(op: Op, out: int, wanted: list[str], size, grads) -> tuple[int, set[str]]:
    """The bytes of the gradients a backward step makes for the ``wanted`` inputs and the set of
    them: each one's gradient, one more buffer where it accumulates into an existing one and,
    for a broadcasting op with no declared workspace, the unreduced product (output-sized)."""
    made, here = 0, set()
    unreduced = out if op.broadcast and op.workspace is None else 0
    for ref in wanted:
        made += size[ref] * (2 if ref in grads or ref in here else 1) + unreduced
        here.add(ref)
    return made, here


def _workspace(op: Op, phase: str, specs, size, name: str, inputs, attrs) -> int:
    """A step's temporaries (bytes): the op's declared ``workspace`` for ``phase``, else
    ``WORKSPACE`` buffers as large as its largest operand, input or output; + ``BUFFERS``."""
    if op.workspace is not None:
        return BUFFERS + op.workspace(phase, specs[name], *(specs[r] for r in inputs), **attrs)
    return BUFFERS + WORKSPACE * max([size[name], *(size[r] for r in inputs)])


def _node_flops(op: Op, specs, elements, name: str, inputs, attrs) -> int:
    if op.flops is not None:
        return op.flops(specs[name], *(specs[r] for r in inputs), **attrs)
    return max([elements[name], *(elements[r] for r in inputs)])


def _as_float(n: int) -> float:
    return float(n) if n < 2**1023 else math.inf
