"""How a task changes the backbone, and the merge space that goes with it (pm-method.md §1, §3, §4).

- `LoraAdaptation`: a fresh PEFT LoRA adapter per task on the target modules. Merge space = the adapted weight
  matrices W (task vector ΔW = scale·B A). After the task, W ← W + α·scale·B A is folded in by PEFT's own merge
  (scale set to α) and the adapter is removed: the backbone is again a plain model of the original architecture.
- `FullAdaptation`: all backbone parameters train. Merge space = those parameters; θ̂_{t-1} is one stored copy.

Merge-space keys are parameter names of the plain backbone (e.g. 'encoder.layer.0.attention.self.key.weight'),
so Fisher sums, task vectors and merged weights line up across tasks and with `backbone.state_dict()`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.func import functional_call

from .errors import UserError
from .fisher import layer_weight_fisher, parameter_fisher
from .perturb import added_weight_noise, gaussian_like, lora_branch_scale, perturbed_parameters

ExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> one loss per example
Batch = tuple[Any, torch.Tensor]
ADAPTER = "default"
_PEFT_PREFIX = "base_model.model."


def call_backbone(backbone: nn.Module, inputs: Any) -> torch.Tensor:
    """Backbones take one argument (a tensor or a dict of tensors) and return [N, feature_dim] features."""
    return backbone(inputs)


def adaptable_module_names(model: nn.Module) -> list[str]:
    """Names of the modules LoRA can target here (Linear, Conv2d, transformers Conv1D)."""
    kinds = (nn.Linear, nn.Conv2d)
    return [n for n, m in model.named_modules() if n and (isinstance(m, kinds) or type(m).__name__ == "Conv1D")]


def _short_list(names: list[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def resolve_lora_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """Check that each target (a module-name suffix, PEFT style) matches at least one adaptable module."""
    names = adaptable_module_names(model)
    if not targets:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise UserError(f"no LoRA targets: the backbone has no attention key/value projections to adapt by default; "
                        f"set lora.targets, e.g. --set lora.targets={suffixes[0] if suffixes else 'NAME'} "
                        f"(module names here: {_short_list(suffixes)})")
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise UserError(
            f"LoRA target(s) {missing} match no Linear/Conv module of the backbone; available: {_short_list(names)}"
        )
    return targets


class LoraAdaptation:
    """A fresh LoRA adapter per task; the merge space is the adapted weight matrices W."""

    kind = "lora"

    def __init__(self, rank: int, alpha: float, dropout: float, targets: list[str]) -> None:
        self.rank, self.alpha, self.dropout, self.targets = rank, alpha, dropout, list(targets)
        self.peft_model: nn.Module | None = None
        self.layers: dict[str, nn.Module] = {}

    def attach(self, backbone: nn.Module) -> nn.Module:
        """Attach a fresh adapter (B = 0, A random) to the target modules; return the module to call."""
        resolve_lora_targets(backbone, self.targets)
        config = LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.targets, bias="none"
        )
        self.peft_model = get_peft_model(backbone, config, adapter_name=ADAPTER)
        self.layers = {
            name.removeprefix(_PEFT_PREFIX) + ".weight": module
            for name, module in self.peft_model.named_modules()
            if isinstance(module, LoraLayer)
        }
        return self.peft_model

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.peft_model.parameters() if p.requires_grad]

    def merged_weights(self) -> dict[str, torch.Tensor]:
        """θ̂_{t-1} in merge space: the (frozen) base weights under the adapter."""
        return {k: layer.get_base_layer().weight.detach() for k, layer in self.layers.items()}

    def differentiable_task_vector(self) -> dict[str, torch.Tensor]:
        """ΔW = scale·B A per adapted matrix, with gradients to A and B (for penalties on ΔW)."""
        return {k: layer.get_delta_weight(ADAPTER) for k, layer in self.layers.items()}

    def task_vector(self) -> dict[str, torch.Tensor]:
        """ΔW = scale·B A per adapted matrix (shaped like W), at branch scale 1."""
        with torch.no_grad():
            return {k: layer.get_delta_weight(ADAPTER).detach() for k, layer in self.layers.items()}

    def features(self, inputs: Any) -> torch.Tensor:
        """The adapted backbone's outputs at W + ΔW."""
        return call_backbone(self.peft_model, inputs)

    def features_along_task_vector(self, inputs: Any, shift: float) -> torch.Tensor:
        """Outputs at W + (1 + shift)ΔW (the LoRA branch scaled by 1 + shift)."""
        with lora_branch_scale(self.layers, 1.0 + shift, ADAPTER):
            return call_backbone(self.peft_model, inputs)

    def features_with_noise(self, inputs: Any, shift: float, generator: torch.Generator) -> torch.Tensor:
        """Outputs at W + ΔW + shift·N, N isotropic Gaussian of ΔW's norm per matrix (none when shift is 0)."""
        if shift == 0.0:
            return call_backbone(self.peft_model, inputs)
        noise = gaussian_like(self.task_vector(), generator)
        with added_weight_noise(self.layers, noise, shift):
            return call_backbone(self.peft_model, inputs)

    def fisher(self, batches: Iterable[Batch], example_loss: ExampleLoss, progress: bool = False,
               description: str = "Fisher", max_samples: int | None = None) -> dict[str, torch.Tensor]:
        """Empirical Fisher of every adapted W (per-sample, hooks), at the unperturbed trained weights;
        `example_loss(outputs, targets)` gives one loss per example."""

        def per_sample_loss(batch: Batch) -> torch.Tensor:
            inputs, targets = batch
            return example_loss(self.features(inputs), targets)

        return layer_weight_fisher(self.layers, batches, per_sample_loss, max_samples, progress, description)

    def at_start(self):
        """Inside the block the model is at the task's starting weights θ̂_{t−1} (LoRA branch scaled to 0)."""
        return lora_branch_scale(self.layers, 0.0, ADAPTER)

    def fold(self, alpha: float | dict[str, float]) -> nn.Module:
        """W ← W + α·scale·B A (PEFT safe merge with the branch scale set to α; a dict gives each adapted matrix
        its own α); return the plain backbone."""
        for key, layer in self.layers.items():
            layer.set_scale(ADAPTER, alpha[key] if isinstance(alpha, dict) else alpha)
        backbone = self.peft_model.merge_and_unload(safe_merge=True)
        self.peft_model, self.layers = None, {}
        return backbone


