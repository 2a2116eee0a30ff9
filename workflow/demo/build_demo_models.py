#!/usr/bin/env python
"""Build the offline demo: a character tokenizer, tiny Llama models and the held-out task data.

Why it looks like this (see docs in /work/shared/reference/tiny-demo-models.md):
merging only pays off at this size when the specialists are *small-step* fine-tunes of one base
trained on a mixture of the skills; then a weighted linear merge of ``add`` and ``rev`` beats both
parents, and weights matter, which makes a sweep of variants meaningful. Everything is seeded,
single-threaded and counted in optimiser steps (never wall-clock), so a rerun on the same torch
version rebuilds the same files.

Outputs (relative to this file):
  models/{base,add,rev,copy}/   save_pretrained: config, safetensors weights, tokenizer
  tasks/data/{add,rev,copy}.jsonl   200 held-out prompts per task, excluded from all training

Usage: python workflow/demo/build_demo_models.py [--data-only]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import string
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODELS_DIR = HERE / "models"
DATA_DIR = HERE / "tasks" / "data"

SPECIALS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
ALPHABET = string.digits + string.ascii_lowercase + "+=:<>"
TASKS = ("add", "rev", "copy")
EVAL_SIZE = 200
BATCH = 64

# Step counts and learning rates. The base sees the whole mixture at a constant learning rate
# and stops while addition is still half-learnt (reversal and copying are learnt much sooner):
# merging pays off only when a specialist can gain a lot from a small step. Each specialist is a
# short, low-learning-rate fine-tune on its own task (cosine decay), ending within 5 % of the
# base's weights, and forgets some of the other skills, which is what a merge then recovers.
BASE_STEPS, BASE_LR, BASE_WARMUP = 750, 2e-3, 200
BASE_MIX = {"add": 0.45, "rev": 0.35, "copy": 0.20}
SPECIALIST_STEPS, SPECIALIST_LR = 350, 1e-4
SEED = 20240607


# --------------------------------------------------------------------------- data


def make_example(task: str, rng: random.Random) -> tuple[str, str]:
    """One (prompt, answer) pair: ``53+93=`` → ``146``; ``<abc>=`` → ``cba``; ``:ab1=`` → ``ab1``."""
    if task == "add":
        a, b = rng.randrange(100), rng.randrange(100)
        return f"{a}+{b}=", str(a + b)
    if task == "rev":
        s = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 7)))
        return f"<{s}>=", s[::-1]
    if task == "copy":
        s = "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(3, 7)))
        return f":{s}=", s
    raise ValueError(task)


def held_out_set(task: str) -> list[dict[str, str]]:
    """The evaluation prompts: distinct, drawn from their own seed, never used for training."""
    rng = random.Random(f"{SEED}-eval-{task}")
    seen: dict[str, str] = {}
    while len(seen) < EVAL_SIZE:
        prompt, answer = make_example(task, rng)
        seen.setdefault(prompt, answer)
    return [{"prompt": p, "answer": a} for p, a in seen.items()]


def write_eval_data() -> dict[str, list[dict[str, str]]]:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    sets = {task: held_out_set(task) for task in TASKS}
    for task, rows in sets.items():
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        (DATA_DIR / f"{task}.jsonl").write_text(text)
    return sets


# --------------------------------------------------------------------------- tokenizer & model


def build_tokenizer():
    """Character-level WordLevel tokenizer; no post-processor, so no BOS is ever added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIALS.values(), *ALPHABET])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIALS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIALS)


def build_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# --------------------------------------------------------------------------- training


