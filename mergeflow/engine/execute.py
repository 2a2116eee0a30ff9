"""Execution: load each task's inputs, run the method, stream the result to the writer.

I/O stays here and in ``checkpoint``/``writer``; the math is the method's pure function.
"""

from __future__ import annotations

import math
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from functools import partial

import torch
from tqdm import tqdm

from mergeflow.engine.checkpoint import Checkpoint
from mergeflow.engine.config import ModelRef
from mergeflow.engine.errors import MergeflowError
from mergeflow.engine.plan import MergePlan, TensorTask
from mergeflow.engine.views import replay_draws
from mergeflow.engine.vocabulary import remap_vocabulary
from mergeflow.engine.scheduling import CostLimit, MemoryBudget, PlanOrderTurns, working_set_limit
from mergeflow.engine.writer import ShardWriter
from mergeflow.methods import MergeInputs, MethodSpec


def available_cores() -> int:
    """The CPUs this process may run on (a cgroup or taskset limit included where visible)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def execute(
    plan: MergePlan,
    method: MethodSpec,
    checkpoints: dict[ModelRef, Checkpoint],
    writer: ShardWriter,
    seed: int,
    device: str = "cpu",
    progress: bool = True,
    workers: int | None = None,
    fast_sparsify: bool = False,
) -> None:
    """Merge every task of the plan on ``workers`` threads (default: the available cores) and
    write the results in plan order.

    One helper thread reads inputs in plan order (or, for a method that merges from inputs read in
    ranges, only opens them: see ``_streamed_inputs``) and one writes results behind the math; at most
    ``workers + 1`` tasks are in flight (read or being merged) plus one being written. Tasks are
    read, and start, in plan order, and only while the tensors held (inputs read, and results not
    yet written) and the tasks running fit in ``working_set_limit``: at a few workers the largest
    tensor is read, merged and written alone, and memory grows with ``workers`` only by typical
    tasks.
    The seed is set once, as mergekit does; each merge draws its random numbers in one block that
    waits for every earlier task's draws, so the random stream is consumed in plan order and the
    masks are mergekit's whatever the number of workers. On an accelerator the math runs on one
    worker: its kernels are parallel already, and its memory holds one task.
    """
    torch.manual_seed(seed)
    for checkpoint in checkpoints.values():
        replay_draws(checkpoint)  # mergekit prepares model+lora inputs after seeding
    math_device = torch.device(device if method.uses_accelerator else "cpu")
    workers = 1 if math_device.type != "cpu" else max(1, workers or available_cores())
    tasks = plan.tasks
    costs = [_cost(task) for task in tasks]
    limit = working_set_limit(costs, workers)
    budget = MemoryBudget(limit)
    # Tasks whose tensors are in memory, from reading their inputs until their result is written
    # (once merged, only the result's share): the (single, plan-order) reader waits for room, so
    # the next large tensor is not read while the largest is merged or written. Merges and writes
    # only wait for tasks already read, so that wait cannot deadlock.
    held = CostLimit(limit)
    draws = PlanOrderTurns()

    def read(index: int, task: TensorTask) -> MergeInputs:
        held.hold(index, costs[index])
        try:
            streamed = _streamed_inputs(task, method, checkpoints, math_device, fast_sparsify)
            if streamed is not None:
                return streamed  # read by the merge itself, a range at a time
            tensors = [_load(checkpoints[i.model], i.name, task) for i in task.inputs]
            tensors = tensors if task.vocabulary is None else remap_vocabulary(tensors, task.vocabulary)
            return _merge_inputs(task, tuple(tensors), fast_sparsify)
        except BaseException:
            held.release(index)
            raise

    def merge(index: int, task: TensorTask, inputs: Future) -> torch.Tensor:
        try:
            loaded = inputs.result()
        except BaseException:
            budget.skip(index)
            draws.end(index)
            raise
        try:
            with budget.running(index, costs[index]):
                result = _merge_one(task, replace(loaded, random_draws=partial(draws.turn, index)), method, math_device)
                del loaded
                result = result.to("cpu").to(task.out_dtype).contiguous()
        except BaseException:
            held.release(index)  # otherwise released once its result is written
            raise
        finally:
            draws.end(index)
        held.shrink(index, _result_cost(task))  # its inputs are gone; its result waits for the writer
        return result

    reader = ThreadPoolExecutor(1, "mergeflow-read")
    pool = ThreadPoolExecutor(workers, "mergeflow-merge")
    saver = ThreadPoolExecutor(1, "mergeflow-write")
    try:
        in_flight: deque[tuple[int, TensorTask, Future]] = deque()
        written: Future | None = None
        # A bar on a terminal; in a log file (a workflow job) a line at each quarter instead.
        bar = tqdm(total=len(tasks), desc="merging", unit="tensor", disable=not progress or not sys.stderr.isatty())
        quarters = {len(tasks) * k // 4 for k in range(1, 5)} if progress and bar.disable else set()
        started = 0

        def write_oldest() -> None:
            nonlocal written, started
            index, task, merged = in_flight.popleft()
            result = merged.result()
            if written is not None:
                written.result()
            written = saver.submit(writer.write, task.output_name, result)
            written.add_done_callback(lambda _: (held.release(index), bar.update()))
            started += 1
            if started in quarters:
                print(f"mergeflow merge: merged {started} of {len(tasks)} tensors", file=sys.stderr, flush=True)

        for index, task in enumerate(tasks):
            if len(in_flight) > workers:
                write_oldest()
            in_flight.append((index, task, pool.submit(merge, index, task, reader.submit(read, index, task))))
        while in_flight:
            write_oldest()
        if written is not None:
            written.result()
        bar.close()
    finally:
        held.close()  # an abandoned merge must not leave the reader waiting for memory
        for executor in (reader, pool, saver):
            executor.shutdown(wait=True, cancel_futures=True)
    writer.finish()


def _cost(task: TensorTask) -> int:
    """A task's working set in elements, up to a factor that is the same for every task of a plan."""
    return _result_cost(task) * len(task.inputs)


