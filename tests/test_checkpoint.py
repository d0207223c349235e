"""Checkpoints and bit-identical resume: kill a run with SIGKILL at many points, resume, compare exactly."""
from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perturbmerge.checkpoint import FORMAT as CHECKPOINT_FORMAT
from perturbmerge.checkpoint import (FOLDER, join_tensors, latest_checkpoint, load_checkpoint, save_checkpoint,
                                     split_tensors)
from perturbmerge.cli import main
from perturbmerge.errors import UserError
from perturbmerge.io import sha256_file, write_manifest

SETS = ["epochs=2", "checkpoint.every_steps=5"]

# A run of the public API that SIGKILLs itself at the COUNT-th EVENT of the learner (a crash or pre-emption).
KILLER = """
import os, signal, sys
from perturbmerge.runner import resolve_config, run_experiment
method, event, count, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
seen = [0]
def killer(name, learner, info):
    if name == event:
        seen[0] += 1
        if seen[0] == count:
            os.kill(os.getpid(), signal.SIGKILL)
config, _ = resolve_config({"benchmark": "digits", "method": method, "tasks": 3}, None, sys.argv[5:])
run_experiment(config, out, progress=False, callbacks=[killer])
print("FINISHED")
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Killed runs, resumes and references all use one thread: float sums are bit-identical only under the
    same thread count (docs/reliability.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _killed_run(method: str, event: str, count: int, out: Path, sets=SETS) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", KILLER, method, event, str(count), str(out), *sets],
                          capture_output=True, text=True, env=env)
    assert done.returncode == -9 and "FINISHED" not in done.stdout, (done.returncode, done.stderr[-2000:])


def _run(method: str, out: Path, sets=SETS) -> dict:
    assert main(["run", "--benchmark", "digits", "--method", method, "--tasks", "3", "--out", str(out), "--quiet",
                 "--set", *sets]) == 0
    return json.loads((out / "results.json").read_text())


def _resume(out: Path, *extra: str) -> dict:
    assert main(["run", "--resume", str(out), "--quiet", *extra]) == 0
    return json.loads((out / "results.json").read_text())


def _same_outcome(a: dict, b: dict) -> None:
    assert a["accuracy_matrix"] == b["accuracy_matrix"]  # exact, not approximate
    assert a["alphas"] == b["alphas"] and a["alpha_simplified"] == b["alpha_simplified"]
    assert [log.get("train_loss_last_epoch") for log in a["task_logs"]] == [
        log.get("train_loss_last_epoch") for log in b["task_logs"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """pm-lora on digits without interruption (in a subprocess, like the killed runs)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["run", "--benchmark", "digits", "--method", "pm-lora", "--tasks", "3", "--out", str(out),
                 "--quiet", "--set", *SETS]) == 0
    return {**json.loads((out / "results.json").read_text()), "steps.csv": (out / "steps.csv").read_text()}


# (event, occurrence, where the resume must start). digits, 3 tasks: 499, 379, 379 training examples, batch 32,
# 2 epochs → 16, 12, 12 steps per epoch (steps 1–32, 33–56, 57–80); a step checkpoint every 5 steps and one at
# each task end (checkpoints 1–6 at steps 5…30, 7 = end of task 1, …). Positions: (task index, epochs done,
# batches done in that epoch, task finished).
KILL_POINTS = [
    ("train_step", 3, "start"),  # mid-epoch, before the first checkpoint exists: resume starts over
    ("train_step", 8, (0, 0, 5, False)),  # mid-epoch, 3 steps after a step checkpoint
    ("train_step", 17, (0, 0, 15, False)),  # first step of the second epoch
    ("local_batch", 2, (0, 1, 14, False)),  # during task 1's Fisher pass
    ("end_task", 2, (1, 1, 11, False)),  # task 2 merged, not yet evaluated or checkpointed
    ("evaluated", 1, (0, 1, 14, False)),  # task 1 evaluated, its task-end checkpoint not yet written
    ("checkpoint_staged", 3, (0, 0, 10, False)),  # checkpoint 3 written in full, LATEST not yet switched to it
    ("checkpoint_saved", 7, (0, 2, 0, True)),  # right after task 1's task-end checkpoint
    ("begin_task", 3, (1, 2, 0, True)),  # task 3's adapter attached, no step yet
]


