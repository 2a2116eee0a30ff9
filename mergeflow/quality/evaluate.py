"""Evaluate one model directory with lm-eval and keep its raw results JSON.

lm-eval, transformers, datasets and huggingface_hub read ``HF_HUB_OFFLINE`` when they are
imported, so this module imports none of them at the top: :func:`evaluate` sets the variable
first and imports lm-eval afterwards. In a process that already imported them the setting comes
too late, which is why the workflow runs ``mergeflow evaluate`` as its own process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class EvalOptions:
    tasks: tuple[str, ...]
    include_path: str | None = None
    num_fewshot: int | None = None
    limit: int | float | None = None
    batch_size: int | str = 8
    device: str = "cpu"
    dtype: str = "float32"
    offline: bool | None = None  # None: offline exactly when everything needed is local
    threads: int = 1  # torch CPU threads; tiny models are fastest on one, and jobs run side by side


class _AnyTagLoader(yaml.SafeLoader):
    """Reads task YAMLs that contain lm-eval's ``!function`` tags without executing them."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def local_task_names(include_path: str | None) -> set[str]:
    """Task, group and tag names defined by the YAMLs under ``include_path``.

    This decides, before lm-eval is imported, whether its 14k built-in tasks need indexing
    (about 5 s) and whether the run can be offline.
    """
    if not include_path:
        return set()
    names: set[str] = set()
    for path in sorted(Path(include_path).rglob("*.yaml")):
        doc = yaml.load(path.read_text(), Loader=_AnyTagLoader)  # noqa: S506 - no tag executes
        if not isinstance(doc, dict):
            continue
        for key in ("task", "group", "tag"):
            value = doc.get(key)
            for name in value if isinstance(value, list) else [value]:
                if isinstance(name, str):
                    names.add(name)
    return names


def needs_builtin_tasks(options: EvalOptions) -> bool:
    return not set(options.tasks) <= local_task_names(options.include_path)


def evaluate(model_dir: str | Path, options: EvalOptions) -> dict[str, Any]:
    """Run lm-eval on ``model_dir``; return its results dict (without per-sample logs).

    Offline by default when the model is a local directory and every task is a local one: then
    nothing needs the network, and ``HF_HUB_OFFLINE=1`` removes the lookups lm-eval would
    otherwise make silently.
    """
    if options.include_path and not Path(options.include_path).is_dir():
        raise FileNotFoundError(f"task directory {options.include_path} does not exist")
    builtin = needs_builtin_tasks(options)
    offline = options.offline
    if offline is None:
        offline = Path(model_dir).is_dir() and not builtin
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"

    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(options.threads)
    manager = TaskManager(include_path=options.include_path, include_defaults=builtin)
    model_args = {"pretrained": str(model_dir), "dtype": options.dtype}
    started = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=list(options.tasks),
        task_manager=manager,
        num_fewshot=options.num_fewshot,
        limit=options.limit,
        batch_size=options.batch_size,
        device=options.device,
        log_samples=False,
    )
    if results is None:  # lm-eval returns None on non-zero ranks only; we run a single rank
        raise RuntimeError("lm-eval returned no results")
    results.pop("samples", None)
    results["total_evaluation_time_seconds"] = str(time.perf_counter() - started)
    results["mergeflow_eval_options"] = {
        "tasks": list(options.tasks),
        "include_path": options.include_path,
        "offline": offline,
    }
    return results
