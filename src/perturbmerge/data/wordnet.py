"""`wordnet`: WordNet 3.0 noun glosses → lexicographer class ("supersense"), class-incremental.

Source: Debian `wordnet-base` 1:3.0-37, file data.noun (fetched and verified by `perturbmerge data fetch wordnet`).
Each synset line gives its lexicographer file number (field 2) and a gloss after ' | '; the text is the gloss up to
the first ';' (the definition, without examples). The 20 largest of the 26 noun classes are used; from each class a
fixed sample of 150 training and 100 test definitions is drawn once (sampling seed 0, the same for every run seed;
train and test disjoint, duplicate definitions removed first). The run seed fixes the class order.
Default: 5 tasks × 4 classes; `--tasks 10` gives 10 × 2. Backbone: all-MiniLM-L6-v2.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import BenchmarkSpec, LoadRequest, TaskStream, register_benchmark
from .fetch import require
from .text import class_incremental_text_tasks, make_pad_collate, tokenize_per_class

NOUN_LEXNAMES = [
    "Tops", "act", "animal", "artifact", "attribute", "body", "cognition", "communication", "event", "feeling",
    "food", "group", "location", "motive", "object", "person", "phenomenon", "plant", "possession", "process",
    "quantity", "relation", "shape", "state", "substance", "time",
]  # lexicographer files 03..28
NUM_CLASSES = 20
TRAIN_PER_CLASS = 150
TEST_PER_CLASS = 100
MAX_TOKENS = 64


def parse_noun_glosses(path: Path) -> dict[str, list[str]]:
    """Class name → unique definitions, in file order."""
    by_class: dict[str, dict[str, None]] = {}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            fields = line.split(" ", 3)
            lexname = NOUN_LEXNAMES[int(fields[1]) - 3]
            definition = line.split(" | ", 1)[1].split(";", 1)[0].strip()
            if definition:
                by_class.setdefault(lexname, {})[definition] = None
    return {k: list(v) for k, v in by_class.items()}


@functools.lru_cache(maxsize=4)
def _sampled(path: str) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """The 20 largest classes (by size, ties by name) and their fixed train/test samples."""
    glosses = parse_noun_glosses(Path(path))
    names = sorted(glosses, key=lambda n: (-len(glosses[n]), n))[:NUM_CLASSES]
    rng = np.random.RandomState(0)
    train, test = [], []
    for name in names:
        texts = glosses[name]
        if len(texts) < TRAIN_PER_CLASS + TEST_PER_CLASS:
            raise UserError(f"wordnet class {name} has only {len(texts)} definitions; the data file is not WordNet 3.0")
        pick = rng.permutation(len(texts))[: TRAIN_PER_CLASS + TEST_PER_CLASS]
        train.append([texts[i] for i in pick[:TRAIN_PER_CLASS]])
        test.append([texts[i] for i in pick[TRAIN_PER_CLASS:]])
    return names, train, test


@functools.lru_cache(maxsize=4)
def _tokenized(path: str, tokenizer_name: str) -> tuple[list[str], list[list[list[int]]], list[list[list[int]]], int]:
    names, train, test = _sampled(path)
    return (names, *tokenize_per_class(tokenizer_name, train, test, MAX_TOKENS))


def load(request: LoadRequest) -> TaskStream:
    path = require("wordnet", data_dir=request.data_dir)[0] / "data.noun"
    names, train_ids, test_ids, pad_id = _tokenized(str(path), request.backbone)
    tasks = class_incremental_text_tasks(names, train_ids, test_ids, request.num_tasks, request.seed)
    return TaskStream("wordnet", "class-incremental", request.backbone, tasks, collate=make_pad_collate(pad_id),
                      info={"train_per_class": TRAIN_PER_CLASS, "test_per_class": TEST_PER_CLASS,
                            "max_tokens": MAX_TOKENS})


SPEC = register_benchmark(
    BenchmarkSpec(
        name="wordnet",
        description="WordNet noun glosses -> supersense, 20 classes, 5x4 (or --tasks 10), MiniLM-L6 (Debian wordnet-base)",
        scenario="class-incremental",
        backbone="minilm",
        modality="text",
        default_tasks=5,
        load=load,
        defaults={"epochs": 2, "batch_size": 32, "lr": 1e-3, "head_lr": 1e-2, "fisher": {"batch_size": 32}},
        sources=("wordnet",),
    )
)
