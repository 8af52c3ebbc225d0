"""Request streams, read on the server's event loop so that a waiting stream holds no thread.

``RequestStream`` hands out a call's messages one by one and ends a stream that stays
silent longer than ``--idle-timeout`` (DEADLINE_EXCEEDED). ``BatchFeed`` drains a gradient
request's stream into an ``Assembler`` in an asyncio task, so shards can start before the
last bytes arrive; the compute thread waits only for what it needs next: the parameters
(complete once the batch starts), the batch tensors' declarations (shapes arrive with their
first piece, so validation runs early), then, shard by shard, the rows a shard covers.
Clients send the batch row block by row block (``codec.row_interleaved_chunks``); any other
order is correct, only slower.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from .status import DeadlineExceeded
from ..worker.codec import Assembler
from ..worker.spec import TensorSpec
from ..worker.validate import GraphError


class RequestStream:
    """A call's request messages: the first must carry the header, no later one may."""

    def __init__(self, requests, idle_timeout: float):
        self._requests = requests.__aiter__()
        self.idle_timeout = idle_timeout
        self._started = False

    async def _next(self):
        try:
            return await asyncio.wait_for(self._requests.__anext__(), self.idle_timeout)
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"the request stream sent nothing for {self.idle_timeout:g} s "
                                   "(--idle-timeout); abandoned") from None
        except Exception as exc:  # noqa: BLE001 - gRPC ends a read of a call that ended with an error
            if isinstance(exc, GraphError):
                raise
            raise DeadlineExceeded("the call ended (deadline or cancellation) while the request was "
                                   "streaming in") from None

    async def first(self):
        self._started = True
        return require_header(await self._next())

    async def next(self):
        """The next message after the first, None at the end of the stream."""
        message = await self._next()
        if message is not None and message.HasField("header"):
            raise GraphError("only the first message of the stream may carry a header")
        return message

    async def read_into(self, first, assembler: Assembler, fields: tuple[str, ...]) -> None:
        """Every tensor piece of the whole stream, ``first`` included, into ``assembler``."""
        message = first
        while message is not None:
            assembler.add_message(message, fields)
            message = await self.next()


def require_header(message):
    """``message``, which must carry the request's header (a unary request, a stream's first)."""
    if message is None or not message.HasField("header"):
        raise GraphError("the first message of the stream must carry the header")
    return message


class BatchFeed:
    def __init__(self, first, stream: RequestStream, assembler: Assembler):
        self._first, self._stream, self.assembler = first, stream, assembler
        self._changed = threading.Condition()
        self._batch_started = False
        self._ended = False
        self._error: BaseException | None = None
        self._inputs: dict[str, TensorSpec] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> "BatchFeed":
        """Begin reading, in a task on the running event loop (the graph may not be known yet)."""
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    def stop(self) -> None:
        """Stop reading (the call is over); a compute thread still waiting wakes with an error."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # ------------------------------------------------------------------ the reader task

    async def _read(self) -> None:
        try:
            message = self._first
            while message is not None:
                self._add(message)
                message = await self._stream.next()
        except asyncio.CancelledError:
            self._fail(DeadlineExceeded("the call ended while the request was streaming in"))
        except BaseException as exc:  # noqa: BLE001 - handed to the compute thread
            self._fail(exc)
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def _add(self, message) -> None:
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

    def _fail(self, exc: BaseException) -> None:
        with self._changed:
            self._error = self._error or exc

    # ------------------------------------------------------------------ the compute thread's side

    def expect(self, inputs: dict[str, TensorSpec]) -> None:
        """The graph's batch inputs, which ``batch`` and the row waits are about."""
        with self._changed:
            self._inputs = dict(inputs)

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
