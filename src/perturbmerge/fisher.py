"""Diagonal empirical Fisher in the space of the weights that get merged (pm-method.md §2).

    F = (1/N) Σ_n (∇_W ℓ(x_n, y_n))²      per-sample squared gradients, true labels, dropout off.

Two estimators:
- `layer_weight_fisher`: for the weight matrices W of linear / conv layers (the LoRA merge space). The
  per-sample gradient of y = W x is Σ_tokens δ_out ⊗ x_in; forward hooks keep x_in and the output, and
  autograd.grad of the summed loss w.r.t. those outputs gives δ_out, so no per-sample gradient of any other
  parameter is ever formed and no `.grad` is touched.
- `parameter_fisher`: for arbitrary parameters (full fine-tuning), with torch.func.vmap(grad(·)).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap
from tqdm.auto import tqdm

from .errors import TrainingDiverged, UserError

Batch = tuple[Any, torch.Tensor]


def _batch_size(batch: Any) -> int:
    """Examples in a batch: (inputs, labels) — the learner's — or a mapping of tensors (a collated Hugging Face
    batch, counted by its `labels`, else its first tensor)."""
    if isinstance(batch, Mapping):
        tensor = batch["labels"] if "labels" in batch else next(v for v in batch.values() if isinstance(v, torch.Tensor))
        return int(tensor.shape[0])
    return int(batch[1].shape[0])


def _take(batch: Any, count: int) -> Any:
    if isinstance(batch, Mapping):
        return {k: v[:count] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    inputs, labels = batch
    if isinstance(inputs, Mapping):
        inputs = {k: v[:count] for k, v in inputs.items()}
    else:
        inputs = inputs[:count]
    return inputs, labels[:count]


def _capped(batches: Iterable[Batch], max_samples: int | None) -> Iterable[Batch]:
    seen = 0
    for batch in batches:
        if max_samples is not None:
            remaining = max_samples - seen
            if remaining <= 0:
                return
            if _batch_size(batch) > remaining:
                batch = _take(batch, remaining)
        seen += _batch_size(batch)
        yield batch


def _weight_layout(layer: nn.Module) -> nn.Module:
    """The module whose `.weight` is merged: PEFT LoRA layers wrap it as `base_layer`."""
    return layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer


def layer_positions(layer: nn.Module, inputs: torch.Tensor, out_grad: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """One call of a linear, GPT-2 Conv1D or conv2d layer as positions: x [N, L, in], δ [N, L, out] with
    ∂ℓ_n/∂W = Σ_l δ_{n,l} ⊗ x_{n,l} (in W's [out, in] layout; Conv2d: `in` = unfolded patch, Conv1D: transposed)."""
    base = _weight_layout(layer)
    weight = base.weight
    n = inputs.shape[0]
    if isinstance(base, nn.Conv2d):
        if base.groups != 1 or base.padding_mode != "zeros":
            raise NotImplementedError("per-sample Fisher supports Conv2d with groups=1 and zero padding only")
        if base.kernel_size == (1, 1) and tuple(base.stride) == (1, 1) and base.padding in ((0, 0), "valid"):
            patches = inputs.reshape(n, inputs.shape[1], -1)  # a 1×1 convolution's patches are its pixels
        else:
            patches = F.unfold(inputs, base.kernel_size, dilation=base.dilation, padding=base.padding,
                               stride=base.stride)
        return patches.transpose(1, 2), out_grad.reshape(n, out_grad.shape[1], -1).transpose(1, 2)
    if weight.dim() != 2:
        raise NotImplementedError(f"per-sample Fisher does not support {type(base).__name__} layers")
    x = inputs.reshape(n, -1, inputs.shape[-1])
    g = out_grad.reshape(n, -1, out_grad.shape[-1])
    if tuple(weight.shape) == (g.shape[-1], x.shape[-1]) or tuple(weight.shape) == (x.shape[-1], g.shape[-1]):
        return x, g
    raise NotImplementedError(f"cannot match weight {tuple(weight.shape)} of {type(base).__name__} to its input/output")


def to_weight_layout(layer: nn.Module, out_by_in: torch.Tensor) -> torch.Tensor:
    """[out, in] → the layer's weight layout: nn.Linear as is, Conv2d [out, c, kh, kw], GPT-2 Conv1D [in, out]."""
    base = _weight_layout(layer)
    if isinstance(base, (nn.Linear, nn.Conv2d)):
        return out_by_in.reshape(base.weight.shape)
    return out_by_in.T  # transformers Conv1D stores W as [in, out]


PER_SAMPLE_CHUNK_ENTRIES = 1 << 21  # ≈ 8 MB of float32 per-sample gradients at a time: cache-friendly, bounded memory


def sum_squared_sample_grads(x: torch.Tensor, g: torch.Tensor, gram: bool | None = None) -> torch.Tensor:
    """Σ_n (Σ_l δ_{n,l} ⊗ x_{n,l})², shape [out, in], by one of two exact routes.

    Per-sample: form G_n = Σ_l δ_{n,l} x_{n,l}ᵀ for a chunk of examples at a time (≈ 2M entries), square in
    place, sum.
    Gram: expand the square, Σ_n Σ_{l,l'} (δ_{n,l} ⊙ δ_{n,l'}) ⊗ (x_{n,l} ⊙ x_{n,l'}) — one matrix product over
    N·L² rows, never forming G_n. Chosen when it is smaller: L²·(out + in) < out·in (few positions, e.g. the 2×2
    maps at the end of a CNN, or L = 1 where it is (δ²)ᵀ x²).
    """
    n, positions, width_in = x.shape
    width_out = g.shape[-1]
    if gram is None:
        gram = positions * positions * (width_in + width_out) < width_in * width_out
    if gram:
        gg = (g.unsqueeze(2) * g.unsqueeze(1)).reshape(-1, width_out)
        xx = (x.unsqueeze(2) * x.unsqueeze(1)).reshape(-1, width_in)
        return gg.T @ xx
    chunk = max(1, PER_SAMPLE_CHUNK_ENTRIES // (width_out * width_in))  # examples whose G_n fit the budget together
    total = torch.einsum("nlo,nli->noi", g[:chunk], x[:chunk]).square_().sum(0)
    for start in range(chunk, n, chunk):
        total += torch.einsum("nlo,nli->noi", g[start:start + chunk], x[start:start + chunk]).square_().sum(0)
    return total


class KnownLength:
    """Batches whose count is known ahead (a generator over a DataLoader): gives the progress bar its total."""

    def __init__(self, batches: Iterable[Batch], length: int) -> None:
        self.batches, self.length = batches, length

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return self.length


def _bar_total(batches: Iterable[Batch], max_samples: int | None) -> int | None:
    """The number of batches when known (and not cut short by `max_samples`), for tqdm."""
    return len(batches) if max_samples is None and hasattr(batches, "__len__") else None


def check_example_losses(losses: Any, batch_size: int, description: str) -> None:
    """The per-example loss must be one loss per example, shape [batch_size]: a mean (a scalar) would make the
    Fisher that of the batch's mean gradient, an [N, C] tensor would inflate it by C; both are refused."""
    shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else None
    if shape != (batch_size,):
        hint = (" (a mean: use reduction='none')" if shape == () else
                " (one loss per example and output: reduce over every dimension but the first)" if shape and
                shape[0] == batch_size else "")
        got = f"shape {list(shape)}" if shape is not None else type(losses).__name__
        raise UserError(f"{description}: the per-example loss must have shape [{batch_size}] (one loss per example "
                        f"of the batch), got {got}{hint}")


def layer_weight_fisher(
    layers: Mapping[str, nn.Module],
    batches: Iterable[Batch],
    per_sample_loss: Callable[[Batch], torch.Tensor],
    max_samples: int | None = None,
    progress: bool = False,
    description: str = "Fisher",
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of each layer's weight W, keyed as given in `layers`.

    `per_sample_loss(batch)` must return the vector of per-sample losses (the model already in eval mode and
    unperturbed); something upstream of every layer's output must require grad (e.g. LoRA factors).
    A layer called several times per forward gets the sum of its per-call gradients, as autograd would.
    """
    totals = {name: _accumulator(_weight_layout(m).weight) for name, m in layers.items()}
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (layer name, input, output) of every call

    def make_hook(name: str):
        def forward_hook(module, args, output):
            calls.append((name, args[0].detach(), output))

        return forward_hook

    handles = [layer.register_forward_hook(make_hook(name)) for name, layer in layers.items()]
    count = 0
    try:
        for batch in tqdm(_capped(batches, max_samples), desc=description, disable=not progress, leave=False,
                          total=_bar_total(batches, max_samples)):
            calls.clear()
            losses = per_sample_loss(batch)
            check_example_losses(losses, _batch_size(batch), description)
            if not torch.isfinite(losses).all():
                raise TrainingDiverged(f"{description}: non-finite loss in the Fisher pass; lower lr or check the data")
            missing = set(layers) - {name for name, _, out in calls if out.requires_grad}
            if missing:
                raise RuntimeError(f"no gradient can reach layers {sorted(missing)[:3]}; is anything upstream trainable?")
            # δ_out for every call, without accumulating .grad anywhere
            # (an output that does not reach the loss, e.g. BERT's unused pooler, has δ_out = 0: zero Fisher)
            out_grads = torch.autograd.grad(losses.sum(), [out for _, _, out in calls], allow_unused=True)
            positions: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for (name, x, out), g in zip(calls, out_grads):
                g = torch.zeros_like(out) if g is None else g
                positions.setdefault(name, []).append(layer_positions(layers[name], x, g))
            for name, parts in positions.items():
                # several calls of one layer: their positions add up inside the per-sample gradient
                x = torch.cat([p[0] for p in parts], 1).to(totals[name].dtype)
                g = torch.cat([p[1] for p in parts], 1).to(totals[name].dtype)
                totals[name] += to_weight_layout(layers[name], sum_squared_sample_grads(x, g))
            count += _batch_size(batch)
    finally:
        calls.clear()
        for handle in handles:
            handle.remove()
    return _normalise(totals, count, description)


def parameter_fisher(
    module: nn.Module,
    parameter_names: Iterable[str],
    batches: Iterable[Batch],
    sample_loss: Callable[[nn.Module, dict[str, torch.Tensor], Any, torch.Tensor], torch.Tensor],
    max_samples: int | None = None,
    progress: bool = False,
    description: str = "Fisher",
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the named parameters of `module`, per-sample gradients by torch.func.

    `sample_loss(module, params, inputs, label)` returns the scalar loss of ONE sample (no batch dimension)
    evaluated with `functional_call(module, params, ...)`.
    """
    names = list(parameter_names)
    params = {n: p.detach() for n, p in module.named_parameters() if n in names}
    totals = {n: _accumulator(p) for n, p in params.items()}

    def loss_of(p, inputs, label):
        inputs = {k: v.unsqueeze(0) for k, v in inputs.items()} if isinstance(inputs, Mapping) else inputs.unsqueeze(0)
        return sample_loss(module, p, inputs, label.unsqueeze(0))

    per_sample_grads = vmap(grad(loss_of), in_dims=(None, 0, 0))
    count = 0
    for inputs, labels in tqdm(_capped(batches, max_samples), desc=description, disable=not progress, leave=False,
                               total=_bar_total(batches, max_samples)):
        grads = per_sample_grads(params, inputs, labels)
        for n, g in grads.items():
            totals[n] += g.detach().to(totals[n].dtype).pow(2).sum(0)
        count += int(labels.shape[0])
    return _normalise(totals, count, description)


def _accumulator(weight: torch.Tensor) -> torch.Tensor:
    """Zeros like `weight`, in at least float32 (half-precision models accumulate in float32)."""
    return torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32), device=weight.device)


def _normalise(totals: dict[str, torch.Tensor], count: int, description: str) -> dict[str, torch.Tensor]:
    if count == 0:
        raise ValueError(f"{description}: no samples to estimate the Fisher from")
    fisher = {k: v / count for k, v in totals.items()}
    mass = sum(float(v.detach().sum()) for v in fisher.values())
    if not math.isfinite(mass):
        raise TrainingDiverged(f"{description}: the Fisher is not finite; lower lr or check the data")
    return fisher