@pytest.mark.parametrize("event,count,start", KILL_POINTS, ids=[f"{e}-{c}" for e, c, _ in KILL_POINTS])
def test_sigkill_then_resume_is_bit_identical(reference, tmp_path, event, count, start):
    out = tmp_path / "run"
    _killed_run("pm-lora", event, count, out)
    assert not (out / "results.json").exists()
    resumed = _resume(out)
    position = resumed["resumed_from"]
    assert position == "start" if start == "start" else (
        (position["task"], position["epoch"], position["batch"], position["done"]) == start)
    _same_outcome(resumed, reference)
    assert (out / "steps.csv").read_text() == reference["steps.csv"]  # the per-step log as if never killed


def test_two_kills_in_a_row_then_resume(reference, tmp_path):
    out = tmp_path / "run"
    _killed_run("pm-lora", "train_step", 17, out)
    # the second process resumes, then is killed too (its own count of events starts at 0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = KILLER.replace("run_experiment(config, out, progress=False, callbacks=[killer])",
                          "from perturbmerge.runner import resume_run\nresume_run(out, callbacks=[killer], progress=False)")
    done = subprocess.run([sys.executable, "-c", code, "pm-lora", "local_batch", "3", str(out)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-2000:]
    _same_outcome(_resume(out), reference)
    assert (out / "steps.csv").read_text() == reference["steps.csv"]


def test_step_log_has_one_row_per_optimiser_step_with_the_draws(reference):
    """steps.csv: every step once, in order, its loss as the run saw it, draws matching the per-task counts."""
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(reference["steps.csv"])))
    assert [int(r["step"]) for r in rows] == list(range(1, 81))  # 32 + 24 + 24 steps (see KILL_POINTS)
    assert [int(r["task"]) for r in rows] == [1] * 32 + [2] * 24 + [3] * 24
    assert {int(r["epoch"]) for r in rows} == {1, 2}
    for task, log in enumerate(reference["task_logs"], start=1):
        mine = [r for r in rows if int(r["task"]) == task]
        counts = {str(s): sum(r["draw"] == str(s) for r in mine) for s in (-1, 0, 1)}
        assert counts == log["perturbation_draws"]
        last_epoch = [float(r["loss"]) for r in mine if r["epoch"] == "2"]
        assert sum(last_epoch) / len(last_epoch) == pytest.approx(log["train_loss_last_epoch"], rel=1e-12)


@pytest.mark.parametrize("method,event,count", [
    ("pm-full", "train_step", 8),  # full fine-tuning: the anchor θ̂ and the optimiser over every weight
    ("ties", "train_step", 31),  # sequential merges: pretrained, task vectors, deployed weights
    ("dare", "end_task", 2),  # DARE's own mask generator
    ("ewc-lora", "train_step", 37),  # running Fisher sum inside the penalty
    ("noise-lora", "train_step", 8),  # Gaussian perturbation generator
    ("simplecil", "evaluated", 2),  # prototype sums and counts, no training
    ("inflora", "train_step", 37),  # GPM memory; task 2's designed down-projection (restored with the model)
    ("sd-lora", "train_step", 37),  # stored directions; magnitudes re-join the optimiser before its state loads
    ("o-lora", "train_step", 37),  # earlier down-projections inside the penalty
    ("slca", "evaluated", 2),  # class Gaussians and the aligned rows
])
def test_every_method_family_resumes_bit_identically(tmp_path, method, event, count):
    reference = _run(method, tmp_path / "reference")
    out = tmp_path / "run"
    _killed_run(method, event, count, out)
    _same_outcome(_resume(out), reference)


@pytest.mark.parametrize("extra", [[], ["head.frozen_weight=1"]], ids=["lda", "lda-frozen-ensemble"])
def test_lda_head_statistics_resume_bit_identically(tmp_path, extra):
    """head.kind=lda: the stored class statistics (sums, counts, second moment) travel in the checkpoint; with
    head.frozen_weight, the statistics on the pretrained backbone and its weights too."""
    sets = [*SETS, "head.kind=lda", *extra]
    reference = _run("pm-lora", tmp_path / "reference", sets)
    out = tmp_path / "run"
    _killed_run("pm-lora", "train_step", 40, out, sets)  # inside task 2, after task 1's statistics exist
    _same_outcome(_resume(out), reference)


