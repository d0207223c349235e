"""Baseline merge rules: each against its defining property on hand-built or random tensors."""
from __future__ import annotations

import pytest
import torch

from perturbmerge.merge import (add_scaled, dare, ewc_penalty, fisher_weighted_interpolation, magmax, running_mean,
                                task_arithmetic, ties)


def random_vectors(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"a": torch.randn(3, 4, generator=g, dtype=torch.float64),
             "b": torch.randn(5, generator=g, dtype=torch.float64)} for _ in range(count)]


def test_running_mean_equals_exact_mean_of_all_items():
    items = random_vectors(6)
    mean = None
    for t, item in enumerate(items, 1):
        mean = running_mean(mean, item, t)
        for k in item:
            torch.testing.assert_close(mean[k], torch.stack([x[k] for x in items[:t]]).mean(0), rtol=1e-12, atol=1e-12)


def test_task_arithmetic_is_base_plus_lambda_sum():
    base, *tvs = random_vectors(4)
    merged = add_scaled(base, task_arithmetic(tvs), 0.3)
    for k in base:
        torch.testing.assert_close(merged[k], base[k] + 0.3 * (tvs[0][k] + tvs[1][k] + tvs[2][k]))


def test_magmax_picks_largest_magnitude_with_ties_to_later_task():
    tvs = [{"w": torch.tensor([1.0, -3.0, 2.0, 0.5])},
           {"w": torch.tensor([-2.0, 3.0, 1.0, -0.5])},
           {"w": torch.tensor([0.0, 1.0, -2.0, 0.1])}]
    # element 0: |-2| wins; 1: |-3| = |3| tie → task 2 (3.0); 2: |2| = |-2| tie → task 3 (-2.0); 3: tie 0.5/-0.5 → -0.5
    assert magmax(tvs)["w"].tolist() == [-2.0, 3.0, -2.0, -0.5]


def test_magmax_matches_brute_force_on_random_vectors():
    tvs = random_vectors(5, seed=3)
    merged = magmax(tvs)
    for k in merged:
        flat = [tv[k].reshape(-1) for tv in tvs]
        for i in range(flat[0].numel()):
            best = max(range(5), key=lambda t: (flat[t][i].abs().item(), t))
            assert merged[k].reshape(-1)[i] == flat[best][i]


def test_ties_hand_example():
    tvs = [{"w": torch.tensor([3.0, -1.0, 2.0, 0.1])},
           {"w": torch.tensor([-1.0, -2.0, 4.0, 0.2])},
           {"w": torch.tensor([-1.5, 1.0, -0.5, 0.3])}]
    # keep 75 % (3 of 4 entries) per vector: [3, -1, 2, 0], [-1, -2, 4, 0], [-1.5, 1, -0.5, 0]
    # signs: col0 sum 0.5 → +, keep {3} → 3; col1 sum -2 → −, keep {-1, -2} → -1.5;
    #        col2 sum 5.5 → +, keep {2, 4} → 3; col3 all trimmed → 0
    torch.testing.assert_close(ties(tvs, keep_fraction=0.75)["w"], torch.tensor([3.0, -1.5, 3.0, 0.0]))


def test_ties_with_everything_kept_and_one_sign_is_the_mean():
    tvs = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 4.0])}]
    torch.testing.assert_close(ties(tvs, keep_fraction=1.0)["w"], torch.tensor([2.0, 3.0]))


def test_dare_preserves_the_expectation_and_drops_at_rate_p():
    tv = {"w": torch.linspace(-1, 1, 50, dtype=torch.float64)}
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([dare(tv, 0.7, g)["w"] for _ in range(4000)])
    kept = (draws != 0).double().mean()
    assert abs(kept.item() - 0.3) < 0.01
    standard_error = draws.std(0) / 4000 ** 0.5
    assert ((draws.mean(0) - tv["w"]).abs() <= 5 * standard_error + 1e-12).all()
    nonzero = draws[0] != 0
    torch.testing.assert_close(draws[0][nonzero], tv["w"][nonzero] / 0.3)


def test_fisher_weighted_interpolation():
    prev, cur = {"w": torch.tensor([0.0, 0.0, 1.0])}, {"w": torch.tensor([4.0, 4.0, 3.0])}
    fp, fc = {"w": torch.tensor([1.0, 3.0, 0.0])}, {"w": torch.tensor([3.0, 1.0, 0.0])}
    torch.testing.assert_close(fisher_weighted_interpolation(prev, cur, fp, fc)["w"], torch.tensor([3.0, 1.0, 2.0]))


