"""The final model of a run, exported: loads with plain transformers (no perturbmerge) in a fresh interpreter and
gives the run's own scores; `perturbmerge predict` ranks classes with it; save_model does not change results."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from perturbmerge.cli import main
from perturbmerge.errors import UserError
from perturbmerge.export import MANIFEST_FORMAT, ExportedClassifier
from perturbmerge.io import write_manifest
from perturbmerge.runner import resolve_config, run_experiment

from helpers import csv_rows, save_tiny_hf_encoder, write_csv

TEXTS = ["example 3 of class 1, words 3", "example 7 of class 2, words 14", "w1 w2 w3 of", "class 0"]

# Plain transformers + safetensors, as a user without perturbmerge would write it: mean pooling over the mask, the
# classifier rows, and for the ensemble the same on the pretrained backbone, combined in log space.
PLAIN = r"""
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer
folder, texts = sys.argv[1], json.loads(sys.argv[2])
card = json.load(open(f"{folder}/perturbmerge_model.json"))
head = load_file(f"{folder}/classifier.safetensors")
tokenizer = AutoTokenizer.from_pretrained(f"{folder}/backbone")
batch = tokenizer(texts, truncation=True, max_length=card["max_tokens"], padding=True, return_tensors="pt")
def features(name):
    model = AutoModel.from_pretrained(f"{folder}/{name}").eval()
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)
scores = features("backbone") @ head["weight"].T + head["bias"]
if card["ensemble_weight"] > 0:
    reference = features("pretrained") @ head["pretrained.weight"].T + head["pretrained.bias"]
    scores = scores.log_softmax(-1) + card["ensemble_weight"] * reference.log_softmax(-1)
print(json.dumps({"scores": scores.tolist(), "classes": card["classes"], "modules": sorted(sys.modules)}))
"""


def _run(tmp_path, method: str, save_model: bool, name: str, sets: tuple[str, ...] = ()):
    """A 2-task run on a CSV of texts with a tiny local BERT; also returns the run's own scores of TEXTS."""
    if not (tmp_path / "enc").exists():
        save_tiny_hf_encoder(tmp_path / "enc")
        write_csv(tmp_path / "data.csv", csv_rows(classes=4, per_class=16))
    config, _ = resolve_config({"benchmark": f"csv:{tmp_path / 'data.csv'}", "method": method, "seed": 0,
                                "tasks": 2}, sets=["epochs=2", f"backbone=hf:{tmp_path / 'enc'}",
                                                   f"save_model={str(save_model).lower()}", *sets])
    seen = {}

    def capture(event, learner, info):
        if event == "evaluated" and info["task"] == 1:
            from perturbmerge.backbones import load_tokenizer

            tokenizer = load_tokenizer(f"hf:{tmp_path / 'enc'}")
            batch = dict(tokenizer(TEXTS, truncation=True, max_length=128, padding=True, return_tensors="pt"))
            with torch.no_grad(), learner.deployed_weights():
                seen["scores"] = learner.model.eval()(batch)

    results = run_experiment(config, tmp_path / name, progress=False, callbacks=[capture])
    return results, seen.get("scores")


@pytest.mark.parametrize("ensemble", [False, True])
def test_exported_model_loads_with_plain_transformers_and_gives_the_runs_scores(tmp_path, ensemble):
    """pm-lora's linear head, and the LDA head in the log-linear ensemble with the pretrained backbone's."""
    sets = ("head.kind=lda", "head.frozen_weight=0.5") if ensemble else ()
    results, scores = _run(tmp_path, "pm-lora", True, "run", sets)
    assert results["model_dir"] == str(tmp_path / "run" / "model")
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "exported")]) == 0
    out = subprocess.run([sys.executable, "-c", PLAIN, str(tmp_path / "exported"), json.dumps(TEXTS)],
                         capture_output=True, text=True, check=True)
    plain = json.loads(out.stdout)
    assert not any(m == "perturbmerge" or m.startswith("perturbmerge.") for m in plain["modules"])
    assert plain["classes"] == [n for names in results["classes_per_task"] for n in names]
    assert torch.allclose(torch.tensor(plain["scores"]), scores, rtol=1e-4, atol=1e-4), (plain["scores"], scores)
    card = json.loads((tmp_path / "exported" / "perturbmerge_model.json").read_text())
    assert card["ensemble_weight"] == (0.5 if ensemble else 0.0)
    assert (tmp_path / "exported" / "pretrained").is_dir() == ensemble
    loaded = ExportedClassifier(tmp_path / "exported")  # perturbmerge's own loader agrees too
    assert torch.allclose(loaded.scores(loaded.tokenize(TEXTS)), scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["pm-lora-ranpac", "pm-lora-fecam"])
