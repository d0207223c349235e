"""`langid`: which of 20 languages a single word is from, class-incremental, on all-MiniLM-L6-v2 — an English
sentence encoder whose frozen features separate languages poorly, so adapting it is worth a lot.

Source: the Debian word lists pinned in `splits/langid-words.json` (package, version, .deb sha256 and the sha256
of every file; `perturbmerge data fetch langid-words`). A word is kept when it is alphabetic and 4–20 characters
long; it is compared across languages in the form the tokenizer sees (lower case, accents stripped), and a word
that occurs in two or more languages is dropped. From each language a fixed sample of 1,000 training and 300 test
words is drawn once (sampling seed 0, the same for every run seed; train and test disjoint). The run seed fixes
the class order. Default: 10 tasks of 2 languages (`--tasks 5` gives 5 × 4); `data.train_per_class=N` and
`data.test_per_class=N` keep the first N training / test words of each language (quick runs, e.g. the demo).
"""
from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import json
import sys
import unicodedata
import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import atomic_write_json
from .base import BenchmarkSpec, LoadRequest, TaskStream, register_benchmark
from .fetch import require
from .text import class_incremental_text_tasks, make_pad_collate, tokenize_per_class

LANGUAGES = {  # class name -> word list inside the installed folder (<package>/<path>)
    "Bulgarian": "wbulgarian/usr/share/dict/bulgarian",
    "Catalan": "wcatalan/usr/share/dict/catalan",
    "Danish": "wdanish/usr/share/dict/danish",
    "Dutch": "wdutch/usr/share/dict/dutch",
    "English": "wamerican/usr/share/dict/american-english",
    "Esperanto": "wesperanto/usr/share/dict/esperanto",
    "Faroese": "wfaroese/usr/share/dict/faroese",
    "French": "wfrench/usr/share/dict/french",
    "German": "wngerman/usr/share/dict/ngerman",
    "Irish": "wirish/usr/share/dict/irish",
    "Italian": "witalian/usr/share/dict/italian",
    "Galician": "wgalician-minimos/usr/share/dict/galician-minimos",
    "Manx": "wmanx/usr/share/dict/manx",
    "Norwegian": "wnorwegian/usr/share/dict/bokmaal",
    "Polish": "wpolish/usr/share/dict/polish",
    "Portuguese": "wportuguese/usr/share/dict/portuguese",
    "Scottish Gaelic": "wgaelic/usr/share/dict/gaelic",
    "Spanish": "wspanish/usr/share/dict/spanish",
    "Swedish": "wswedish/usr/share/dict/swedish",
    "Ukrainian": "wukrainian/usr/share/dict/ukrainian",
}
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 300
MIN_LENGTH, MAX_LENGTH = 4, 20
MAX_TOKENS = 24
SAMPLE_VERSION = 1  # bump when the sampling changes: invalidates the on-disk cache of the sample