def test_ewc_penalty_gradient_is_lambda_f_times_displacement():
    g = torch.Generator().manual_seed(1)
    theta = {"w": torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)}
    anchor = {"w": torch.randn(4, 3, generator=g, dtype=torch.float64)}
    fisher = {"w": torch.rand(4, 3, generator=g, dtype=torch.float64)}
    penalty = ewc_penalty(theta, anchor, fisher, strength=7.0)
    (grad,) = torch.autograd.grad(penalty, [theta["w"]])
    torch.testing.assert_close(grad, 7.0 * fisher["w"] * (theta["w"] - anchor["w"]).detach())


@pytest.mark.parametrize("bad", [0.0, 1.5])
def test_ties_rejects_bad_fraction(bad):
    with pytest.raises(ValueError):
        ties([{"w": torch.ones(2)}], keep_fraction=bad)


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


def _run(method, tmp_path, *sets):
    import json

    from perturbmerge.cli import main

    out = tmp_path / method
    assert main(["run", "--benchmark", "digits", "--method", method, "--tasks", "3", "--out", str(out), "--quiet",
                 "--set", *(["epochs=1"] if not any(s.startswith("epochs=") for s in sets) else []), *sets]) == 0
    return json.loads((out / "results.json").read_text())


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

    learner = ContinualLearner.__new__(ContinualLearner)
    learner.method, learner.model = Fixed(), Holder()
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


def test_ewc_lora_without_penalty_is_seq_lora_and_penalty_changes_training(tmp_path):
    seq_run = _run("seq-lora", tmp_path)
    free = _run("ewc-lora", tmp_path, "ewc_lambda=0")
    assert free["accuracy_matrix"] == seq_run["accuracy_matrix"]
    strong = _run("ewc-lora", tmp_path / "strong", "ewc_lambda=1e6")
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


def test_ewc_full_without_penalty_is_seq_full_and_penalty_shrinks_updates(tmp_path):
    seq_run = _run("seq-full", tmp_path)
    free = _run("ewc-full", tmp_path, "ewc_lambda=0")
    assert free["accuracy_matrix"] == seq_run["accuracy_matrix"]
    strong = _run("ewc-full", tmp_path / "strong", "ewc_lambda=1e6")
    assert strong["task_logs"][2]["task_vector_norm"] < 0.5 * free["task_logs"][2]["task_vector_norm"]


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


def test_pm_lora_with_per_module_alpha(tmp_path):
    run = _run("pm-lora", tmp_path, "alpha_granularity=module")
    logs = run["task_logs"]
    assert set(logs[1]["alpha_per_module"]) == {"fc1.weight", "fc2.weight"}
    for log in logs:
        values = list(log["alpha_per_module"].values())
        assert all(0.0 <= a <= 1.0 for a in values) and log["alpha"] == pytest.approx(sum(values) / len(values))
    assert logs[0]["alpha_per_module"] == {"fc1.weight": 1.0, "fc2.weight": 1.0}


@pytest.mark.parametrize("sets", [["fisher.kind=sampled"], ["fisher.logits=seen"], ["fisher.kind=sampled", "fisher.logits=seen"],
                                  ["fisher.normalise=trace"]])
def test_fisher_options_change_the_fisher_and_alpha(tmp_path, sets):
    base = _run("pm-lora", tmp_path / "base")
    other = _run("pm-lora", tmp_path / "other", *sets)
    same_fisher = sets == ["fisher.normalise=trace"]  # task 2 starts from θ̂_1 = θ*_1 either way; only α_2 moves
    assert (other["task_logs"][1]["fisher_mass"] == base["task_logs"][1]["fisher_mass"]) == same_fisher
    assert other["alphas"][0] == 1.0 and all(0.0 <= a <= 1.0 for a in other["alphas"])
    assert other["alphas"][1:] != base["alphas"][1:]


