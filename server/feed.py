"""A request's batch as it streams in, so shards can start before the last bytes arrive.

A reader thread drains the gRPC request iterator into an ``Assembler``; the handler waits
only for what it needs next: the parameters (complete once the batch starts), the batch
tensors' declarations (shapes arrive with their first piece, so validation runs early),
then, shard by shard, the rows a shard covers. Clients send the batch row block by row
block (``codec.row_interleaved_chunks``); any other order is correct, only slower.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np

from gradwire.server.status import DeadlineExceeded
from gradwire.worker.codec import Assembler
from gradwire.worker.spec import TensorSpec
from gradwire.worker.validate import GraphError


class BatchFeed:
    def __init__(self, first, requests: Iterator, assembler: Assembler, context: grpc.ServicerContext | None = None):
        self._first, self._requests, self.assembler, self._context = first, requests, assembler, context
        self._changed = threading.Condition()
        self._batch_started = False
        self._ended = False
        self._error: BaseException | None = None
        self._inputs: dict[str, TensorSpec] = {}

    def start(self, inputs: dict[str, TensorSpec]) -> "BatchFeed":
        """Begin reading, in a thread of its own."""
        self._inputs = inputs
        threading.Thread(target=self._read, name="gradwire-feed", daemon=True).start()
        return self

    # ------------------------------------------------------------------ the reader thread

    def _read(self) -> None:
        try:
            for message in messages_from(self._first, self._requests, self._context):
                with self._changed:
                    for chunk in message.params:
                        if self._batch_started:
                            raise GraphError(f"parameter {chunk.name!r} arrived after the batch began; "
                                             "a stream sends every parameter before the batch")
                        self.assembler.add("params", chunk)
                    for chunk in message.batch:
                        self._batch_started = True
                        self.assembler.add("batch", chunk)
                    self._changed.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the handler thread
            self._fail(exc)
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._changed:
            self._error = self._error or exc

    # ------------------------------------------------------------------ the handler's side

    def _wait(self, ready, timeout: float | None = None) -> bool:
        with self._changed:
            done = self._changed.wait_for(lambda: self._error is not None or self._ended or ready(), timeout)
            if self._error is not None:
                raise self._error
            return done and (ready() or self._ended)

    def params(self) -> dict[str, np.ndarray]:
        """The parameters, complete: they all precede the batch."""
        self._wait(lambda: self._batch_started)
        return self.assembler.result("params")

    def batch(self) -> dict[str, np.ndarray]:
        """Every batch tensor declared by now (waits for all the graph's inputs to be
        declared or the stream to end); their rows fill in as pieces arrive."""
        self._wait(lambda: set(self._inputs) <= set(self.assembler.arrays("batch")))
        return self.assembler.arrays("batch")

    def rows_ready(self, stop: int) -> bool:
        with self._changed:
            if self._error is not None:
                raise self._error
            return self._ended or self._rows_ready(stop)

    def _rows_ready(self, stop: int) -> bool:
        for name, spec in self._inputs.items():
            try:
                have = self.assembler.rows_filled("batch", name)
            except KeyError:
                return False
            if spec.shape and spec.shape[0] is None:
                need = stop
            else:  # unbatched: all of it
                array = self.assembler.arrays("batch")[name]
                need = array.shape[0] if array.ndim else 1
            if have < need:
                return False
        return True

    def wait_rows(self, stop: int, timeout: float | None = None) -> bool:
        """Block until rows [0, stop) of every batched input (and all of every other input)
        have arrived; False if ``timeout`` passed first."""
        return self._wait(lambda: self._rows_ready(stop), timeout)

    def finish(self) -> dict[str, np.ndarray]:
        """Wait for the end of the stream; the complete, checked batch."""
        self._wait(lambda: False)
        return self.assembler.result("batch")


def first_request(requests, context=None):
    """The stream's first message, which must carry the header."""
    first = next_request(requests, context)
    if first is None or not first.HasField("header"):
        raise GraphError("the first message of the stream must carry the header")
    return first


def messages_from(first, requests, context=None) -> Iterator:
    """``first``, then the rest of the stream; only the first message may carry a header."""
    message = first
    while message is not None:
        yield message
        message = next_request(requests, context)
        if message is not None and message.HasField("header"):
            raise GraphError("only the first message of the stream may carry a header")


def next_request(requests, context=None):
    """The stream's next message (None at its end). When the call ends while the request is
    streaming in (the client's deadline, a cancellation) gRPC raises a bare RpcError, or,
    racing with it, ends the stream early: then the request is not complete, not invalid."""
    ended = "the call ended (deadline or cancellation) while the request was streaming in"
    try:
        message = next(requests, None)
    except grpc.RpcError:
        raise DeadlineExceeded(ended) from None
    if message is None and context is not None:
        remaining = context.time_remaining()
        if not context.is_active() or (remaining is not None and remaining <= 0):
            raise DeadlineExceeded(ended)
    return message
