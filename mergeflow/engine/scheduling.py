"""Plan-order gates for merging several tensors at once.

Output tensors are independent, so their math may run concurrently, with two exceptions that these
gates enforce: random draws come from one global generator and must happen in mergekit's plan
order, and memory must stay bounded by the largest task, not by how many run at once.

Both gates rely on tasks being started in plan order (a FIFO worker pool fed in plan order): the
earliest unfinished task never waits for a later one, so the pool cannot deadlock.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class PlanOrderTurns:
    """Lets each task run one block of code (its random draws) strictly in plan order.

    Task i's block starts once every earlier task has left its block or ended without one.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._next = 0
        self._ended: set[int] = set()

    @contextmanager
    def turn(self, index: int) -> Iterator[None]:
        with self._changed:
            if index < self._next:
                raise RuntimeError(f"task {index} asked for a second turn; a merge must draw in one block")
            self._changed.wait_for(lambda: self._next == index)
        try:
            yield
        finally:
            self.end(index)

    def end(self, index: int) -> None:
        """Task ``index`` will draw no more; idempotent."""
        with self._changed:
            if index < self._next or index in self._ended:
                return
            self._ended.add(index)
            while self._next in self._ended:
                self._ended.remove(self._next)
                self._next += 1
            self._changed.notify_all()


class CostLimit:
    """Admits work while the costs of what it holds fit ``limit``; something always fits when
    nothing is held, so with ``limit`` set to the largest task's cost the largest is held alone.

    ``close`` admits every waiter at once, for a merge that is being abandoned."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._changed = threading.Condition()
        self._used = 0
        self._closed = False

    def hold(self, cost: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._used == 0 or self._used + cost <= self._limit)
            self._used += cost

    def release(self, cost: int) -> None:
        with self._changed:
            self._used -= cost
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class MemoryBudget:
    """Starts tasks in plan order while the costs of those running fit ``limit``.

    A task always starts when nothing else runs, so with ``limit`` set to the largest task's cost
    the largest task runs alone and smaller ones share the workers.
    """

    def __init__(self, limit: int) -> None:
        self._running = CostLimit(limit)
        self._order = PlanOrderTurns()

    @contextmanager
    def running(self, index: int, cost: int) -> Iterator[None]:
        with self._order.turn(index):
            self._running.hold(cost)
        try:
            yield
        finally:
            self._running.release(cost)

    def skip(self, index: int) -> None:
        """Task ``index`` ended before it started (its read failed); later tasks may start."""
        self._order.end(index)