def test_true_fisher_labels_are_draws_from_the_models_predictive_distribution():
    import torch

    from perturbmerge.config import RunConfig
    from perturbmerge.methods import TaskVectorMethod

    method = TaskVectorMethod("pm-lora", RunConfig(), "lora", "none", True, ["fc1"])

    class Identity:
        @staticmethod
        def features(inputs):
            return inputs

    method.adaptation = Identity()
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 9.0]]).repeat(500, 1)
    drawn = torch.cat([labels for _, labels in method._model_sampled_labels(
        [(logits, torch.zeros(1000, dtype=torch.long))], lambda x: x, torch.Generator().manual_seed(0))])
    expected = torch.multinomial(logits.double().softmax(-1), 1, generator=torch.Generator().manual_seed(0)).squeeze(1)
    assert torch.equal(drawn, expected)
    first = drawn[0::2]  # p(class 0) = e⁴ / (e⁴ + 2) ≈ 0.965
    assert 0.94 < float((first == 0).double().mean()) < 0.99
    assert float((drawn[1::2] == 2).double().mean()) > 0.99  # p(class 2) = e⁹ / (e⁹ + 2) ≈ 0.9998


# ---- classifier-protocol options (long-sequences issue) -------------------------------------------------------
def test_head_refit_and_prototypes_change_only_the_head(tmp_path):
    """The masked loss trains only the current block, so what is done to a finished task's rows cannot change
    later training: α is identical, accuracies differ."""
    base = _run("pm-lora", tmp_path / "base")
    refit = _run("pm-lora", tmp_path / "refit", "head.refit_epochs=3")
    proto = _run("pm-lora", tmp_path / "proto", "head.kind=prototype")
    lda = _run("pm-lora", tmp_path / "lda", "head.kind=lda")
    for variant in (refit, proto, lda):
        assert variant["alphas"] == base["alphas"] and variant["accuracy_matrix"] != base["accuracy_matrix"]
    losses = refit["task_logs"][1]["refit_losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_linear_probe_first_fits_the_new_rows_before_the_lora(tmp_path):
    base = _run("pm-lora", tmp_path / "base")
    probe = _run("pm-lora", tmp_path / "probe", "head.probe_epochs=2")
    losses = probe["task_logs"][0]["probe_losses"]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert probe["alphas"][1:] != base["alphas"][1:]  # the LoRA now trains against a fitted head


def test_prototype_rows_are_normalised_class_means_on_the_merged_backbone():
    import torch

    from perturbmerge.backbones import build_backbone
    from perturbmerge.config import RunConfig
    from perturbmerge.data import get_benchmark
    from perturbmerge.heads import ContinualClassifier
    from perturbmerge.learner import ContinualLearner
    from perturbmerge.methods import get_method

    from helpers import request

    config = RunConfig(benchmark="digits", method="pm-lora", tasks=2, epochs=1)
    config.head.kind = "prototype"
    stream = get_benchmark("digits").load(request(0, 2))
    torch.manual_seed(0)
    backbone = build_backbone("mlp", 0)
    method = get_method("pm-lora").build(config, backbone.lora_targets)
    learner = ContinualLearner(ContinualClassifier(backbone.module, backbone.feature_dim), method, stream, epochs=1,
                               batch_size=32, eval_batch_size=256, seed=0, device=torch.device("cpu"), progress=False)
    learner.run()
    model = learner.model.eval()
    for index, task in enumerate(stream.tasks[1:], 1):  # the last task: its rows were set on the final backbone
        x, y = task.train.tensors
        with torch.no_grad():
            features = model.backbone(x).double()
        block = model.head.blocks[index]
        for row in range(task.num_classes):
            mean = features[y == task.label_offset + row].mean(0)
            torch.testing.assert_close(block.weight[row].double(), mean / mean.norm(), rtol=1e-5, atol=1e-6)
        assert bool((block.bias == 0).all())


# ---- head.kind = lda: shared-covariance Gaussian classifier from stored statistics ---------------------------
def _explicit_lda(features_per_task, labels_per_task, shrinkage):
    """Brute force from the raw features (numpy, float64): pooled within-class covariance with N − C degrees of
    freedom, shrunk toward (tr Σ / d) I; w_c = Σ_γ⁻¹ μ_c, b_c = −½ μ_cᵀ Σ_γ⁻¹ μ_c."""
    import numpy as np

    x = np.concatenate(features_per_task)
    y = np.concatenate(labels_per_task)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    covariance = centred.T @ centred / (len(x) - len(classes))
    d = x.shape[1]
    shrunk = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / d * np.eye(d)
    inverse = np.linalg.inv(shrunk)
    weights = means @ inverse
    return weights, -0.5 * np.einsum("cd,cd->c", weights, means), means, inverse


@pytest.mark.parametrize("shrinkage", [0.0, 0.1, 1.0])
def test_lda_statistics_match_an_explicit_construction_from_raw_features(shrinkage):
    import numpy as np
    import torch

    from perturbmerge.heads import GaussianClassStatistics, ExpandingLinearHead

    rng = np.random.default_rng(0)
    d = 5
    mix = rng.normal(size=(d, d))
    tasks = []  # two tasks of 2 and 3 classes, features with a shared correlated covariance
    for classes in ([0, 1], [2, 3, 4]):
        y = np.repeat(classes, 40)
        x = rng.normal(size=(len(y), d)) @ mix + 3 * rng.normal(size=(5, d))[y]
        tasks.append((x, y))
    statistics = GaussianClassStatistics()
    head = ExpandingLinearHead(d).double()
    for (x, y), offset in zip(tasks, (0, 2)):
        block = head.add_block(len(np.unique(y))).double()
        rows = torch.tensor(y - offset)
        features = torch.tensor(x)
        sums = torch.zeros(block.out_features, d, dtype=torch.float64).index_add_(0, rows, features)
        counts = torch.bincount(rows).double()
        statistics.add(list(range(offset, offset + block.out_features)), sums, counts, features.T @ features)
    statistics.write_rows(head, shrinkage)
    weights, biases, means, inverse = _explicit_lda([x for x, _ in tasks], [y for _, y in tasks], shrinkage)
    written = torch.cat([b.weight for b in head.blocks]).detach().numpy()
    written_bias = torch.cat([b.bias for b in head.blocks]).detach().numpy()
    np.testing.assert_allclose(written, weights, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(written_bias, biases, rtol=1e-8, atol=1e-10)
    # the arg-max is the Gaussian Bayes rule with equal priors: the smallest Mahalanobis distance under Σ_γ
    x = np.concatenate([x for x, _ in tasks])
    distances = np.stack([np.einsum("nd,de,ne->n", x - m, inverse, x - m) for m in means], 1)
    with torch.no_grad():
        predicted = head(torch.tensor(x)).argmax(1).numpy()
    assert (predicted == distances.argmin(1)).all()


def test_simplecil_lda_head_is_the_gaussian_classifier_of_the_frozen_features(tmp_path):
    import numpy as np
    import torch

    from perturbmerge.backbones import build_backbone
    from perturbmerge.data import get_benchmark

    from helpers import request

    run = _run("simplecil", tmp_path, "head.kind=lda", "head.shrinkage=0.2")
    stream = get_benchmark("digits").load(request(0, 3))
    torch.manual_seed(0)
    backbone = build_backbone("mlp", 0).module.eval()
    with torch.no_grad():
        features = [backbone(t.train.tensors[0]).double().numpy() for t in stream.tasks]
        weights, biases, _, _ = _explicit_lda(features, [t.train.tensors[1].numpy() for t in stream.tasks], 0.2)
        x = torch.cat([t.test.tensors[0] for t in stream.tasks])
        y = torch.cat([t.test.tensors[1] for t in stream.tasks]).numpy()
        predicted = (backbone(x).double().numpy() @ weights.T + biases).argmax(1)
    assert run["final_acc"] == pytest.approx(100.0 * float((predicted == y).mean()), abs=1e-9)


def test_pm_lora_lda_rows_use_each_tasks_statistics_on_the_backbone_of_its_merge(tmp_path):
    """Old classes keep the statistics taken on the merged backbone of their own task (no example is kept);
    the final rows are the LDA of those, brute-forced from features captured at each task's end."""
    import numpy as np
    import torch

    from perturbmerge.runner import resolve_config, run_experiment

    captured = []

    def capture(event, learner, info):
        if event == "end_task":  # after the method's end_task: the folded backbone, the rows just rewritten
            task = learner.stream.tasks[info["task"]]
            x, y = task.train.tensors
            with torch.no_grad():
                captured.append((learner.model.backbone(x.to(learner.device)).double().cpu().numpy(), y.numpy()))
            if info["task"] == len(learner.stream.tasks) - 1:
                captured.append(torch.cat([b.weight for b in learner.model.head.blocks]).detach().double().numpy())

    config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora", "tasks": 3}, None,
                               ["epochs=1", "head.kind=lda", "head.shrinkage=0.3"])
    run_experiment(config, None, progress=False, callbacks=[capture])
    weights, _, _, _ = _explicit_lda([f for f, _ in captured[:3]], [y for _, y in captured[:3]], 0.3)
    np.testing.assert_allclose(captured[3], weights, rtol=1e-4, atol=1e-6)


def test_shifted_means_give_the_lda_of_translated_classes():
    """shift_means(δ) keeps each class's scatter: the result is the LDA of the raw features with class c moved by δ_c."""
    import numpy as np
    import torch

    from perturbmerge.heads import ExpandingLinearHead, GaussianClassStatistics

    rng = np.random.default_rng(1)
    d = 4
    y = np.repeat([0, 1, 2], 30)
    x = rng.normal(size=(90, d)) + 2 * rng.normal(size=(3, d))[y]
    shifts = rng.normal(size=(3, d))
    statistics = GaussianClassStatistics()
    features = torch.tensor(x)
    rows = torch.tensor(y)
    statistics.add([0, 1, 2], torch.zeros(3, d, dtype=torch.float64).index_add_(0, rows, features),
                    torch.bincount(rows).double(), features.T @ features)
    statistics.shift_means({c: torch.tensor(shifts[c]) for c in range(3)})
    head = ExpandingLinearHead(d).double()
    head.add_block(3).double()
    statistics.write_rows(head, 0.05)
    weights, biases, _, _ = _explicit_lda([x + shifts[y]], [y], 0.05)
    np.testing.assert_allclose(head.blocks[0].weight.detach().numpy(), weights, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(head.blocks[0].bias.detach().numpy(), biases, rtol=1e-8, atol=1e-10)


def test_drift_compensation_moves_old_means_by_the_kernel_weighted_drift_of_the_current_data():
    """Brute force per task: features of the task's data at θ̂_{t−1} (captured when the task begins, the fresh
    LoRA being zero) and at θ̂_t (after the fold), the stored means before, and the SDC formula in numpy."""
    import numpy as np
    import torch

    from perturbmerge.runner import resolve_config, run_experiment

    records = []

    def features_now(learner, task):
        learner.model.eval()
        with torch.no_grad():
            return learner.model.backbone(task.train.tensors[0].to(learner.device)).double().cpu().numpy()

    def capture(event, learner, info):
        if event not in ("begin_task", "end_task") or info["task"] == 0:
            return
        task = learner.stream.tasks[info["task"]]
        statistics = learner.method.class_statistics
        old_positions = [p for p in sorted(statistics.sums) if p < task.label_offset]
        means = {p: m.numpy().copy() for p, m in statistics.means().items() if p in old_positions}
        records.append((event, features_now(learner, task), means, statistics.pooled_variance()))

    config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora", "tasks": 3}, None,
                               ["epochs=1", "head.kind=lda", "head.drift=sdc"])
    run_experiment(config, None, progress=False, callbacks=[capture])
    assert [r[0] for r in records] == ["begin_task", "end_task"] * 2
    for (_, before, means, variance), (_, after, moved, _) in zip(records[0::2], records[1::2]):
        for position, mean in means.items():
            kernel = np.exp(-((before - mean) ** 2).sum(1) / (2 * variance))
            expected = mean + (kernel[:, None] * (after - before)).sum(0) / kernel.sum()
            np.testing.assert_allclose(moved[position], expected, rtol=1e-4, atol=1e-5)
        assert any(np.abs(moved[p] - m).max() > 1e-3 for p, m in means.items())  # the merge did move them


def test_affine_drift_fit_is_the_ridge_regression_towards_identity():
    """fit_affine_drift from moments = the explicit ridge problem min ‖Z̃′ − Z̃W‖² + λ‖W − I‖², solved as an
    augmented least-squares system [Z̃; √λ I] W ≈ [Z̃′; √λ I] (numpy lstsq), with b = z̄′ − z̄W."""
    import numpy as np
    import torch

    from perturbmerge.heads import fit_affine_drift

    rng = np.random.default_rng(3)
    n, d, ridge = 7, 5, 0.4  # fewer rows than a full-rank fit would need: the ridge makes it well posed
    before = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d)
    after = before @ rng.normal(size=(d, d)) + rng.normal(size=d) + 0.1 * rng.normal(size=(n, d))
    zb, za = torch.tensor(before), torch.tensor(after)
    weight, bias = fit_affine_drift(torch.tensor(float(n)), zb.sum(0), za.sum(0), zb.T @ zb, zb.T @ za, ridge)
    cb, ca = before - before.mean(0), after - after.mean(0)
    lam = ridge * (cb ** 2).sum() / d
    system = np.vstack([cb, np.sqrt(lam) * np.eye(d)])
    target = np.vstack([ca, np.sqrt(lam) * np.eye(d)])
    expected = np.linalg.lstsq(system, target, rcond=None)[0]
    np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(bias.numpy(), after.mean(0) - before.mean(0) @ expected, rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match="at least 2"):
        fit_affine_drift(torch.tensor(1.0), zb[0], za[0], torch.outer(zb[0], zb[0]), torch.outer(zb[0], za[0]), 1.0)


