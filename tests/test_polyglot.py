"""The `polyglot` benchmark (issue 49) built from small hand-made gettext catalogs: the fixed samples, the splits,
the answers against their sources (num2words, the catalogs), the general set, and loading through a tiny Llama."""
from __future__ import annotations

import json
import re
import struct
from collections import Counter
from pathlib import Path

import pytest
from num2words import num2words

from helpers import save_tiny_llama
from perturbmerge.config import DataSettings
from perturbmerge.data import polyglot
from perturbmerge.data.base import LoadRequest
from perturbmerge.errors import UserError

WORDS = ["file", "disk", "key", "link", "node", "path", "port", "queue", "record", "socket", "table", "user",
         "group", "lock", "mode", "name", "page", "pipe", "shell", "stream", "tree", "value", "zone", "area",
         "block", "buffer", "cache", "device", "entry", "field"]


def write_mo(path: Path, messages: dict[str, str]) -> None:
    """A compiled gettext catalog (GNU .mo, little endian, no hash table) of `messages`, with the usual header."""
    messages = {"": "Content-Type: text/plain; charset=UTF-8\n", **messages}
    keys = sorted(messages)
    ids = [k.encode() for k in keys]
    strs = [messages[k].encode() for k in keys]
    count = len(keys)
    start = 28 + 16 * count
    table_ids, table_strs, blob = [], [], b""
    for data, table in [(d, table_ids) for d in ids] + [(d, table_strs) for d in strs]:
        table.append((len(data), start + len(blob)))
        blob += data + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, count, 28, 28 + 8 * count, 0, 0)
    tables = b"".join(struct.pack("<2I", *entry) for entry in table_ids + table_strs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + tables + blob)


def fake_catalogs(folder: Path) -> Path:
    """900 short messages and 200 long ones spread over the four catalogs, plus rejects; 120 countries."""
    short = [f"Cannot open {a} {b}" for a in WORDS for b in WORDS]
    long = [f"Process {i} could not read the {a} because the {a} is locked by another user"
            for i, a in enumerate(WORDS * 7)][:200]
    rejects = {"Cannot open %s": ("Kann %s nicht öffnen", "Impossible d'ouvrir %s"),
               "Same in German": ("Same in German", "Pareil en allemand"),
               "One two three four five six seven": ("Eins zwei drei vier fünf sechs sieben", "Un deux trois")}
    messages = {e: (f"Kann {e[12:]} nicht öffnen", f"Impossible d'ouvrir {e[12:]}") for e in short}
    messages.update({e: (f"Der Prozess {e.split()[1]} konnte die Datei nicht lesen weil sie gesperrt ist",
                         f"Le processus {e.split()[1]} n'a pas pu lire le fichier car il est verrouillé")
                     for e in long})
    messages.update(rejects)
    items = list(messages.items())
    for index, (package, domain) in enumerate(polyglot.CATALOGS):
        part = dict(items[index::len(polyglot.CATALOGS)])
        for column, lang in enumerate(("de", "fr")):
            write_mo(folder / package / f"usr/share/locale/{lang}/LC_MESSAGES/{domain}.mo",
                     {e: pair[column] for e, pair in part.items()})
    countries = [f"Land{chr(65 + i // 26)}{chr(97 + i % 26)}" for i in range(120)]
    base = folder / "iso-codes"
    (base / "usr/share/iso-codes/json").mkdir(parents=True)
    (base / "usr/share/iso-codes/json/iso_3166-1.json").write_text(json.dumps(
        {"3166-1": [{"alpha_2": "XX", "name": name} for name in countries]}))
    write_mo(base / "usr/share/locale/fr/LC_MESSAGES/iso_3166-1.mo", {n: f"Pays {n}" for n in countries})
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return fake_catalogs(tmp_path_factory.mktemp("catalogs"))


def by_task(records):
    tasks: dict[str, list] = {}
    for record in records:
        tasks.setdefault(record.task, []).append(record)
    return tasks


def test_the_written_catalogs_read_back(folder):
    german = {}
    for package, domain in polyglot.CATALOGS:
        german.update(polyglot.read_catalog(folder / package / f"usr/share/locale/de/LC_MESSAGES/{domain}.mo"))
    assert german["Cannot open file disk"] == "Kann file disk nicht öffnen" and "" not in german
    assert len(german) == 900 + 200 + 3


def test_tasks_splits_and_sizes(folder):
    records = polyglot.build_records(folder)
    counts = Counter((r.task, r.split) for r in records)
    names = list(dict.fromkeys(r.task for r in records))
    assert names == ["words-en", "messages-de", "words-de", "countries-fr", "messages-fr", "words-fr", "general"]
    for name in names[:-1]:
        assert counts[(name, "test")] == 100
        assert counts[(name, "train")] == (20 if name == "countries-fr" else 200)
    assert counts[("general", "general")] == 90
    assert [r.line for r in records] == list(range(1, len(records) + 1))
    for name, members in by_task(records).items():
        prompts = [r.prompt for r in members]
        assert len(set(prompts)) == len(prompts), f"{name} repeats a prompt (train and test must be disjoint)"


