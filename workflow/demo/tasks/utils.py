"""Loaders and scoring shared by the demo task YAMLs.

Relative ``data_files`` in a task YAML resolve against the current directory, so the data is
loaded here, relative to this file, and the tasks work from any directory.
"""

from pathlib import Path

import datasets


def load(data_file: str, **_metadata):
    """``custom_dataset`` hook: lm-eval passes the task's dataset_kwargs (and its metadata)."""
    path = Path(__file__).resolve().parent / "data" / data_file
    return datasets.load_dataset("json", data_files={"test": str(path)})


def answer_nll(doc, results):
    """Negative log-likelihood of the answer per character (nats): a loss that moves before
    exact match does. The mean of it gets a closed-form stderr, unlike ``perplexity``."""
    loglikelihood, _is_greedy = results[0]
    return {"nll": -loglikelihood / len(doc["answer"])}