def test_affinely_moved_statistics_give_the_lda_of_the_moved_features():
    """move_affine(W, b) = the LDA of the raw features with every example x replaced by xW + b (means and the
    shared covariance both move)."""
    import numpy as np
    import torch

    from perturbmerge.heads import ExpandingLinearHead, GaussianClassStatistics

    rng = np.random.default_rng(2)
    d = 4
    y = np.repeat([0, 1, 2], 25)
    x = rng.normal(size=(75, d)) + 2 * rng.normal(size=(3, d))[y]
    weight, bias = np.eye(d) + 0.3 * rng.normal(size=(d, d)), rng.normal(size=d)
    statistics = GaussianClassStatistics()
    features, rows = torch.tensor(x), torch.tensor(y)
    statistics.add([0, 1, 2], torch.zeros(3, d, dtype=torch.float64).index_add_(0, rows, features),
                   torch.bincount(rows).double(), features.T @ features)
    statistics.move_affine(torch.tensor(weight), torch.tensor(bias))
    head = ExpandingLinearHead(d).double()
    head.add_block(3).double()
    statistics.write_rows(head, 0.05)
    expected_weights, expected_biases, _, _ = _explicit_lda([x @ weight + bias], [y], 0.05)
    np.testing.assert_allclose(head.blocks[0].weight.detach().numpy(), expected_weights, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(head.blocks[0].bias.detach().numpy(), expected_biases, rtol=1e-8, atol=1e-10)


def test_linear_drift_moves_stored_statistics_by_the_map_fitted_on_the_current_data():
    """Brute force per task: features of the task's data at θ̂_{t−1} (when it begins, the fresh LoRA zero) and
    at θ̂_t (after the fold); the ridge map fitted on them in numpy moves the stored means exactly."""
    import numpy as np
    import torch

    from perturbmerge.runner import resolve_config, run_experiment

    records = []

    def capture(event, learner, info):
        if event not in ("begin_task", "end_task") or info["task"] == 0:
            return
        task = learner.stream.tasks[info["task"]]
        learner.model.eval()
        with torch.no_grad():
            features = learner.model.backbone(task.train.tensors[0].to(learner.device)).double().cpu().numpy()
        statistics = learner.method.class_statistics
        means = {p: m.numpy().copy() for p, m in statistics.means().items() if p < task.label_offset}
        records.append((features, means))

    ridge = 0.5
    config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora", "tasks": 3}, None,
                               ["epochs=1", "head.kind=lda", "head.drift=linear", f"head.drift_ridge={ridge}"])
    run_experiment(config, None, progress=False, callbacks=[capture])
    assert len(records) == 4
    for (before, means), (after, moved) in zip(records[0::2], records[1::2]):
        cb, ca = before - before.mean(0), after - after.mean(0)
        d = before.shape[1]
        lam = ridge * (cb ** 2).sum() / d
        weight = np.linalg.solve(cb.T @ cb + lam * np.eye(d), cb.T @ ca + lam * np.eye(d))
        bias = after.mean(0) - before.mean(0) @ weight
        for position, mean in means.items():
            np.testing.assert_allclose(moved[position], mean @ weight + bias, rtol=1e-4, atol=1e-5)
        assert any(np.abs(moved[p] - m).max() > 1e-3 for p, m in means.items())


