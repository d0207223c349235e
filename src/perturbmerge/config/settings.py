"""The run configuration's schema: typed dataclasses, one per concern, each field with its default and the help text
`perturbmerge keys` prints. Choices are `Literal` types, checked on every assignment (config/parsing.py) and for a
config built in Python (config/validation.py).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import UserError, did_you_mean


def option(default: Any, help: str) -> Any:
    """A config field with its help text (shown by `perturbmerge keys`); list defaults are copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


FisherKind = Literal["empirical", "sampled"]
Logits = Literal["task", "seen"]
FisherNormalisation = Literal["none", "trace"]
HeadKind = Literal["linear", "prototype", "lda", "ranpac", "fecam"]
Drift = Literal["none", "sdc", "linear"]
AlphaRule = Literal["closed_form", "simplified", "average", "fixed"]
AlphaGranularity = Literal["model", "module"]
Precision = Literal["fp32", "bf16"]


@dataclass
class LoraSettings:
    rank: int = option(8, "LoRA rank r of each task's adapter")
    alpha: float = option(16.0, "LoRA alpha; the branch is scaled by alpha / rank")
    dropout: float = option(0.0, "dropout on the LoRA branch's input")
    targets: list[str] | None = option(None, "module-name suffixes to adapt (e.g. query,value); null: the "
                                             "backbone's default (docs/backbones.md)")


@dataclass
class FisherSettings:
    max_samples: int | None = option(None, "examples per task in the Fisher pass (a fixed random subset); null: all")
    batch_size: int = option(64, "examples per forward/backward pass of the Fisher (its memory is a training "
                                 "step's at this batch; causal-LM benchmarks default to their training batch_size)")
    kind: FisherKind = option("empirical", "empirical: gradients at the true labels; sampled: at labels drawn "
                                           "from the model's predictive distribution (the true Fisher)")
    logits: Logits = option("task", "task: the loss over the current task's logits (the masked loss); seen: over "
                                     "every seen class's")
    normalise: FisherNormalisation = option(
        "none", "trace: each task's Fisher enters the merge divided by its total Σ F_t, so every task weighs the "
                "same and α depends on where each Fisher lies, not on its size")


@dataclass
class DataSettings:
    """Data settings. test_fraction and class_order apply to the bring-your-own-data benchmarks (csv:PATH,
    folder:PATH); validation_fraction to every benchmark."""

    test_fraction: float = option(0.2, "csv:/jsonl:/folder: share of each class held out for testing (fixed split "
                                       "seed)")
    class_order: list[str] | None = option(None, "csv:/jsonl:/folder: explicit class order, cut into --tasks groups; "
                                                 "null: the seed's order")
    validation_fraction: float = option(
        0.0, "> 0: hold out this share of each task's training examples per class and evaluate on them instead of "
             "the test split (for tuning; the test split is then never read)")
    augment: bool = option(False, "paper image benchmarks: random-resized-crop + flip on training batches")
    train_per_class: int | None = option(None, "langid: training words per language, the first N of its fixed "
                                               "sample; null: all 1,000")
    test_per_class: int | None = option(None, "langid: test words per language, the first N of its fixed sample; "
                                              "null: all 300")
    train_per_task: int | None = option(None, "polyglot: training pairs per task, the first N of its fixed sample; "
                                              "null: all 200 (countries: 148)")
    test_per_task: int | None = option(None, "polyglot: test pairs per task, the first N of its fixed sample; "
                                             "null: all 100")


@dataclass
class TaskMergeSettings:
    """Merges of sequentially trained task vectors (magmax, ties, dare): θ = θ_0 + lam · merge(τ_1..τ_t)."""

    lam: float = option(1.0, "λ in θ_0 + λ · merge(τ_1..τ_t)")
    keep: float = option(0.2, "ties: fraction of entries kept per task vector (top by magnitude)")
    drop: float = option(0.5, "dare: drop probability (survivors rescaled by 1/(1 − drop))")


@dataclass
class ContinualLoraSettings:
    """The continual-LoRA baselines (docs/method.md): InfLoRA's subspace memory, O-LoRA's penalties."""

    inflora_threshold: float = option(0.95, "inflora: share of a task's layer-input energy the subspace memory must "
                                            "explain after the first task; rises linearly to 1.0 at the last "
                                            "task (the paper's DualGPM schedule)")
    olora_orthogonal: float = option(0.5, "olora: λ₁ in λ₁ Σ_i Σ_layers ‖A_i A_tᵀ‖²_F, the new adapter's "
                                          "down-projection against every earlier task's")
    olora_l2: float = option(0.0, "olora: λ₂ in λ₂ Σ ‖θ‖₂ over the new adapter's matrices (the paper: 0)")