def test_answers_come_from_their_sources(folder):
    tasks = by_task(polyglot.build_records(folder))
    for language in ("en", "de", "fr"):
        for record in tasks[f"words-{language}"]:
            number = int(re.search(r"\d+", record.prompt).group())
            assert 1 <= number <= 999 and record.completion == num2words(number, lang=language)
            assert record.metric == "exact_match"
    english = {}
    for language, prefix in (("de", "Kann "), ("fr", "Impossible d'ouvrir ")):
        for record in tasks[f"messages-{language}"]:
            source = record.prompt.split(": ", 1)[1]
            assert record.completion.startswith(prefix) and source[12:] in record.completion
            assert record.metric == "chrf" and "%" not in source and len(source.split()) <= 6
            english.setdefault(language, set()).add(source)
    assert not english["de"] & english["fr"], "the German and French message tasks must not share a message"
    for record in tasks["countries-fr"]:
        name = re.search(r"country (\w+)\?", record.prompt).group(1)
        assert record.completion == f"Pays {name}"


def test_the_general_set_is_held_out_text_cut_in_half(folder):
    records = polyglot.build_records(folder)
    general = [r for r in records if r.split == "general"]
    task_text = {r.prompt for r in records if r.split != "general"} | {r.completion for r in records
                                                                        if r.split != "general"}
    starts = Counter(r.prompt.split(": ", 1)[1].split()[0] for r in general)
    assert starts == {"Process": 30, "Der": 30, "Le": 30}  # 30 English, 30 German, 30 French
    for record in general:
        text = record.prompt.split(": ", 1)[1] + " " + record.completion
        assert len(text.split()) >= polyglot.GENERAL_MIN_WORDS and text not in task_text
        assert record.prompt.startswith("Continue this text: ")


def test_the_samples_are_fixed_and_smaller_sizes_keep_their_first_pairs(folder):
    full, again = polyglot.build_records(folder), polyglot.build_records(folder)
    assert full == again
    cut = by_task(polyglot.build_records(folder, train_per_task=7, test_per_task=3))
    for name, members in by_task(full).items():
        if name == "general":
            continue
        for split, keep in (("train", 7), ("test", 3)):
            assert [r.prompt for r in cut[name] if r.split == split] == \
                   [r.prompt for r in members if r.split == split][:keep]


@pytest.mark.parametrize("english,german,french,kept", [
    ("Bad passphrase", "Falsches Passwort", "Mauvaise phrase", True),
    ("Cannot open %s", "Kann %s nicht öffnen", "Impossible d'ouvrir %s", False),
    ("Bad", "Schlecht", "Mauvais", False),  # one word
    ("Alarm clock", "Alarm clock", "Réveil", False),  # untranslated
    ("Protocol error", "Protokoll\nfehler", "Erreur", False),
    ("Protocol error", "Protokollfehler", "x" * 81, False),
])
def test_message_filter(english, german, french, kept):
    assert polyglot.is_short_message(english, german, french) is kept


def test_loading_through_a_tiny_llama_and_errors(folder, tmp_path, monkeypatch):
    save_tiny_llama(tmp_path / "model", context=256)
    monkeypatch.setattr(polyglot, "require", lambda *names, data_dir=None: [folder])
    request = LoadRequest(seed=0, num_tasks=3, data_dir=None, backbone=f"hf:{tmp_path / 'model'}",
                          data=DataSettings(train_per_task=5, test_per_task=4), progress=False)
    stream = polyglot.load(request)
    assert stream.kind == "causal_lm" and stream.scenario == "task-incremental"
    assert [t.class_names[0] for t in stream.tasks] == ["words-en", "messages-de", "words-de"]
    assert [(len(t.train), len(t.test)) for t in stream.tasks] == [(5, 4)] * 3
    assert [t.test.metric for t in stream.tasks] == ["exact_match", "chrf", "exact_match"]
    assert len(stream.reference) == 90
    with pytest.raises(UserError, match="data.train_per_task=201: polyglot has 200 per task"):
        polyglot.load(LoadRequest(0, 3, None, request.backbone, DataSettings(train_per_task=201), False))


def test_the_manifest_pins_every_file_the_benchmark_reads():
    manifest = json.loads((Path(polyglot.__file__).parent / "splits/polyglot-catalogs.json").read_text())
    pinned = {f"{p['package']}/{inner}" for p in manifest["packages"] for inner in p["files"]}
    needed = {f"{package}/usr/share/locale/{lang}/LC_MESSAGES/{domain}.mo"
              for package, domain in polyglot.CATALOGS for lang in ("de", "fr")}
    needed |= {"iso-codes/usr/share/iso-codes/json/iso_3166-1.json",
               "iso-codes/usr/share/locale/fr/LC_MESSAGES/iso_3166-1.mo"}
    assert needed <= pinned
    assert all(len(p["deb_sha256"]) == 64 for p in manifest["packages"])
