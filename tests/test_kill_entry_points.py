"""SIGKILL at every entry point, then the same command (or the API's load) again: `compare` and `sweep` finish every
run bit-identically to an uninterrupted call, killed twice in a row included, and the API's save → kill → load →
next task gives the weights and α of an uninterrupted loop (issue 51; the `run` kills are in test_checkpoint.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perturbmerge.cli import main

TESTS = Path(__file__).resolve().parent
SETS = ["epochs=2", "checkpoint.every_steps=5"]
COMPARE = ["compare", "--benchmark", "digits", "--methods", "seq-lora,pm-lora", "--seeds", "0,1", "--tasks", "3",
           "--quiet", "--set", *SETS]
SWEEP = ["sweep", "--benchmark", "digits", "--methods", "pm-lora", "--param", "epsilon=0.1,0.5", "--seeds", "0",
         "--tasks", "3", "--quiet", "--set", *SETS]
STEPS_PER_RUN = 80  # digits, 3 tasks of 499/379/379 examples, batch 32, 2 epochs: 32 + 24 + 24 optimiser steps

# Any CLI command, SIGKILLed at the COUNT-th optimiser step over all of its runs.
KILLER = """
import os, signal, sys
from perturbmerge import learner as learner_module
from perturbmerge.cli import main
count, seen = int(sys.argv[1]), [0]
emit = learner_module.ContinualLearner._emit
def counting(self, event, **info):
    if event == "train_step":
        seen[0] += 1
        if seen[0] == count:
            os.kill(os.getpid(), signal.SIGKILL)
    emit(self, event, **info)
learner_module.ContinualLearner._emit = counting
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical float sums need the same thread count
    yield
    torch.set_num_threads(before)


def killed(argv: list[str], count: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", KILLER, str(count), *argv], capture_output=True, text=True, env=env)
    assert done.returncode == -9, (done.returncode, done.stderr[-2000:])


def run_results(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("runs/*/results.json"))}


def same(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name]["accuracy_matrix"] == b[name]["accuracy_matrix"], name
        assert a[name]["alphas"] == b[name]["alphas"], name


@pytest.mark.parametrize("command, kills", [
    (COMPARE, [2 * STEPS_PER_RUN + 10]),  # inside the third run (pm-lora, seed 0), after a step checkpoint
    (COMPARE, [STEPS_PER_RUN + 3, 40]),  # in the second run before its first checkpoint; then again in the resume
    (SWEEP, [STEPS_PER_RUN + 57]),  # inside the second run's last task
], ids=["compare-once", "compare-twice", "sweep-once"])
def test_a_killed_comparison_finishes_every_run_bit_identically(tmp_path, command, kills):
    reference = tmp_path / "reference"
    assert main([*command, "--out", str(reference)]) == 0
    out = tmp_path / "killed"
    for count in kills:
        killed([*command, "--out", str(out)], count)
    assert len(run_results(out)) < len(run_results(reference))  # the kill left work undone
    assert main([*command, "--out", str(out)]) == 0
    same(run_results(out), run_results(reference))
    summary = "summary.json" if command[0] == "compare" else "sweep.json"
    assert (out / summary).is_file()


API_KILLER = """
import os, signal, sys
import torch
sys.path.insert(0, sys.argv[2])
from perturbmerge import PerturbAndMerge
from test_api import Net, per_sample_loss, task_data, train
torch.set_num_threads(1)
torch.manual_seed(0)
pm = PerturbAndMerge(Net().double(), targets=["fc1", "fc2"], rank=2, seed=5)
torch.manual_seed(10)
train(pm, task_data(0))
pm.end_task(task_data(0), per_sample_loss)
pm.save_pretrained(sys.argv[1])
torch.manual_seed(11)
trainable = pm.begin_task()
os.kill(os.getpid(), signal.SIGKILL)  # a crash during task 2, after the save
"""


