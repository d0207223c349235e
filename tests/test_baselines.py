"""The baseline methods end to end on digits: each against the property that defines it (data-free α rules, the
deployed task merges, SimpleCIL, joint, EWC, CoFiMA)."""
from __future__ import annotations

import pytest
import torch

from helpers import run_method as _run

@pytest.mark.parametrize("method, expected", [
    ("avg-lora", [1.0, 1 / 2, 1 / 3]),
    ("task-arithmetic", [0.3, 0.3, 0.3]),
])
def test_data_free_merge_methods_use_their_rule_and_skip_the_fisher(method, expected, tmp_path):
    import json

    from perturbmerge.cli import main

    assert main(["run", "--benchmark", "digits", "--method", method, "--tasks", "3", "--out", str(tmp_path / "r"),
                 "--quiet", "--set", "epochs=1"]) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["alphas"] == pytest.approx(expected)
    assert all("fisher_mass" not in log for log in results["task_logs"])


def test_method_defaults_sit_below_user_settings():
    from perturbmerge.runner import resolve_config

    assert resolve_config({"benchmark": "digits", "method": "task-arithmetic"})[0].fixed_alpha == 0.3
    config, _ = resolve_config({"benchmark": "digits", "method": "task-arithmetic"}, sets=["fixed_alpha=0.6"])
    assert config.fixed_alpha == 0.6
    assert resolve_config({"benchmark": "digits", "method": "pm-lora"})[0].fixed_alpha == 0.5


def test_dare_without_drop_deploys_the_sequential_model(tmp_path):
    """drop = 0, λ = 1: θ_0 + Σ δ_i is the sequentially trained model, so results equal seq-lora's."""
    dare_run = _run("dare", tmp_path, "task_merge.drop=0")
    seq_run = _run("seq-lora", tmp_path)
    assert all(log["deployed_distance"] < 1e-4 for log in dare_run["task_logs"])
    assert dare_run["accuracy_matrix"] == seq_run["accuracy_matrix"]


def test_magmax_and_ties_deploy_a_different_model_but_train_sequentially(tmp_path):
    seq_run = _run("seq-lora", tmp_path)
    for method in ("magmax", "ties"):
        run = _run(method, tmp_path)
        assert run["task_logs"][-1]["deployed_distance"] > 1e-3
        # the training trajectory is seq-lora's: the same current-task training losses
        assert [log["train_loss_last_epoch"] for log in run["task_logs"]] == pytest.approx(
            [log["train_loss_last_epoch"] for log in seq_run["task_logs"]])
        assert run["accuracy_matrix"] != seq_run["accuracy_matrix"]


def test_evaluation_restores_the_training_weights():
    import torch
    from torch import nn

    from perturbmerge.learner import ContinualLearner

    class Fixed:
        def deployed_weights(self):
            return {"weight": torch.zeros(2, 2)}

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Linear(2, 2, bias=False)

    from perturbmerge.context import TaskContext

    learner = ContinualLearner.__new__(ContinualLearner)
    learner.method, learner.context = Fixed(), TaskContext(Holder(), None, torch.device("cpu"), 1)
    before = learner.model.backbone.weight.detach().clone()
    with learner.deployed_weights():
        assert (learner.model.backbone.weight == 0).all()
    assert torch.equal(learner.model.backbone.weight, before)


def test_simplecil_head_rows_are_normalised_class_means_and_backbone_frozen(tmp_path):
    import torch

    from perturbmerge.backbones import build_backbone
    from perturbmerge.data import get_benchmark

    from helpers import request

    run = _run("simplecil", tmp_path)
    assert run["alphas"] is None and all(log["train_loss_last_epoch"] is None for log in run["task_logs"])
    # brute force: nearest normalised class mean under cosine similarity, random-init MLP (seed 0)
    stream = get_benchmark("digits").load(request(0, 3))
    torch.manual_seed(0)
    backbone = build_backbone("mlp", 0).module.eval()
    with torch.no_grad():
        prototypes = []
        for task in stream.tasks:
            x, y = task.train.tensors
            f = backbone(x)
            prototypes += [f[y == c].mean(0) for c in range(task.label_offset, task.label_offset + task.num_classes)]
        protos = torch.nn.functional.normalize(torch.stack(prototypes), dim=1)
        x = torch.cat([t.test.tensors[0] for t in stream.tasks])
        y = torch.cat([t.test.tensors[1] for t in stream.tasks])
        predicted = (torch.nn.functional.normalize(backbone(x), dim=1) @ protos.T).argmax(1)
    assert run["final_acc"] == pytest.approx(100.0 * float((predicted == y).double().mean()), abs=1e-9)


def test_joint_trains_once_on_every_class(tmp_path):
    run = _run("joint", tmp_path)
    assert run["num_tasks"] == 1 and len(run["classes_per_task"][0]) == 10


@pytest.mark.parametrize("ewc, sequential", [("ewc-lora", "seq-lora"), ("ewc-full", "seq-full")])
def test_ewc_without_penalty_is_sequential_and_a_strong_penalty_shrinks_updates(tmp_path, ewc, sequential):
    seq_run = _run(sequential, tmp_path)
    free = _run(ewc, tmp_path, "ewc_lambda=0")
    assert free["accuracy_matrix"] == seq_run["accuracy_matrix"]
    strong = _run(ewc, tmp_path / "strong", "ewc_lambda=1e6")
    # a huge penalty keeps later task vectors small
    assert strong["task_logs"][2]["task_vector_norm"] < 0.5 * free["task_logs"][2]["task_vector_norm"]


def test_differentiable_task_vector_matches_peft_delta_and_has_gradients():
    import torch

    from conftest import tiny_bert
    from perturbmerge.adaptation import LoraAdaptation

    adaptation = LoraAdaptation(rank=2, alpha=4, dropout=0.0, targets=["key"])
    adaptation.attach(tiny_bert())
    with torch.no_grad():
        for p in adaptation.trainable_parameters():
            p.normal_()
    live = adaptation.differentiable_task_vector()
    detached = adaptation.task_vector()
    total = sum(v.sum() for v in live.values())
    total.backward()
    assert all(torch.equal(live[k].detach(), detached[k]) for k in live)
    assert all(p.grad is not None for p in adaptation.trainable_parameters())


def test_cofima_keeps_part_of_each_later_update(tmp_path):
    run = _run("cofima", tmp_path)
    kept = [log["kept_fraction_of_update"] for log in run["task_logs"]]
    assert kept[0] == pytest.approx(1.0)
    assert all(0.0 < k < 1.0 for k in kept[1:])


def test_full_differentiable_task_vector_is_displacement_with_gradients():
    import torch
    from torch import nn

    from perturbmerge.adaptation import FullAdaptation

    adaptation = FullAdaptation()
    module = adaptation.attach(nn.Linear(3, 2))
    with torch.no_grad():
        module.weight.add_(1.5)
    live = adaptation.differentiable_task_vector()
    assert torch.allclose(live["weight"], torch.full((2, 3), 1.5)) and torch.equal(live["bias"], torch.zeros(2))
    sum(v.pow(2).sum() for v in live.values()).backward()
    assert torch.allclose(module.weight.grad, torch.full((2, 3), 3.0))