@pytest.mark.parametrize("train_logits", ["task", "seen"])
def test_training_loss_covers_the_task_or_every_seen_class(train_logits):
    """head.train_logits: the objective at task 2 equals the cross-entropy written out in numpy over the current
    block's logits with local labels (task), or over all blocks' logits with global labels (seen); earlier rows
    are fixed either way (no gradient, not in the optimiser)."""
    import numpy as np
    import torch

    from perturbmerge.runner import resolve_config, run_experiment

    checked = []

    def capture(event, learner, info):
        if event != "begin_task" or info["task"] != 1:
            return
        task = learner.stream.tasks[1]
        x, y = task.train.tensors[0][:16].to(learner.device), task.train.tensors[1][:16]
        local = (y - task.label_offset).to(learner.device)
        blocks = learner.model.head.blocks
        for block in blocks:
            block.zero_grad(set_to_none=True)
        objective, _ = learner.method.objective(learner, (x, local), 0)
        objective.backward()
        with torch.no_grad():
            features = learner.model.backbone(x).double().numpy()  # the fresh LoRA is zero: θ̂_1's features
        logits = [features @ b.weight.detach().double().numpy().T + b.bias.detach().double().numpy() for b in blocks]
        if train_logits == "seen":
            logits, targets = np.concatenate(logits, 1), y.numpy()
        else:
            logits, targets = logits[-1], y.numpy() - task.label_offset
        log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        expected = float((log_z - logits[np.arange(len(targets)), targets]).mean())
        optimised = {id(p) for group in learner.method.optimizer.param_groups for p in group["params"]}
        checked.append((float(objective.detach()), expected, blocks[0].weight.grad,
                        id(blocks[0].weight) in optimised, blocks[1].weight.grad is not None))

    config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora", "tasks": 2}, None,
                               ["epochs=1", "head.kind=lda", f"head.train_logits={train_logits}"])
    run_experiment(config, None, progress=False, callbacks=[capture])
    (objective, expected, old_rows_gradient, old_rows_optimised, new_rows_have_gradient), = checked
    assert objective == pytest.approx(expected, rel=1e-5)
    assert old_rows_gradient is None or not old_rows_gradient.any()
    assert not old_rows_optimised and new_rows_have_gradient


