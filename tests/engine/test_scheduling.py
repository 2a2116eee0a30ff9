"""The plan-order gates the parallel executor relies on, under real threads."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mergeflow.engine.scheduling import CostLimit, MemoryBudget, PlanOrderTurns, working_set_limit


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
    held.hold(0, 10)  # the largest task, read and not yet written
    reader = ThreadPoolExecutor(1)
    read = reader.submit(held.hold, 1, 10)  # the next large one waits
    time.sleep(0.05)
    assert not read.done()
    held.release(0)
    read.result(timeout=5)
    held.hold(2, 0)  # a task that fits is read at once
    held.release(1)
    held.hold(3, 4), held.hold(4, 5)  # small ones together, up to the limit
    blocked = reader.submit(held.hold, 5, 2)
    time.sleep(0.05)
    assert not blocked.done()
    held.close()  # an abandoned merge frees the waiting reader
    blocked.result(timeout=5)
    reader.shutdown()


def _admitted_beside(held: CostLimit, task: int, cost: int) -> bool:
    """Whether ``task`` is admitted at once beside what ``held`` holds (then it is held too)."""
    with ThreadPoolExecutor(1) as pool:
        admitted = pool.submit(held.hold, task, cost)
        time.sleep(0.05)
        if admitted.done():
            return True
        held.close()
        admitted.result(timeout=5)
        return False


def test_a_task_over_half_the_limit_is_held_alone_and_its_result_shrinks_its_share():
    held = CostLimit(100)
    held.hold(0, 60)  # over half: charged all of the limit
    assert not _admitted_beside(held, 1, 30)  # 60 + 30 would fit the limit, but not beside it
    held = CostLimit(100)
    held.hold(0, 60)
    held.shrink(0, 20)  # merged: only its result is held until it is written
    assert _admitted_beside(held, 1, 30) and _admitted_beside(held, 2, 40)
    assert not _admitted_beside(held, 3, 11)  # 20 + 30 + 40 + 11 > 100
    held = CostLimit(100)
    held.hold(0, 40), held.hold(1, 40)  # at most half each: they share
    assert not _admitted_beside(held, 2, 30)


def test_the_limit_is_the_largest_task_until_the_workers_need_more():
    assert working_set_limit([100] + [10] * 20, 2) == 100  # one dominant tensor: held alone, the rest share it
    assert working_set_limit([100] + [10] * 20, 16) == 18 * 10  # 16 merging, one read ahead, one written
    # Llama-7B-shaped, two inputs: per layer 4 attention and 3 MLP matrices and 2 norms, then the
    # embedding and the head; costs in elements x inputs. The MLP matrices are the typical task.
    embedding, mlp, attention, norm = 2 * 32000 * 4096, 2 * 4096 * 11008, 2 * 4096 * 4096, 2 * 4096
    costs = [embedding] + [c for _ in range(32) for c in [attention] * 4 + [mlp] * 3 + [norm] * 2] + [norm, embedding]
    assert working_set_limit(costs, 2) == 4 * mlp and 2 * embedding > 4 * mlp  # at -j 2 the embedding is held alone
    assert working_set_limit(costs, 16) == 18 * mlp
    assert working_set_limit([], 4) == 0


@pytest.mark.parametrize("workers", [2, 16])
def test_the_typical_tasks_of_a_large_model_keep_every_worker_busy(workers):
    # The embedding at 3.5x an MLP matrix, as in Llama-7B: with the largest task's working set as
    # the only limit, no more than three MLP tasks would run at once, whatever the workers.
    costs = [35] + [10] * 40 + [35]
    limit = working_set_limit(costs, workers)
    lock, running, peaks = threading.Lock(), [], []
    budget = MemoryBudget(limit)

    def task(index: int) -> None:
        with budget.running(index, costs[index]):
            with lock:
                running.append(costs[index])
                peaks.append(list(running))
            time.sleep(0.05)
            with lock:
                running.remove(costs[index])

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(task, range(len(costs))))
    assert max(len(p) for p in peaks) == workers
    assert max(sum(p) for p in peaks) <= limit
    if 2 * 35 > limit:
        assert all(p == [35] for p in peaks if 35 in p)  # the two largest each ran alone
