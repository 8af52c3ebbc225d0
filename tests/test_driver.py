"""The shard driver without Ray: a scripted pool whose workers finish out of order, die, or
stop, and the answer that must not depend on any of it."""

from __future__ import annotations

import numpy as np
import pytest

import gradwire as gw
from gradwire.server.driver import Computation, WorkerLost, drive
from gradwire.server.status import DeadlineExceeded, WorkersUnavailable
from gradwire.server.store import Registered
from gradwire.worker.cancel import Cancelled, CancelToken
from gradwire.worker.engine import Program
from gradwire.worker.shards import WHOLE, run_block
from gradwire.worker.validate import GraphError


def _computation(n=37, shards=8, seed=0) -> Computation:
    rng = np.random.default_rng(seed)
    g = gw.Graph()
    x, w = g.input("x", (None, 4), "float64"), g.param("w", (4, 3), "float64")
    g.set_loss(gw.mean(gw.tanh(x @ w)))
    return Computation(Registered("g-t", Program(g.graph_def), b""), {"w": rng.normal(size=(4, 3))}, None,
                       {"x": rng.normal(size=(n, 4))}, None, (), shards)


class Handle:
    def __init__(self, block, attempt, action, result):
        self.block, self.attempt, self.action, self.result = block, attempt, action, result


class ScriptedPool:
    """Blocks run when submitted; ``wait`` hands them back in a scripted order; ``script``
    says what a block's n-th attempt does: "ok", "lost", "stop" or "fail"."""

    def __init__(self, workers=2, block=2, script=None, reverse=True):
        self.workers, self.block, self.script, self.reverse = workers, block, script or {}, reverse
        self.submitted, self.replaced, self.cancelled, self.attempts = [], [], [], {}

    def slots(self):
        return list(range(self.workers)) * 2

    def block_size(self, n_shards, fetching):
        return self.block

    def prepare(self, computation):
        return "state"

    def submit(self, state, computation, block, shards, worker, cancel):
        n = self.attempts[block] = self.attempts.get(block, 0) + 1
        action = self.script.get((block, n), "ok")
        self.submitted.append((block, worker))
        program = computation.graph.program
        result = run_block(program, computation.params, computation.rows(shards), shards) if action == "ok" else None
        return Handle(block, n, action, result)

    def wait(self, handles, timeout):
        return sorted(handles, key=lambda h: h.block, reverse=self.reverse)  # later blocks first: collection reorders

    def collect(self, handle):
        block, action, result = handle.block, handle.action, handle.result
        if action == "lost":
            raise WorkerLost
        if action == "stop":
            raise Cancelled("the deadline passed", deadline_passed=True)
        if action == "fail":
            raise GraphError("a kernel refused its data", "tanh_0", "tanh")
        value, ms = result
        return value, [{"worker": f"w{block}", "node": "n", "pid": 1, "ms": m} for m in ms]

    def replace(self, state, worker, handle):
        self.replaced.append(worker)

    def cancel(self, handles):
        self.cancelled.extend(handles)


def _reference(computation):
    program = computation.graph.program
    return run_block(program, computation.params, computation.batch, computation.plan())[0]


def _same(a, b):
    assert a.loss == b.loss and all(np.array_equal(a.grads[k], b.grads[k]) for k in a.grads)


def test_out_of_order_completion_gives_the_bits_of_shard_order():
    c = _computation()
    outcome = drive(ScriptedPool(), c, CancelToken(), max_retries=0)
    _same(outcome.result, _reference(c))
    assert [r.index for r in outcome.shards] == list(range(8))
    assert [(r.start, r.stop) for r in outcome.shards] == [(s.start, s.stop) for s in c.plan()]


@pytest.mark.parametrize("workers,block", [(1, 1), (2, 2), (4, 1), (3, 4)])
def test_the_answer_does_not_depend_on_workers_or_blocks(workers, block):
    c = _computation()
    _same(drive(ScriptedPool(workers, block), c, CancelToken(), 0).result, _reference(c))


def test_a_lost_block_reruns_and_changes_nothing():
    c = _computation()
    pool = ScriptedPool(script={(1, 1): "lost", (1, 2): "lost", (3, 1): "lost"})
    outcome = drive(pool, c, CancelToken(), max_retries=3)
    _same(outcome.result, _reference(c))
    assert len(pool.replaced) == 3
    assert {r.index: r.attempts for r in outcome.shards}[2] == 3  # block 1 holds shards 2 and 3


def test_retries_are_bounded():
    pool = ScriptedPool(script={(0, n): "lost" for n in range(1, 10)})
    with pytest.raises(WorkersUnavailable, match="shards 0..1 failed on 3 workers"):
        drive(pool, _computation(), CancelToken(), max_retries=2)


def test_a_kernel_error_fails_at_once_and_cancels_the_rest():
    pool = ScriptedPool(script={(3, 1): "fail"})
    with pytest.raises(GraphError, match="refused its data"):
        drive(pool, _computation(), CancelToken(), max_retries=3)
    assert pool.attempts[3] == 1  # not retried


def test_a_stopped_block_ends_the_computation():
    token = CancelToken()
    pool = ScriptedPool(script={(2, 1): "stop"})
    with pytest.raises(DeadlineExceeded):
        drive(pool, _computation(), token, max_retries=3)
    assert token.cancelled


def test_a_cancelled_computation_starts_nothing():
    token = CancelToken()
    token.cancel()
    pool = ScriptedPool()
    with pytest.raises(DeadlineExceeded):
        drive(pool, _computation(), token, max_retries=0)
    assert pool.submitted == []


def test_blocks_start_as_their_rows_arrive():
    class Feed:
        arrived = 0

        def rows_ready(self, stop):
            return stop <= self.arrived

        def wait_rows(self, stop, timeout=None):
            self.arrived += 10  # ten more rows each time the driver waits
            return self.rows_ready(stop)

    c = _computation()
    c.feed = Feed()
    pool = ScriptedPool(block=1)
    _same(drive(pool, c, CancelToken(), 0).result, _reference(c))
    starts = [c.plan()[block].stop for block, _ in pool.submitted]
    assert starts == sorted(starts)


def test_an_unbatched_computation_is_one_whole_shard():
    g = gw.Graph()
    w = g.param("w", (3,), "float64")
    g.set_loss(gw.sum(w * w))
    c = Computation(Registered("g-u", Program(g.graph_def), b""), {"w": np.arange(3.0)}, None, {}, None, (), 8)
    assert c.plan() == [WHOLE]
    outcome = drive(ScriptedPool(), c, CancelToken(), 0)
    assert outcome.result.loss == 5.0 and outcome.shards[0].start == outcome.shards[0].stop == 0
