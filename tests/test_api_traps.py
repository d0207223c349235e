"""The Python API's traps, each refused at the call that causes it or warned about with the cause and the fix:
a per-example loss of the wrong shape, an optimiser that does not hold the adapter, training outside
`pm.perturbed()`, a tokenizer for `save_pretrained`, a non-empty output folder, a running state of another model,
and constructor arguments the CLI would refuse (each of these was accepted, or failed late, before)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perturbmerge import PerturbAndMerge, UserError
from perturbmerge.api import PerturbationNotUsedWarning

from test_api import Net, per_sample_loss, task_data, train


def pm_of(net: nn.Module | None = None, **options) -> PerturbAndMerge:
    torch.manual_seed(0)
    return PerturbAndMerge((net or Net()).double(), targets=["fc1", "fc2"], rank=2, **options)


def trained(pm: PerturbAndMerge):
    batches = task_data(0)
    train(pm, batches)
    return batches


def test_a_mean_loss_is_refused_in_the_fisher_pass():
    pm = pm_of()
    batches = trained(pm)
    with pytest.raises(UserError, match=r"must have shape \[8\].*got shape \[\].*reduction='none'"):
        pm.end_task(batches, lambda module, batch: F.cross_entropy(module(batch[0]), batch[1]))


def test_a_loss_per_example_and_class_is_refused():
    pm = pm_of()
    batches = trained(pm)
    with pytest.raises(UserError, match=r"got shape \[8, 3\].*reduce over every dimension but the first"):
        pm.end_task(batches, lambda module, batch: -module(batch[0]).log_softmax(-1))


def test_an_optimiser_built_before_begin_task_is_named_as_the_cause():
    pm = pm_of()
    stale = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)  # built before begin_task: not the adapter
    trainable = pm.begin_task()
    for x, y in task_data(0):
        with pm.perturbed():
            loss = F.cross_entropy(trainable(x), y)
        loss.backward()
        stale.step()
        stale.zero_grad()
    with pytest.raises(UserError, match=r"did not change during training.*after pm.begin_task\(\)"):
        pm.end_task(task_data(0), per_sample_loss)


def test_training_outside_perturbed_warns_that_no_step_was_perturbed():
    pm = pm_of(epsilon=0.5)
    trainable = pm.begin_task()
    optimizer = torch.optim.SGD(pm.parameters(), lr=0.5)
    for x, y in task_data(0):
        F.cross_entropy(trainable(x), y).backward()  # no `with pm.perturbed():`
        optimizer.step()
        optimizer.zero_grad()
    with pytest.warns(PerturbationNotUsedWarning, match="no optimiser step ran inside pm.perturbed"):
        pm.end_task(task_data(0), per_sample_loss)


def test_no_warning_when_epsilon_is_zero_or_steps_were_perturbed(recwarn):
    for pm in (pm_of(), pm_of(epsilon=0.0)):
        pm.end_task(trained(pm), per_sample_loss)
    assert not [w for w in recwarn if issubclass(w.category, PerturbationNotUsedWarning)]


def tiny_tokenizer():
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]
    return BertTokenizerFast(vocab={word: i for i, word in enumerate(words)})


def test_save_pretrained_writes_the_tokenizer_that_auto_tokenizer_loads(tmp_path):
    from transformers import AutoTokenizer

    pm = pm_of()
    pm.end_task(trained(pm), per_sample_loss)
    pm.save_pretrained(tmp_path / "out", tokenizer=tiny_tokenizer())
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert loaded("hello world")["input_ids"] == tiny_tokenizer()("hello world")["input_ids"]
    pm.save_pretrained(tmp_path / "processor", processing_class=tiny_tokenizer())
    assert (tmp_path / "processor" / "tokenizer_config.json").is_file()


def test_save_pretrained_refuses_a_non_empty_folder_and_overwrites_atomically(tmp_path):
    pm = pm_of()
    pm.end_task(trained(pm), per_sample_loss)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not empty.*overwrite=True"):
        pm.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # untouched
    pm.save_pretrained(folder, overwrite=True)
    assert "notes.txt" not in {p.name for p in folder.iterdir()}  # replaced whole, not mixed in
    assert (folder / "perturbmerge.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old folder left beside it


def saved_state(tmp_path) -> PerturbAndMerge:
    pm = pm_of()
    pm.end_task(trained(pm), per_sample_loss)
    pm.save_pretrained(tmp_path / "state")
    return pm


def test_load_running_state_checks_targets_and_shapes_at_load(tmp_path):
    saved_state(tmp_path)
    other_targets = PerturbAndMerge(Net().double(), targets=["fc1"], rank=2)
    with pytest.raises(UserError, match=r"saved with targets=\['fc1', 'fc2'\].*targets=\['fc1'\]"):
        other_targets.load_running_state(tmp_path / "state")

    class Wider(Net):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(5, 9), nn.Linear(9, 8)

    with pytest.raises(UserError, match=r"running sums of 'fc1.weight' have shape \[8, 5\], the model's weight "
                                        r"\[9, 5\]"):
        pm_of(Wider()).load_running_state(tmp_path / "state")


def test_load_running_state_refuses_missing_and_damaged_files_in_one_line(tmp_path):
    with pytest.raises(UserError, match="not found; give the folder written by PerturbAndMerge.save_pretrained"):
        pm_of().load_running_state(tmp_path / "nowhere")
    saved_state(tmp_path)
    state = tmp_path / "state" / "perturbmerge_state.safetensors"
    state.write_bytes(state.read_bytes()[:40])
    with pytest.raises(UserError, match="cannot be read .* damaged"):
        pm_of().load_running_state(tmp_path / "state")
    saved_state(tmp_path / "again")
    (tmp_path / "again" / "state" / "perturbmerge.json").write_text("{not json")
    with pytest.raises(UserError, match="is not a perturbmerge state file"):
        pm_of().load_running_state(tmp_path / "again" / "state")


def test_a_state_that_loads_continues_as_before(tmp_path):
    pm = saved_state(tmp_path)
    fresh = pm_of()
    fresh.load_running_state(tmp_path / "state")
    assert fresh.merge_state.num_tasks == 1
    assert json.loads((tmp_path / "state" / "perturbmerge.json").read_text())["targets"] == ["fc1", "fc2"]
    for key, value in pm.merge_state.fisher_sum.items():
        assert torch.equal(fresh.merge_state.fisher_sum[key], value)


@pytest.mark.parametrize("arguments, message", [
    ({"rank": 1.5}, "rank must be int, got 1.5"),
    ({"seed": 2**70}, r"seed must be in \[0, 2\*\*32 - 1\]"),
    ({"seed": -1}, r"seed must be in \[0, 2\*\*32 - 1\]"),
    ({"merge": "fixed", "fixed_alpha": float("nan")}, r"fixed_alpha must be in \[0, 1\], got nan"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"merge": "closed-form"}, "merge must be one of closed_form, .*did you mean 'closed_form'"),
    ({"epsilon": float("inf")}, "epsilon must be a finite number"),
    ({"fisher_max_samples": 0}, "fisher_max_samples must be >= 1"),
])
def test_constructor_arguments_are_checked_as_the_cli_checks_its_keys(arguments, message):
    with pytest.raises(UserError, match=f"^PerturbAndMerge: {message}"):
        PerturbAndMerge(Net(), targets=["fc1"], **arguments)


def test_the_readme_snippet_names_train_modules():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    snippet = readme[readme.index("pm = PerturbAndMerge("):]
    assert "train_modules=" in snippet.splitlines()[0]