def test_a_finished_run_deletes_its_checkpoints_unless_asked_to_keep_them(reference, tmp_path):
    _run("seq-lora", tmp_path / "default", ["epochs=1"])
    assert not (tmp_path / "default" / FOLDER).exists()
    _run("seq-lora", tmp_path / "kept", ["epochs=1", "checkpoint.keep_final=true"])
    assert latest_checkpoint(tmp_path / "kept") is not None


def test_checkpointing_does_not_change_results(reference, tmp_path):
    _same_outcome(_run("pm-lora", tmp_path / "off", ["epochs=2", "checkpoint.enabled=false"]), reference)


@pytest.mark.slow
def test_sigkill_at_20_random_points(reference, tmp_path):
    events = {"train_step": 80, "local_batch": 20, "end_task": 3, "evaluated": 3, "checkpoint_staged": 19,
              "checkpoint_saved": 18, "begin_task": 3}  # occurrences in this run (see KILL_POINTS)
    chooser = random.Random(2026)
    for point in range(20):
        event = chooser.choice(sorted(events))
        count = chooser.randint(1, events[event])
        out = tmp_path / f"run{point}"
        _killed_run("pm-lora", event, count, out)
        _same_outcome(_resume(out), reference)


# ---- refusals --------------------------------------------------------------------------------------------

def test_resume_refuses_a_changed_config_naming_the_keys_unless_forced(tmp_path, capsys):
    out = tmp_path / "run"
    _killed_run("pm-lora", "evaluated", 1, out)
    assert main(["run", "--resume", str(out), "--quiet", "--set", "lr=0.5", "epsilon=0.25"]) == 2
    message = capsys.readouterr().err
    assert "epsilon (0.5 -> 0.25)" in message and "lr (0.003 -> 0.5)" in message and "--force" in message
    assert main(["run", "--resume", str(out), "--quiet", "--set", "epsilon=0.5"]) == 0  # same value: fine
    forced = tmp_path / "forced"
    _killed_run("pm-lora", "evaluated", 1, forced)
    results = _resume(forced, "--force", "--set", "lr=0.002")
    assert results["config"]["lr"] == 0.002


def test_resume_refuses_a_checkpoint_from_another_version(tmp_path, capsys):
    out = tmp_path / "run"
    _killed_run("pm-lora", "evaluated", 1, out)
    folder = latest_checkpoint(out)
    document = json.loads((folder / "state.json").read_text())
    pairs = document["state"]["__dict__"]
    for pair in pairs:
        if pair[0] == "versions":
            for version in pair[1]["__dict__"]:
                if version[0] == "perturbmerge":
                    version[1] = "0.0.1"
    (folder / "state.json").write_text(json.dumps(document))
    write_manifest(folder, CHECKPOINT_FORMAT)  # an intact checkpoint, as another version would have written it
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    assert "written by other versions (perturbmerge 0.0.1 ->" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["finished", "not-a-run", "with-out", "force-alone"])
def test_resume_bad_targets(tmp_path, capsys, case):
    out = tmp_path / "run"
    args = ["run", "--resume", str(out), "--quiet"]
    if case == "finished":
        _run("seq-lora", out, ["epochs=1"])
        expected = "already finished"
    elif case == "not-a-run":
        out.mkdir()
        expected = "not a perturbmerge run folder"
    elif case == "with-out":
        args += ["--out", str(tmp_path / "x")]
        expected = "drop --out"
    else:
        args = ["run", "--force", "--quiet", "--out", str(out)]
        expected = "--force only applies with --resume"
    assert main(args) == 2
    assert expected in capsys.readouterr().err


class _Payload:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _seal(folder) -> None:
    """Make state.json's tensors hash and the manifest match whatever tensors.safetensors now holds."""
    document = json.loads((folder / "state.json").read_text())
    document["tensors_sha256"] = sha256_file(folder / "tensors.safetensors")
    (folder / "state.json").write_text(json.dumps(document))
    write_manifest(folder, CHECKPOINT_FORMAT)