def test_frozen_weight_ensembles_the_lda_head_of_the_pretrained_backbone(tmp_path):
    """head.frozen_weight = w: after the last task the model scores log softmax(its LDA logits on θ̂) + w · log
    softmax(the LDA logits of the pretrained backbone's features, brute-forced in numpy on a freshly built
    backbone), and the reported accuracy is that score's arg-max. Training is untouched: same α, same losses."""
    import numpy as np
    import torch

    from perturbmerge.backbones import build_backbone
    from perturbmerge.runner import resolve_config, run_experiment

    captured = {}

    def capture(event, learner, info):
        if event == "end_task" and info["task"] == len(learner.stream.tasks) - 1:
            tasks = learner.stream.tasks
            captured["train"] = [t.train.tensors for t in tasks]
            x = torch.cat([t.test.tensors[0] for t in tasks])
            captured["test"] = x, torch.cat([t.test.tensors[1] for t in tasks]).numpy()
            with torch.no_grad():
                captured["scores"] = learner.model(x).double().numpy()
                captured["merged"] = learner.model.head(learner.model.backbone(x)).double()

    sets = ["epochs=1", "head.shrinkage=0.2"]
    config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora-plus", "tasks": 3}, None,
                               [*sets, "head.frozen_weight=0.7"])
    ensembled = run_experiment(config, None, progress=False, callbacks=[capture])
    torch.manual_seed(0)
    backbone = build_backbone("mlp", 0).module.eval()  # the pretrained weights, built anew
    x, y = captured["test"]
    with torch.no_grad():
        weights, biases, _, _ = _explicit_lda([backbone(xt).double().numpy() for xt, _ in captured["train"]],
                                              [yt.numpy() for _, yt in captured["train"]], 0.2)
        frozen = torch.tensor(backbone(x).double().numpy() @ weights.T + biases)
    expected = (captured["merged"].log_softmax(1) + 0.7 * frozen.log_softmax(1)).numpy()
    np.testing.assert_allclose(captured["scores"], expected, rtol=1e-4, atol=1e-4)
    assert ensembled["final_acc"] == pytest.approx(100.0 * float((expected.argmax(1) == y).mean()), abs=1e-9)
    plain = _run("pm-lora-plus", tmp_path, *sets, "head.frozen_weight=0")
    assert ensembled["alphas"] == plain["alphas"]
    assert [log["train_loss_last_epoch"] for log in ensembled["task_logs"]] == [
        log["train_loss_last_epoch"] for log in plain["task_logs"]]
    assert ensembled["final_acc"] != plain["final_acc"]  # the ensemble changes the predictions here


