"""Execution: load each task's inputs, run the method, stream the result to the writer.

I/O stays here and in ``checkpoint``/``writer``; the math is the method's pure function.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from tqdm import tqdm

from mergeflow.engine.checkpoint import Checkpoint
from mergeflow.engine.config import ModelRef
from mergeflow.engine.errors import MergeflowError
from mergeflow.engine.plan import MergePlan, TensorTask
from mergeflow.engine.views import replay_draws
from mergeflow.engine.vocabulary import remap_vocabulary
from mergeflow.engine.writer import ShardWriter
from mergeflow.methods import MergeInputs, MethodSpec


def execute(
    plan: MergePlan,
    method: MethodSpec,
    checkpoints: dict[ModelRef, Checkpoint],
    writer: ShardWriter,
    seed: int,
    device: str = "cpu",
    progress: bool = True,
) -> None:
    """Run every task in plan order; the seed is set once, as mergekit does, before the first draw.

    Reading the next task's inputs and writing the previous result run on two helper threads, so
    I/O and hashing overlap the math; at most one task is read ahead and one write is in flight,
    which keeps memory bounded. Only the math thread draws random numbers, in plan order.
    """
    torch.manual_seed(seed)
    for checkpoint in checkpoints.values():
        replay_draws(checkpoint)  # mergekit prepares model+lora inputs after seeding
    math_device = torch.device(device if method.uses_accelerator else "cpu")
    tasks = plan.tasks

    def read(task: TensorTask) -> list[torch.Tensor]:
        tensors = [_load(checkpoints[i.model], i.name, task) for i in task.inputs]
        return tensors if task.vocabulary is None else remap_vocabulary(tensors, task.vocabulary)

    with ThreadPoolExecutor(1, "mergeflow-read") as reader, ThreadPoolExecutor(1, "mergeflow-write") as saver:
        upcoming = reader.submit(read, tasks[0]) if tasks else None
        in_flight: Future | None = None
        # A bar on a terminal; in a log file (a workflow job) a line at each quarter instead.
        bar = tqdm(tasks, desc="merging", unit="tensor", disable=not progress or not sys.stderr.isatty())
        quarters = {len(tasks) * k // 4 for k in range(1, 5)} if progress and bar.disable else set()
        for index, task in enumerate(bar):
            inputs = upcoming.result()
            if index + 1 < len(tasks):
                upcoming = reader.submit(read, tasks[index + 1])
            result = _merge_one(task, inputs, method, math_device).to("cpu").to(task.out_dtype).contiguous()
            if in_flight is not None:
                in_flight.result()
            in_flight = saver.submit(writer.write, task.output_name, result)
            if index + 1 in quarters:
                print(f"mergeflow merge: merged {index + 1} of {len(tasks)} tensors", file=sys.stderr, flush=True)
        if in_flight is not None:
            in_flight.result()
    writer.finish()


def _load(checkpoint: Checkpoint, name: str, task: TensorTask) -> torch.Tensor:
    tensor = checkpoint.load(name)
    if task.load_dtype is not None and tensor.dtype != task.load_dtype:
        tensor = tensor.to(task.load_dtype)
    if task.vocabulary is None and task.vocabulary_axis is not None and tensor.shape[0] != task.shape[0]:
        tensor = tensor[: task.shape[0]]  # --unsafe-truncate-embeddings: keep the common prefix
    return tensor.to(task.merge_dtype)


def _merge_one(task: TensorTask, inputs: list[torch.Tensor], method: MethodSpec, device: torch.device) -> torch.Tensor:
    if not task.merge_dtype.is_floating_point:
        # Integer buffers are not merged: they pass through when every input agrees.
        if any(not torch.equal(inputs[0], other) for other in inputs[1:]):
            raise MergeflowError(f"tensor {task.output_name}: non-floating tensors differ between models and cannot be merged")
        return inputs[0]
    merge_inputs = MergeInputs(
        tensors=tuple(t.to(device) for t in inputs),
        base_index=task.base_index,
        params=task.params,
        model_params=task.model_params,
        tensor_name=task.output_name,
        vocabulary_axis=task.vocabulary_axis,
    )
    with torch.autocast(device_type=device.type, enabled=False):
        try:
            result = method.merge(merge_inputs)
        except ValueError as err:
            raise MergeflowError(str(err)) from None  # methods name the tensor
        except Exception as err:  # torch's own errors inside the math name neither
            detail = str(err).splitlines()[0][:200] if str(err) else ""
            raise MergeflowError(f"tensor {task.output_name}: merge method '{method.name}' failed ({type(err).__name__}: {detail})") from None
    expected = method.output_dtype(task.merge_dtype, len(inputs))
    if result.dtype != expected:
        raise RuntimeError(f"tensor {task.output_name}: '{method.name}' returned {result.dtype}, declared {expected}")
    return result
