"""The RanPAC head against scikit-learn's Ridge: the read-out, the choice of λ, and a whole run whose final logits
equal a ridge fitted from scratch on every seen task's projected features."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from perturbmerge.methods import ranpac
from perturbmerge.methods.ranpac import (HELD_OUT_EVERY, RIDGES, choose_ridge, choose_ridge_from_rows,
                                         default_projection_width, ridge_readout)
from perturbmerge.runner import resolve_config, run_experiment
from perturbmerge.streams import generator


def projected_problem(seed: int, n: int = 120, d: int = 6, width: int = 40, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=g, dtype=torch.float64)
    hidden = torch.relu(features @ torch.randn(d, width, generator=g, dtype=torch.float64))
    labels = torch.randint(0, classes, (n,), generator=g)
    return hidden, torch.nn.functional.one_hot(labels, classes).double()


@pytest.mark.parametrize("ridge", [1e-3, 1.0, 1e3])
def test_readout_is_sklearns_ridge_without_intercept(ridge):
    hidden, targets = projected_problem(0)
    mine = ridge_readout(hidden.T @ hidden, hidden.T @ targets, ridge)
    reference = Ridge(alpha=ridge, fit_intercept=False, solver="cholesky").fit(hidden.numpy(), targets.numpy())
    np.testing.assert_allclose(mine.numpy(), reference.coef_.T, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lambda_is_the_one_with_least_held_out_error_of_sklearn_fits(seed):
    hidden, targets = projected_problem(seed, n=60, width=80)  # more width than rows: λ matters
    held = (torch.arange(len(hidden)) % HELD_OUT_EVERY) == HELD_OUT_EVERY - 1
    fit, out = (hidden[~held], targets[~held]), (hidden[held], targets[held])
    errors = [float(((Ridge(alpha=r, fit_intercept=False, solver="cholesky").fit(fit[0].numpy(), fit[1].numpy())
                      .predict(out[0].numpy()) - out[1].numpy()) ** 2).mean()) for r in RIDGES]
    chosen = choose_ridge((fit[0].T @ fit[0], fit[0].T @ fit[1]), (out[0].T @ out[0], out[0].T @ out[1]),
                          float(held.sum()))
    assert chosen == RIDGES[int(np.argmin(errors))]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("width", [80, 30])  # more width than rows (where the run uses the dual), and fewer
def test_lambda_from_rows_is_the_one_with_least_held_out_error_of_sklearn_fits(seed, width):
    hidden, targets = projected_problem(seed, n=60, width=width)
    held = (torch.arange(len(hidden)) % HELD_OUT_EVERY) == HELD_OUT_EVERY - 1
    fit, out = (hidden[~held], targets[~held]), (hidden[held], targets[held])
    errors = [float(((Ridge(alpha=r, fit_intercept=False, solver="svd").fit(fit[0].numpy(), fit[1].numpy())
                      .predict(out[0].numpy()) - out[1].numpy()) ** 2).mean()) for r in RIDGES]
    assert choose_ridge_from_rows(fit, out) == RIDGES[int(np.argmin(errors))]


def test_a_run_chooses_the_same_lambdas_from_rows_as_from_sums(monkeypatch):
    """digits tasks have fewer training rows than M = 1024, so the run chooses λ from rows; replacing that by the
    choice from the rows' sums (the O(M³) path) changes no λ and no accuracy."""
    calls = []

    def from_sums(fit, held_out):
        calls.append(len(fit[0]) + len(held_out[0]))
        return choose_ridge((fit[0].T @ fit[0], fit[0].T @ fit[1]), (held_out[0].T @ held_out[0],
                            held_out[0].T @ held_out[1]), float(len(held_out[0])))

    config, _ = resolve_config({"benchmark": "digits", "method": "ranpac", "tasks": 3}, sets=["head.rp_dim=1024"])
    from_rows = run_experiment(config, None, progress=False)
    monkeypatch.setattr(ranpac, "choose_ridge_from_rows", from_sums)
    reference = run_experiment(config, None, progress=False)
    assert len(calls) == 3 and all(n <= 1024 for n in calls)  # the dual path ran on every task
    assert [log["ridge"] for log in from_rows["task_logs"]] == [log["ridge"] for log in reference["task_logs"]]
    assert from_rows["accuracy_matrix"] == reference["accuracy_matrix"]


def test_a_ranpac_run_ends_with_the_ridge_of_every_seen_tasks_features():
    """`ranpac` on digits (frozen backbone): the final logits equal ReLU(F W_rand) W_o with W_o sklearn's ridge on
    the projected training features of all 3 tasks at the last task's λ, and W_rand the run's named stream."""
    seen = {}

    def capture(event, learner, info):
        if event == "evaluated" and info["task"] == 2:
            with torch.no_grad():
                model = learner.model.eval()
                seen["features"] = [model.backbone(t.train.tensors[0]).double() for t in learner.stream.tasks]
                seen["labels"] = [t.train.tensors[1] for t in learner.stream.tasks]
                test = learner.stream.tasks[0].test.tensors[0]
                seen["test"], seen["logits"] = model.backbone(test).double(), model(test).double()

    config, _ = resolve_config({"benchmark": "digits", "method": "ranpac", "tasks": 3}, sets=["head.rp_dim=96"])
    results = run_experiment(config, None, progress=False, callbacks=[capture])
    ridges = [log["ridge"] for log in results["task_logs"]]
    assert all(r in RIDGES for r in ridges)
    projection = torch.randn(seen["features"][0].shape[1], 96, dtype=torch.float64,
                             generator=generator(config.seed, "random_projection"))
    hidden = torch.relu(torch.cat(seen["features"]) @ projection).numpy()
    targets = np.eye(10)[torch.cat(seen["labels"]).numpy()]
    ridge = Ridge(alpha=ridges[-1], fit_intercept=False, solver="cholesky").fit(hidden, targets)
    expected = torch.relu(seen["test"] @ projection).numpy() @ ridge.coef_.T
    np.testing.assert_allclose(seen["logits"].numpy(), expected, rtol=1e-4, atol=1e-5)
    assert results["final_acc"] > 90.0  # digits with 10 classes: a working classifier, not chance (10 %)


def test_unset_width_resolves_by_device_and_is_recorded():
    """head.rp_dim unset: the paper's 10,000 on CUDA, 2048 on a CPU; the run's config records the resolved width."""
    assert default_projection_width(torch.device("cuda")) == 10_000
    assert default_projection_width(torch.device("cpu")) == 2048
    assert default_projection_width(torch.device("mps")) == 2048
    config, _ = resolve_config({"benchmark": "digits", "method": "ranpac", "tasks": 2, "device": "cpu"})
    assert config.head.rp_dim == 2048
    explicit, _ = resolve_config({"benchmark": "digits", "method": "ranpac", "tasks": 2}, sets=["head.rp_dim=96"])
    assert explicit.head.rp_dim == 96
