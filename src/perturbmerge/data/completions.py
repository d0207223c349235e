"""Causal-LM tasks from (prompt, completion) pairs, the convention of TRL's SFT data sets: `--benchmark jsonl:FILE`
where every line is an object with "task", "prompt" and "completion", and optionally "split" ("train" / "test";
else a seeded split of each task by data.test_fraction; "general": held out of every task, the general-ability set
whose completion NLL is logged after each task) and "metric" ("exact_match" / "chrf"; else exact match when
every completion of the task has at most 4 words, chrF otherwise). Tasks come in the order of their first line.
(A JSONL of "text" / "label" lines stays classification, data/custom.py.)

Prompts are wrapped in the tokenizer's chat template when it has one (a user turn, then the generation prompt);
completions end with the end-of-sequence token, so a model learns to stop. Only completion tokens carry a loss
(labels −100 on the prompt and the padding).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .base import LoadRequest, Task, TaskStream

METRICS = ("exact_match", "chrf")
SHORT_ANSWER_WORDS = 4  # a task whose completions all have at most this many words is scored by exact match
IGNORE = -100  # the label of a token that carries no loss


@dataclass(frozen=True)
class CompletionRecord:
    line: int
    task: str
    prompt: str
    completion: str
    split: str | None
    metric: str | None


class CompletionDataset(Dataset):
    """Tokenised (prompt, completion) pairs of one task and split; an item is ((prompt ids, completion ids), index).
    `references` are the completions as text (what generation is scored against), `metrics` each example's score
    (one per task; `joint` concatenates tasks)."""

    def __init__(self, prompts: Sequence[list[int]], completions: Sequence[list[int]], references: Sequence[str],
                 metrics: str | Sequence[str], tokenizer: Any = None) -> None:
        self.prompts, self.completions = [list(p) for p in prompts], [list(c) for c in completions]
        self.references = list(references)
        self.metrics = [metrics] * len(self.prompts) if isinstance(metrics, str) else list(metrics)
        self.tokenizer = tokenizer  # decodes generations (kinds/causal_lm.py)

    @property
    def metric(self) -> str:
        """The task's metric ('mixed' for a concatenation of tasks with different ones)."""
        return self.metrics[0] if len(set(self.metrics)) == 1 else "mixed"

    def subset(self, indices: Sequence[int]) -> "CompletionDataset":
        return CompletionDataset([self.prompts[i] for i in indices], [self.completions[i] for i in indices],
                                 [self.references[i] for i in indices], [self.metrics[i] for i in indices],
                                 self.tokenizer)

    @classmethod
    def concatenate(cls, parts: Sequence["CompletionDataset"]) -> "CompletionDataset":
        return cls([p for d in parts for p in d.prompts], [c for d in parts for c in d.completions],
                   [r for d in parts for r in d.references], [m for d in parts for m in d.metrics],
                   parts[0].tokenizer)

    @property
    def lengths(self) -> list[int]:
        return [len(p) + len(c) for p, c in zip(self.prompts, self.completions)]

    def max_new_tokens(self, indices: Sequence[int] | None = None) -> int:
        """Enough new tokens for the longest completion (its end-of-sequence token included), of `indices` or all."""
        chosen = range(len(self.completions)) if indices is None else indices
        return max(len(self.completions[i]) for i in chosen)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> tuple[tuple[list[int], list[int]], int]:
        return (self.prompts[index], self.completions[index]), index


