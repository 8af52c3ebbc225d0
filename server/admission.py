"""Admission: what a request or a training job must hold before it may spend CPU or memory.

Two resources, shared by gradient requests, uploads and training jobs alike:

* **compute slots** (``--max-concurrent``): a gradient request takes one once its header
  has arrived (a stream that never sends a header holds nothing) and gives it back when its
  compute ends; a request that finds none free is refused at once (RESOURCE_EXHAUSTED), so
  clients back off instead of queueing unseen. A training job takes one per step and waits
  for it: jobs yield to interactive requests between steps.
* **a byte budget** (``--memory-budget``): tensors a stream declares are charged when they are
  declared (before their bytes arrive), a run's estimated peak before it starts. A charge that
  does not fit waits for memory to free up until its deadline, then RESOURCE_EXHAUSTED; one
  larger than the whole budget is refused at once. So concurrent requests cannot add up to
  an OOM kill.
"""

from __future__ import annotations

import threading
import time

from .status import Overloaded
from ..worker.budget import fmt_bytes
from ..worker.cancel import Cancelled, CancelToken
from ..worker.validate import LimitError


class MemoryBudget:
    """A server-wide count of bytes promised to requests; thread-safe."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self._changed = threading.Condition()

    def reserve(self, nbytes: int, what: str, cancel: CancelToken | None = None) -> "Reservation":
        """Charge ``nbytes``; waits (until ``cancel``'s deadline, or not at all without one)
        while other requests hold the memory. ``LimitError`` when it cannot be had."""
        if nbytes > self.capacity:
            raise LimitError(f"{what} needs {fmt_bytes(nbytes)}; the server's memory budget is "
                             f"{fmt_bytes(self.capacity)} (--memory-budget)")
        with self._changed:
            while self.in_use + nbytes > self.capacity:
                remaining = None if cancel is None else cancel.remaining()
                if cancel is not None:
                    cancel.check()
                if remaining is None or remaining <= 0:
                    raise LimitError(f"{what} needs {fmt_bytes(nbytes)}, but {fmt_bytes(self.in_use)} of the "
                                     f"server's {fmt_bytes(self.capacity)} memory budget is in use; retry later")
                self._changed.wait(min(remaining, 0.1))
            self.in_use += nbytes
        return Reservation(self, nbytes)

    def _release(self, nbytes: int) -> None:
        with self._changed:
            self.in_use -= nbytes
            self._changed.notify_all()


class Reservation:
    """Bytes held in a ``MemoryBudget``; ``release`` (or leaving a ``with``) gives them back once."""

    def __init__(self, budget: MemoryBudget, nbytes: int):
        self.budget, self.nbytes = budget, nbytes

    def release(self) -> None:
        nbytes, self.nbytes = self.nbytes, 0
        if nbytes:
            self.budget._release(nbytes)

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Holdings:
    """Everything one request holds (a slot, reservations), released together, once."""

    def __init__(self, admission: "Admission"):
        self.admission = admission
        self.reservations: list[Reservation] = []
        self.slot = False
        self._closed = False
        self._lock = threading.Lock()  # the stream's reader and the compute thread both charge

    def reserve(self, nbytes: int, what: str, cancel: CancelToken | None = None) -> None:
        reservation = self.admission.memory.reserve(nbytes, what, cancel)
        with self._lock:
            if not self._closed:
                self.reservations.append(reservation)
                return
        reservation.release()  # the request is over: nothing may stay charged to it
        raise Cancelled("the request ended")

    def take_slot(self) -> None:
        self.admission.take_slot()
        self.slot = True

    @property
    def reserved(self) -> int:
        return sum(r.nbytes for r in self.reservations)

    def release(self) -> None:
        with self._lock:
            self._closed = True
            reservations, self.reservations = self.reservations, []
            slot, self.slot = self.slot, False
        for reservation in reservations:
            reservation.release()
        if slot:
            self.admission.give_slot()


class Admission:
    def __init__(self, max_concurrent: int, memory_budget: int):
        self.max_concurrent = max_concurrent
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.memory = MemoryBudget(memory_budget)

    def take_slot(self) -> None:
        if not self._slots.acquire(blocking=False):
            raise Overloaded(f"server is at its limit of {self.max_concurrent} concurrent computations "
                             "(--max-concurrent); retry later")

    def wait_slot(self, cancel: CancelToken) -> None:
        """Block until a slot is free (training jobs), checking ``cancel`` as it waits."""
        while not self._slots.acquire(timeout=0.05):
            cancel.check()

    def give_slot(self) -> None:
        self._slots.release()

    def holdings(self) -> Holdings:
        return Holdings(self)


def physical_memory() -> int:
    """Bytes of RAM on this machine (a conservative 8 GiB where it cannot be read)."""
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def monotonic_deadline(remaining: float | None) -> float | None:
    return None if remaining is None else time.monotonic() + remaining
