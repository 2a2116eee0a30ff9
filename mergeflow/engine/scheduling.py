"""Plan-order gates for merging several tensors at once.

Output tensors are independent, so their math may run concurrently, with two exceptions that these
gates enforce: random draws come from one global generator and must happen in mergekit's plan
order, and memory must stay bounded: a task over half the limit is held alone, and the others
share a limit that grows with the number of workers only by typical tasks (``working_set_limit``).

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


def working_set_limit(costs: list[int], workers: int) -> int:
    """How much the tasks held at once may cost together (see :class:`CostLimit`): the largest
    task's, or, where more, ``workers + 2`` times a typical task's, so that on plans of many
    similar tensors every worker has one to merge while one is read ahead and one written.
    Typical: the cost at which the tasks at least as costly make up half of the plan's. Memory
    then grows with ``workers`` only past the largest task's working set."""
    if not costs:
        return 0
    ordered, total, covered = sorted(costs, reverse=True), sum(costs), 0
    for typical in ordered:
        covered += typical
        if 2 * covered >= total:
            break
    return max(ordered[0], (workers + 2) * typical)


class CostLimit:
    """Admits work while the costs of what it holds fit ``limit``. Something always fits when
    nothing is held, and a task costing more than half the limit is charged all of it, so it is
    held alone (at a few workers, the largest tensors).

    ``close`` admits every waiter at once, for a merge that is being abandoned."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._changed = threading.Condition()
        self._held: dict[int, int] = {}  # task -> its charge
        self._closed = False

    def _charge(self, cost: int) -> int:
        return self._limit if 2 * cost > self._limit else cost

    def hold(self, task: int, cost: int) -> None:
        charge = self._charge(cost)
        with self._changed:
            self._changed.wait_for(lambda: self._closed or not self._held or sum(self._held.values()) + charge <= self._limit)
            self._held[task] = charge

    def shrink(self, task: int, cost: int) -> None:
        """``task`` now holds only ``cost`` (a merged task, its result)."""
        with self._changed:
            self._held[task] = min(self._held[task], self._charge(cost))
            self._changed.notify_all()

    def release(self, task: int) -> None:
        with self._changed:
            self._held.pop(task, None)
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class MemoryBudget:
    """Starts tasks in plan order while the costs of those running fit ``limit``.

    A task always starts when nothing else runs, and one costing more than half of ``limit`` runs
    alone (:class:`CostLimit`); smaller ones share the workers.
    """

    def __init__(self, limit: int) -> None:
        self._running = CostLimit(limit)
        self._order = PlanOrderTurns()

    @contextmanager
    def running(self, index: int, cost: int) -> Iterator[None]:
        with self._order.turn(index):
            self._running.hold(index, cost)
        try:
            yield
        finally:
            self._running.release(index)

    def skip(self, index: int) -> None:
        """Task ``index`` ended before it started (its read failed); later tasks may start."""
        self._order.end(index)
