"""Methods as small strategy objects over the learner's hooks, registered by name in one place.

The P&M family is one class, `TaskVectorMethod`, configured by three choices:
    adaptation   'lora' | 'full'                  what trains, and the merge space
    perturbation 'none' | 'task_vector' | 'gaussian'
    merge        closed-form family (alpha_rule) or none (α = 1, sequential fine-tuning)
"""
from __future__ import annotations

import time

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.nn.functional as F

from .adaptation import FullAdaptation, LoraAdaptation, resolve_lora_targets
from .config import RunConfig
from .errors import TrainingDiverged, UserError, did_you_mean
from .fisher import KnownLength
from .heads import GaussianClassStatistics, PretrainedEnsemble, fit_affine_drift, pretrained_features
from .merge import (RunningMergeState, add_scaled, dare, decide_alpha, ewc_penalty, fisher_weighted_interpolation,
                    magmax, task_arithmetic, ties, unit_trace)
from .perturb import PerturbationSchedule, perturbation_stream_seed

if TYPE_CHECKING:
    from .data import Task
    from .learner import ContinualLearner

COMMON_KEYS = frozenset(
    {"benchmark", "method", "seed", "tasks", "epochs", "batch_size", "eval_batch_size", "lr", "head_lr",
     "weight_decay", "device", "data_dir", "backbone", "checkpoint.enabled", "checkpoint.every_steps", "checkpoint.keep_final",
     "precision", "grad_accumulation", "save_model", "log.tensorboard"}
)
LORA_KEYS = frozenset({"lora.rank", "lora.alpha", "lora.dropout", "lora.targets"})
PERTURB_KEYS = frozenset({"epsilon", "p0"})
HEAD_KEYS = frozenset({"head.kind", "head.probe_epochs", "head.refit_epochs", "head.shrinkage", "head.drift",
                       "head.drift_ridge", "head.train_logits", "head.frozen_weight"})
FISHER_KEYS = frozenset({"fisher.max_samples", "fisher.batch_size", "fisher.kind", "fisher.logits"})
MERGE_KEYS = frozenset({"alpha_rule", "fixed_alpha", "alpha_granularity", "anchor_pretrained",
                        "fisher.normalise"}) | FISHER_KEYS



# (key, the largest value in normal use): a diverged run names the settings above these before blaming lr
UNUSUAL_ABOVE = (("epsilon", 10.0), ("weight_decay", 1.0), ("head_lr", 1.0), ("ewc_lambda", 1e8), ("lr", 0.1))


def divergence_advice(config: RunConfig, extra: str = "") -> str:
    """'lower epsilon (now 1e+308)' for the settings far outside their usual range, else 'lower lr (now …)'."""
    unusual = [f"{key} (now {getattr(config, key)})" for key, limit in UNUSUAL_ABOVE
               if isinstance(getattr(config, key, None), (int, float)) and getattr(config, key) > limit]
    scale = config.lora.alpha / config.lora.rank
    if scale > 1e3:
        unusual.append(f"lora.alpha (now {config.lora.alpha}, a LoRA scale of {scale:.3g})")
    return f"lower {' or '.join(unusual)}" if unusual else f"lower lr (now {config.lr}){extra}"


