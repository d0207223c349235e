"""`polyglot`: six causal-LM tasks in English, German and French, built offline from real text, for continual
fine-tuning of SmolLM2-135M-Instruct. Three of them compete for one input format (a number to words in English,
then German, then French), two for another (a software message translated into German, then French), so
sequential fine-tuning meets the interference it meets in practice.

    1 words-en       "Write the number 347 in English words."                 → num2words, exact match
    2 messages-de    "Translate this software message into German: Bad PIN"  → the catalog's German, chrF
    3 words-de       "Write the number 347 in German words."                  → exact match
    4 countries-fr   "What is the French name of the country Albania? ..."   → iso-codes' French, exact match
    5 messages-fr    "Translate this software message into French: ..."      → the catalog's French, chrF
    6 words-fr       "Write the number 347 in French words."                  → exact match

Sources (`perturbmerge data fetch polyglot-catalogs`, pinned in `splits/polyglot-catalogs.json`): the German and
French gettext catalogs of Debian 12's coreutils, dpkg, gnupg-l10n and libc-l10n (GPL-3+ / GPL-2+ / LGPL-2.1+),
and iso-codes' ISO 3166-1 country names with their catalogs (LGPL-2.1+); number words from PyPI `num2words`
(LGPL, pinned in requirements/constraints.txt).

Sampling is fixed (seed 0), the same for every run seed; the run seed changes training only. A software message is
kept when its English has 2–6 words of letters (no format directives) and both translations are one line of at
most 80 characters that differ from the English; messages are unique by their lower-cased English, and the German
and French tasks get disjoint ones. Numbers are drawn from 1–999 without repeats inside a task. Each task has 200
training and 100 test pairs (countries: 148 and 100, all 248 names). The general-ability set (held out of every
task, its completion NLL logged after each task): 90 longer catalog messages (8+ words, one line; 30 English, 30 German, 30
French), each cut in half: "Continue this text: <first half>" → the second half; a format no task trains on.
"""
from __future__ import annotations

import gettext
import json
import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import BenchmarkSpec, LoadRequest, TaskStream, register_benchmark
from .completions import CompletionRecord, completion_stream
from .fetch import require

CATALOGS = (("coreutils", "coreutils"), ("dpkg", "dpkg"), ("gnupg-l10n", "gnupg2"), ("libc-l10n", "libc"))
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French"}
TASKS = (("words", "en"), ("messages", "de"), ("words", "de"), ("countries", "fr"), ("messages", "fr"),
         ("words", "fr"))
TRAIN_PER_TASK, TEST_PER_TASK = 200, 100
GENERAL_PER_LANGUAGE = 30
NUMBER_RANGE = (1, 999)
MESSAGE_WORDS = (2, 6)
MAX_TRANSLATION_CHARS = 80
GENERAL_MIN_WORDS = 8
SAMPLING_SEED = 0
ENGLISH_MESSAGE = re.compile(r"^[A-Za-z][A-Za-z ,'\-]*[A-Za-z.]$")


def read_catalog(path: Path) -> dict[str, str]:
    """msgid → msgstr of a compiled gettext catalog (.mo), plain messages only (no context, no plurals)."""
    with path.open("rb") as handle:
        catalog = gettext.GNUTranslations(handle)._catalog  # the parsed .mo table; gettext has no public accessor
    return {k: v for k, v in catalog.items() if isinstance(k, str) and k and "\x04" not in k and isinstance(v, str)}


def catalog_pairs(folder: Path) -> list[tuple[str, str, str]]:
    """(English, German, French) of every message translated in both languages, catalogs in CATALOGS order,
    unique by lower-cased English."""
    seen, pairs = set(), []
    for package, domain in CATALOGS:
        german, french = (read_catalog(folder / package / f"usr/share/locale/{lang}/LC_MESSAGES/{domain}.mo")
                          for lang in ("de", "fr"))
        for english, de in german.items():
            fr = french.get(english)
            if fr and de and english.lower() not in seen:
                seen.add(english.lower())
                pairs.append((english, de, fr))
    return pairs


def _one_line(text: str) -> bool:
    return "\n" not in text and "%" not in text and "\t" not in text


def is_short_message(english: str, german: str, french: str) -> bool:
    words = len(english.split())
    return (MESSAGE_WORDS[0] <= words <= MESSAGE_WORDS[1] and "%" not in english
            and ENGLISH_MESSAGE.match(english) is not None
            and all(_one_line(t) and len(t) <= MAX_TRANSLATION_CHARS and t != english for t in (german, french)))


def is_general_text(text: str) -> bool:
    return len(text.split()) >= GENERAL_MIN_WORDS and _one_line(text) and "  " not in text and len(text) <= 300


def country_names(folder: Path) -> list[tuple[str, str]]:
    """(English, French) of every ISO 3166-1 country, in the standard's order."""
    base = folder / "iso-codes"
    entries = json.loads((base / "usr/share/iso-codes/json/iso_3166-1.json").read_text(encoding="utf-8"))["3166-1"]
    french = read_catalog(base / "usr/share/locale/fr/LC_MESSAGES/iso_3166-1.mo")
    return [(e["name"], french[e["name"]]) for e in entries if e["name"] in french]


def number_words(number: int, language: str) -> str:
    from num2words import num2words

    return num2words(number, lang=language)