def test_named_lda_methods_are_their_option_spellings(tmp_path):
    plus = _run("pm-lora-plus", tmp_path / "plus")
    spelled = _run("pm-lora", tmp_path / "spelled", "head.kind=lda", "head.drift=linear", "anchor_pretrained=true",
                   "fisher.normalise=trace", "head.drift_ridge=3", "head.frozen_weight=0.5")
    assert plus["accuracy_matrix"] == spelled["accuracy_matrix"] and plus["alphas"] == spelled["alphas"]
    frozen = _run("frozen-lda", tmp_path / "frozen")
    assert frozen["accuracy_matrix"] == _run("simplecil", tmp_path / "simplecil", "head.kind=lda")["accuracy_matrix"]


def test_options_that_need_a_method_default_are_checked_with_it():
    """pm-lora-plus sets head.kind=lda itself, so head.drift=sdc is valid for it (and not for pm-lora)."""
    from perturbmerge.errors import UserError
    from perturbmerge.runner import resolve_config

    config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora-plus"}, None, ["head.drift=sdc"])
    assert config.head.kind == "lda" and config.head.drift == "sdc"
    config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora-plus"}, None, ["head.drift=none"])
    assert config.head.drift == "none" and config.anchor_pretrained  # one option off, the others kept
    with pytest.raises(UserError, match="head.drift=sdc needs head.kind=lda"):
        resolve_config({"benchmark": "digits", "method": "pm-lora"}, None, ["head.drift=sdc"])


