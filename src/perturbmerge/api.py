"""P&M inside your own training loop: `PerturbAndMerge` wraps any `nn.Module` (a Hugging Face model included).

    pm = PerturbAndMerge(model, targets=["query", "value"])
    for task in tasks:
        trainable = pm.begin_task()                      # a fresh LoRA adapter (PEFT) on the targets
        optimizer = torch.optim.AdamW(pm.parameters() + list(head.parameters()), lr=1e-3)
        for batch in task.batches:
            with pm.perturbed():                         # one draw s ∈ {−1, 0, +1}: W + (1 + sε)·ΔW inside
                loss = my_loss(trainable, batch)
            loss.backward(); optimizer.step(); optimizer.zero_grad()
        record = pm.end_task(task.batches, per_sample_loss)   # Fisher → α* → W ← W + α*·ΔW
    pm.model                                             # the merged model, original architecture

The math is the library's own (pm-method.md): the ±ε schedule of `perturb.PerturbationSchedule`, the per-sample
hook Fisher of `fisher.layer_weight_fisher` at the unperturbed trained weights, and the constant-memory closed form
of `merge.RunningMergeState`:

    α_t* = − Σ_k Δ_k (θ̂_{t−1,k} S_{t,k} − M_{t,k}) / Σ_k S_{t,k} Δ_k²,   S_t = Σ_{i≤t} F_i,   M_t = Σ_{i≤t} F_i ⊙ θ*_i.

`state_dict()` holds S, M, the task count and the perturbation stream, so the next task can run in another process
(`load_state_dict` onto the merged model saved with `save_pretrained` or `model.state_dict()`).
"""
from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import torch
from torch import nn

from .adaptation import LoraAdaptation
from .config import AlphaGranularity, FisherNormalisation
from .errors import UserError
from .fisher import layer_weight_fisher
from .merge import RunningMergeState
from .methods.base import sum_norm_sq
from .methods.merger import MergeOptions, closed_form_decision, data_free_decision
from .perturb import PerturbationSchedule, lora_branch_scale
from .streams import stream_seed

MergeRule = Literal["closed_form", "simplified", "average", "fixed"]
MERGE_RULES = ("closed_form", "simplified", "average", "fixed")
FISHER_RULES = ("closed_form", "simplified")  # the rules that need the task's Fisher


class PerturbationNotUsedWarning(UserWarning):
    """ε > 0 but no optimiser step of the task ran inside `PerturbAndMerge.perturbed()`."""


# PerturbAndMerge's arguments → the `perturbmerge run` keys whose checks they share (config/validation.py)
API_TO_CONFIG_KEYS = {"rank": "lora.rank", "lora_alpha": "lora.alpha", "dropout": "lora.dropout",
                      "targets": "lora.targets", "epsilon": "epsilon", "p0": "p0", "merge": "alpha_rule",
                      "fixed_alpha": "fixed_alpha", "seed": "seed", "alpha_granularity": "alpha_granularity",
                      "anchor_pretrained": "anchor_pretrained", "fisher_normalise": "fisher.normalise",
                      "fisher_max_samples": "fisher.max_samples"}


def check_arguments(**arguments: Any) -> None:
    """The constructor's arguments through the CLI's own type coercion and range checks (`build_config`), so the
    API refuses what `perturbmerge run` refuses, in one line naming the argument: rank=1.5, seed=-1, seed=2**70,
    fixed_alpha=nan, dropout=1.0, ..."""
    from .config import build_config, nested

    try:
        build_config([], [nested({API_TO_CONFIG_KEYS[name]: value for name, value in arguments.items()})])
    except UserError as exc:
        message = re.sub(r"[;,]? ?(e\.g\. )?(--set|fix it in the config or --set) \S+", "", str(exc))
        message = re.sub(r"\s*\((--set|[a-z_.]+=)[^)]*\)", "", message)
        for name, key in sorted(API_TO_CONFIG_KEYS.items(), key=lambda item: -len(item[1])):
            message = re.sub(rf"(?<![\w.]){re.escape(key)}(?![\w.])", name, message)
        raise UserError(f"PerturbAndMerge: {message}") from None


