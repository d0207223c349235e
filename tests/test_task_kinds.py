"""The task kind is a part: a second, tiny kind (regression with mean-squared error on a toy MLP) runs pm-lora end to
end through the CLI-free API (a method built from its recipe, the learner, a stream of regression tasks) without
touching the merge, Fisher or perturbation code. Its Fisher is checked against a per-example autograd loop, the
head parts refuse head options on it, and a head-only method says in one line that it needs classes."""
from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from perturbmerge.adaptation import LoraAdaptation
from perturbmerge.config import FisherSettings, build_config
from perturbmerge.context import TaskContext
from perturbmerge.data import Task, TaskStream
from perturbmerge.errors import UserError
from perturbmerge.kinds import TaskKind
from perturbmerge.learner import ContinualLearner
from perturbmerge.methods import get_method
from perturbmerge.methods.task_fisher import task_fisher


class RegressionKind(TaskKind):
    """Targets are vectors; loss = mean squared error; score = R² × 100 on the task's test data."""

    name = "regression"
    score_name = "R² (%)"

    def example_losses(self, context, outputs, targets):
        return (outputs - targets).pow(2).mean(-1)

    def loss(self, context, outputs, targets):
        return F.mse_loss(outputs, targets)

    @torch.no_grad()
    def evaluate(self, context, tasks):
        scores, residual_all, spread_all = [], 0.0, 0.0
        for task in tasks:
            predictions, targets = [], []
            for inputs, y in context.loader(task.test, context.eval_batch_size):
                predictions.append(context.model(context.to_device(inputs)))
                targets.append(y)
            p, y = torch.cat(predictions), torch.cat(targets)
            residual, spread = float((p - y).pow(2).sum()), float((y - y.mean(0)).pow(2).sum())
            scores.append(100.0 * (1.0 - residual / spread))
            residual_all, spread_all = residual_all + residual, spread_all + spread
        return scores, 100.0 * (1.0 - residual_all / spread_all)


class Regressor(nn.Module):
    """What a learner needs of a model: `.backbone` (what the adapter adapts and a fold replaces), a forward."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.backbone(inputs)


def regression_stream(tasks: int = 3) -> TaskStream:
    """Task t: y = tanh(x · w_t) with its own direction w_t (tasks compete for the same inputs)."""
    generator = torch.Generator().manual_seed(0)
    stream_tasks = []
    for index in range(tasks):
        w = torch.randn(4, 1, generator=generator)
        x_train, x_test = torch.randn(96, 4, generator=generator), torch.randn(48, 4, generator=generator)
        stream_tasks.append(Task(index, [], 0, TensorDataset(x_train, torch.tanh(x_train @ w)),
                                 TensorDataset(x_test, torch.tanh(x_test @ w))))
    return TaskStream("toy-regression", "domain-incremental", "mlp", stream_tasks, kind="regression")


def run_pm_lora(sets: dict[str, Any] | None = None, method: str = "pm-lora"):
    spec = get_method(method)
    config, _ = build_config([{"method": method, "epochs": 4, "batch_size": 16, "lr": 1e-2, "seed": 0},
                              spec.defaults], [sets or {}])
    torch.manual_seed(0)
    model = Regressor()
    method_object = spec.build(config, ["0", "2"])
    learner = ContinualLearner(model, method_object, regression_stream(), epochs=config.epochs,
                               batch_size=config.batch_size, eval_batch_size=64, seed=0, device=torch.device("cpu"),
                               progress=False, kind=RegressionKind())
    return learner, learner.run()


def test_pm_lora_runs_end_to_end_on_a_regression_kind():
    learner, result = run_pm_lora()
    logs = result.task_logs
    alphas = [log["alpha"] for log in logs]
    assert alphas[0] == 1.0 and all(0.0 < a < 1.0 for a in alphas[1:])  # a real closed-form merge
    assert all(log["fisher_mass"] > 0 and log["task_vector_norm"] > 0 for log in logs)
    draws = logs[-1]["perturbation_draws"]
    assert draws["-1"] > 0 and draws["1"] > 0  # the perturbation ran on this kind too
    matrix = result.accuracy_matrix
    assert [len([v for v in row if v is not None]) for row in matrix] == [1, 2, 3]
    assert matrix[0][0] > 50.0  # task 1 was learned (R² in %)
    assert isinstance(learner.model.backbone, nn.Sequential)  # folded back to the plain architecture
    assert not any("lora" in name for name, _ in learner.model.named_parameters())


def test_the_regression_fisher_equals_a_per_example_autograd_loop():
    """F = (1/N) Σ_n (∂ℓ_n/∂W)² for ℓ_n the kind's per-example loss, through `task_fisher` and a context."""
    torch.manual_seed(1)
    model = Regressor().double()
    adaptation = LoraAdaptation(rank=2, alpha=2.0, dropout=0.0, targets=["0", "2"])
    model.backbone = adaptation.attach(model.backbone)
    with torch.no_grad():
        for p in adaptation.trainable_parameters():
            p.normal_(0, 0.3)
    stream = regression_stream(1)
    task = stream.tasks[0]
    task = Task(0, [], 0, TensorDataset(task.train.tensors[0][:10].double(), task.train.tensors[1][:10].double()),
                task.test)
    context = TaskContext(model, RegressionKind(), torch.device("cpu"), 1, task=task)
    fisher = task_fisher(adaptation, context, task, FisherSettings(batch_size=4))
    weights = {k: layer.get_base_layer().weight.requires_grad_(True) for k, layer in adaptation.layers.items()}
    x, y = task.train.tensors
    total = {k: torch.zeros_like(w) for k, w in weights.items()}
    for n in range(len(y)):
        loss = (model(x[n:n + 1]) - y[n:n + 1]).pow(2).mean()
        for k, g in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
            total[k] += g.pow(2)
    for k in total:
        torch.testing.assert_close(fisher[k], total[k] / len(y), rtol=1e-10, atol=1e-14)


def test_head_options_and_head_methods_are_refused_on_a_kind_without_a_head():
    with pytest.raises(UserError, match="has no classifier head"):
        run_pm_lora({"head": {"probe_epochs": 1}})
    with pytest.raises(UserError, match="has no classes"):
        run_pm_lora(method="frozen-lda")


def test_classification_fisher_options_are_refused_on_another_kind():
    learner, _ = run_pm_lora()
    with pytest.raises(UserError, match="apply to classification only"):
        RegressionKind().fisher_loss(learner.context, FisherSettings(kind="sampled"), [], lambda x: x)
