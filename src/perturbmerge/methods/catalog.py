"""Every built-in method as a recipe of parts. Adding a method is one `register_recipe(...)` here (or in a file of
your own): the keys it accepts follow from its parts (docs/architecture.md)."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import RunConfig
from ..errors import did_you_mean
from . import head_part, merger as mergers, perturbation as perturbations, prototype, regulariser
from .fisher_weighted import FisherWeightedMethod
from .inflora import InfLoraMethod
from .olora import OLoraMethod
from .registry import MethodSpec, register_method
from .sdlora import SdLoraMethod
from .sequential_merge import SequentialMergeMethod
from .task_vector import LORA_KEYS, TaskVectorMethod

HEAD_KEYS = head_part.KEYS
HEAD_KEYS_WITHOUT_DRIFT = HEAD_KEYS - {"head.drift", "head.drift_ridge"}  # for folds that are not θ̂ + αΔ
MergerKind = Literal["closed_form", "average", "fixed", "sequential"]


@dataclass(frozen=True)
class Recipe:
    """A task-vector method: adaptation + perturbation + merger + head (+ the run's defaults for its keys)."""

    name: str
    description: str
    adaptation: Literal["lora", "full"]  # lora: a fresh PEFT adapter per task; full: every backbone weight trains
    perturbation: perturbations.PerturbationKind  # none | task_vector (P&M) | gaussian (ablation)
    merger: MergerKind  # closed_form (α* from Fishers) | average (1/t) | fixed (fixed_alpha) | sequential (α = 1)
    defaults: dict[str, Any] = field(default_factory=dict)
    joint: bool = False
    family: type[TaskVectorMethod] = TaskVectorMethod  # a subclass adds what happens around the adapter
    own_keys: frozenset[str] = frozenset()  # keys the family reads beyond its parts'

    def __post_init__(self) -> None:
        """A recipe names its parts by value; a value that is not one of its field's choices is refused when the
        recipe is written (e.g. merger='closed-form'), not deep inside a run."""
        hints = typing.get_type_hints(Recipe)
        for name in ("adaptation", "perturbation", "merger"):
            choices = typing.get_args(hints[name])
            if getattr(self, name) not in choices:
                raise ValueError(f"recipe '{self.name}': {name}={getattr(self, name)!r} is not one of "
                                 f"{', '.join(choices)}{did_you_mean(str(getattr(self, name)), choices)}")

    def build(self, config: RunConfig, lora_targets: list[str]) -> TaskVectorMethod:
        merger = mergers.MERGERS[self.merger](config)
        perturbation = perturbations.Perturbation(self.perturbation, config.epsilon, config.p0, config.seed)
        return self.family(self.name, config, self.adaptation, perturbation, merger, lora_targets)

    @property
    def keys(self) -> frozenset[str]:
        merger_keys = {"closed_form": mergers.CLOSED_FORM_KEYS, "fixed": frozenset({"fixed_alpha"})}
        return ((LORA_KEYS if self.adaptation == "lora" else frozenset())
                | (perturbations.KEYS if self.perturbation != "none" else frozenset())
                | merger_keys.get(self.merger, frozenset())
                | (HEAD_KEYS_WITHOUT_DRIFT if self.joint else HEAD_KEYS) | {"save_task_models"} | self.own_keys)


def register_recipe(recipe: Recipe) -> MethodSpec:
    return register_method(MethodSpec(recipe.name, recipe.description, recipe.build, recipe.keys, recipe.defaults,
                                      recipe.joint))


register_recipe(Recipe("pm-lora", "LoRA-P&M: task-vector perturbation + closed-form Fisher merge (the paper)",
                       "lora", "task_vector", "closed_form"))
register_recipe(Recipe("pm-full", "full-parameter P&M: perturbation + closed-form merge of all backbone weights",
                       "full", "task_vector", "closed_form"))
# Chosen on the validation split (docs/results.md, "Long task sequences"): the best mean over wordnet-10 and
# mnist-fashion-10 among the head / drift / anchor / Fisher-normalisation options.
register_recipe(Recipe(
    "pm-lora-plus", "LoRA-P&M + LDA head from stored class statistics (head.kind=lda) + linear drift compensation of "
    "the stored means and covariance (head.drift=linear) + the pretrained weights as task 0 of the merge "
    "(anchor_pretrained) + unit-mass task Fishers (fisher.normalise=trace) + an ensemble with the pretrained "
    "backbone's LDA head (head.frozen_weight=0.5)", "lora", "task_vector", "closed_form",
    defaults={"head": {"kind": "lda", "drift": "linear", "frozen_weight": 0.5}, "anchor_pretrained": True,
              "fisher": {"normalise": "trace"}}))
register_recipe(Recipe("merge-lora", "LoRA + closed-form merge, no perturbation (merge-only ablation)",
                       "lora", "none", "closed_form"))
register_recipe(Recipe("noise-lora", "LoRA + closed-form merge + Gaussian-noise perturbation (ablation)",
                       "lora", "gaussian", "closed_form"))
register_recipe(Recipe("seq-lora", "sequential LoRA: each task's adapter folded in with alpha = 1",
                       "lora", "none", "sequential"))
register_recipe(Recipe("seq-full", "sequential full fine-tuning", "full", "none", "sequential"))
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
        LORA_KEYS | HEAD_KEYS_WITHOUT_DRIFT | {"task_merge.lam"} | ({"task_merge.keep"} if _rule == "ties" else set())
        | ({"task_merge.drop"} if _rule == "dare" else set()),
        {"task_merge": {"lam": _lam}},
    ))