def make_completion_collate(pad_id: int):
    """Right-padded prompt + completion ids, the attention mask, and labels that are the ids on the completion and
    −100 elsewhere; the targets are the examples' indices in their dataset."""
    def collate(items: list[tuple[tuple[list[int], list[int]], int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        length = max(len(p) + len(c) for (p, c), _ in items)
        input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
        for row, ((prompt, completion), _) in enumerate(items):
            ids = prompt + completion
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            attention_mask[row, : len(ids)] = 1
            labels[row, len(prompt): len(ids)] = torch.as_tensor(completion)
        indices = torch.as_tensor([index for _, index in items], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}, indices

    return collate


def is_completion_jsonl(path: Path) -> bool:
    """Whether the first object of a JSON-lines file has "prompt" and "completion" (causal-LM tasks)."""
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for raw in handle:
                if raw.strip():
                    record = json.loads(raw)
                    return isinstance(record, dict) and "prompt" in record and "completion" in record
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return False


def read_completion_jsonl(path: Path) -> list[CompletionRecord]:
    """Every line checked: one schema throughout, non-empty strings, a known split and metric."""
    from .custom import json_lines

    records = []
    for line, record in json_lines(path):
        if not isinstance(record, dict) or not {"task", "prompt", "completion"} <= set(record):
            found = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            raise UserError(f"JSONL '{path}' line {line}: mixed schemas; the first line has task, prompt and "
                            f"completion (causal-LM tasks), this one has {found}; use one schema per file")
        fields = {k: record[k] for k in ("task", "prompt", "completion")}
        bad = [k for k, v in fields.items() if not isinstance(v, str) or not v.strip()]
        if bad:
            raise UserError(f"JSONL '{path}' line {line}: {', '.join(bad)} must be non-empty text; fill it in or "
                            f"remove the line")
        split = record.get("split")
        if split is not None and str(split).strip().lower() not in ("train", "test", "general"):
            raise UserError(f"JSONL '{path}' line {line}: split is '{split}'; use train, test or general (held out "
                            f"of every task: the general-ability set), or leave it out to hold out "
                            f"data.test_fraction of each task at random")
        metric = record.get("metric")
        if metric is not None and metric not in METRICS:
            raise UserError(f"JSONL '{path}' line {line}: metric is '{metric}'; use {' or '.join(METRICS)}")
        records.append(CompletionRecord(line, fields["task"].strip(), fields["prompt"], fields["completion"],
                                        None if split is None else str(split).strip().lower(), metric))
    if not records:
        raise UserError(f"JSONL '{path}' has no lines; add prompt/completion pairs")
    return records


def task_names(records: Sequence[CompletionRecord]) -> list[str]:
    return list(dict.fromkeys(r.task for r in records if r.split != "general"))


def prepare_tokenizer(tokenizer: Any, backbone: str, quiet: bool = False) -> Any:
    """A tokenizer without a pad token pads with its end-of-sequence token (said on stderr); one without either is
    refused."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise UserError(f"the tokenizer of '{backbone}' has neither a pad nor an end-of-sequence token; give it "
                            f"a pad token (tokenizer.pad_token = ...) and save it again")
        tokenizer.pad_token = tokenizer.eos_token
        if not quiet:
            print(f"perturbmerge: note: the tokenizer of '{backbone}' has no pad token; padding with its "
                  f"end-of-sequence token '{tokenizer.eos_token}'", file=sys.stderr)
    return tokenizer


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt as the model sees it: a user turn in the chat template (with the generation prompt) when the
    tokenizer has one, else the plain text."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def completion_ids(tokenizer: Any, completion: str) -> list[int]:
    return tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def task_metric(records: Sequence[CompletionRecord], task: str, where: str) -> str:
    given = {r.metric for r in records if r.metric is not None}
    if len(given) > 1:
        raise UserError(f"{where}: task '{task}' names several metrics ({', '.join(sorted(given))}); give one")
    if given:
        return given.pop()
    return "exact_match" if all(len(r.completion.split()) <= SHORT_ANSWER_WORDS for r in records) else "chrf"


def load_completion_tasks(path: Path, request: LoadRequest) -> TaskStream:
    return completion_stream(read_completion_jsonl(path), f"jsonl:{path}", request, f"JSONL '{path}'")


def completion_stream(records: Sequence[CompletionRecord], benchmark: str, request: LoadRequest,
                      where: str) -> TaskStream:
    """Causal-LM tasks (in order of first appearance) from checked records; `where` names the source in errors."""
    from ..backbones import context_length, load_tokenizer

    names = task_names(records)
    if request.num_tasks > len(names):
        raise UserError(f"--tasks {request.num_tasks}: {where} has {len(names)} tasks ({', '.join(names[:6])}); "
                        f"use --tasks {len(names)} or fewer")
    names = names[: request.num_tasks]
    tokenizer = prepare_tokenizer(load_tokenizer(request.backbone), request.backbone, quiet=not request.progress)
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer of '{request.backbone}' has no end-of-sequence token; a completion could "
                        f"never end")
    limit = context_length(request.backbone)
    tasks, rng = [], np.random.default_rng(0)
    for index, name in enumerate(names):
        members = [r for r in records if r.task == name and r.split != "general"]
        encoded = [(prompt_ids(tokenizer, r.prompt), completion_ids(tokenizer, r.completion), r) for r in members]
        for prompt, completion, record in encoded:
            if limit is not None and len(prompt) + len(completion) > limit:
                raise UserError(f"{where} line {record.line}: prompt and completion take "
                                f"{len(prompt) + len(completion)} tokens, more than the model's context of {limit}; "
                                f"shorten them")
        if any(r.split is not None for r in members):
            train = [e for e in encoded if e[2].split == "train"]
            test = [e for e in encoded if e[2].split == "test"]
        else:
            order = rng.permutation(len(encoded))
            held = max(1, int(round(request.data.test_fraction * len(encoded))))
            test, train = [encoded[i] for i in order[:held]], [encoded[i] for i in sorted(order[held:])]
            test = sorted(test, key=lambda e: e[2].line)
        if not train or not test:
            raise UserError(f"{where}: task '{name}' has no {'train' if not train else 'test'} example; "
                            f"give it at least one of each (split column or more lines)")
        metric = task_metric(members, name, where)

        def dataset(part):
            return CompletionDataset([e[0] for e in part], [e[1] for e in part], [e[2].completion for e in part],
                                     metric, tokenizer)

        tasks.append(Task(index, [name], 0, dataset(train), dataset(test)))
    general = [r for r in records if r.split == "general"]
    reference = CompletionDataset([prompt_ids(tokenizer, r.prompt) for r in general],
                                  [completion_ids(tokenizer, r.completion) for r in general],
                                  [r.completion for r in general], "chrf", tokenizer) if general else None
    return TaskStream(benchmark, "task-incremental", request.backbone, tasks,
                      collate=make_completion_collate(tokenizer.pad_token_id), kind="causal_lm", reference=reference,
                      info={"examples": sum(len(t.train) + len(t.test) for t in tasks), "tasks": names,
                            "metrics": [t.test.metric for t in tasks], "chat_template": bool(
                                getattr(tokenizer, "chat_template", None))})
