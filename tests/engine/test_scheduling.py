"""The plan-order gates the parallel executor relies on, under real threads."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mergeflow.engine.scheduling import CostLimit, MemoryBudget, PlanOrderTurns


def test_turns_are_taken_in_plan_order_and_tasks_without_one_let_the_next_through():
    turns, seen = PlanOrderTurns(), []
    rng = random.Random(0)

    def task(index: int) -> None:
        time.sleep(rng.random() / 200)  # finish the work before the draws in any order
        if index % 3 == 0:
            turns.end(index)  # this task draws nothing
            return
        with turns.turn(index):
            seen.append(index)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(task, range(30)))
    assert seen == [i for i in range(30) if i % 3]


def test_a_second_turn_is_refused():
    turns = PlanOrderTurns()
    with turns.turn(0):
        pass
    with pytest.raises(RuntimeError, match="second turn"):
        with turns.turn(0):
            pass


def test_budget_runs_the_largest_alone_and_small_ones_together():
    costs = [10, 10, 3, 3, 3, 10, 2, 2]
    budget, lock = MemoryBudget(max(costs)), threading.Lock()
    running, peaks, started = [], [], []

    def task(index: int) -> None:
        with budget.running(index, costs[index]):
            with lock:
                running.append(costs[index])
                started.append(index)
                peaks.append(sum(running))
            time.sleep(0.01)
            with lock:
                running.remove(costs[index])

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(task, range(len(costs))))
    assert started == list(range(len(costs)))  # in plan order
    assert max(peaks) <= max(costs)
    assert 9 in peaks  # the three small ones did run together


def test_a_task_that_never_starts_does_not_block_the_next():
    budget = MemoryBudget(5)
    budget.skip(0)
    with budget.running(1, 5):
        pass


def test_cost_limit_keeps_a_large_task_from_being_read_beside_another_until_released():
    held = CostLimit(10)
    held.hold(10)  # the largest task, read and not yet written
    reader = ThreadPoolExecutor(1)
    read = reader.submit(held.hold, 10)  # the next large one waits
    time.sleep(0.05)
    assert not read.done()
    held.release(10)
    read.result(timeout=5)
    held.hold(0)  # a task that fits is read at once
    held.release(10)
    held.hold(4), held.hold(6)  # small ones together, up to the limit
    blocked = reader.submit(held.hold, 1)
    time.sleep(0.05)
    assert not blocked.done()
    held.close()  # an abandoned merge frees the waiting reader
    blocked.result(timeout=5)
    reader.shutdown()
