"""Evaluate one model directory with lm-eval and keep its raw results JSON.

The JSON is lm-eval's results plus, under ``mergeflow_samples``, every item's score (lm-eval's
``log_samples``, reduced as :mod:`mergeflow.quality.samples` describes) for paired statistics.
Tasks come from ``tasks`` and/or a named ``suite`` (:mod:`mergeflow.quality.suites`); tasks at
different few-shot counts or limits run as separate lm-eval passes over one loaded model.

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

from mergeflow.quality.samples import KEY as SAMPLES_KEY
from mergeflow.quality.samples import compact_samples
from mergeflow.quality.suites import TaskSpec, add_v2_scores, expand


@dataclass(frozen=True)
class EvalOptions:
    tasks: tuple[str, ...] = ()
    include_path: str | None = None
    num_fewshot: int | None = None
    limit: int | float | None = None  # documents per task (a fraction if below 1)
    task_limits: tuple[tuple[str, int | float], ...] = ()  # per-task limits, over ``limit``
    batch_size: int | str = 8
    device: str = "cpu"
    dtype: str = "float32"
    offline: bool | None = None  # None: offline exactly when everything needed is local
    threads: int = 1  # torch CPU threads; tiny models are fastest on one, and jobs run side by side
    suite: str | None = None
    model_args: tuple[tuple[str, str], ...] = ()  # extra arguments of lm-eval's hf model

    def specs(self) -> list[TaskSpec]:
        return expand(self.suite, self.tasks, self.num_fewshot)

    def passes(self) -> list[tuple[int | None, int | float | None, list[str]]]:
        """(few-shot count, limit, task names) of each lm-eval pass, in first-task order."""
        limits = dict(self.task_limits)
        unknown = sorted(set(limits) - {s.name for s in self.specs()})
        if unknown:
            raise ValueError(f"limit given for tasks that are not evaluated: {', '.join(unknown)}")
        passes: dict[tuple, list[str]] = {}
        for spec in self.specs():
            key = (spec.num_fewshot, limits.get(spec.name, self.limit))
            passes.setdefault(key, []).append(spec.name)
        return [(shots, limit, names) for (shots, limit), names in passes.items()]

    def hf_model_args(self, model_dir: str | Path) -> dict[str, Any]:
        """``pretrained`` and ``dtype``, then ``model_args`` (which may override ``dtype``)."""
        args: dict[str, Any] = {"pretrained": str(model_dir), "dtype": self.dtype}
        for key, value in self.model_args:
            if key == "pretrained":
                raise ValueError("model_args: 'pretrained' is the model directory, not an option")
            args[key] = value
        return args


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
    return not {s.name for s in options.specs()} <= local_task_names(options.include_path)


# Keys of lm-eval's results that map task names to something: merged across passes.
PER_TASK = (
    "results",
    "groups",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
    "samples",
)


def merge_passes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from several lm-eval passes: the first pass's run facts (config,
    versions of lm-eval and transformers...), every pass's per-task entries."""
    merged = dict(runs[0])
    for key in PER_TASK:
        merged[key] = {}
        for run in runs:
            merged[key].update(run.get(key) or {})
    if len(runs) > 1:
        merged["config"] = {
            **runs[0].get("config", {}),
            "limit": [run.get("config", {}).get("limit") for run in runs],
        }
    return merged


def evaluate(model_dir: str | Path, options: EvalOptions) -> dict[str, Any]:
    """Run lm-eval on ``model_dir``; return its results dict with per-item scores.

    Offline by default when the model is a local directory and every task is a local one: then
    nothing needs the network, and ``HF_HUB_OFFLINE=1`` removes the lookups lm-eval would
    otherwise make silently.
    """
    if options.include_path and not Path(options.include_path).is_dir():
        raise FileNotFoundError(f"task directory {options.include_path} does not exist")
    passes = options.passes()
    builtin = needs_builtin_tasks(options)
    offline = options.offline
    if offline is None:
        offline = Path(model_dir).is_dir() and not builtin
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"

    import lm_eval
    import torch
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_arg_string

    torch.set_num_threads(options.threads)
    manager = TaskManager(include_path=options.include_path, include_defaults=builtin)
    started = time.perf_counter()
    model_args = options.hf_model_args(model_dir)
    # Typed the way lm-eval's --model_args are ("true" → True, "4096" → 4096).
    typed = {k: handle_arg_string(v) if isinstance(v, str) else v for k, v in model_args.items()}
    typed["pretrained"] = str(model_dir)
    model = get_model("hf").create_from_arg_obj(
        typed, {"batch_size": options.batch_size, "device": options.device}
    )
    runs = []
    for shots, limit, names in passes:
        results = lm_eval.simple_evaluate(
            model=model,
            model_args=model_args,
            tasks=names,
            task_manager=manager,
            num_fewshot=shots,
            limit=limit,
            batch_size=options.batch_size,
            device=options.device,
            log_samples=True,
        )
        if results is None:  # lm-eval returns None on non-zero ranks only; we run a single rank
            raise RuntimeError("lm-eval returned no results")
        runs.append(results)
    results = merge_passes(runs)
    if options.suite == "open_llm_v2":
        add_v2_scores(results)
    results[SAMPLES_KEY] = compact_samples(results)
    results.pop("samples", None)
    results["total_evaluation_time_seconds"] = str(time.perf_counter() - started)
    results["mergeflow_eval_options"] = {
        "tasks": [s.name for s in options.specs()],
        "suite": options.suite,
        "num_fewshot": {s.name: s.num_fewshot for s in options.specs()},
        "include_path": options.include_path,
        "model_args": dict(options.model_args),
        "offline": offline,
    }
    return results
