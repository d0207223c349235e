"""P&M with a plain `transformers.Trainer`: one Trainer per task, this callback draws the perturbation per optimiser
step and merges when the Trainer finishes.

    pm = PerturbAndMerge(model, targets=["query", "value"])
    callback = PerturbAndMergeCallback(pm)
    for train_set in tasks:
        trainer = Trainer(model=pm.begin_task(), args=args, train_dataset=train_set, callbacks=[callback])
        trainer.train()                       # on_train_end: Fisher on the train dataloader → α* → fold
        print(callback.records[-1].alpha)
    pm.model                                  # the merged model (its original class, e.g. ...ForSequenceClassification)

The perturbation holds for a whole optimiser step: with gradient accumulation every micro-batch of the step sees the
same draw s (`on_step_begin` … `on_step_end`), as in `ContinualLearner`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback

from .api import PerturbAndMerge, TaskRecord


def sequence_classification_loss(module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-example cross-entropy of a Hugging Face classification model on a collated batch with `labels`."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return F.cross_entropy(module(**inputs).logits, batch["labels"], reduction="none")


def causal_lm_loss(module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-example summed NLL of the labelled tokens of a Hugging Face causal LM batch (token `labels` as the
    Trainer passes them, −100 where no loss is wanted, e.g. on the prompt): Σ_j −log p(y_j | y_<j), shape [N]. The
    example's log-likelihood, whose squared gradient the Fisher averages (the causal-LM kind's per-example loss)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = module(**inputs).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none", ignore_index=-100)
    return nll.sum(1)


def per_example_loss(module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The callback's default: `causal_lm_loss` for token labels [N, L], else `sequence_classification_loss`."""
    if batch["labels"].dim() == 2:
        return causal_lm_loss(module, batch)
    return sequence_classification_loss(module, batch)


def _on_device(batches: Iterable[Any], device: torch.device) -> Iterable[Any]:
    for batch in batches:
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class PerturbAndMergeCallback(TrainerCallback):
    """Args:
        pm: the `PerturbAndMerge` whose `begin_task()` model the Trainer trains.
        per_sample_loss: `f(module, batch) -> [N]` losses for the Fisher (default: `per_example_loss`, the causal-LM
            loss for token labels, classification cross-entropy for one label per example).
        fisher_batches: what to estimate the Fisher on (default: the Trainer's train dataloader).
    After each task `records` holds its `TaskRecord` (α, Fisher mass, ‖Δ‖, draws); `losses` the logged losses."""

    def __init__(self, pm: PerturbAndMerge,
                 per_sample_loss: Callable[[nn.Module, Any], torch.Tensor] = per_example_loss,
                 fisher_batches: Iterable[Any] | None = None) -> None:
        self.pm, self.per_sample_loss, self.fisher_batches = pm, per_sample_loss, fisher_batches
        self.records: list[TaskRecord] = []
        self.losses: list[dict[str, float]] = []
        self._step = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._step = self.pm.perturbed()
        self._step.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step is not None:
            self._step.__exit__(None, None, None)
            self._step = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append({"task": len(self.records) + 1, "step": state.global_step, "loss": float(logs["loss"])})

    def on_train_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.on_step_end(args, state, control)  # a run stopped inside a step leaves no scale behind
        batches = self.fisher_batches if self.fisher_batches is not None else train_dataloader
        device = next(self.pm.adaptation.peft_model.parameters()).device
        self.records.append(self.pm.end_task(_on_device(batches, device), self.per_sample_loss))