@dataclass
class HeadSettings:
    """Classifier-protocol options of the task-vector methods (defaults: the paper-faithful masked linear head)."""

    kind: HeadKind = option("linear", "linear: trained rows; prototype: after the merge, the task's rows become "
                                      "normalised class means; lda: every seen class's rows from stored class "
                                      "statistics (shared-covariance Gaussian); ranpac: a random projection "
                                      "+ ReLU + ridge read-out from accumulated Gram statistics (RanPAC); "
                                      "fecam: per-class shrunk covariances, Mahalanobis distance (FeCAM)")
    rp_dim: int | None = option(None, "ranpac: width M of the random projection; null: 10,000 on a CUDA GPU (the "
                                      "paper's), 2048 on a CPU or MPS (resolved when the run starts and recorded)")
    shrinkage: float = option(0.1, "lda: Σ_γ = (1 − γ) Σ + γ (tr Σ / d) I")
    drift: Drift = option("none", "lda: sdc moves the stored class means by the drift the merge causes on the "
                                  "task's data; linear moves means and covariance by a fitted affine map (lda, "
                                  "and fecam's per-class statistics)")
    drift_ridge: float = option(3.0, "drift=linear: ridge λ = drift_ridge · tr(Z̃ᵀZ̃) / d towards W = I")
    train_logits: Logits = option("task", "task: the training loss over the current task's logits (the paper's "
                                          "masked loss); seen: over every seen class's (earlier rows fixed)")
    frozen_weight: float = option(0.0, "lda: > 0 adds w · the log-posterior of the LDA head on the pretrained "
                                       "backbone to the merged backbone's (a log-linear ensemble)")
    probe_epochs: int = option(0, "> 0: fit the task's new rows on the frozen backbone first (linear probe)")
    refit_epochs: int = option(0, "> 0: re-fit the task's rows on the merged, frozen backbone after the fold")
    align_epochs: int = option(0, "> 0: SLCA's classifier alignment after the fold: every seen class's rows "
                                  "re-trained on features sampled from the stored class Gaussians")
    align_samples: int = option(256, "align_epochs > 0: features sampled per class and epoch")


@dataclass
class CheckpointSettings:
    """Checkpoints in the run folder (docs/reliability.md); they do not change results."""

    enabled: bool = option(True, "checkpoint after every task and every every_steps optimiser steps")
    every_steps: int = option(200, "optimiser steps between checkpoints inside a task; 0: only after each task")
    keep_final: bool = option(False, "keep the last checkpoint once results.json is written")


@dataclass
class LogSettings:
    """Run logs besides results.json and steps.csv; they do not change results."""

    tensorboard: bool = option(False, "TensorBoard event files in <run>/tensorboard/ (pip install tensorboard)")


@dataclass
class RunConfig:
    benchmark: str = option("wordnet", "benchmark name (`perturbmerge benchmarks`), csv:PATH, jsonl:PATH or "
                                       "folder:PATH")
    backbone: str | None = option(None, "backbone name or hf:DIR / timm:DIR (docs/backbones.md); null: the "
                                        "benchmark's")
    method: str = option("pm-lora", "method name (`perturbmerge methods`)")
    seed: int = option(0, "class order, initialisations, data order, perturbation draws")
    tasks: int | None = option(None, "number of tasks; null: the benchmark's default")
    epochs: int = option(5, "training epochs per task")
    batch_size: int = option(32, "training examples per optimiser step")
    eval_batch_size: int = option(256, "examples per forward pass in evaluation and statistics passes")
    lr: float = option(1e-3, "learning rate of the adapted weights (AdamW)")
    head_lr: float = option(1e-2, "learning rate of the classifier head")
    weight_decay: float = option(0.0, "AdamW weight decay")
    epsilon: float = option(0.5, "perturbation size ε: the weights W + (1 + sε)ΔW")
    p0: float = option(1.0 / 3.0, "probability of s = 0 (no perturbation) in a step; ±1 with (1 − p0)/2 each")
    alpha_rule: AlphaRule = option("closed_form", "closed_form: α* from the summed Fishers (the paper); "
                                                  "simplified: the current task's Fisher only; average: 1/t; "
                                                  "fixed: fixed_alpha")
    fixed_alpha: float = option(0.5, "α of alpha_rule=fixed (task-arithmetic: λ)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    data_dir: str | None = option(None, "where fetched data sets are cached; null: the default data folder")
    lora: LoraSettings = section(LoraSettings, "the LoRA adapter")
    fisher: FisherSettings = section(FisherSettings, "the task Fisher")
    data: DataSettings = section(DataSettings, "data")
    task_merge: TaskMergeSettings = section(TaskMergeSettings, "magmax / ties / dare")
    continual_lora: ContinualLoraSettings = section(ContinualLoraSettings, "inflora / olora")
    ewc_lambda: float = option(100.0, "ewc-lora / ewc-full: penalty strength λ in (λ/2) Σ F ⊙ (θ − θ*)²")
    checkpoint: CheckpointSettings = section(CheckpointSettings, "checkpoints")
    head: HeadSettings = section(HeadSettings, "the classifier head")
    alpha_granularity: AlphaGranularity = option("model", "module: one closed-form α per adapted matrix (the "
                                                          "paper's ablation)")
    anchor_pretrained: bool = option(False, "the pretrained weights enter the merge as task 0 (θ*_0 = θ_0 with "
                                            "task 1's Fisher at θ_0), pulling every α toward θ_0")
    precision: Precision = option("fp32", "bf16: autocast forward passes in bfloat16 (GPU); the Fisher stays fp32")
    grad_accumulation: int = option(1, "micro-batches per optimiser step (batch_size stays the global batch)")
    save_task_models: bool = option(False, "write θ̂_{t-1}, θ*_t, α and the head per task to <run>/task_models/ "
                                           "for `perturbmerge landscape` (results unchanged)")
    save_model: bool = option(False, "write the final model to <run>/model/ for export and predict (results "
                                     "unchanged)")
    log: LogSettings = section(LogSettings, "logs")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check/convert one value against its annotation (int, float, str, bool, list[str], optional)."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise UserError(f"{key} must not be null; give a value, e.g. --set {key}=...")
    base = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        if value in choices:
            return value
        raise UserError(f"{key} must be one of {', '.join(choices)}, got '{value}'{did_you_mean(str(value), choices)}"
                        f"; e.g. --set {key}={choices[0]}")
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if base is str and isinstance(value, str):
        return value
    if base is bool and isinstance(value, bool):
        return value
    if typing.get_origin(base) is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    name = getattr(base, "__name__", str(base))
    raise UserError(f"{key} must be {name}, got {value!r}; fix it in the config or --set {key}=...")
