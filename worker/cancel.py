"""Cancellation tokens: the engine checks one between nodes, forward and backward, so a call
whose deadline passed or that was cancelled stops within one node's time.

A token is cheap to check (a flag and, with a deadline, one clock read). The server makes
one per request and cancels it when the call ends; a Ray worker makes one per task that
also asks Ray whether the task was cancelled (``ray.cancel`` only sets a flag on a running
task of a regular actor).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Cancelled(TimeoutError):
    """The work was stopped: its deadline passed or its caller cancelled it."""

    def __init__(self, message: str, deadline_passed: bool = False):
        super().__init__(message)
        self.deadline_passed = deadline_passed


class CancelToken:
    """``check()`` raises ``Cancelled`` once ``cancel()`` was called, the monotonic
    ``deadline`` passed, or ``probe()`` (another source of cancellation) returns True."""

    __slots__ = ("deadline", "_reason", "_probe")

    def __init__(self, deadline: float | None = None, probe: Callable[[], bool] | None = None):
        self.deadline = deadline
        self._reason: str | None = None
        self._probe = probe

    def cancel(self, reason: str = "the call was cancelled") -> None:
        if self._reason is None:
            self._reason = reason

    @property
    def cancelled(self) -> bool:
        try:
            self.check()
        except Cancelled:
            return True
        return False

    def remaining(self) -> float | None:
        """Seconds until the deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        if self._reason is not None:
            raise Cancelled(self._reason)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise Cancelled("the deadline passed", deadline_passed=True)
        if self._probe is not None and self._probe():
            self.cancel("the task was cancelled")
            raise Cancelled(self._reason)


NEVER = CancelToken()  # a token nobody cancels: the default of in-process runs