class FullAdaptation:
    """All backbone parameters train; the merge space is every backbone parameter."""

    kind = "full"

    def __init__(self) -> None:
        self.backbone: nn.Module | None = None
        self.anchor: dict[str, torch.Tensor] = {}

    def attach(self, backbone: nn.Module) -> nn.Module:
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(True)
        self.anchor = {n: p.detach().clone() for n, p in backbone.named_parameters()}
        return backbone

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def merged_weights(self) -> dict[str, torch.Tensor]:
        return self.anchor

    def differentiable_task_vector(self) -> dict[str, torch.Tensor]:
        """θ − θ̂ per parameter, with gradients to θ (for penalties on the update)."""
        return {n: p - self.anchor[n] for n, p in self.backbone.named_parameters()}

    def task_vector(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() - self.anchor[n] for n, p in self.backbone.named_parameters()}

    def features(self, inputs: Any) -> torch.Tensor:
        return call_backbone(self.backbone, inputs)

    def features_along_task_vector(self, inputs: Any, shift: float) -> torch.Tensor:
        """Outputs at θ + shift·(θ − θ̂), functionally (the stored θ̂ is the task's start)."""
        if shift == 0.0:
            return call_backbone(self.backbone, inputs)
        params = perturbed_parameters(dict(self.backbone.named_parameters()), self.anchor, shift)
        return functional_call(self.backbone, params, (inputs,))

    def features_with_noise(self, inputs: Any, shift: float, generator: torch.Generator) -> torch.Tensor:
        """Outputs at θ + shift·N, N isotropic Gaussian of the update's norm per parameter, functionally."""
        if shift == 0.0:
            return call_backbone(self.backbone, inputs)
        noise = gaussian_like(self.task_vector(), generator)
        params = {n: p + shift * noise[n] for n, p in self.backbone.named_parameters()}
        return functional_call(self.backbone, params, (inputs,))

    def fisher(self, batches: Iterable[Batch], example_loss: ExampleLoss, progress: bool = False,
               description: str = "Fisher", max_samples: int | None = None) -> dict[str, torch.Tensor]:
        """Empirical Fisher of every backbone parameter (per-sample gradients by torch.func)."""
        def sample_loss(module, params, inputs, targets):
            return example_loss(functional_call(module, params, (inputs,)), targets).sum()  # one example

        return parameter_fisher(self.backbone, list(self.anchor), batches, sample_loss, max_samples, progress,
                                description)

    @contextmanager
    def at_start(self) -> Iterator[None]:
        """Inside the block the backbone holds the task's starting weights θ̂_{t−1}; the trained ones after."""
        params = dict(self.backbone.named_parameters())
        trained = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.anchor[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(trained[n])

    def fold(self, alpha: float | dict[str, float]) -> nn.Module:
        """θ ← θ̂ + α(θ − θ̂) (a dict gives each parameter its own α)."""
        with torch.no_grad():
            for n, p in self.backbone.named_parameters():
                p.copy_(self.anchor[n] + (alpha[n] if isinstance(alpha, dict) else alpha) * (p - self.anchor[n]))
        backbone, self.backbone, self.anchor = self.backbone, None, {}
        return backbone

