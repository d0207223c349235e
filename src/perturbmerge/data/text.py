"""Text task data: tokenise once, pad per batch (dynamic padding)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from .base import Task, task_class_groups


class TokenizedDataset(Dataset):
    """(token ids, label) pairs; ids are lists of ints, padded per batch by `pad_collate`."""

    def __init__(self, ids: Sequence[Sequence[int]], labels: Sequence[int]) -> None:
        if len(ids) != len(labels):
            raise ValueError("ids and labels differ in length")
        self.ids = [list(x) for x in ids]
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)

    @property
    def lengths(self) -> list[int]:
        """Token counts, for length-sorted evaluation batches."""
        return [len(ids) for ids in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[list[int], torch.Tensor]:
        return self.ids[index], self.labels[index]


def make_pad_collate(pad_id: int):
    def pad_collate(items: list[tuple[list[int], Any]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        length = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, (ids, _) in enumerate(items):
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        labels = torch.stack([torch.as_tensor(label) for _, label in items])
        return {"input_ids": input_ids, "attention_mask": attention_mask}, labels

    return pad_collate


def class_incremental_text_tasks(names: list[str], train_ids: list[list[list[int]]], test_ids: list[list[list[int]]],
                                 num_tasks: int, seed: int) -> list[Task]:
    """Tokenised examples per class (train_ids[c], test_ids[c]) cut into `num_tasks` tasks in the seed's class order;
    labels become global head positions."""
    tasks, offset = [], 0
    for index, group in enumerate(task_class_groups(len(names), num_tasks, seed)):
        def split(ids_by_class):
            ids, labels = [], []
            for position, cls in enumerate(group):
                ids += ids_by_class[cls]
                labels += [offset + position] * len(ids_by_class[cls])
            return TokenizedDataset(ids, labels)

        tasks.append(Task(index, [names[c] for c in group], offset, split(train_ids), split(test_ids)))
        offset += len(group)
    return tasks


def tokenize_per_class(tokenizer_name: str, train: list[list[str]], test: list[list[str]], max_tokens: int
                       ) -> tuple[list[list[list[int]]], list[list[list[int]]], int]:
    """Token ids of every class's train and test texts (truncated to `max_tokens`), and the pad id."""
    from ..backbones import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)

    def encode(groups: list[list[str]]) -> list[list[list[int]]]:
        return [tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"] for texts in groups]

    return encode(train), encode(test), tokenizer.pad_token_id