def _split(rows: list[tuple[str, str]], task: str, train: int, test: int, metric: str,
           keep_train: int, keep_test: int) -> list[CompletionRecord]:
    """The first `train` rows are the training pool, the next `test` the test pool; the first `keep_*` of each."""
    if len(rows) < train + test:
        raise UserError(f"polyglot: task {task} has {len(rows)} pairs, fewer than {train} + {test}; the pinned "
                        f"sources changed (run `perturbmerge data fetch polyglot-catalogs --force`)")
    chosen = [(r, "train") for r in rows[: min(train, keep_train)]] + \
             [(r, "test") for r in rows[train: train + min(test, keep_test)]]
    return [CompletionRecord(0, task, prompt, completion, split, metric) for (prompt, completion), split in chosen]


def build_records(folder: Path, train_per_task: int = TRAIN_PER_TASK,
                  test_per_task: int = TEST_PER_TASK) -> list[CompletionRecord]:
    """Every task's pairs and the general set, as JSONL-like records (line numbers count from 1). The samples are
    fixed; smaller `*_per_task` keep the first pairs of the same samples."""
    pairs = catalog_pairs(folder)
    rng = np.random.default_rng([SAMPLING_SEED, 0])
    short = [p for p in pairs if is_short_message(*p)]
    short = [short[i] for i in rng.permutation(len(short))]
    messages = {"de": [(e, d) for e, d, _ in short[: len(short) // 2]],
                "fr": [(e, f) for e, _, f in short[len(short) // 2:]]}
    countries = country_names(folder)
    countries = [countries[i] for i in rng.permutation(len(countries))]
    records: list[CompletionRecord] = []
    for index, (family, language) in enumerate(TASKS):
        name, target = f"{family}-{language}", LANGUAGE_NAMES[language]
        train, test = TRAIN_PER_TASK, TEST_PER_TASK
        if family == "words":
            task_rng = np.random.default_rng([SAMPLING_SEED, 1 + index])
            numbers = task_rng.choice(np.arange(NUMBER_RANGE[0], NUMBER_RANGE[1] + 1), size=train + test,
                                      replace=False)
            rows = [(f"Write the number {n} in {target} words.", number_words(int(n), language)) for n in numbers]
            metric = "exact_match"
        elif family == "messages":
            rows = [(f"Translate this software message into {target}: {english}", translation)
                    for english, translation in messages[language]]
            metric = "chrf"
        else:
            rows = [(f"What is the {target} name of the country {english}? Answer with the name only.", local)
                    for english, local in countries]
            train, metric = len(rows) - test, "exact_match"
        records += _split(rows, name, train, test, metric, train_per_task, test_per_task)
    order = rng.permutation(len(pairs))
    for column, language in enumerate(LANGUAGE_NAMES):  # 30 English texts, then 30 German, then 30 French
        texts = [pairs[i][column] for i in order[column::3]]  # each catalog message serves one language at most
        texts = [t for t in texts if is_general_text(t)][:GENERAL_PER_LANGUAGE]
        if len(texts) < GENERAL_PER_LANGUAGE:
            raise UserError(f"polyglot: only {len(texts)} general-set texts in {LANGUAGE_NAMES[language]}; the "
                            f"pinned sources changed (run `perturbmerge data fetch polyglot-catalogs --force`)")
        for text in texts:
            words = text.split()
            half = len(words) // 2
            records.append(CompletionRecord(0, "general", f"Continue this text: {' '.join(words[:half])}",
                                            " ".join(words[half:]), "general", None))
    return [CompletionRecord(i + 1, r.task, r.prompt, r.completion, r.split, r.metric) for i, r in enumerate(records)]


def load(request: LoadRequest) -> TaskStream:
    folder = require("polyglot-catalogs", data_dir=request.data_dir)[0]
    settings = request.data
    train = settings.train_per_task if settings.train_per_task is not None else TRAIN_PER_TASK
    test = settings.test_per_task if settings.test_per_task is not None else TEST_PER_TASK
    for key, value, cap in (("train_per_task", train, TRAIN_PER_TASK), ("test_per_task", test, TEST_PER_TASK)):
        if not 1 <= value <= cap:
            raise UserError(f"data.{key}={value}: polyglot has {cap} per task; use 1 to {cap}")
    records = build_records(folder, train, test)
    return completion_stream(records, "polyglot", request, "polyglot")


# The Fisher pass holds a training step's activations at its own batch, which for a causal LM grow with batch ×
# sequence length; at the generic 64 a whole run needs several times the memory (docs/performance.md), so the
# Fisher pass uses the training batch.
POLYGLOT_DEFAULTS = {"epochs": 3, "batch_size": 8, "lr": 2e-3, "eval_batch_size": 16, "fisher": {"batch_size": 8}}

SPEC = register_benchmark(BenchmarkSpec(
    name="polyglot",
    description="6 causal-LM tasks (number words en/de/fr, software messages to de/fr, country names to fr; "
                "Debian catalogs + num2words), SmolLM2-135M",
    scenario="task-incremental", backbone="smollm2", modality="completion", default_tasks=len(TASKS), load=load,
    defaults=POLYGLOT_DEFAULTS, sources=("polyglot-catalogs",),
    data_keys=frozenset({"train_per_task", "test_per_task"}),
))