class Method:
    """Hooks the learner calls. Subclasses override what they need."""

    name = "method"
    merges = False
    trains = True  # False: the learner runs no optimisation steps (e.g. prototype classifiers)

    def check_backbone(self, backbone: "torch.nn.Module") -> None:
        """Fail before any output is written if the method cannot work on this backbone."""

    def begin_task(self, learner: "ContinualLearner", task: "Task") -> None:
        raise NotImplementedError

    def train_step(self, learner: "ContinualLearner", batch: tuple[Any, torch.Tensor]) -> float:
        raise NotImplementedError

    def end_task(self, learner: "ContinualLearner", task: "Task") -> dict[str, Any]:
        return {}

    def deployed_weights(self) -> dict[str, torch.Tensor] | None:
        """Weights (backbone parameter name → tensor) of the model that is evaluated, when they differ from
        the ones training continues from; None when they are the same."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything of the method's own that a checkpoint must hold (nested dicts/lists of tensors and plain
        values); the model's weights are saved by the learner. Called at task ends and between optimiser steps."""
        return {}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore `state_dict()`; called after `begin_task` when resuming inside a task."""


def _total(tensors: dict[str, torch.Tensor]) -> float:
    """Σ of every element (e.g. the Fisher mass Σ F_t)."""
    return float(sum(float(t.sum()) for t in tensors.values()))


def _sum_norm_sq(tensors: dict[str, torch.Tensor]) -> float:
    return float(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


class TaskVectorMethod(Method):
    """Sequential fine-tuning, closed-form merging and Perturb-and-Merge (pm-method.md §1–§4)."""

    def __init__(self, name: str, config: RunConfig, adaptation: str, perturbation: str, merge: bool,
                 lora_targets: list[str], alpha_rule: str | None = None) -> None:
        self.name = name
        self.config = config
        # A method with its own data-free rule (average: α_t = 1/t; fixed: α_t = λ) needs no Fisher pass.
        self.alpha_rule = alpha_rule or config.alpha_rule
        self.needs_fisher = alpha_rule is None
        self.perturbation = perturbation
        self.merges = merge
        self.adaptation_kind = adaptation
        lora = config.lora
        self.make_adaptation: Callable[[], LoraAdaptation | FullAdaptation] = (
            (lambda: LoraAdaptation(lora.rank, lora.alpha, lora.dropout, lora.targets or lora_targets))
            if adaptation == "lora" else FullAdaptation
        )
        self.schedule = PerturbationSchedule(config.epsilon, config.p0, seed=perturbation_stream_seed(config.seed))
        self.noise_generator = torch.Generator().manual_seed(config.seed + 104729)
        self.merge_state = RunningMergeState()
        self.adaptation: LoraAdaptation | FullAdaptation | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.draws = {-1: 0, 0: 0, 1: 0}
        self.class_statistics = GaussianClassStatistics()  # head.kind = lda
        self.frozen_statistics = GaussianClassStatistics()  # head.frozen_weight > 0: the same, on θ_0
        self.pretrained_weights: dict[str, torch.Tensor] | None = None  # θ_0 in merge space (head.frozen_weight)
        # save_task_models: θ̂_{t-1} and θ*_t of the task just finished, in merge space, and its α (the runner
        # writes them to the run folder at the end_task event)
        self.task_models: dict[str, Any] | None = None

    def check_backbone(self, backbone: "torch.nn.Module") -> None:
        if self.adaptation_kind == "lora":
            resolve_lora_targets(backbone, self.make_adaptation().targets)

    def begin_task(self, learner: "ContinualLearner", task: "Task") -> None:
        c = self.config
        head_params = learner.prepare_head(task)
        self.adaptation = self.make_adaptation()
        self.adaptation.attach(learner.model.backbone)
        learner.model.to(learner.device)
        learner.model.ensemble = None  # rebuilt after the merge, once the task's classes have rows in it
        if c.head.frozen_weight > 0 and task.index == 0:  # (a resume inside a later task loads θ_0 after this)
            self.pretrained_weights = {k: v.detach().clone() for k, v in self.adaptation.merged_weights().items()}
        self.optimizer = torch.optim.AdamW(
            [{"params": self.adaptation.trainable_parameters(), "lr": c.lr},
             {"params": head_params, "lr": c.head_lr}],
            weight_decay=c.weight_decay,
        )
        self.draws = {-1: 0, 0: 0, 1: 0}
        if c.head.probe_epochs:  # linear probe first: the new rows fit the features before the LoRA moves them
            self.head_log = {"probe_losses": learner.fit_head(task, c.head.probe_epochs, c.head_lr, c.weight_decay,
                                                              tag=1)}
        else:
            self.head_log = {}

    def _finish_head(self, learner: "ContinualLearner", task: "Task") -> dict[str, Any]:
        """After the fold: re-fit the task's head rows on the merged, frozen backbone (head.refit_epochs), then
        optionally replace them by L2-normalised class means on it (head.kind = prototype), or add the task's
        class statistics on it and rewrite every seen class's rows as the shared-covariance Gaussian classifier
        (head.kind = lda)."""
        c = self.config
        log = dict(self.head_log)
        if c.head.refit_epochs:
            log["refit_losses"] = learner.fit_head(task, c.head.refit_epochs, c.head_lr, c.weight_decay, tag=2)
        if c.head.kind == "prototype":
            set_prototype_rows(learner.model.head.blocks[learner.head_block], *learner.class_feature_sums(task))
        elif c.head.kind == "lda":
            write_lda_rows(self.class_statistics, learner, task, c.head.shrinkage)
            if c.head.frozen_weight > 0:
                learner.model.ensemble = self._pretrained_ensemble(learner, task)
        return log

    def _pretrained_ensemble(self, learner: "ContinualLearner", task: "Task") -> PretrainedEnsemble:
        """Add the task's class statistics on the pretrained backbone; the ensemble's head ← their LDA rows."""
        model, c = learner.model, self.config
        add_task_statistics(self.frozen_statistics, learner, task,
                            lambda inputs: pretrained_features(model.backbone, self.pretrained_weights, inputs))
        rows, biases = self.frozen_statistics.dense_classifier(c.head.shrinkage, model.head.num_classes)
        dtype = model.head.blocks[0].weight.dtype
        return PretrainedEnsemble(self.pretrained_weights, rows.to(learner.device, dtype),
                                  biases.to(learner.device, dtype), c.head.frozen_weight)

    def train_step(self, learner: "ContinualLearner", batch: tuple[Any, torch.Tensor]) -> float:
        sign = self.schedule.draw() if self.perturbation != "none" else 0  # one draw per optimiser step
        self.draws[sign] += 1
        self.last_draw = sign  # for the per-step log
        return self._optimise(learner, batch, lambda chunk: self.objective(learner, chunk, sign))

    def objective(self, learner: "ContinualLearner", batch: tuple[Any, torch.Tensor],
                  sign: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective to minimise, task loss to report) on a batch, at θ + sign·ε·Δ. The loss is over the current
        task's logits (head.train_logits = task, the masked loss) or over every seen class's (seen; labels as
        global head positions, earlier rows fixed)."""
        inputs, labels = batch
        features = self.adaptation.features(inputs, sign * self.config.epsilon, self.perturbation, self.noise_generator)
        if self.config.head.train_logits == "seen":
            loss = F.cross_entropy(learner.model.head(features), labels + learner.task.label_offset)
        else:
            loss = F.cross_entropy(learner.task_logits(features), labels)
        return loss, loss

    def _optimise(self, learner: "ContinualLearner", batch: tuple[Any, torch.Tensor],
                  objective_of: Callable[[tuple[Any, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]) -> float:
        """One optimiser step on the batch's mean objective. The batch may be split into this process's shard
        (multi-process) and into micro-batches (grad_accumulation); each part's gradient is weighted by its share
        of the global batch, and the parts' gradients are summed (across processes too) before the step.
        A non-finite objective stops the run naming the task and step."""
        self.optimizer.zero_grad(set_to_none=True)
        reported = 0.0
        for chunk, weight in learner.batch_parts(batch):
            with learner.autocast():
                objective, loss = objective_of(chunk)
            if not torch.isfinite(objective):
                raise TrainingDiverged(f"non-finite loss at task {learner.task.index + 1}, step {learner.step}; "
                                       f"{divergence_advice(self.config, self.divergence_hint)}")
            (objective if weight == 1.0 else objective * weight).backward()
            reported += loss.item() * weight
        learner.sum_gradients([p for group in self.optimizer.param_groups for p in group["params"]])
        self.optimizer.step()
        return learner.sum_scalar(reported)

    divergence_hint = ""

    def _fold_into_learner(self, learner: "ContinualLearner", alpha: float | dict[str, float]) -> "torch.nn.Module":
        """Fold the task's adapter in with coefficient α; the learner's backbone becomes the plain result."""
        learner.model.backbone = self.adaptation.fold(alpha)
        self.adaptation = None
        self.optimizer = None
        return learner.model.backbone

    def _task_fisher(self, learner: "ContinualLearner", task: "Task") -> dict[str, torch.Tensor]:
        """Diagonal Fisher of the current task at θ*_t, in merge space (unperturbed, eval mode).

        fisher.logits: 'task' — the loss over the current task's logits (the masked training loss, default);
        'seen' — over every seen class's logits, labels as global head positions.
        fisher.kind: 'empirical' — gradients of the loss at the true labels (default, pm-method.md §2);
        'sampled' — at labels drawn from the model's predictive distribution (one draw per example, seeded per
        task): the true Fisher information."""
        c = self.config.fisher
        total = len(task.train) if c.max_samples is None else min(c.max_samples, len(task.train))
        batches = learner.local_batches(task.train, c.batch_size, limit=total)
        logits_fn = learner.task_logits
        if c.logits == "seen":
            logits_fn = learner.model.head
            batches = ((inputs, labels + task.label_offset) for inputs, labels in batches)
        if c.kind == "sampled":
            batches = self._model_sampled_labels(batches, logits_fn, torch.Generator().manual_seed(
                self.config.seed * 7_919 + task.index))
        seen = [0]  # examples this process's Fisher averaged over (its rows of every batch)

        def counted(stream):
            for inputs, labels in stream:
                seen[0] += len(labels)
                yield inputs, labels

        batches = KnownLength(counted(batches), -(-total // c.batch_size))  # the progress bar's total
        fisher = self.adaptation.fisher(batches, logits_fn, None, learner.progress, f"task {task.index + 1} Fisher")
        return learner.mean_over_processes(fisher, seen[0], total)

    def _model_sampled_labels(self, batches, logits_fn, generator: torch.Generator):
        """The batches with labels replaced by draws y ~ softmax(logits) of the current model."""
        for inputs, _ in batches:
            with torch.no_grad():
                probabilities = logits_fn(self.adaptation.features(inputs)).double().softmax(-1).cpu()
            labels = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
            yield inputs, labels.to(self._device_of(inputs))

    @staticmethod
    def _device_of(inputs: Any) -> torch.device:
        return next(iter(inputs.values())).device if isinstance(inputs, dict) else inputs.device

    def state_dict(self) -> dict[str, Any]:
        full = isinstance(self.adaptation, FullAdaptation)
        return {
            "merge": {"fisher_sum": self.merge_state.fisher_sum,
                      "weighted_optimum_sum": self.merge_state.weighted_optimum_sum,
                      "num_tasks": self.merge_state.num_tasks},
            "schedule": self.schedule.state(),
            "noise": self.noise_generator.get_state(),
            "draws": self.draws,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "anchor": self.adaptation.anchor if full else None,  # θ̂_{t-1} of full fine-tuning
            "head_log": getattr(self, "head_log", {}),
            "class_statistics": self.class_statistics.state_dict(),
            "frozen_statistics": self.frozen_statistics.state_dict(),
            "pretrained_weights": self.pretrained_weights,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        merge = state["merge"]
        self.merge_state.fisher_sum = {k: v.to(device) for k, v in merge["fisher_sum"].items()}
        self.merge_state.weighted_optimum_sum = {k: v.to(device) for k, v in merge["weighted_optimum_sum"].items()}
        self.merge_state.num_tasks = merge["num_tasks"]
        self.schedule.set_state(state["schedule"])
        self.noise_generator.set_state(state["noise"])
        self.draws = dict(state["draws"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state["anchor"] is not None:
            self.adaptation.anchor = {k: v.to(device) for k, v in state["anchor"].items()}
        self.head_log = dict(state.get("head_log", {}))
        self.class_statistics.load_state_dict(state["class_statistics"])
        self.frozen_statistics.load_state_dict(state["frozen_statistics"])
        weights = state["pretrained_weights"]
        self.pretrained_weights = None if weights is None else {k: v.to(device) for k, v in weights.items()}

    def end_task(self, learner: "ContinualLearner", task: "Task") -> dict[str, Any]:
        """Fisher at θ*_t (unperturbed, eval mode) → α_t → fold θ̂_t = θ̂_{t-1} + α_t Δ_t."""
        c = self.config
        task_vector = self.adaptation.task_vector()
        log: dict[str, Any] = {"task_vector_norm": _sum_norm_sq(task_vector) ** 0.5,
                               "perturbation_draws": {str(k): v for k, v in self.draws.items()}}
        alpha = 1.0
        if c.save_task_models:
            before = {k: v.detach().clone() for k, v in self.adaptation.merged_weights().items()}
            self.task_models = {"previous": before, "optimum": {k: before[k] + task_vector[k] for k in task_vector}}
        if self.merges:
            started = time.perf_counter()
            log["acc_before_merge"] = learner.evaluate([task])[0][0]
            log["acc_before_merge_s"] = time.perf_counter() - started
        started = time.perf_counter()
        if self.merges and not self.needs_fisher:
            alpha = decide_alpha(self.alpha_rule, 0.0, 0.0, 0.0, task.index + 1, c.fixed_alpha).alpha
            log.update(alpha=alpha, alpha_raw=None, alpha_simplified=None, alpha_fallback=False)
        elif self.merges:
            previous = self.adaptation.merged_weights()
            normalised = unit_trace if c.fisher.normalise == "trace" else (lambda f: f)
            if c.anchor_pretrained and self.merge_state.num_tasks == 0:  # task 0: θ_0, Fisher of this data at θ_0
                with self.adaptation.at_start():
                    pretrained_fisher = self._task_fisher(learner, task)
                self.merge_state.update(normalised(pretrained_fisher), previous)
                log["pretrained_fisher_mass"] = _total(pretrained_fisher)
            fisher_started = time.perf_counter()
            raw_fisher = self._task_fisher(learner, task)
            log["fisher_s"] = time.perf_counter() - fisher_started
            fisher = normalised(raw_fisher)
            dtype = self.merge_state.dtype  # θ*_t = θ̂_{t-1} + Δ_t formed in the sums' precision (α_1 = 1 exactly)
            optimum = {k: previous[k].to(dtype) + task_vector[k].to(dtype) for k in task_vector}
            self.merge_state.update(fisher, optimum)
            decision = self.merge_state.decide(previous, task_vector, fisher, self.alpha_rule, c.fixed_alpha)
            alpha = decision.alpha
            log.update(alpha=alpha, alpha_raw=decision.raw, alpha_simplified=decision.simplified,
                       alpha_fallback=decision.fallback, fisher_mass=_total(raw_fisher))
            if c.alpha_granularity == "module":  # one α per adapted matrix; the log's alpha is their mean
                per_module = self.merge_state.decide_per_module(previous, task_vector, fisher, self.alpha_rule)
                alpha = {k: d.alpha for k, d in per_module.items()}
                log.update(alpha=sum(alpha.values()) / len(alpha), alpha_model_level=decision.alpha,
                           alpha_per_module=alpha)
        if c.head.drift != "none" and self.class_statistics.sums:
            compensate = self._compensate_drift if c.head.drift == "sdc" else self._move_statistics_linearly
            log["mean_drift"] = compensate(learner, task, alpha)
        if self.task_models is not None:
            self.task_models["alpha"] = alpha
        self._fold_into_learner(learner, alpha)
        log["merge_s"] = time.perf_counter() - started - log.get("fisher_s", 0.0)  # α + fold (+ drift), Fisher aside
        log.update(self._finish_head(learner, task))
        return log

    @torch.no_grad()
    def _features_before_and_after_merge(self, learner: "ContinualLearner", task: "Task", alpha: float
                                         ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per batch of this process's share of the task's training data (eval mode, float64): the features at
        θ̂_{t−1} = θ*_t − Δ_t and at θ̂_t = θ̂_{t−1} + α Δ_t, before the fold (the adapter still holds Δ_t)."""
        learner.model.eval()
        for inputs, _ in learner.local_batches(task.train, learner.eval_batch_size):
            yield (self.adaptation.features(inputs, -1.0, "task_vector").double(),
                   self.adaptation.features(inputs, alpha - 1.0, "task_vector").double())

    @torch.no_grad()
    def _compensate_drift(self, learner: "ContinualLearner", task: "Task", alpha: float) -> float:
        """Semantic drift compensation (Yu et al., 2020) of the stored class means, from the current task's data
        only: with z_i = features at θ̂_{t−1} and z'_i at θ̂_t = θ̂_{t−1} + α Δ_t,

            δ_c = Σ_i w_ic (z'_i − z_i) / Σ_i w_ic,   w_ic = exp(−‖z_i − μ_c‖² / (2 tr Σ))

        (tr Σ: the pooled within-class variance, so a typical member of class c has weight e^{−1/2}).
        Returns the mean ‖δ_c‖ over the old classes."""
        statistics = self.class_statistics
        positions = sorted(statistics.sums)
        known = statistics.means()
        means = torch.stack([known[p] for p in positions]).to(learner.device)
        bandwidth = 2 * statistics.pooled_variance()
        weighted = torch.zeros_like(means)
        weights = torch.zeros(len(positions), dtype=torch.float64, device=learner.device)
        for before, after in self._features_before_and_after_merge(learner, task, alpha):
            kernel = torch.exp(-torch.cdist(before, means).pow(2) / bandwidth)  # [B, C]
            weights += kernel.sum(0)
            weighted += kernel.T @ (after - before)
        weights, weighted = learner.world.sum_(weights), learner.world.sum_(weighted)
        shifts = {p: weighted[i] / weights[i] for i, p in enumerate(positions) if weights[i] > 0}
        statistics.shift_means(shifts)
        return float(torch.stack([v.norm() for v in shifts.values()]).mean()) if shifts else 0.0

    @torch.no_grad()
    def _move_statistics_linearly(self, learner: "ContinualLearner", task: "Task", alpha: float) -> float:
        """Linear drift compensation of the stored class statistics (means and covariance): fit x ↦ xW + b from
        the current task's features z_i at θ̂_{t−1} to z'_i at θ̂_t (`fit_affine_drift`), then move every stored
        example's statistics by it (`GaussianClassStatistics.move_affine`). Returns the mean ‖δ_c‖ over the old
        classes, δ_c = μ_c W + b − μ_c."""
        statistics = self.class_statistics
        dim = next(iter(statistics.sums.values())).shape[0]
        moments = [torch.zeros((), dtype=torch.float64, device=learner.device),  # n, Σz, Σz', Σzᵀz, Σzᵀz'
                   *(torch.zeros(dim, dtype=torch.float64, device=learner.device) for _ in range(2)),
                   *(torch.zeros(dim, dim, dtype=torch.float64, device=learner.device) for _ in range(2))]
        for before, after in self._features_before_and_after_merge(learner, task, alpha):
            for total, part in zip(moments, (len(before), before.sum(0), after.sum(0), before.T @ before,
                                             before.T @ after)):
                total += part
        weight, bias = fit_affine_drift(*(learner.world.sum_(m).cpu() for m in moments), self.config.head.drift_ridge)
        old = statistics.means()
        statistics.move_affine(weight, bias)
        new = statistics.means()
        return float(torch.stack([(new[p] - old[p]).norm() for p in old]).mean())


@torch.no_grad()
def set_prototype_rows(block: torch.nn.Linear, sums: torch.Tensor, counts: torch.Tensor) -> None:
    """Rows ← L2-normalised class means (rows without examples keep their weights), bias 0: for a feature f the
    logit is ‖f‖·cos(f, mean), so the arg-max over classes is the cosine classifier's."""
    for row in range(block.out_features):
        if counts[row] > 0:
            mean = sums[row] / counts[row]
            block.weight[row] = (mean / mean.norm().clamp(min=1e-12)).to(block.weight.dtype)
    block.bias.zero_()


def add_task_statistics(statistics: GaussianClassStatistics, learner: "ContinualLearner", task: "Task",
                        features_of: Callable[[Any], torch.Tensor] | None = None) -> None:
    """Add the task's class statistics on the backbone as it is now (or on `features_of`)."""
    sums, counts, moment = learner.class_feature_statistics(task, features_of=features_of)
    statistics.add([task.label_offset + row for row in range(len(counts))], sums, counts, moment)


def write_lda_rows(statistics: GaussianClassStatistics, learner: "ContinualLearner", task: "Task",
                   shrinkage: float) -> None:
    """Add the task's class statistics on the backbone as it is now; every seen class's rows ← the LDA rows."""
    add_task_statistics(statistics, learner, task)
    statistics.write_rows(learner.model.head, shrinkage)


class SequentialMergeMethod(TaskVectorMethod):
    """Sequential LoRA training (each adapter folded in with α = 1, training goes on from there); the deployed
    model merges task vectors w.r.t. the pretrained weights θ_0:

        magmax: θ_0 + λ · MagMax(τ_1..τ_t),  τ_i = θ_i − θ_0 (cumulative, as in MagMax)
        ties:   θ_0 + λ · TIES(δ_1..δ_t),    δ_i = θ_i − θ_{i−1} (each task's own update)
        dare:   θ_0 + λ · Σ_i DARE(δ_i)      (masks drawn once per task; with p = 0, λ = 1 this is θ_t)
    """

    def __init__(self, name: str, config: RunConfig, lora_targets: list[str], rule: str) -> None:
        super().__init__(name, config, "lora", "none", False, lora_targets)
        self.rule = rule
        self.pretrained: dict[str, torch.Tensor] | None = None
        self.vectors: list[dict[str, torch.Tensor]] = []  # τ_i (magmax) or δ_i / DARE(δ_i) (ties, dare)
        self.cumulative: dict[str, torch.Tensor] | None = None
        self.deployed: dict[str, torch.Tensor] | None = None
        self.dare_generator = torch.Generator().manual_seed(config.seed + 15485863)

    def end_task(self, learner: "ContinualLearner", task: "Task") -> dict[str, Any]:
        c = self.config.task_merge
        delta = {k: v.double().cpu() for k, v in self.adaptation.task_vector().items()}
        if self.pretrained is None:
            self.pretrained = {k: v.double().cpu().clone() for k, v in self.adaptation.merged_weights().items()}
        log: dict[str, Any] = {"task_vector_norm": _sum_norm_sq(delta) ** 0.5}
        self._fold_into_learner(learner, 1.0)
        self.cumulative = delta if self.cumulative is None else {k: self.cumulative[k] + delta[k] for k in delta}
        if self.rule == "magmax":
            self.vectors.append(self.cumulative)
            merged = magmax(self.vectors)
        elif self.rule == "ties":
            self.vectors.append(delta)
            merged = ties(self.vectors, c.keep)
        else:
            self.vectors.append(dare(delta, c.drop, self.dare_generator))
            merged = task_arithmetic(self.vectors)
        deployed = add_scaled(self.pretrained, merged, c.lam)
        device_params = dict(learner.model.backbone.named_parameters())
        self.deployed = {k: v.to(device_params[k].dtype) for k, v in deployed.items()}
        log["deployed_distance"] = _sum_norm_sq({k: deployed[k] - self.pretrained[k] - self.cumulative[k]
                                                 for k in deployed}) ** 0.5  # ‖deployed − sequential model‖
        return log

    def deployed_weights(self) -> dict[str, torch.Tensor] | None:
        return self.deployed

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pretrained": self.pretrained, "vectors": self.vectors,
                "cumulative": self.cumulative, "deployed": self.deployed, "dare": self.dare_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        super().load_state_dict(state, device)
        self.pretrained, self.vectors = state["pretrained"], list(state["vectors"])
        self.cumulative, self.deployed = state["cumulative"], state["deployed"]
        self.dare_generator.set_state(state["dare"])


class FisherWeightedMethod(TaskVectorMethod):
    """Sequential LoRA whose fold-in is Fisher-weighted per element instead of a scalar α.

    cofima (CoFiMA, Marouf et al., 2024): θ̂_t = (S_{t−1} ⊙ θ̂_{t−1} + F_t ⊙ θ*_t) / (S_{t−1} + F_t), S_t = Σ_{i≤t} F_i
        (θ̂_1 = θ*_1; where S_{t−1} + F_t = 0 the plain mean).
    ewc-lora / ewc-full (online EWC, Kirkpatrick et al., 2017): θ̂_t = θ*_t, and training adds
        (λ/2) Σ S_{t−1} ⊙ Δ² — the penalty (λ/2) Σ F ⊙ (θ − θ*)² with θ* the weights before the task, since θ − θ*
        is the task's update Δ (the adapter's ΔW for LoRA, every backbone parameter for full).
    """

    def __init__(self, name: str, config: RunConfig, lora_targets: list[str], rule: str,
                 adaptation: str = "lora") -> None:
        super().__init__(name, config, adaptation, "none", False, lora_targets)
        self.rule = rule
        self.fisher_sum: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "fisher_sum": self.fisher_sum}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        super().load_state_dict(state, device)
        fisher_sum = state["fisher_sum"]
        self.fisher_sum = None if fisher_sum is None else {k: v.to(device) for k, v in fisher_sum.items()}

    def objective(self, learner: "ContinualLearner", batch: tuple[Any, torch.Tensor],
                  sign: int) -> tuple[torch.Tensor, torch.Tensor]:
        objective, loss = super().objective(learner, batch, sign)
        if self.rule != "ewc" or self.fisher_sum is None or self.config.ewc_lambda == 0:
            return objective, loss
        deltas = self.adaptation.differentiable_task_vector()
        penalty = ewc_penalty(deltas, {k: torch.zeros_like(v) for k, v in deltas.items()},
                              {k: self.fisher_sum[k].to(deltas[k]) for k in deltas}, self.config.ewc_lambda)
        return objective + penalty, loss

    divergence_hint = " or ewc_lambda"

    def end_task(self, learner: "ContinualLearner", task: "Task") -> dict[str, Any]:
        task_vector = {k: v.double() for k, v in self.adaptation.task_vector().items()}
        previous = {k: v.double().clone() for k, v in self.adaptation.merged_weights().items()}
        fisher = {k: v.double() for k, v in self._task_fisher(learner, task).items()}
        optimum = {k: previous[k] + task_vector[k] for k in task_vector}
        log: dict[str, Any] = {"task_vector_norm": _sum_norm_sq(task_vector) ** 0.5,
                               "fisher_mass": _total(fisher)}
        if self.rule == "cofima" and self.fisher_sum is not None:
            merged = fisher_weighted_interpolation(previous, optimum, self.fisher_sum, fisher)
        else:
            merged = optimum
        self.fisher_sum = fisher if self.fisher_sum is None else {k: self.fisher_sum[k] + fisher[k] for k in fisher}
        params = dict(self._fold_into_learner(learner, 1.0).named_parameters())
        with torch.no_grad():
            for k, value in merged.items():
                params[k].copy_(value.to(params[k].dtype))
        log["kept_fraction_of_update"] = (
            _total({k: (merged[k] - previous[k]) * task_vector[k] for k in merged})
            / max(_sum_norm_sq(task_vector), 1e-300))  # 1 = whole task vector, 0 = none (projection)
        return log


class SimpleCIL(Method):
    """SimpleCIL (Zhou et al., 2023): frozen pretrained backbone, one prototype per class (the mean feature of its
    training data), cosine classifier. Head rows are the L2-normalised prototypes with zero bias: for a feature f,
    f·p/‖p‖ = ‖f‖·cos(f, p), and ‖f‖ is the same for every class, so the arg-max is the cosine classifier's.
    With head.kind = lda, the frozen backbone gets the shared-covariance Gaussian classifier instead (the
    frozen-backbone diagnostic for pm-lora with the same head)."""

    name = "simplecil"
    trains = False

    def __init__(self, config: RunConfig) -> None:
        if config.head.kind not in ("prototype", "lda"):
            raise UserError(f"simplecil's head is a prototype or lda classifier, got head.kind={config.head.kind}; "
                            f"remove the key or set head.kind=lda")
        self.config = config
        self.class_statistics = GaussianClassStatistics()  # per head position (domain-incremental: all domains)

    def begin_task(self, learner: "ContinualLearner", task: "Task") -> None:
        learner.prepare_head(task)

    def state_dict(self) -> dict[str, Any]:
        return {"class_statistics": self.class_statistics.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.class_statistics.load_state_dict(state["class_statistics"])

    @torch.no_grad()
    def end_task(self, learner: "ContinualLearner", task: "Task") -> dict[str, Any]:
        block = learner.model.head.blocks[learner.head_block]
        block.requires_grad_(False)
        if self.config.head.kind == "lda":
            write_lda_rows(self.class_statistics, learner, task, self.config.head.shrinkage)
            return {}
        statistics = self.class_statistics
        positions = [task.label_offset + row for row in range(block.out_features)]
        statistics.add(positions, *learner.class_feature_sums(task))
        known = [statistics.sums.get(p, torch.zeros(block.in_features, dtype=torch.float64)) for p in positions]
        counts = [int(statistics.counts.get(p, 0)) for p in positions]
        set_prototype_rows(block, torch.stack([k.to(learner.device) for k in known]),
                           torch.tensor(counts, dtype=torch.float64))
        return {"prototype_counts": counts}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    build: Callable[[RunConfig, list[str]], Method]  # (config, backbone's default LoRA targets) -> method
    keys: frozenset[str]  # config keys the method reads beyond COMMON_KEYS
    defaults: dict[str, Any] = field(default_factory=dict)  # config defaults of this method (below the user's)
    joint: bool = False  # trains once on the union of all tasks (an upper bound, not a continual method)


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    METHODS[spec.name] = spec
    return spec


def _task_vector_method(name: str, description: str, adaptation: str, perturbation: str, merge: bool,
                        alpha_rule: str | None = None, defaults: dict[str, Any] | None = None) -> MethodSpec:
    keys = (LORA_KEYS if adaptation == "lora" else frozenset()) | HEAD_KEYS | {"save_task_models"}
    if merge:
        keys |= MERGE_KEYS if alpha_rule is None else (frozenset({"fixed_alpha"}) if alpha_rule == "fixed" else frozenset())
    keys |= PERTURB_KEYS if perturbation != "none" else frozenset()
    return register_method(MethodSpec(
        name, description,
        lambda config, targets: TaskVectorMethod(name, config, adaptation, perturbation, merge, targets, alpha_rule),
        keys, defaults or {},
    ))


_task_vector_method("pm-lora", "LoRA-P&M: task-vector perturbation + closed-form Fisher merge (the paper)", "lora", "task_vector", True)
_task_vector_method("pm-full", "full-parameter P&M: perturbation + closed-form merge of all backbone weights", "full", "task_vector", True)
# Chosen on the validation split (docs/results.md, "Long task sequences"): the best mean over wordnet-10 and
# mnist-fashion-10 among the head / drift / anchor / Fisher-normalisation options.
_task_vector_method("pm-lora-plus", "LoRA-P&M + LDA head from stored class statistics (head.kind=lda) + linear "
                    "drift compensation of the stored means and covariance (head.drift=linear) + the pretrained "
                    "weights as task 0 of the merge (anchor_pretrained) + unit-mass task Fishers "
                    "(fisher.normalise=trace) + an ensemble with the pretrained backbone's LDA head "
                    "(head.frozen_weight=0.5)", "lora", "task_vector", True,
                    defaults={"head": {"kind": "lda", "drift": "linear", "frozen_weight": 0.5},
                              "anchor_pretrained": True, "fisher": {"normalise": "trace"}})
_task_vector_method("merge-lora", "LoRA + closed-form merge, no perturbation (merge-only ablation)", "lora", "none", True)
_task_vector_method("noise-lora", "LoRA + closed-form merge + Gaussian-noise perturbation (ablation)", "lora", "gaussian", True)
_task_vector_method("seq-lora", "sequential LoRA: each task's adapter folded in with alpha = 1", "lora", "none", False)
_task_vector_method("seq-full", "sequential full fine-tuning", "full", "none", False)
for _rule, _description, _lam in (
    ("magmax", "MagMax: sequential LoRA; deployed = theta_0 + lam * per-element max-|tau| of the task vectors", 0.5),
    ("ties", "TIES: sequential LoRA; deployed = theta_0 + lam * TIES(trim keep, elect sign, disjoint mean) of the "
             "per-task updates", 1.0),
    ("dare", "DARE: sequential LoRA; deployed = theta_0 + lam * sum of per-task updates with entries dropped (drop) "
             "and rescaled", 1.0),
):
    register_method(MethodSpec(
        _rule, _description,
        (lambda rule: lambda config, targets: SequentialMergeMethod(rule, config, targets, rule))(_rule),
        LORA_KEYS | {"task_merge.lam"} | ({"task_merge.keep"} if _rule == "ties" else set())
        | ({"task_merge.drop"} if _rule == "dare" else set()),
        {"task_merge": {"lam": _lam}},
    ))
register_method(MethodSpec(
    "cofima", "CoFiMA: sequential LoRA; element-wise Fisher-weighted interpolation of consecutive models",
    lambda config, targets: FisherWeightedMethod("cofima", config, targets, "cofima"),
    LORA_KEYS | FISHER_KEYS,
))
register_method(MethodSpec(
    "ewc-lora", "online EWC on the LoRA-merged weights: (ewc_lambda/2) sum F (W - W*)^2 added to the loss",
    lambda config, targets: FisherWeightedMethod("ewc-lora", config, targets, "ewc"),
    LORA_KEYS | FISHER_KEYS | {"ewc_lambda"},
))
register_method(MethodSpec(
    "ewc-full", "online EWC with full fine-tuning: (ewc_lambda/2) sum F (theta - theta*)^2 over every backbone "
                "parameter added to the loss",
    lambda config, targets: FisherWeightedMethod("ewc-full", config, targets, "ewc", adaptation="full"),
    FISHER_KEYS | {"ewc_lambda"},
    # EWC estimates F from a sample of the task; per-sample gradients of every backbone weight (word embeddings
    # included) cost ~0.1 s per example on MiniLM/CPU, so 256 examples per task by default.
    {"fisher": {"max_samples": 256}},
))
register_method(MethodSpec(
    "simplecil", "SimpleCIL: frozen backbone, class-mean prototypes, cosine classifier (no training; head.kind=lda: "
                 "shared-covariance Gaussian classifier instead)",
    lambda config, targets: SimpleCIL(config), frozenset({"head.kind", "head.shrinkage"}),
    {"head": {"kind": "prototype"}},
))
register_method(MethodSpec(
    "frozen-lda", "frozen backbone + the shared-covariance Gaussian (LDA) head of pm-lora-plus: the diagnostic for "
                  "what pm-lora-plus's backbone merging adds (no training)",
    lambda config, targets: SimpleCIL(config), frozenset({"head.kind", "head.shrinkage"}), {"head": {"kind": "lda"}},
))
register_method(MethodSpec(
    "joint", "joint training on all tasks' data at once with LoRA (upper bound; NOT continual)",
    lambda config, targets: TaskVectorMethod("joint", config, "lora", "none", False, targets), LORA_KEYS,
    joint=True,
))
_task_vector_method("avg-lora", "continual model averaging: each task's LoRA update folded in with alpha_t = 1/t",
                    "lora", "none", True, alpha_rule="average")
_task_vector_method("task-arithmetic", "task arithmetic: each task's LoRA update folded in with fixed lambda "
                    "(fixed_alpha, default 0.3)", "lora", "none", True, alpha_rule="fixed", defaults={"fixed_alpha": 0.3})


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'{did_you_mean(name, METHODS)}; `perturbmerge methods` lists them")
    return METHODS[name]


def unused_keys(specs: list[MethodSpec], explicit_keys: set[str]) -> list[str]:
    """Keys the user set that none of `specs` reads (data.* keys belong to the benchmark and are checked there)."""
    used = set(COMMON_KEYS).union(*(spec.keys for spec in specs))
    return sorted(k for k in explicit_keys if k not in used and not k.startswith("data."))


def check_keys_apply(spec: MethodSpec, explicit_keys: set[str]) -> None:
    """A key the user set that this method never reads is an error (config must match code)."""
    unused = unused_keys([spec], explicit_keys)
    if unused:
        raise UserError(
            f"method '{spec.name}' does not use {', '.join(unused)}; remove it or pick a method that does "
            f"(`perturbmerge methods`)"
        )