class Sampler:
    """Batches of training examples from a task mixture, skipping every held-out prompt."""

    def __init__(self, tokenizer, mix: dict[str, float], exclude: set[str], seed: str):
        self.tok, self.exclude = tokenizer, exclude
        self.tasks, self.weights = list(mix), list(mix.values())
        self.rng = random.Random(seed)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and labels; the loss covers the answer and EOS only."""
        rows = []
        while len(rows) < BATCH:
            task = self.rng.choices(self.tasks, self.weights)[0]
            prompt, answer = make_example(task, self.rng)
            if prompt in self.exclude:
                continue
            p = self.tok.encode(prompt)
            a = self.tok.encode(answer) + [self.tok.eos_token_id]
            rows.append((p + a, [-100] * len(p) + a))
        width = max(len(ids) for ids, _ in rows)
        pad = self.tok.pad_token_id
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in rows])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
        return ids, labels


def train(model, sampler: Sampler, steps: int, lr: float, warmup: int, cosine: bool) -> None:
    """AdamW with linear warm-up, then a constant or cosine-decayed rate. Right padding needs no
    attention mask: causal attention never lets a real token see the pads after it."""

    def factor(step: int) -> float:
        decay = 0.5 * (1 + math.cos(math.pi * step / steps)) if cosine else 1.0
        return min(1.0, (step + 1) / warmup) * decay

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    for step in range(steps):
        ids, labels = sampler.batch()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 250 == 0 or step == steps - 1:
            print(f"    step {step:5d}  loss {loss.item():.4f}", flush=True)
    model.eval()


@torch.no_grad()
def accuracy(model, tokenizer, rows: list[dict[str, str]], max_new: int = 8) -> float:
    """Greedy exact match, batched by prompt length so no padding is needed."""
    by_len: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        by_len.setdefault(len(r["prompt"]), []).append(r)
    hits = 0
    for group in by_len.values():
        ids = torch.tensor([tokenizer.encode(r["prompt"]) for r in group])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        for r, seq in zip(group, out[:, ids.shape[1] :].tolist()):
            hits += tokenizer.decode(seq, skip_special_tokens=True) == r["answer"]
    return hits / len(rows)


def relative_delta(model, base) -> float:
    """‖W − W_base‖ / ‖W_base‖ over all parameters: how far a fine-tune moved."""
    num = den = 0.0
    for (_, p), (_, q) in zip(model.named_parameters(), base.named_parameters()):
        num += (p - q).pow(2).sum().item()
        den += q.pow(2).sum().item()
    return (num / den) ** 0.5


def report_row(name: str, model, tokenizer, sets) -> str:
    cells = "  ".join(f"{t} {100 * accuracy(model, tokenizer, sets[t]):5.1f}%" for t in TASKS)
    return f"{name:<8} {cells}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-only", action="store_true", help="only write tasks/data/*.jsonl")
    args = parser.parse_args()

    torch.set_num_threads(1)
    sets = write_eval_data()
    print(f"wrote {EVAL_SIZE} held-out prompts per task to {DATA_DIR}")
    if args.data_only:
        return
    exclude = {r["prompt"] for rows in sets.values() for r in rows}
    tokenizer = build_tokenizer()
    started = time.perf_counter()

    torch.manual_seed(SEED)
    base = build_model(tokenizer)
    print(f"base: {sum(p.numel() for p in base.parameters())} parameters, {BASE_STEPS} steps")
    sampler = Sampler(tokenizer, BASE_MIX, exclude, "base")
    train(base, sampler, BASE_STEPS, BASE_LR, BASE_WARMUP, cosine=False)
    models = {"base": base}

    for task in TASKS:
        torch.manual_seed(SEED)
        model = build_model(tokenizer)
        model.load_state_dict(base.state_dict())
        print(f"{task}: fine-tune {SPECIALIST_STEPS} steps at lr {SPECIALIST_LR}")
        sampler = Sampler(tokenizer, {task: 1.0}, exclude, task)
        train(model, sampler, SPECIALIST_STEPS, SPECIALIST_LR, warmup=1, cosine=True)
        print(f"    ‖Δ‖/‖W‖ = {100 * relative_delta(model, base):.2f} %")
        models[task] = model

    print(f"training took {time.perf_counter() - started:.0f} s")
    print("greedy exact match on the held-out prompts:")
    for name, model in models.items():
        out = MODELS_DIR / name
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        print("  " + report_row(name, model, tokenizer, sets))


if __name__ == "__main__":
    main()