def test_a_checkpoint_holding_a_pickle_payload_is_refused_and_never_executed(tmp_path, capsys):
    out = tmp_path / "run"
    _killed_run("pm-lora", "evaluated", 1, out)
    folder = latest_checkpoint(out)
    marker = tmp_path / "pwned"
    (folder / "tensors.safetensors").write_bytes(pickle.dumps(_Payload(str(marker))))
    assert main(["run", "--resume", str(out), "--quiet"]) == 2  # the manifest refuses it before any parsing
    assert "tensors.safetensors fails its integrity check" in capsys.readouterr().err
    assert not marker.exists()
    _seal(folder)  # every hash made to match the pickle: the safetensors parser refuses it
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    assert "not a valid safetensors file" in capsys.readouterr().err
    assert not marker.exists()
    # a torch.save() zip (pickle inside) in its place is refused the same way
    torch.save({"x": _Payload(str(marker))}, folder / "tensors.safetensors")
    _seal(folder)
    with pytest.raises(UserError, match="not a valid safetensors"):
        load_checkpoint(folder)
    assert not marker.exists()


# ---- the format ------------------------------------------------------------------------------------------

def test_split_and_join_round_trip_exactly():
    state = {"a": torch.arange(6, dtype=torch.float64).reshape(2, 3), "n": None, "f": 0.1, "b": True,
             "list": [torch.zeros((), dtype=torch.float32), {"x": "y"}, (1, 2)],
             3: {-1: torch.tensor([1, 2], dtype=torch.uint8)}, "empty": {}}
    tree, tensors = split_tensors(state)
    json.dumps(tree)  # JSON-able
    back = join_tensors(json.loads(json.dumps(tree)), tensors)
    assert back["n"] is None and back["f"] == 0.1 and back["b"] is True and back["empty"] == {}
    assert torch.equal(back["a"], state["a"]) and back["a"].dtype == torch.float64
    assert back["list"][2] == [1, 2] and back["list"][1] == {"x": "y"} and back["list"][0].shape == ()
    assert set(back) == set(state) and torch.equal(back[3][-1], state[3][-1])
    with pytest.raises(TypeError, match="no safe format"):
        split_tensors({"bad": object()})


def test_latest_always_names_a_complete_checkpoint(tmp_path):
    first = save_checkpoint(tmp_path, {"w": torch.ones(2)})
    assert latest_checkpoint(tmp_path) == first

    def crash():
        raise KeyboardInterrupt  # dies after the new folder is written, before LATEST moves

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {"w": torch.zeros(2)}, before_commit=crash)
    assert latest_checkpoint(tmp_path) == first and torch.equal(load_checkpoint(first)["w"], torch.ones(2))
    third = save_checkpoint(tmp_path, {"w": torch.full((2,), 3.0)})
    assert latest_checkpoint(tmp_path) == third
    fourth = save_checkpoint(tmp_path, {"w": torch.full((2,), 4.0)})
    # the previous checkpoint is kept as a fallback, older ones are removed
    assert sorted(p.name for p in (tmp_path / FOLDER).iterdir()) == ["LATEST", third.name, fourth.name]


def test_source_never_unpickles():
    """Static check of the package: torch.load only with weights_only=True; no pickle.load(s), marshal or shelve
    (the one Unpickler is CIFAR's allow-list reader); YAML only through safe_load or a SafeLoader subclass."""
    import re

    root = Path(__file__).resolve().parents[1] / "src" / "perturbmerge"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path.name}: {call}"
        assert not re.search(r"^\s*(import|from)\s+(marshal|shelve|dill|joblib)\b", text, re.M), path.name
        assert not re.search(r"pickle\.(load|loads)\(|torch\.load\([^)]*weights_only=False", text), path.name
        if re.search(r"^\s*import\s+pickle\b", text, re.M):  # only for CIFAR's files, through an allow-list
            assert path.name == "paper.py" and "class _ArrayUnpickler(pickle.Unpickler)" in text
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text), path.name
        for loader in re.findall(r"yaml\.(\w*Loader)\b", text):  # a custom loader must build on SafeLoader
            assert loader == "SafeLoader", f"{path.name}: yaml.{loader}"
        assert "allow_pickle=True" not in text, path.name