def test_the_api_save_kill_load_next_task_matches_an_uninterrupted_loop(tmp_path):
    from safetensors.torch import load_file

    from perturbmerge import PerturbAndMerge

    from test_api import Net, per_sample_loss, task_data, train

    torch.manual_seed(0)
    continuous = PerturbAndMerge(Net().double(), targets=["fc1", "fc2"], rank=2, seed=5)
    for task, seed in ((0, 10), (1, 11)):
        torch.manual_seed(seed)
        train(continuous, task_data(task))
        expected = continuous.end_task(task_data(task), per_sample_loss)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", API_KILLER, str(tmp_path / "saved"), str(TESTS)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == -9, done.stderr[-2000:]
    model = Net().double()
    model.load_state_dict(load_file(str(tmp_path / "saved" / "model.safetensors")))
    resumed = PerturbAndMerge(model, targets=["fc1", "fc2"], rank=2, seed=999)  # the stream comes from the file
    resumed.load_running_state(tmp_path / "saved")
    torch.manual_seed(11)
    train(resumed, task_data(1))
    record = resumed.end_task(task_data(1), per_sample_loss)
    assert record.task == 2 and record.alpha == expected.alpha and record.alpha_raw == expected.alpha_raw
    for (name, a), b in zip(continuous.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


TRAINER_SCRIPT = """
import os, signal, sys
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments
sys.path.insert(0, sys.argv[3])
from perturbmerge import PerturbAndMerge
from perturbmerge.integrations import PerturbAndMergeCallback
from test_integrations import TinyTask
torch.set_num_threads(1)

def arguments(folder):
    return TrainingArguments(output_dir=folder, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)

def task(pm, callback, index, folder, extra=()):
    torch.manual_seed(10 + index)  # the adapter's initialisation, as a resumed process reproduces it
    Trainer(model=pm.begin_task(), args=arguments(folder), train_dataset=TinyTask(index),
            callbacks=[callback, *extra]).train()

class KillAtStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

mode, folder = sys.argv[1], sys.argv[2]
if mode == "resume":
    model = BertForSequenceClassification.from_pretrained(folder + "/saved")
    pm = PerturbAndMerge(model, targets=["query", "value"], rank=2, seed=99, train_modules=["classifier"])
    pm.load_running_state(folder + "/saved")
    callback = PerturbAndMergeCallback(pm)
    task(pm, callback, 1, folder + "/t")
else:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    pm = PerturbAndMerge(BertForSequenceClassification(config), targets=["query", "value"], rank=2, seed=1,
                         train_modules=["classifier"])
    callback = PerturbAndMergeCallback(pm)
    task(pm, callback, 0, folder + "/t")
    if mode == "killed":
        pm.save_pretrained(folder + "/saved")
        task(pm, callback, 1, folder + "/t", [KillAtStep()])  # SIGKILL inside task 2's Trainer
    task(pm, callback, 1, folder + "/t")
pm.save_pretrained(folder + "/final")
print("ALPHA", repr(callback.records[-1].alpha))
"""


def test_the_trainer_callback_killed_inside_a_task_resumes_from_the_saved_state(tmp_path):
    """A Trainer with PerturbAndMergeCallback SIGKILLed inside task 2; a new process loads the model and running
    state saved after task 1 and trains task 2 again: α and every weight equal an uninterrupted pair of tasks."""
    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def script(mode: str, folder: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", TRAINER_SCRIPT, mode, str(folder), str(TESTS)],
                              capture_output=True, text=True, env=env)

    reference = script("reference", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert script("killed", tmp_path / "run").returncode == -9
    resumed = script("resume", tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    alpha = [line for line in reference.stdout.splitlines() if line.startswith("ALPHA")]
    assert alpha and alpha == [line for line in resumed.stdout.splitlines() if line.startswith("ALPHA")]
    expected = load_file(str(tmp_path / "reference" / "final" / "model.safetensors"))
    got = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert sorted(expected) == sorted(got) and all(torch.equal(expected[k], got[k]) for k in expected)
