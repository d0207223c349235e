"""The FeCAM head against a numpy construction from the raw features (the authors' recipe as Avalanche's
FeCAMClassifier implements it: per-class np.cov, shrink twice, normalise to a correlation matrix, pseudo-inverse,
Mahalanobis distance of L2-normalised vectors)."""
from __future__ import annotations

import numpy as np
import torch

from perturbmerge.runner import resolve_config, run_experiment


def numpy_shrink(cov: np.ndarray) -> np.ndarray:
    eye = np.eye(len(cov))
    off = cov * (1 - eye)
    return cov + np.diag(cov).mean() * eye + off[off != 0].mean() * (1 - eye)


def numpy_correlation(x: np.ndarray) -> np.ndarray:
    """One class's covariance from its raw examples (np.cov), shrunk twice, normalised to a correlation matrix."""
    cov = numpy_shrink(numpy_shrink(np.cov(x.T)))
    sd = np.sqrt(np.diag(cov))
    return cov / np.outer(sd, sd)


def numpy_fecam_logits(train_features, train_labels, test_features) -> np.ndarray:
    logits = []
    unit = test_features / np.linalg.norm(test_features, axis=1, keepdims=True)
    for c in np.unique(train_labels):
        x = train_features[train_labels == c]
        precision = np.linalg.pinv(numpy_correlation(x))
        mean = x.mean(0) / np.linalg.norm(x.mean(0))
        difference = unit - mean
        logits.append(-np.einsum("nd,de,ne->n", difference, precision, difference))
    return np.stack(logits, 1)


def test_a_fecam_run_ends_with_the_numpy_mahalanobis_head():
    """`fecam` on digits (frozen backbone): after 3 tasks the logits on test data equal the numpy construction from
    every seen class's training features (each class added at its own task, then combined)."""
    seen = {}

    def capture(event, learner, info):
        if event == "evaluated" and info["task"] == 2:
            with torch.no_grad():
                model = learner.model.eval()
                seen["train"] = torch.cat([model.backbone(t.train.tensors[0]) for t in learner.stream.tasks]).double()
                seen["labels"] = torch.cat([t.train.tensors[1] for t in learner.stream.tasks])
                test = torch.cat([t.test.tensors[0] for t in learner.stream.tasks])
                seen["test"], seen["logits"] = model.backbone(test).double(), model(test).double()

    config, _ = resolve_config({"benchmark": "digits", "method": "fecam", "tasks": 3})
    results = run_experiment(config, None, progress=False, callbacks=[capture])
    expected = numpy_fecam_logits(seen["train"].numpy(), seen["labels"].numpy(), seen["test"].numpy())
    np.testing.assert_allclose(seen["logits"].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert results["final_acc"] > 90.0  # a working classifier on 10 digits, not chance


def test_class_precision_equals_numpy_pseudo_inverse_of_the_shrunk_correlation_matrix():
    """class_precision (eigendecomposition route) against numpy's SVD pseudo-inverse of the same construction from
    raw examples, and against the plain inverse (the shrunk matrix is positive definite), for fewer examples than
    dimensions (a singular raw covariance) and for more."""
    from perturbmerge.methods.fecam import class_precision

    generator = torch.Generator().manual_seed(1)
    for examples in (6, 40):
        x = torch.randn(examples, 12, generator=generator, dtype=torch.float64) @ torch.randn(
            12, 12, generator=generator, dtype=torch.float64)
        precision = class_precision(x.sum(0), float(examples), x.T @ x)
        correlation = numpy_correlation(x.numpy())
        np.testing.assert_allclose(precision.numpy(), np.linalg.pinv(correlation), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(precision.numpy() @ correlation, np.eye(12), atol=1e-9)


def test_moving_fecam_statistics_equals_the_statistics_of_the_moved_examples():
    """head.drift=linear on FeCAM's per-class sums and second moments: x ↦ xW + b applied through the statistics
    equals the statistics recomputed from the mapped raw examples (brute force, float64)."""
    from perturbmerge.methods.fecam import ClassGaussians

    generator = torch.Generator().manual_seed(0)
    raw = {p: torch.randn(30 + 5 * p, 4, generator=generator, dtype=torch.float64) + p for p in range(3)}
    gaussians = ClassGaussians()
    for p, x in raw.items():
        gaussians.sums[p], gaussians.counts[p], gaussians.moments[p] = x.sum(0), float(len(x)), x.T @ x
    weight = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    gaussians.move_affine(weight, bias)
    for p, x in raw.items():
        moved = x @ weight + bias
        assert torch.allclose(gaussians.sums[p], moved.sum(0), atol=1e-10)
        assert torch.allclose(gaussians.moments[p], moved.T @ moved, atol=1e-9)
        assert torch.allclose(gaussians.means()[p], moved.mean(0), atol=1e-12)


def test_pm_lora_fecam_with_linear_drift_moves_the_old_classes_only_through_the_merge():
    seen = {}

    def capture(event, learner, info):
        if event == "end_task":
            seen[info["task"]] = {p: s.clone() for p, s in learner.method.head.fecam.sums.items()}

    results = {}
    for drift in ("none", "linear"):
        config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora-fecam", "tasks": 3, "epochs": 1},
                                   sets=[f"head.drift={drift}"])
        results[drift] = run_experiment(config, None, progress=False, callbacks=[capture])
        seen[drift] = dict(seen)
    assert results["none"]["alphas"] == results["linear"]["alphas"]  # the head never changes training or α
    assert "mean_drift" not in results["none"]["task_logs"][1] and results["linear"]["task_logs"][1]["mean_drift"] > 0
    moved, kept = seen["linear"][2], seen["none"][2]
    assert not torch.equal(moved[0], kept[0])  # task 1's class 0 moved by the later merges
    assert torch.equal(moved[max(moved)], kept[max(kept)])  # the last task's classes: taken after its own merge
