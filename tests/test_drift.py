"""Drift compensation of the stored class statistics (head.drift): SDC and the linear map, against explicit
constructions."""
from __future__ import annotations

import pytest
import torch

from helpers import explicit_lda as _explicit_lda

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
        statistics = learner.method.head.class_statistics
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
        statistics = learner.method.head.class_statistics
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