@pytest.mark.parametrize("method", ["pm-lora", "merge-lora"])
def test_anchored_merge_treats_the_pretrained_weights_as_task_zero(tmp_path, method):
    """anchor_pretrained: S_1 = F_0 + F_1, M_1 = F_0 θ_0 + F_1 θ*_1 with θ̂_0 = θ_0, so the closed form gives
    α_1 = Δ F_1 Δ / Δ (F_0 + F_1) Δ — exactly the simplified rule's value, and below 1. Had F_0 entered with any
    other optimum than θ_0, the two would differ."""
    base = _run(method, tmp_path / "base")
    anchored = _run(method, tmp_path / "anchored", "anchor_pretrained=true")
    first = anchored["task_logs"][0]
    assert base["alphas"][0] == 1.0 and 0.0 < first["alpha_raw"] < 1.0
    assert first["alpha_raw"] == pytest.approx(first["alpha_simplified"], rel=1e-9)
    assert first["pretrained_fisher_mass"] > 0
    assert all("pretrained_fisher_mass" not in log for log in anchored["task_logs"][1:])


def test_trace_normalised_merge_logs_the_raw_fisher_and_anchored_alpha_uses_unit_masses(tmp_path):
    """fisher.normalise = trace changes only what enters the merge: task 1 trains identically and logs the same
    raw Fisher mass; anchored, α_1 = Δ F̃_1 Δ / Δ (F̃_0 + F̃_1) Δ is still the simplified value (of unit-mass
    Fishers), and differs from the unnormalised anchored α_1 unless F_0 and F_1 had equal mass."""
    base = _run("pm-lora", tmp_path / "base", "anchor_pretrained=true")
    unit = _run("pm-lora", tmp_path / "unit", "anchor_pretrained=true", "fisher.normalise=trace")
    first, base_first = unit["task_logs"][0], base["task_logs"][0]
    assert first["fisher_mass"] == pytest.approx(base_first["fisher_mass"], rel=1e-9)
    assert first["pretrained_fisher_mass"] == pytest.approx(base_first["pretrained_fisher_mass"], rel=1e-9)
    assert first["alpha_raw"] == pytest.approx(first["alpha_simplified"], rel=1e-9)
    assert first["alpha_raw"] != pytest.approx(base_first["alpha_raw"], rel=1e-6)