register_method(MethodSpec(
    "cofima", "CoFiMA: sequential LoRA; element-wise Fisher-weighted interpolation of consecutive models",
    lambda config, targets: FisherWeightedMethod("cofima", config, targets, "cofima"),
    LORA_KEYS | mergers.task_fisher_part.KEYS | HEAD_KEYS_WITHOUT_DRIFT,
))
register_method(MethodSpec(
    "ewc-lora", "online EWC on the LoRA-merged weights: (ewc_lambda/2) sum F (W - W*)^2 added to the loss",
    lambda config, targets: FisherWeightedMethod("ewc-lora", config, targets, "ewc"),
    LORA_KEYS | mergers.task_fisher_part.KEYS | regulariser.KEYS | HEAD_KEYS_WITHOUT_DRIFT,
))
register_method(MethodSpec(
    "ewc-full", "online EWC with full fine-tuning: (ewc_lambda/2) sum F (theta - theta*)^2 over every backbone "
                "parameter added to the loss",
    lambda config, targets: FisherWeightedMethod("ewc-full", config, targets, "ewc", adaptation="full"),
    mergers.task_fisher_part.KEYS | regulariser.KEYS | HEAD_KEYS_WITHOUT_DRIFT,
    # EWC estimates F from a sample of the task; per-sample gradients of every backbone weight (word embeddings
    # included) cost ~0.1 s per example on MiniLM/CPU, so 256 examples per task by default.
    {"fisher": {"max_samples": 256}},
))
register_method(MethodSpec(
    "zero-shot", "the pretrained model evaluated on every task, nothing trained (causal-LM tasks: the reference a "
                 "fine-tuned model must beat)", lambda config, targets: prototype.ZeroShot(config), frozenset(),
    kinds=frozenset({"causal_lm"})))
register_method(MethodSpec(
    "simplecil", "SimpleCIL: frozen backbone, class-mean prototypes, cosine classifier (no training; head.kind=lda: "
                 "shared-covariance Gaussian classifier instead)",
    lambda config, targets: prototype.SimpleCIL(config), prototype.KEYS, {"head": {"kind": "prototype"}},
))
register_method(MethodSpec(
    "frozen-lda", "frozen backbone + the shared-covariance Gaussian (LDA) head of pm-lora-plus: the diagnostic for "
                  "what pm-lora-plus's backbone merging adds (no training)",
    lambda config, targets: prototype.SimpleCIL(config), prototype.KEYS, {"head": {"kind": "lda"}},
))
for _head, _title, _description in (
    ("ranpac", "RanPAC's", "RanPAC (McDonnell et al., 2023) without its first-session adaptation: frozen backbone, "
               "fixed random projection + ReLU, ridge read-out from accumulated Gram statistics, lambda chosen per "
               "task (no training)"),
    ("fecam", "FeCAM's", "FeCAM (Goswami et al., 2023) on the frozen backbone: per-class means and shrunk, normalised "
              "covariances; Mahalanobis distance of L2-normalised features (no training)"),
):  # each statistics head alone on the frozen backbone, and on P&M's merged backbone
    register_method(MethodSpec(_head, _description, lambda config, targets: prototype.SimpleCIL(config),
                               prototype.KEYS, {"head": {"kind": _head}}))
    register_recipe(Recipe(f"pm-lora-{_head}", f"LoRA-P&M (the paper's training and merge) with {_title} head on the "
                           f"merged backbone (head.kind={_head})", "lora", "task_vector", "closed_form",
                           defaults={"head": {"kind": _head}}))
register_recipe(Recipe("joint", "joint training on all tasks' data at once with LoRA (a reference, NOT continual)",
                       "lora", "none", "sequential", joint=True))
register_recipe(Recipe("avg-lora", "continual model averaging: each task's LoRA update folded in with alpha_t = 1/t",
                       "lora", "none", "average"))
register_recipe(Recipe("task-arithmetic", "task arithmetic: each task's LoRA update folded in with fixed lambda "
                       "(fixed_alpha, default 0.3)", "lora", "none", "fixed", defaults={"fixed_alpha": 0.3}))
# The continual-LoRA baselines (docs/method.md): each trains one LoRA per task and folds it in with α = 1.
register_recipe(Recipe("slca", "SLCA-style: sequential LoRA (the slow learner) + classifier alignment on features "
                       "sampled from stored class Gaussians after each task (head.align_epochs=5)", "lora", "none",
                       "sequential", defaults={"head": {"align_epochs": 5}}))
register_recipe(Recipe("pm-lora-slca", "LoRA-P&M with SLCA's classifier alignment after each merge "
                       "(head.align_epochs=5)", "lora", "task_vector", "closed_form",
                       defaults={"head": {"align_epochs": 5}}))
register_recipe(Recipe("inflora", "InfLoRA: each task's LoRA down-projection designed in the complement of the "
                       "earlier tasks' input subspace (GPM memory), only the up-projection trains", "lora", "none",
                       "sequential", family=InfLoraMethod, own_keys=frozenset({"continual_lora.inflora_threshold"})))
register_recipe(Recipe("sd-lora", "SD-LoRA: earlier tasks' LoRA directions kept (unit norm, fixed) with learned "
                       "magnitudes, a fresh LoRA per task", "lora", "none", "sequential", family=SdLoraMethod))
register_recipe(Recipe("o-lora", "O-LoRA: a fresh LoRA per task with the penalty λ₁ Σ ‖A_i A_tᵀ‖²_F pushing its "
                       "down-projection orthogonal to the earlier tasks'", "lora", "none", "sequential",
                       family=OLoraMethod, own_keys=frozenset({"continual_lora.olora_orthogonal",
                                                                "continual_lora.olora_l2"})))
