"""Every user-facing bad input: exit code 2, one line on stderr naming the problem (and the fix), and no file
left behind. One table; each row is (id, what the user types — built by a setup function — and the message)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from perturbmerge.cli import main

from test_own_data import make_image_folder

Setup = Callable[[Path], list[str]]


def flags(*argv: str) -> Setup:
    return lambda tmp: list(argv)


def csv_file(content: str, *argv: str) -> Setup:
    def setup(tmp: Path) -> list[str]:
        (tmp / "data.csv").write_text(content)
        return ["--benchmark", f"csv:{tmp / 'data.csv'}", *argv]
    return setup


def image_folder(mutate: Callable[[Path], None], *argv: str) -> Setup:
    def setup(tmp: Path) -> list[str]:
        make_image_folder(tmp / "imgs", classes=2, per_class=3)
        mutate(tmp / "imgs")
        return ["--benchmark", f"folder:{tmp / 'imgs'}", "--tasks", "2", *argv]
    return setup


def link_outside(root: Path) -> None:
    (root.parent / "secret.png").write_bytes((root / "kind0" / "1.png").read_bytes())
    (root / "kind0" / "escape.png").symlink_to(root.parent / "secret.png")


def out_under_a_file(tmp: Path) -> list[str]:
    (tmp / "a-file").write_text("x")
    return ["--out", str(tmp / "a-file" / "run")]


def out_is_a_file(tmp: Path) -> list[str]:
    (tmp / "taken").write_text("x")
    return ["--out", str(tmp / "taken")]


def write_file(name: str, content: bytes, *argv: str) -> Setup:
    """A file `name` in the test folder; `{}` in argv becomes its path."""
    def setup(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(content)
        return [a.replace("{}", str(tmp / name)) for a in argv]
    return setup


def png_bomb(root: Path) -> None:
    """A valid PNG whose header claims 20000 × 20000 pixels (Pillow refuses it as a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    (root / "kind0" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                              + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def pickle_only_model(tmp: Path) -> list[str]:
    (tmp / "enc").mkdir()
    (tmp / "enc" / "config.json").write_text('{"model_type": "bert"}')
    (tmp / "enc" / "pytorch_model.bin").write_bytes(b"a pickle would be here")
    return ["--set", f"backbone=hf:{tmp / 'enc'}"]


TWO_CLASSES = "text,label\na,x\nb,x\nc,y\nd,y\n"

BAD_INPUTS: list[tuple[str, Setup, str]] = [
    # numbers out of range
    ("epsilon", flags("--set", "epsilon=-1"), "epsilon must be a finite number >= 0"),
    ("p0", flags("--set", "p0=1.5"), "p0 must be in [0, 1]"),
    ("rank", flags("--set", "lora.rank=0"), "lora.rank must be >= 1"),
    ("lr-zero", flags("--set", "lr=0"), "lr must be a positive number"),
    ("lr-text", flags("--set", "lr=abc"), "lr must be float"),
    ("epochs", flags("--set", "epochs=0"), "epochs must be >= 1"),
    ("batch-size", flags("--set", "batch_size=-2"), "batch_size must be >= 1"),
    ("tasks-zero", flags("--tasks", "0"), "tasks must be >= 1"),
    ("fisher-samples", flags("--set", "fisher.max_samples=0"), "fisher.max_samples must be >= 1"),
    ("validation-fraction", flags("--set", "data.validation_fraction=1.5"), "data.validation_fraction must be in [0, 1)"),
    ("checkpoint-steps", flags("--set", "checkpoint.every_steps=-1"), "checkpoint.every_steps must be >= 0"),
    ("precision", flags("--set", "precision=fp16"), "precision must be one of fp32, bf16, got 'fp16'"),
    ("grad-accumulation", flags("--set", "grad_accumulation=0"), "grad_accumulation must be in [1, batch_size="),
    ("fisher-kind", flags("--set", "fisher.kind=true-ish"), "fisher.kind must be one of empirical, sampled, got 'true-ish'"),
    ("fisher-normalise", flags("--set", "fisher.normalise=count"), "fisher.normalise must be one of none, trace, got 'count'"),
    ("module-alpha-rule", flags("--set", "alpha_granularity=module", "alpha_rule=average"),
     "alpha_granularity=module needs alpha_rule closed_form or simplified"),
    ("head-kind", flags("--set", "head.kind=cosine"), "head.kind must be one of linear, prototype, lda"),
    ("head-shrinkage", flags("--set", "head.kind=lda", "head.shrinkage=1.5"), "head.shrinkage must be in [0, 1]"),
    ("anchor-on-seq", flags("--method", "seq-lora", "--set", "anchor_pretrained=true"),
     "method 'seq-lora' does not use anchor_pretrained"),
    ("drift-without-lda", flags("--set", "head.drift=sdc"), "head.drift=sdc needs head.kind=lda"),
    ("train-logits", flags("--set", "head.train_logits=all"), "head.train_logits must be one of task, seen, got 'all'"),
    ("frozen-weight-negative", flags("--set", "head.kind=lda", "head.frozen_weight=-1"),
     "head.frozen_weight must be >= 0"),
    ("frozen-weight-without-lda", flags("--set", "head.frozen_weight=1"), "head.frozen_weight needs head.kind=lda"),
    ("drift-ridge-zero", flags("--set", "head.kind=lda", "head.drift=linear", "head.drift_ridge=0"),
     "head.drift_ridge must be > 0"),
    ("simplecil-linear-head", flags("--method", "simplecil", "--set", "head.kind=linear"),
     "a frozen-backbone method's head is prototype, lda, ranpac or fecam, got head.kind=linear"),
    ("drift-on-ewc", flags("--method", "ewc-lora", "--set", "head.drift_ridge=2"),
     "method 'ewc-lora' does not use head.drift_ridge"),
    ("set-syntax", flags("--set", "epochs"), "--set expects key=value"),
    # issue 51, "not yet tried": each gives one line now
    ("set-empty-key", flags("--set", "=3"), "--set '=3' has an empty key;"),
    ("set-empty-key-part", flags("--set", "lora..rank=4"), "--set 'lora..rank=4' has an empty key part"),
    ("batch-size-huge", flags("--set", "batch_size=1e12"), "batch_size must be <= 1,048,576"),
    ("every-steps-fraction", flags("--set", "checkpoint.every_steps=2.5"), "checkpoint.every_steps must be int, got 2.5"),
    ("method-trailing-space", flags("--method", "seq-lora "), "unknown method 'seq-lora ' (did you mean 'seq-lora'?)"),
    ("class-order-builtin", flags("--set", "data.class_order=0,1"), "benchmark 'digits' does not use data.class_order"),
    ("csv-unclosed-quote", csv_file('text,label\nok,a\n"hello,a\nworld,b\n'),
     "the record starting on line 3 opens a quote that is never closed"),
    ("csv-stray-quote", csv_file('text,label\n"a"b,c\n'), "malformed at the record starting on line 2"),
    # unknown names, with the closest one suggested
    ("method", flags("--method", "pm-lroa"), "unknown method 'pm-lroa' (did you mean 'pm-lora'?)"),
    ("benchmark", flags("--benchmark", "digit"), "unknown benchmark 'digit' (did you mean 'digits'?)"),
    ("backbone", flags("--set", "backbone=resnet"), "unknown backbone 'resnet'"),
    ("config-key", flags("--set", "epslion=0.3"), "unknown config key 'epslion' (did you mean 'epsilon'?)"),
    ("nested-key", flags("--set", "lora.rnak=4"), "did you mean 'lora.rank'"),
    ("alpha-rule", flags("--set", "alpha_rule=closedform"), "did you mean 'closed_form'"),
    # keys and parts that do not fit together
    ("key-not-used", flags("--method", "seq-lora", "--set", "epsilon=0.3"), "method 'seq-lora' does not use epsilon"),
    ("lora-key-full", flags("--method", "pm-full", "--set", "lora.rank=4"), "does not use lora.rank"),
    ("lora-target", flags("--set", "lora.targets=nope"), "match no Linear/Conv module of the backbone; available: "),
    ("modality", flags("--set", "backbone=minilm"), "takes text inputs but benchmark 'digits' gives vector"),
    ("data-key", flags("--set", "data.test_fraction=0.3"), "benchmark 'digits' does not use data.test_fraction"),
    ("hf-path", flags("--set", "backbone=hf:/nonexistent"), "has no config.json"),
    ("too-many-tasks", flags("--tasks", "11"), "11 tasks need at least 11 classes"),
    # files and folders
    ("config-missing", flags("--config", "/nonexistent.yaml"), "config file '/nonexistent.yaml' not found"),
    ("data-missing", flags("--benchmark", "wordnet", "--data-dir", "/nonexistent/data"),
     "perturbmerge data fetch wordnet"),
    ("data-and-weights-missing", flags("--benchmark", "polyglot", "--data-dir", "/nonexistent/data"),
     "fetch with `perturbmerge data fetch polyglot-catalogs --data-dir /nonexistent/data`"),
    ("csv-path", flags("--benchmark", "csv:"), "needs a path"),
    ("csv-missing", flags("--benchmark", "csv:/nonexistent.csv"), "not found"),
    ("csv-columns", csv_file("text,category\na,b\n"), "needs a header with columns text,label"),
    ("csv-one-example", csv_file("text,label\na,x\nb,x\nc,y\n"), "class 'y' has 1 example"),
    ("csv-fewer-classes", csv_file(TWO_CLASSES, "--tasks", "3"), "3 tasks need at least 3 classes"),
    ("csv-class-order", csv_file(TWO_CLASSES, "--tasks", "2", "--set", "data.class_order=x,z"),
     "names unknown classes"),
    ("folder-missing", flags("--benchmark", "folder:/nonexistent/dir"), "image folder '/nonexistent/dir' not found"),
    ("corrupt-image", image_folder(lambda root: (root / "kind1" / "broken.png").write_bytes(b"\x89PNG no")),
     "broken.png' cannot be decoded"),
    ("link-outside", image_folder(link_outside), "links outside the image folder"),
    ("empty-class", image_folder(lambda root: (root / "empty").mkdir()), "holds no images"),
    ("out-not-writable", out_under_a_file, "is not writable"),
    ("out-is-a-file", out_is_a_file, "exists and is not a folder"),
    # a run that goes wrong: stops at once, names the task and step, and leaves nothing (no checkpoint yet)
    ("non-finite-loss", flags("--set", "lr=1e30", "head_lr=1e30"), "non-finite loss at task 1, step"),
    # inputs found adversarially (issue 21): each once ended in a traceback, a wrong hint or a meaningless run
    ("yaml-not-utf8", write_file("c.yaml", b"epochs: 2\nlr: \xff\xfe\n", "--config", "{}"),
     "is not UTF-8 text (byte 0xff at offset 14)"),
    ("yaml-deep", write_file("c.yaml", b"epsilon: " + b"[" * 20000 + b"]" * 20000 + b"\n", "--config", "{}"),
     "is nested more than 64 levels deep"),
    ("set-deep", flags("--set", "epsilon=" + "[" * 20000), "--set epsilon is nested more than 64 levels deep"),
    ("yaml-duplicate-key", write_file("c.yaml", b"epochs: 1\nepochs: 2\n", "--config", "{}"),
     "gives the key 'epochs' twice (line 2)"),
    ("set-duplicate-key", flags("--set", "epochs=1", "--set", "epochs=2"), "--set gives epochs twice"),
    ("seed-too-large", flags("--seed", str(2**32)), "seed must be in [0, 2**32 - 1]"),
    ("device-name", flags("--set", "device=cuda:abc"), "device 'cuda:abc' is not a device name"),
    *([("device-mps-missing", flags("--set", "device=mps"), "MPS (Apple GPU) is not available here")]
      if not torch.backends.mps.is_available() else []),
    ("lora-rank-huge", flags("--set", "lora.rank=1e18"), "lora.rank must be <= 65536"),
    ("lora-alpha-huge", flags("--set", "lora.alpha=1e39"), "lora.alpha must be in (0, 1e6 × lora.rank]"),
    ("out-name-too-long", flags("--out", "x" * 300), "--out has a name of 300 bytes"),
    ("data-dir-is-a-file", write_file("data", b"x", "--benchmark", "wordnet", "--data-dir", "{}"),
     "is a file, not a folder"),
    ("one-class-per-task", flags("--tasks", "10"), "10 tasks of 10 classes leave task 1 with a single class"),
    ("png-bomb", image_folder(png_bomb), "huge.png' claims a size above Pillow's safety limit"),
    ("hf-pickle-only", pickle_only_model, "has no .safetensors weights (only pytorch_model.bin, pickles"),
    ("epsilon-huge", flags("--set", "epsilon=1e308"), "non-finite loss at task 1, step 2; lower epsilon (now 1e+308)"),
    ("weight-decay-huge", flags("--set", "weight_decay=1e300"), "lower weight_decay (now 1e+300)"),
    # resume targets
    ("resume-not-a-run", lambda tmp: ["--resume", str(tmp)], "is not a perturbmerge run folder"),
    ("force-without-resume", flags("--force"), "--force only applies with --resume"),
]


@pytest.mark.parametrize("setup,message", [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_leaves_no_files(setup, message, tmp_path, capsys):
    argv = setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    command = ["run", "--benchmark", "digits", "--method", "pm-lora", "--quiet"]
    if "--out" not in argv and "--resume" not in argv:
        command += ["--out", str(tmp_path / "out")]
    assert main(command + argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("perturbmerge: error: ")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
