"""The benchmarks built to test P&M's premise (`glyphs`, `langid`) and the pinned multi-package Debian source they
fetch through: manifests well-formed, fetch verified and atomic, rendering and sampling deterministic and as
documented. Real downloads are marked slow."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from perturbmerge.data import get_benchmark
from perturbmerge.data import fetch as fetch_module
from perturbmerge.data import glyphs, langid
from perturbmerge.data.base import LoadRequest
from perturbmerge.config import DataSettings
from perturbmerge.errors import UserError

SPLITS = Path(fetch_module.__file__).parent / "splits"


@pytest.mark.parametrize("manifest, count", [("glyph-fonts.json", 630), ("langid-words.json", 21)])
def test_manifests_pin_every_package_and_file(manifest, count):
    packages = json.loads((SPLITS / manifest).read_text())["packages"]
    files = [digest for p in packages for digest in p["files"].values()]
    assert len(files) == count and len(set(files)) == count  # no file twice
    for entry in packages:
        assert entry["package"] and entry["version"] and len(entry["deb_sha256"]) == 64
        assert all(len(d) == 64 and int(d, 16) >= 0 for d in entry["files"].values())


def test_every_language_file_is_in_the_manifest():
    installed = fetch_module.SOURCES["langid-words"].installed_files()
    assert set(langid.LANGUAGES.values()) <= set(installed) and len(langid.LANGUAGES) == 20


def _fake_bundle(tmp_path, monkeypatch, content=b"hello"):
    """A one-package bundle whose 'apt-get download' and 'dpkg -x' are simulated."""
    deb = b"fake deb bytes"
    entry = {"package": "fonts-x", "version": "1.0", "deb_sha256": hashlib.sha256(deb).hexdigest(),
             "files": {"usr/share/x/a.ttf": hashlib.sha256(b"hello").hexdigest()}}
    calls = []

    def fake_run(command, cwd, message):
        calls.append(command[:2])
        if command[0] == "apt-get":
            (cwd / "fonts-x_1.0_all.deb").write_bytes(deb)
        else:  # dpkg -x DEB ROOT
            target = Path(command[3]) / "usr/share/x"
            target.mkdir(parents=True)
            (target / "a.ttf").write_bytes(content)

    monkeypatch.setattr(fetch_module, "_run", fake_run)
    source = fetch_module.DebianBundleSource("bundle", "1 package", "test", "", manifest="none.json")
    monkeypatch.setattr(fetch_module.DebianBundleSource, "packages", lambda self: [entry])
    monkeypatch.setitem(fetch_module.SOURCES, "bundle", source)
    return source, calls


def test_bundle_fetch_installs_verified_files_per_package(tmp_path, monkeypatch):
    source, calls = _fake_bundle(tmp_path, monkeypatch)
    folder = fetch_module.fetch("bundle", tmp_path)
    assert (folder / "fonts-x" / "usr/share/x/a.ttf").read_bytes() == b"hello"
    assert calls == [["apt-get", "download"], ["dpkg", "-x"]]
    recorded = json.loads((folder / "SOURCE.json").read_text())["files"]
    assert recorded == {"fonts-x/usr/share/x/a.ttf": hashlib.sha256(b"hello").hexdigest()}
    assert fetch_module.require("bundle", data_dir=tmp_path) == [folder]
    (folder / "fonts-x" / "usr/share/x/a.ttf").write_bytes(b"tampered")
    with pytest.raises(UserError, match="checksum mismatch"):
        fetch_module.require("bundle", data_dir=tmp_path)


def test_bundle_fetch_with_a_wrong_file_leaves_nothing(tmp_path, monkeypatch):
    _fake_bundle(tmp_path, monkeypatch, content=b"not the pinned bytes")
    with pytest.raises(UserError, match="checksum mismatch for usr/share/x/a.ttf"):
        fetch_module.fetch("bundle", tmp_path)
    assert list(tmp_path.iterdir()) == []  # the staging folder is removed


def _dejavu() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"


def test_glyph_rendering_is_seeded_and_keeps_case_on_a_baseline():
    a = glyphs.render_font(_dejavu(), np.random.RandomState(0))
    b = glyphs.render_font(_dejavu(), np.random.RandomState(0))
    assert a.shape == (62, 32, 32) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, glyphs.render_font(_dejavu(), np.random.RandomState(1)))
    assert (a.reshape(62, -1).max(1) > 200).all()  # every glyph drawn

    def ink_rows(glyph):
        rows = np.flatnonzero(a[glyphs.GLYPHS.index(glyph)].max(1) > 100)
        return rows.min(), rows.max()

    top_upper, bottom_upper = ink_rows("O")
    top_lower, bottom_lower = ink_rows("o")
    assert bottom_upper - top_upper > bottom_lower - top_lower + 3  # 'O' is taller than 'o': case stays visible
    assert abs(bottom_upper - bottom_lower) <= 3  # both sit on the baseline
    assert abs(bottom_upper - glyphs.BASELINE) <= 3 and 14 <= bottom_upper - top_upper <= 23  # cap height ≈ 18 px


def test_glyph_fonts_split_about_one_in_five_for_test():
    digests = [d for _, d in glyphs._fonts(Path("/nonexistent"))]
    share = sum(glyphs.is_test_font(d) for d in digests) / len(digests)
    assert 0.15 < share < 0.25


def test_glyphs_load_from_rendered_fonts(tmp_path, monkeypatch):
    """The loader over a stand-in folder of two matplotlib fonts (one train, one test font): 10 tasks, every glyph
    once per font, labels = head positions, train and test from different fonts; rendered once, then cached."""
    fonts = [(_dejavu(), "00000000" + "0" * 56), (_dejavu().with_name("DejaVuSerif.ttf"), "00000001" + "0" * 56)]
    monkeypatch.setattr(glyphs, "_fonts", lambda folder: fonts)
    monkeypatch.setattr(glyphs, "require", lambda *names, data_dir=None: [tmp_path])
    glyphs.rendered_glyphs.cache_clear()
    request = LoadRequest(0, 10, None, "efficientnet-lite0", DataSettings(), False)
    stream = get_benchmark("glyphs").load(request)
    assert len(stream.tasks) == 10 and sum(t.num_classes for t in stream.tasks) == 62
    assert stream.info == {"train_fonts": 1, "test_fonts": 1}
    for task in stream.tasks:
        labels = task.train.tensors[1]
        assert sorted(labels.tolist()) == list(range(task.label_offset, task.label_offset + task.num_classes))
    assert len(list(tmp_path.glob("rendered-v*.npz"))) == 1
    glyphs.rendered_glyphs.cache_clear()
    again = get_benchmark("glyphs").load(request)  # from the cache file
    assert all(np.array_equal(a.train.tensors[0], b.train.tensors[0]) for a, b in zip(stream.tasks, again.tasks))
    glyphs.rendered_glyphs.cache_clear()


def test_tokenizer_form_lowercases_and_strips_accents():
    assert langid.tokenizer_form("Ærøskøbing") == "ærøskøbing"  # ø and æ are letters, not accented
    assert langid.tokenizer_form("Café") == "cafe" == langid.tokenizer_form("cafe")


def test_langid_sampling_drops_shared_words_and_is_disjoint(tmp_path, monkeypatch):
    rng = np.random.RandomState(5)
    letters = {"A": "abcde", "B": "fghij", "C": "klmno"}
    shared = ["shared", "Café"]
    languages = {}
    for name, alphabet in letters.items():
        words = {"".join(rng.choice(list(alphabet), 6)) for _ in range(400)}
        path = tmp_path / f"{name}.txt"
        extra = ["x1y", "ab", "it's", "cafe" if name == "B" else "Café"]  # non-alphabetic, too short, shared
        path.write_text("\n".join(sorted(words) + shared + extra) + "\n", encoding="utf-8")
        languages[name] = path.name
    monkeypatch.setattr(langid, "LANGUAGES", languages)
    monkeypatch.setattr(langid, "TRAIN_PER_CLASS", 50)
    monkeypatch.setattr(langid, "TEST_PER_CLASS", 20)
    langid.sampled_words.cache_clear()
    names, train, test = langid.sampled_words(str(tmp_path))
    assert names == ["A", "B", "C"]
    for words_train, words_test, alphabet in zip(train, test, letters.values()):
        assert len(words_train) == 50 and len(words_test) == 20 and not set(words_train) & set(words_test)
        assert all(set(w) <= set(alphabet) for w in words_train + words_test)  # shared and malformed words dropped
    langid.sampled_words.cache_clear()
    assert langid.sampled_words(str(tmp_path)) == (names, train, test)
    monkeypatch.setattr(langid, "TRAIN_PER_CLASS", 10_000)
    langid.sampled_words.cache_clear()
    with pytest.raises(UserError, match="usable words"):
        langid.sampled_words(str(tmp_path))
    langid.sampled_words.cache_clear()


@pytest.mark.slow
def test_langid_fetch_and_load(tmp_path):
    """Real download through apt (20 word lists, about 23 MB)."""
    fetch_module.fetch("langid-words", tmp_path)
    langid.sampled_words.cache_clear()
    stream = get_benchmark("langid").load(LoadRequest(0, 10, str(tmp_path), "minilm", DataSettings(), False))
    assert [t.num_classes for t in stream.tasks] == [2] * 10
    assert all(len(t.train) == 2000 and len(t.test) == 600 for t in stream.tasks)
    small = get_benchmark("langid").load(LoadRequest(0, 5, str(tmp_path), "minilm", DataSettings(train_per_class=150),
                                                     False))
    assert all(len(t.train) == 600 and len(t.test) == 1200 for t in small.tasks)  # 4 languages x 150, test unchanged
    smaller = get_benchmark("langid").load(LoadRequest(0, 5, str(tmp_path), "minilm",
                                                       DataSettings(train_per_class=150, test_per_class=40), False))
    assert all(len(t.train) == 600 and len(t.test) == 160 for t in smaller.tasks)  # 4 languages x 40
    assert [t.test.ids for t in smaller.tasks] == [
        [ids for c in range(4) for ids in t.test.ids[300 * c: 300 * c + 40]] for t in small.tasks]  # the first 40
    with pytest.raises(UserError, match="more than the 300 test words"):
        get_benchmark("langid").load(LoadRequest(0, 5, str(tmp_path), "minilm", DataSettings(test_per_class=301),
                                                 False))
    with pytest.raises(UserError, match="more than the 1000 training words"):
        get_benchmark("langid").load(LoadRequest(0, 5, str(tmp_path), "minilm", DataSettings(train_per_class=1001),
                                                 False))


@pytest.mark.slow
def test_glyph_fonts_fetch(tmp_path):
    """Real download through apt (71 font packages, about 90 MB)."""
    folder = fetch_module.fetch("glyph-fonts", tmp_path)
    assert len(list(folder.rglob("*.[ot]tf"))) == 630


def test_tokenizer_form_ascii_shortcut_equals_the_definition():
    """The ASCII shortcut gives what NFD + dropping marks gives, for ASCII and for accented words alike."""
    import unicodedata

    def definition(word):
        return "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")

    for word in ["Haus", "ZEBRA", "Straße", "Ærø", "Éclair", "naïve", "Łódź", "київ", "Ṁaċ", "İstanbul", "ǅemal"]:
        assert langid.tokenizer_form(word) == definition(word), word


def test_langid_sample_cache_is_used_keyed_and_rewritten(tmp_path, monkeypatch):
    """The sample is written once and read back equal; a corrupt cache is re-sampled; another rule is another file."""
    rng = np.random.RandomState(1)
    languages = {}
    for name, alphabet in {"A": "abcde", "B": "fghij"}.items():
        words = {"".join(rng.choice(list(alphabet), 6)) for _ in range(200)}
        (tmp_path / f"{name}.txt").write_text("\n".join(sorted(words)) + "\n", encoding="utf-8")
        languages[name] = f"{name}.txt"
    monkeypatch.setattr(langid, "LANGUAGES", languages)
    monkeypatch.setattr(langid, "TRAIN_PER_CLASS", 30)
    monkeypatch.setattr(langid, "TEST_PER_CLASS", 10)
    langid.sampled_words.cache_clear()
    first = langid.sampled_words(str(tmp_path))
    cache = langid.sample_cache_path(tmp_path)
    assert cache.is_file() and list(tmp_path.glob("sample-v*.json")) == [cache]
    calls = []
    monkeypatch.setattr(langid, "_sample_words", lambda folder: calls.append(folder) or first)
    langid.sampled_words.cache_clear()
    assert langid.sampled_words(str(tmp_path)) == first and calls == []  # read from disk, not sampled
    cache.write_text("{not json", encoding="utf-8")
    langid.sampled_words.cache_clear()
    assert langid.sampled_words(str(tmp_path)) == first and len(calls) == 1  # corrupt: sampled again, rewritten
    assert json.loads(cache.read_text(encoding="utf-8"))["train"] == first[1]
    monkeypatch.setattr(langid, "TRAIN_PER_CLASS", 20)
    assert langid.sample_cache_path(tmp_path) != cache  # another rule, another file
    langid.sampled_words.cache_clear()


def test_langid_shipped_line_numbers_give_the_sample_without_reading_every_word(tmp_path, monkeypatch):
    rng = np.random.RandomState(2)
    languages = {}
    for name, alphabet in {"A": "abcde", "B": "fghij", "C": "abfgk"}.items():  # C shares forms with A and B
        words = sorted({"".join(rng.choice(list(alphabet), 5)) for _ in range(300)})
        (tmp_path / f"{name}.txt").write_text("\n".join(["x1", *words, "Zz"]) + "\n", encoding="utf-8")
        languages[name] = f"{name}.txt"
    monkeypatch.setattr(langid, "LANGUAGES", languages)
    monkeypatch.setattr(langid, "TRAIN_PER_CLASS", 40)
    monkeypatch.setattr(langid, "TEST_PER_CLASS", 15)
    index = tmp_path / "index.json"
    monkeypatch.setattr(langid, "SAMPLE_INDEX", index)
    expected = langid._sample_words(str(tmp_path))
    langid.write_sample_index(str(tmp_path), index)
    shipped = json.loads(index.read_text(encoding="utf-8"))
    assert shipped["key"] == langid.sample_key() and sorted(shipped["lines"]) == ["A", "B", "C"]
    monkeypatch.setattr(langid, "_sample_words", lambda folder: pytest.fail("read every word"))
    langid.sampled_words.cache_clear()
    assert langid.sampled_words(str(tmp_path)) == expected  # from the line numbers, then cached on disk
    assert json.loads(langid.sample_cache_path(tmp_path).read_text(encoding="utf-8"))["train"] == expected[1]
    monkeypatch.setattr(langid, "TEST_PER_CLASS", 14)  # another rule: the shipped numbers do not apply
    assert langid._indexed_sample(str(tmp_path)) is None
    monkeypatch.setattr(langid, "TEST_PER_CLASS", 15)
    (tmp_path / "B.txt").write_text("zzz\n" * 400, encoding="utf-8")  # a list that does not match them
    with pytest.raises(UserError, match="does not match the B word list"):
        langid._indexed_sample(str(tmp_path))
    langid.sampled_words.cache_clear()