def _result_cost(task: TensorTask) -> int:
    """The part of ``_cost`` a merged task holds until it is written: its result."""
    return math.prod(task.shape)


def _load(checkpoint: Checkpoint, name: str, task: TensorTask) -> torch.Tensor:
    tensor = checkpoint.load(name)
    if task.load_dtype is not None and tensor.dtype != task.load_dtype:
        tensor = tensor.to(task.load_dtype)
    if task.vocabulary is None and task.vocabulary_axis is not None and tensor.shape[0] != task.shape[0]:
        tensor = tensor[: task.shape[0]]  # --unsafe-truncate-embeddings: keep the common prefix
    return tensor.to(task.merge_dtype)


def _merge_inputs(task: TensorTask, tensors: tuple, fast_sparsify: bool) -> MergeInputs:
    return MergeInputs(
        tensors=tensors,
        base_index=task.base_index,
        params=task.params,
        model_params=task.model_params,
        tensor_name=task.output_name,
        vocabulary_axis=task.vocabulary_axis,
        fast_sparsify=fast_sparsify,
    )


def _streamed_inputs(task: TensorTask, method: MethodSpec, checkpoints: dict[ModelRef, Checkpoint], device: torch.device,
                     fast_sparsify: bool) -> MergeInputs | None:
    """The task's inputs as stored tensors to be read in ranges (``Checkpoint.source``), where the
    method merges from those (``merge_streamed``): on the CPU, each input stored in the merge dtype
    and shape (nothing to convert, align or truncate), and parameters the method streams. None
    where it loads them whole."""
    if method.merge_streamed is None or device.type != "cpu" or task.vocabulary is not None or not task.merge_dtype.is_floating_point:
        return None
    sources = tuple(checkpoints[i.model].source(i.name) for i in task.inputs)
    if any(s is None or s.dtype != task.merge_dtype or task.load_dtype not in (None, s.dtype) or tuple(s.shape) != task.shape
           for s in sources):
        return None
    inputs = _merge_inputs(task, sources, fast_sparsify)
    return inputs if method.streams(inputs) else None


def _merge_one(task: TensorTask, inputs: MergeInputs, method: MethodSpec, device: torch.device) -> torch.Tensor:
    tensors = inputs.tensors
    if not task.merge_dtype.is_floating_point:
        # Integer buffers are not merged: they pass through when every input agrees.
        if any(not torch.equal(tensors[0], other) for other in tensors[1:]):
            raise MergeflowError(f"tensor {task.output_name}: non-floating tensors differ between models and cannot be merged")
        return tensors[0]
    streamed = not isinstance(tensors[0], torch.Tensor)
    if not streamed:
        inputs = replace(inputs, tensors=tuple(t.to(device) for t in tensors))
    with torch.autocast(device_type=device.type, enabled=False):
        try:
            result = (method.merge_streamed if streamed else method.merge)(inputs)
        except MergeflowError:
            raise  # a streamed input that could not be read names its file
        except ValueError as err:
            raise MergeflowError(str(err)) from None  # methods name the tensor
        except Exception as err:  # torch's own errors inside the math name neither
            detail = str(err).splitlines()[0][:200] if str(err) else ""
            raise MergeflowError(f"tensor {task.output_name}: merge method '{method.name}' failed ({type(err).__name__}: {detail})") from None
    expected = method.output_dtype(task.merge_dtype, len(tensors))
    if result.dtype != expected:
        raise RuntimeError(f"tensor {task.output_name}: '{method.name}' returned {result.dtype}, declared {expected}")
    return result