def test_statistics_heads_export_with_the_runs_scores(tmp_path, method):
    """RanPAC's and FeCAM's heads (no linear rows) are written with their tensors and scored as the run did."""
    results, scores = _run(tmp_path, method, True, "run")
    loaded = ExportedClassifier(tmp_path / "run" / "model")
    assert loaded.card["head"] == method.removeprefix("pm-lora-")
    assert torch.allclose(loaded.scores(loaded.tokenize(TEXTS)), scores, rtol=1e-4, atol=1e-4)


def test_save_model_does_not_change_results(tmp_path):
    with_model, _ = _run(tmp_path, "pm-lora", True, "a")
    without, _ = _run(tmp_path, "pm-lora", False, "b")
    assert with_model["accuracy_matrix"] == without["accuracy_matrix"] and with_model["alphas"] == without["alphas"]
    assert [t["train_loss_last_epoch"] for t in with_model["task_logs"]] == \
        [t["train_loss_last_epoch"] for t in without["task_logs"]]
    assert not (tmp_path / "b" / "model").exists() and "model_dir" not in without


def test_predict_ranks_classes_from_text_and_csv(tmp_path, capsys):
    results, scores = _run(tmp_path, "pm-lora", True, "run")
    model = tmp_path / "run" / "model"
    classes = [n for names in results["classes_per_task"] for n in names]
    argv = ["predict", "--model", str(model), "--top-k", "2"] + [a for t in TEXTS[:2] for a in ("--text", t)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, text, row in zip(lines, TEXTS, scores):
        shown_text, ranked = line.split("\t")
        assert shown_text == text and ranked.split(" ")[0] == classes[int(row.argmax())]
        probabilities = [float(part.rsplit(" ", 1)[1]) for part in ranked.split(", ")]
        assert len(probabilities) == 2 and probabilities[0] >= probabilities[1]
        assert probabilities[0] == pytest.approx(float(row.softmax(-1).max()), abs=5e-4)
    csv_file = tmp_path / "texts.csv"
    csv_file.write_text("sentence\n" + "\n".join(f'"{t}"' for t in TEXTS) + "\n", encoding="utf-8")
    assert main(["predict", "--model", str(model), "--csv", str(csv_file), "--column", "sentence", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["text"] for r in shown] == TEXTS
    assert [r["top"][0]["class"] for r in shown] == [classes[int(i)] for i in scores.argmax(-1)]
    assert all(len(r["top"]) == 3 for r in shown)


def test_export_and_predict_bad_input(tmp_path, capsys):
    _run(tmp_path, "seq-lora", False, "plain")
    cases = [
        (["export", "--run", str(tmp_path / "plain"), "--out", str(tmp_path / "x")], "--set save_model=true"),
        (["export", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")], "not a finished run"),
        (["predict", "--model", str(tmp_path / "plain"), "--text", "a"], "perturbmerge_model.json"),
    ]
    _run(tmp_path, "seq-lora", True, "kept")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    cases += [
        (["export", "--run", str(tmp_path / "kept"), "--out", str(tmp_path / "full")], "not empty"),
        (["predict", "--model", str(tmp_path / "kept" / "model")], "nothing to predict"),
        (["predict", "--model", str(tmp_path / "kept" / "model"), "--text", "a", "--top-k", "0"], "--top-k"),
        (["predict", "--model", str(tmp_path / "kept" / "model"), "--csv", str(tmp_path / "none.csv")], "cannot read"),
    ]
    capsys.readouterr()  # (the runs' own progress output)
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "x").exists() and (tmp_path / "full" / "f").read_text() == "x"
    card = tmp_path / "kept" / "model" / "perturbmerge_model.json"
    original = card.read_text()
    card.write_text(json.dumps({**json.loads(original), "format": 99}))  # an edit the manifest does not know
    assert main(["predict", "--model", str(tmp_path / "kept" / "model"), "--text", "a"]) == 2
    err = capsys.readouterr().err
    assert "perturbmerge_model.json fails its integrity check" in err and len(err.strip().splitlines()) == 1
    write_manifest(tmp_path / "kept" / "model", MANIFEST_FORMAT)  # as a later version would write it
    assert main(["predict", "--model", str(tmp_path / "kept" / "model"), "--text", "a"]) == 2
    assert "format 99" in capsys.readouterr().err


def test_a_flipped_bit_in_an_exported_model_is_refused_in_one_line(tmp_path, capsys):
    _run(tmp_path, "seq-lora", True, "kept")
    model = tmp_path / "kept" / "model"
    tensors = model / "classifier.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-3] ^= 0x04  # inside the tensor data: safetensors itself would load it silently
    tensors.write_bytes(bytes(data))
    capsys.readouterr()
    for argv in (["predict", "--model", str(model), "--text", "a"],
                 ["export", "--run", str(tmp_path / "kept"), "--out", str(tmp_path / "copy")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "classifier.safetensors fails its integrity check" in err and len(err.strip().splitlines()) == 1
        assert "export the model again" in err
    assert not (tmp_path / "copy").exists()
    with pytest.raises(UserError, match="integrity check"):
        ExportedClassifier(model)


def test_image_model_predicts_files_with_the_runs_scores(tmp_path, capsys):
    """folder: benchmark on EfficientNet-Lite0 (frozen prefix cached during the run): the exported model rebuilds
    prefix + merged tail and scores image files as the run's final model does; `predict --folder/--image`."""
    from perturbmerge.backbones import build_backbone
    from perturbmerge.data.custom import decode_image

    from test_own_data import make_image_folder

    make_image_folder(tmp_path / "imgs", classes=4, per_class=6)
    files = sorted((tmp_path / "imgs").rglob("*.png"))[:3]
    pixels = torch.stack([torch.from_numpy(decode_image(p, 64)) for p in files])
    prefix = build_backbone("efficientnet-lite0", 0).frozen_prefix
    seen = {}

    def capture(event, learner, info):
        if event == "evaluated" and info["task"] == 1:
            with torch.no_grad(), learner.deployed_weights():
                seen["scores"] = learner.model.eval()(prefix(pixels))

    config, _ = resolve_config({"benchmark": f"folder:{tmp_path / 'imgs'}", "method": "pm-lora", "tasks": 2},
                               sets=["epochs=1", "save_model=true"])
    results = run_experiment(config, tmp_path / "run", progress=False, callbacks=[capture])
    model = ExportedClassifier(tmp_path / "run" / "model")
    torch.testing.assert_close(model.scores(model.images(files)), seen["scores"], rtol=1e-4, atol=1e-4)
    classes = [n for names in results["classes_per_task"] for n in names]
    assert main(["predict", "--model", str(tmp_path / "run" / "model"), "--folder", str(tmp_path / "imgs"),
                 "--json", "--top-k", "1"]) == 0
    shown = {r["image"]: r["top"][0]["class"] for r in json.loads(capsys.readouterr().out)}
    assert len(shown) == 24 and all(shown[str(p)] == classes[int(i)] for p, i in zip(files, seen["scores"].argmax(-1)))
    assert main(["predict", "--model", str(tmp_path / "run" / "model"), "--image", str(files[0])]) == 0
    assert capsys.readouterr().out.startswith(f"{files[0]}\t{classes[int(seen['scores'][0].argmax())]} ")
    assert main(["predict", "--model", str(tmp_path / "run" / "model"), "--text", "a text"]) == 2
    assert "this model takes image inputs; give --image/--folder" in capsys.readouterr().err
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not an image")
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    for argv, message in ((["--image", str(tmp_path / "missing.png")], "is not a file"),
                          (["--image", str(tmp_path / "broken.png")], "broken.png' cannot be decoded"),
                          (["--folder", str(tmp_path / "empty")], "holds no images"),
                          (["--folder", str(files[0])], "is not a folder")):
        assert main(["predict", "--model", str(tmp_path / "run" / "model"), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