@dataclass
class TaskRecord:
    """What `end_task` decided, with the names `perturbmerge run` writes in results.json's task logs: α_t (the
    mean over matrices with alpha_granularity='module'), the raw closed form before clipping, the simplified rule,
    whether the zero-denominator fallback α = 1 was taken, the Fisher mass Σ F_t, ‖Δ_t‖, the draws, and α per
    adapted matrix (module granularity)."""

    task: int
    alpha: float
    alpha_raw: float | None
    alpha_fallback: bool
    fisher_mass: float | None
    task_vector_norm: float
    perturbation_draws: dict[str, int]
    alpha_simplified: float | None = None
    alpha_per_module: dict[str, float] | None = None
    pretrained_fisher_mass: float | None = None

    @classmethod
    def from_log(cls, task: int, log: dict[str, Any]) -> "TaskRecord":
        return cls(task, log["alpha"], log["alpha_raw"], log["alpha_fallback"], log.get("fisher_mass"),
                   log["task_vector_norm"], log["perturbation_draws"], log.get("alpha_simplified"),
                   log.get("alpha_per_module"), log.get("pretrained_fisher_mass"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PerturbAndMerge:
    """Perturb-and-Merge for a model you train yourself (one LoRA adapter per task, folded in after it).

    Args:
        model: any `nn.Module` whose Linear / Conv layers `targets` name (PEFT-style name suffixes).
        targets: the LoRA target modules, e.g. ["query", "value"] or ["q_proj", "v_proj"].
        rank, lora_alpha, dropout: the LoRA adapter of each task (scale = lora_alpha / rank).
        epsilon, p0: the perturbation W + (1 + sε)ΔW, s = 0 with probability p0, ±1 with (1 − p0)/2 each.
        merge: "closed_form" (α*, the paper), "simplified" (current task's Fisher only), "average" (1/t),
            "fixed" (`fixed_alpha`); as `perturbmerge run --set alpha_rule=...`. closed_form and simplified clip
            α to [0, 1] and fall back to α = 1 (with a warning) when the Fisher-weighted denominator is 0.
        alpha_granularity: "model" (one α) or "module" (one α per adapted matrix, the paper's ablation).
        anchor_pretrained: the pretrained weights enter the merge as task 0, with the first task's Fisher at them.
        fisher_normalise: "trace" divides each task's Fisher by its total before it enters the sums.
        fisher_max_samples: examples per task in the Fisher pass (the first ones of `end_task`'s batches); None:
            all of them. The same merge sequence as the CLI's (methods/merger.py `closed_form_decision`).
        seed: the run's seed, as `perturbmerge run --seed`: the perturbation draws come from their own stream
            derived from it (`streams.stream_seed(seed, "perturbation")`); the adapter initialisation and dropout follow
            torch's global RNG, which you seed (`torch.manual_seed(seed)`, as the CLI does before the backbone).
        train_modules: modules trained directly and kept as trained, not merged (name suffixes, e.g.
            ["classifier"] for a Hugging Face classification head); everything else not adapted is frozen.
    """

    def __init__(self, model: nn.Module, targets: list[str], rank: int = 8, lora_alpha: float = 16.0,
                 dropout: float = 0.0, epsilon: float = 0.5, p0: float = 1.0 / 3.0, merge: MergeRule = "closed_form",
                 fixed_alpha: float = 0.5, seed: int = 0, train_modules: list[str] | None = None,
                 alpha_granularity: AlphaGranularity = "model", anchor_pretrained: bool = False,
                 fisher_normalise: FisherNormalisation = "none", fisher_max_samples: int | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise UserError(f"PerturbAndMerge needs an nn.Module, got {type(model).__name__}")
        if isinstance(targets, str) or not targets:
            raise UserError("PerturbAndMerge needs a list of LoRA targets, e.g. targets=['query', 'value']")
        check_arguments(rank=rank, lora_alpha=lora_alpha, dropout=dropout, targets=list(targets), epsilon=epsilon,
                        p0=p0, merge=merge, fixed_alpha=fixed_alpha, seed=seed, alpha_granularity=alpha_granularity,
                        anchor_pretrained=anchor_pretrained, fisher_normalise=fisher_normalise,
                        fisher_max_samples=fisher_max_samples)
        if (alpha_granularity == "module" or anchor_pretrained or fisher_normalise != "none") and \
                merge not in FISHER_RULES:
            raise UserError(f"alpha_granularity, anchor_pretrained and fisher_normalise need a Fisher rule "
                            f"(merge='closed_form' or 'simplified'), got merge='{merge}'")
        self.model = model
        self.targets, self.rank, self.lora_alpha, self.dropout = list(targets), rank, lora_alpha, dropout
        self.epsilon, self.merge, self.fixed_alpha = epsilon, merge, fixed_alpha
        self.merge_options = MergeOptions(merge, fixed_alpha, alpha_granularity, anchor_pretrained, fisher_normalise)
        self.fisher_max_samples = fisher_max_samples
        self.train_modules = list(train_modules or [])
        self.schedule = PerturbationSchedule(epsilon, p0, stream_seed(seed, "perturbation"))
        self.merge_state = RunningMergeState()
        self.adaptation: LoraAdaptation | None = None
        self.draws = {-1: 0, 0: 0, 1: 0}

    # ---- a task --------------------------------------------------------------------------------------------
    def begin_task(self) -> nn.Module:
        """Attach a fresh adapter (B = 0) to the targets; return the module to call while training this task."""
        if self.adaptation is not None:
            raise UserError("begin_task called twice; call end_task first")
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.adaptation = LoraAdaptation(self.rank, self.lora_alpha, self.dropout, self.targets)
        self.draws = {-1: 0, 0: 0, 1: 0}
        module = self.adaptation.attach(self.model)
        found = set()
        for name, sub in module.named_modules():
            for wanted in self.train_modules:
                if name == wanted or name.endswith("." + wanted):
                    sub.requires_grad_(True)
                    found.add(wanted)
        missing = [m for m in self.train_modules if m not in found]
        if missing:
            raise UserError(f"train_modules {missing} match no module of the model; give name suffixes such as "
                            f"'classifier'")
        return module

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (A and B of every target, and `train_modules`), for your optimiser."""
        return self._active().trainable_parameters()

    @contextmanager
    def perturbed(self) -> Iterator[int]:
        """One optimiser step's perturbation: draw s and, inside the block, scale every LoRA branch by 1 + sε
        (the weights are W + (1 + sε)ΔW); yields s. Compute the loss and call backward inside or after."""
        adaptation = self._active()
        sign = self.schedule.draw()
        self.draws[sign] += 1
        with lora_branch_scale(adaptation.layers, 1.0 + sign * self.epsilon):
            yield sign

    def end_task(self, batches: Iterable[Any], per_sample_loss: Callable[[nn.Module, Any], torch.Tensor]
                 ) -> TaskRecord:
        """Estimate the task's diagonal Fisher at the trained, unperturbed weights (eval mode; `per_sample_loss(
        module, batch)` returns one loss per example, shape [N]), decide α_t, fold W ← W + α_t·ΔW and remove the
        adapter. The sequence is the CLI's: `closed_form_decision` / `data_free_decision` of methods/merger.py.

        Refused: an adapter that never changed (ΔW = 0: the optimiser does not hold `pm.parameters()`), a loss of
        another shape than [N]. Warned: ε > 0 but no step ran inside `pm.perturbed()` (plain merging then)."""
        adaptation = self._active()
        module = adaptation.peft_model
        task_vector = adaptation.task_vector()
        task = self.merge_state.num_tasks + 1
        if all(not bool(v.any()) for v in task_vector.values()):
            raise UserError(f"task {task}: the adapter did not change during training (ΔW = 0), so there is nothing "
                            f"to merge; build the optimiser after pm.begin_task() from pm.parameters() (one built "
                            f"before holds the previous task's parameters, not this task's adapter)")
        if self.epsilon > 0 and sum(self.draws.values()) == 0:
            warnings.warn(f"task {task}: epsilon={self.epsilon} but no optimiser step ran inside pm.perturbed(), "
                          f"so this task trained without P&M's perturbation (plain merging); compute each step's "
                          f"loss inside `with pm.perturbed():`", PerturbationNotUsedWarning, stacklevel=2)
        log: dict[str, Any] = {"task_vector_norm": sum_norm_sq(task_vector) ** 0.5,
                               "perturbation_draws": {str(k): v for k, v in self.draws.items()}}
        if self.merge in FISHER_RULES:
            batches = list(batches) if self.merge_options.anchor_pretrained and task == 1 else batches

            def fisher_at(at_start: bool) -> dict[str, torch.Tensor]:
                was_training = module.training
                module.eval()
                try:
                    with adaptation.at_start() if at_start else nullcontext():
                        return layer_weight_fisher(adaptation.layers, batches,
                                                   lambda batch: per_sample_loss(module, batch),
                                                   self.fisher_max_samples, progress=False,
                                                   description=f"Fisher, task {task}")
                finally:
                    module.train(was_training)

            alpha, merge_log = closed_form_decision(self.merge_state, adaptation.merged_weights(), task_vector,
                                                    fisher_at, self.merge_options)
        else:
            alpha, merge_log = data_free_decision(self.merge, task, self.fixed_alpha)
            self.merge_state.num_tasks = task  # data-free rules keep only the task count
        log.update(merge_log)
        self.model = adaptation.fold(alpha)
        self.adaptation = None
        return TaskRecord.from_log(task, log)

    # ---- the running sums, for the next task in another process ---------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """S, M, the task count and the perturbation stream (tensors and plain values: safetensors-friendly)."""
        if self.adaptation is not None:
            raise UserError("state_dict between tasks only (after end_task): the adapter is not part of it")
        return {"fisher_sum": dict(self.merge_state.fisher_sum),
                "weighted_optimum_sum": dict(self.merge_state.weighted_optimum_sum),
                "num_tasks": self.merge_state.num_tasks, "schedule": self.schedule.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.merge_state.fisher_sum = {k: v.to(self.merge_state.dtype) for k, v in state["fisher_sum"].items()}
        self.merge_state.weighted_optimum_sum = {k: v.to(self.merge_state.dtype)
                                                 for k, v in state["weighted_optimum_sum"].items()}
        self.merge_state.num_tasks = int(state["num_tasks"])
        self.schedule.set_state(state["schedule"])

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, *, processing_class: Any = None,
                        overwrite: bool = False) -> Path:
        """Write the merged model so that plain transformers loads it (`AutoModel...from_pretrained(directory)`,
        perturbmerge not needed): `save_pretrained` for a Hugging Face model, else `model.safetensors` of its
        state dict; the tokenizer (or `processing_class`) beside it when given, so `AutoTokenizer` loads the same
        folder; plus `perturbmerge_state.safetensors` / `perturbmerge.json` (S, M, draw stream, settings) to
        continue P&M later. Between tasks only. A folder that exists and is not empty is refused unless
        `overwrite=True`; the folder is written beside it and renamed into place, so a failure leaves no
        half-written folder."""
        from safetensors.torch import save_file

        from .io import atomic_write_json

        state = self.state_dict()
        directory = Path(directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())) and not overwrite:
            raise UserError(f"'{directory}' exists and is not empty; choose a new folder or pass overwrite=True")
        tokenizer = tokenizer if tokenizer is not None else processing_class
        if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
            raise UserError(f"tokenizer must have save_pretrained (a transformers tokenizer or processor), got "
                            f"{type(tokenizer).__name__}")
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            if hasattr(self.model, "save_pretrained"):
                self.model.save_pretrained(str(staging), safe_serialization=True)
            else:
                save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                          str(staging / "model.safetensors"))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(staging))
            tensors = {f"fisher_sum.{k}": v.cpu().contiguous() for k, v in state["fisher_sum"].items()}
            tensors.update({f"weighted_optimum_sum.{k}": v.cpu().contiguous()
                            for k, v in state["weighted_optimum_sum"].items()})
            tensors["schedule"] = state["schedule"]
            save_file(tensors, str(staging / "perturbmerge_state.safetensors"))
            atomic_write_json(staging / "perturbmerge.json", {
                "num_tasks": state["num_tasks"], "targets": self.targets, "rank": self.rank,
                "lora_alpha": self.lora_alpha, "epsilon": self.epsilon, "p0": self.schedule.p0, "merge": self.merge,
                "train_modules": self.train_modules, "alpha_granularity": self.merge_options.granularity,
                "anchor_pretrained": self.merge_options.anchor_pretrained,
                "fisher_normalise": self.merge_options.normalise, "fisher_max_samples": self.fisher_max_samples})
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old-{staging.name}")
                directory.rename(old)
                staging.rename(directory)
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            else:
                staging.rename(directory)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return directory

    def load_running_state(self, directory: str | Path) -> None:
        """Read back the `perturbmerge_state.safetensors` / `perturbmerge.json` written by `save_pretrained`,
        checked against this object and its model before anything changes: the same LoRA targets, and every
        running-sum tensor named like a weight of the model with that weight's shape. A missing folder or file and
        a damaged one are refused in one line."""
        import json

        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        state_file, info_file = directory / "perturbmerge_state.safetensors", directory / "perturbmerge.json"
        for path in (state_file, info_file):
            if not path.is_file():
                raise UserError(f"'{path}' not found; give the folder written by PerturbAndMerge.save_pretrained")
        try:
            tensors = load_file(str(state_file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"'{state_file}' cannot be read ({str(exc).splitlines()[0]}); it is damaged: save "
                            f"the state again") from None
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
            num_tasks = int(info["num_tasks"])
            saved_targets = list(info["targets"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"'{info_file}' is not a perturbmerge state file ({exc!r}); save the state again") from None
        if sorted(saved_targets) != sorted(self.targets):
            raise UserError(f"'{directory}' was saved with targets={saved_targets}, this PerturbAndMerge has "
                            f"targets={self.targets}; use the same targets to continue")
        if "schedule" not in tensors:
            raise UserError(f"'{state_file}' has no perturbation stream; save the state again")
        fisher = {k.removeprefix("fisher_sum."): v for k, v in tensors.items() if k.startswith("fisher_sum.")}
        optimum = {k.removeprefix("weighted_optimum_sum."): v for k, v in tensors.items()
                   if k.startswith("weighted_optimum_sum.")}
        if set(fisher) != set(optimum):
            raise UserError(f"'{state_file}' holds Fisher sums and weighted sums of different weights; save the "
                            f"state again")
        weights = dict(self.model.named_parameters())
        for key, value in fisher.items():
            if key not in weights:
                raise UserError(f"'{directory}' holds running sums of '{key}', which this model does not have; load "
                                f"the state into the model it was saved from")
            if tuple(value.shape) != tuple(weights[key].shape) or tuple(optimum[key].shape) != tuple(value.shape):
                raise UserError(f"'{directory}': the running sums of '{key}' have shape {list(value.shape)}, the "
                                f"model's weight {list(weights[key].shape)}; load it into the model it was saved "
                                f"from")
        self.load_state_dict({"fisher_sum": fisher, "weighted_optimum_sum": optimum, "num_tasks": num_tasks,
                              "schedule": tensors["schedule"]})

    def _active(self) -> LoraAdaptation:
        if self.adaptation is None:
            raise UserError("no task is open; call begin_task() first")
        return self.adaptation


# ---- the library's data and backbones, for your own loop (examples/) ---------------------------------------------
def load_tasks(benchmark: str = "wordnet", num_tasks: int | None = None, seed: int = 0, backbone: str | None = None,
               data_dir: str | None = None, **data: Any):
    """A benchmark's task stream as `perturbmerge run` sees it: `.tasks` (each with `.train`, `.test` datasets of
    (inputs, global label), `.label_offset`, `.num_classes`, `.class_names`), `.collate` for a DataLoader and
    `.backbone`, the backbone name it was tokenised for. `benchmark` is a built-in name, `csv:PATH`,
    `jsonl:PATH` or `folder:PATH`; `data` are the `data.*` config keys (e.g. `test_fraction=0.2`)."""
    from .config import DataSettings
    from .data import get_benchmark
    from .data.base import LoadRequest

    spec = get_benchmark(benchmark)
    return spec.load(LoadRequest(seed, num_tasks or spec.default_tasks, data_dir, backbone or spec.backbone,
                                 DataSettings(**data), False))


def load_backbone(name: str, seed: int = 0):
    """A backbone by name (`minilm`, `vit-b16`, `hf:DIR`, ...): `.module` maps a batch to [N, d] features,
    `.feature_dim` is d, `.lora_targets` the default LoRA targets (the attention keys and values)."""
    from .backbones import build_backbone

    return build_backbone(name, seed)
