"""Methods as recipes of parts: registration, keys derived from the parts, `keys --method`, and combinations that
run from config alone (a head part on methods that had none)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from perturbmerge.cli import main
from perturbmerge.config import all_keys, key_infos
from perturbmerge.methods import COMMON_KEYS, METHODS, MethodSpec, Recipe, register_method
from perturbmerge.runner import resolve_config, run_experiment


def test_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="method 'pm-lora' is already registered"):
        register_method(MethodSpec("pm-lora", "another", lambda config, targets: None, frozenset()))
    assert METHODS["pm-lora"].description.startswith("LoRA-P&M")


def test_keys_follow_from_the_parts():
    every = set(all_keys())
    for spec in METHODS.values():
        assert spec.keys <= every, spec.name  # no method accepts a key that does not exist
    assert {"epsilon", "p0"} <= METHODS["pm-lora"].keys and "epsilon" not in METHODS["merge-lora"].keys
    assert "epsilon" in METHODS["noise-lora"].keys and "lora.rank" not in METHODS["pm-full"].keys
    assert "alpha_rule" in METHODS["merge-lora"].keys and "alpha_rule" not in METHODS["avg-lora"].keys
    assert "fixed_alpha" in METHODS["task-arithmetic"].keys and "fixed_alpha" not in METHODS["avg-lora"].keys
    for name in ("magmax", "ties", "dare", "cofima", "ewc-lora", "ewc-full"):  # the head part is theirs now
        assert {"head.kind", "head.train_logits", "head.refit_epochs"} <= METHODS[name].keys, name
        assert "head.drift" not in METHODS[name].keys, name  # their fold is not θ̂ + αΔ
    recipe = Recipe("x", "test", "full", "gaussian", "fixed")
    assert recipe.keys == ({"epsilon", "p0", "fixed_alpha", "save_task_models"} | set(METHODS["pm-lora"].keys)
                           - {"lora.rank", "lora.alpha", "lora.dropout", "lora.targets", "alpha_rule",
                              "alpha_granularity", "anchor_pretrained", "fisher.normalise", "fisher.max_samples",
                              "fisher.batch_size", "fisher.kind", "fisher.logits"})


def test_every_key_has_help_and_a_type():
    infos = key_infos()
    assert [i.key for i in infos] == all_keys()
    assert all(i.help and i.kind for i in infos), [i.key for i in infos if not i.help]
    kinds = {i.key: i.kind for i in infos}
    assert kinds["head.kind"] == "one of linear, prototype, lda, ranpac, fecam" and kinds["tasks"] == "int or null"


def test_keys_command_shows_the_methods_keys_and_defaults(capsys):
    assert main(["keys", "--method", "pm-lora-plus"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:] if line and not line.startswith(" ")}
    assert rows["head.kind"] == "'lda'" and rows["anchor_pretrained"] == "True" and rows["method"] == "'pm-lora-plus'"
    assert set(rows) == {k for k in all_keys() if k in COMMON_KEYS | METHODS["pm-lora-plus"].keys
                         or k.startswith("data.")}
    assert main(["keys", "--method", "magmax"]) == 0
    assert "task_merge.lam            0.5" in capsys.readouterr().out
    assert main(["keys", "--method", "pm-lorra"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_a_bad_choice_is_refused_when_the_config_is_read():
    from perturbmerge.errors import UserError

    expected = r"head.kind must be one of linear, prototype, lda, ranpac, fecam, got 'lad' \(did you mean 'lda'\?\)"
    with pytest.raises(UserError, match=expected):
        resolve_config({"method": "pm-lora"}, sets=["head.kind=lad"])


@pytest.mark.parametrize("method", ["magmax", "ewc-lora"])
def test_lda_head_on_a_method_without_one_from_config_alone(method):
    """--set head.kind=lda on magmax (its deployed model) and ewc-lora: after each task the current task's class
    means equal numpy's on the deployed backbone's features, and the head rows are the LDA rows of the statistics."""
    checked = []

    def check(event, learner, info):
        if event != "evaluated":
            return
        task = learner.stream.tasks[info["task"]]
        statistics = learner.method.head.class_statistics
        with torch.no_grad(), learner.deployed_weights():
            x, y = task.train.tensors
            features = learner.model.eval().backbone(x).double().numpy()
        for row in range(task.num_classes):
            expected = features[y.numpy() == task.label_offset + row].mean(0)
            np.testing.assert_allclose(statistics.means()[task.label_offset + row].numpy(), expected, rtol=1e-9,
                                       atol=1e-9)
        rows, biases = statistics.dense_classifier(0.1, learner.model.head.num_classes)
        weight = torch.cat([b.weight.detach() for b in learner.model.head.blocks]).double()
        torch.testing.assert_close(weight, rows.to(weight.dtype), rtol=1e-5, atol=1e-6)
        checked.append(info["task"])

    config, _ = resolve_config({"benchmark": "digits", "method": method, "tasks": 3}, sets=["epochs=1",
                                                                                            "head.kind=lda"])
    lda = run_experiment(config, None, progress=False, callbacks=[check])
    linear = run_experiment(resolve_config({"benchmark": "digits", "method": method, "tasks": 3},
                                           sets=["epochs=1"])[0], None, progress=False)
    assert checked == [0, 1, 2]
    assert lda["accuracy_matrix"] != linear["accuracy_matrix"]
    assert [log["task_vector_norm"] for log in lda["task_logs"]] == [  # training untouched by the head
        log["task_vector_norm"] for log in linear["task_logs"]]


def test_the_architecture_docs_recipe_registers_and_runs(capsys):
    """docs/architecture.md's example: a new method from parts, with no code but the recipe."""
    from perturbmerge.methods import register_recipe

    register_recipe(Recipe("noise-avg-full", "full fine-tuning + Gaussian perturbation + α_t = 1/t",
                           adaptation="full", perturbation="gaussian", merger="average",
                           defaults={"epsilon": 0.25}))
    try:
        assert main(["keys", "--method", "noise-avg-full"]) == 0
        shown = capsys.readouterr().out
        assert "epsilon                   0.25" in shown and "lora.rank" not in shown and "fisher.kind" not in shown
        config, _ = resolve_config({"benchmark": "digits", "method": "noise-avg-full", "tasks": 3},
                                   sets=["epochs=1"])
        results = run_experiment(config, None, progress=False)
        assert results["alphas"] == [1.0, 0.5, 1 / 3]
        draws = [sum(log["perturbation_draws"].values()) for log in results["task_logs"]]
        assert all(d > 0 for d in draws) and all(log["perturbation_draws"]["1"] > 0 for log in results["task_logs"])
    finally:
        METHODS.pop("noise-avg-full")