@functools.lru_cache(maxsize=1)
def _combining_marks() -> dict[int, None]:
    """Every code point of category Mn (non-spacing mark), mapped to None: a `str.translate` table that drops them."""
    return {c: None for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Mn"}


def tokenizer_form(word: str) -> str:
    """The word as an uncased WordPiece tokenizer sees it: lower case, accents stripped (NFD, marks dropped)."""
    lower = word.lower()
    if lower.isascii():  # NFD leaves ASCII unchanged and adds no marks: skip the per-character pass
        return lower
    return unicodedata.normalize("NFD", lower).translate(_combining_marks())


def read_words(path: Path) -> dict[str, str]:
    """Tokenizer form -> the first spelling with that form, for every alphabetic word of 4–20 characters."""
    words: dict[str, str] = {}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            word = line.strip()
            if MIN_LENGTH <= len(word) <= MAX_LENGTH and word.isalpha():
                words.setdefault(tokenizer_form(word), word)
    return words


SAMPLE_INDEX = Path(__file__).resolve().parent / "splits" / "langid-sample.json"


def sample_key() -> str:
    """A hash of the word lists' sha256 (as listed in the manifest) and every constant of the sampling."""
    from .fetch import SOURCES

    digests = SOURCES["langid-words"].installed_files()
    rule = {"languages": LANGUAGES, "files": {name: digests.get(inner) for name, inner in LANGUAGES.items()},
            "train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS, "length": [MIN_LENGTH, MAX_LENGTH]}
    return hashlib.sha256(json.dumps(rule, sort_keys=True).encode()).hexdigest()[:16]


def sample_cache_path(folder: Path) -> Path:
    """`<folder>/sample-v<N>-<key>.json`: a changed list or rule never reads a stale sample."""
    return folder / f"sample-v{SAMPLE_VERSION}-{sample_key()}.json"


def _lines(path: Path) -> list[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        return [line.strip() for line in handle]


def sample_line_numbers(folder: str, train: list[list[str]], test: list[list[str]]) -> dict[str, list[int]]:
    """Per language (in name order), the 0-based line of each sampled word in its list, training words first."""
    index = {}
    for name, words in zip(sorted(LANGUAGES), (a + b for a, b in zip(train, test))):
        first: dict[str, int] = {}
        for number, line in enumerate(_lines(Path(folder) / LANGUAGES[name])):
            first.setdefault(line, number)
        index[name] = [first[word] for word in words]
    return index


def write_sample_index(folder: str, path: Path = SAMPLE_INDEX) -> Path:
    """Ship the sample as line numbers (scripts/make_langid_sample_index.py): a fresh machine then reads only the
    sampled lines instead of every word of every list (deterministic either way: the lists are pinned by sha256)."""
    from ..io import atomic_write_text

    _, train, test = _sample_words(folder)
    lines = sample_line_numbers(folder, train, test)
    rows = ",\n".join(f"{json.dumps(name)}: {json.dumps(numbers, separators=(',', ':'))}" for name, numbers in lines.items())
    atomic_write_text(path, f'{{"version": {SAMPLE_VERSION}, "key": "{sample_key()}", "lines": {{\n{rows}}}}}\n')
    return path


def _indexed_sample(folder: str) -> tuple[list[str], list[list[str]], list[list[str]]] | None:
    """The sample from the shipped line numbers, or None when they were made for other lists or another rule."""
    try:
        shipped = json.loads(SAMPLE_INDEX.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if shipped.get("version") != SAMPLE_VERSION or shipped.get("key") != sample_key():
        return None
    names, train, test = sorted(LANGUAGES), [], []
    for name in names:
        lines = _lines(Path(folder) / LANGUAGES[name])
        words = [lines[number] for number in shipped["lines"][name]]
        if len(words) != TRAIN_PER_CLASS + TEST_PER_CLASS or not all(
                MIN_LENGTH <= len(w) <= MAX_LENGTH and w.isalpha() for w in words):
            raise UserError(f"{SAMPLE_INDEX} does not match the {name} word list; fetch the lists again with "
                            f"`perturbmerge data fetch langid-words --force`")
        train.append(words[:TRAIN_PER_CLASS])
        test.append(words[TRAIN_PER_CLASS:])
    return names, train, test


@functools.lru_cache(maxsize=2)
def sampled_words(folder: str) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Language names and their fixed train/test samples (words unique to their language): from the on-disk cache
    of an earlier process, else from the shipped line numbers, else sampled from every word of the lists (about a
    minute for their 12 million words)."""
    cache = sample_cache_path(Path(folder))
    try:
        stored = json.loads(cache.read_text(encoding="utf-8"))
        return stored["names"], stored["train"], stored["test"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: sample again and rewrite it
    names, train, test = _indexed_sample(folder) or _sample_words(folder)
    try:
        atomic_write_json(cache, {"names": names, "train": train, "test": test})
    except OSError as error:  # a read-only data folder: correct, only slower next time
        warnings.warn(f"langid: could not cache the word sample in {cache} ({error}); every run samples again",
                      stacklevel=2)
    return names, train, test


def _sample_words(folder: str) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Read every list, drop words whose tokenizer form occurs in two or more languages, draw the fixed sample."""
    names = sorted(LANGUAGES)
    forms = {name: read_words(Path(folder) / LANGUAGES[name]) for name in names}
    owners = collections.Counter(itertools.chain.from_iterable(forms.values()))  # languages per form
    rng = np.random.RandomState(0)
    train, test = [], []
    for name in names:
        unique = sorted(form for form in forms[name] if owners[form] == 1)
        if len(unique) < TRAIN_PER_CLASS + TEST_PER_CLASS:
            raise UserError(f"the {name} word list has {len(unique)} usable words, {TRAIN_PER_CLASS + TEST_PER_CLASS} "
                            f"needed; fetch it again with `perturbmerge data fetch langid-words --force`")
        pick = rng.permutation(len(unique))[: TRAIN_PER_CLASS + TEST_PER_CLASS]
        words = [forms[name][unique[i]] for i in pick]
        train.append(words[:TRAIN_PER_CLASS])
        test.append(words[TRAIN_PER_CLASS:])
    return names, train, test


@functools.lru_cache(maxsize=4)
def _tokenized(folder: str, tokenizer_name: str):
    names, train, test = sampled_words(folder)
    return (names, *tokenize_per_class(tokenizer_name, train, test, MAX_TOKENS))


def load(request: LoadRequest) -> TaskStream:
    (folder,) = require("langid-words", data_dir=request.data_dir)
    names, train_ids, test_ids, pad_id = _tokenized(str(folder), request.backbone)
    keep, keep_test = request.data.train_per_class, request.data.test_per_class
    for key, value, limit, what in (("train_per_class", keep, TRAIN_PER_CLASS, "training"),
                                    ("test_per_class", keep_test, TEST_PER_CLASS, "test")):
        if value is not None and value > limit:
            raise UserError(f"data.{key}={value} is more than the {limit} {what} words per language langid has; "
                            f"use {limit} or fewer")
    if keep is not None:
        train_ids = [ids[:keep] for ids in train_ids]
    if keep_test is not None:
        test_ids = [ids[:keep_test] for ids in test_ids]
    tasks = class_incremental_text_tasks(names, train_ids, test_ids, request.num_tasks, request.seed)
    return TaskStream("langid", "class-incremental", request.backbone, tasks, collate=make_pad_collate(pad_id),
                      info={"train_per_class": keep or TRAIN_PER_CLASS, "test_per_class": keep_test or TEST_PER_CLASS,
                            "max_tokens": MAX_TOKENS})


# Chosen on the validation split with baselines only (docs/results.md, "Where P&M's premise holds"): the highest
# `joint` validation accuracy among the settings tried that meet the regime criteria — LoRA on every linear layer
# of the encoder (query, key, value, dense) at lr 1e-3 for 4 epochs.
LANGID_DEFAULTS = {"epochs": 4, "batch_size": 32, "lr": 1e-3, "head_lr": 1e-2, "fisher": {"batch_size": 32},
                   "lora": {"targets": ["query", "key", "value", "dense"]}}

SPEC = register_benchmark(BenchmarkSpec(
    name="langid",
    description="the language of single words, 20 languages (Debian word lists), 10x2 (or --tasks 5), MiniLM-L6",
    scenario="class-incremental", backbone="minilm", modality="text", default_tasks=10, load=load,
    defaults=LANGID_DEFAULTS, sources=("langid-words",), data_keys=frozenset({"train_per_class", "test_per_class"}),
))
