"""Backbones: modules that map one input (tensor or dict of tensors) to [N, feature_dim] features, with the
LoRA target modules that suit each family. Registered by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import UserError, did_you_mean


@dataclass
class Backbone:
    module: nn.Module
    feature_dim: int
    lora_targets: list[str]
    description: str


class MLPBackbone(nn.Module):
    """x → GELU(fc1 x) → GELU(fc2 ·): a small feature extractor for tabular / flattened inputs."""

    def __init__(self, in_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x.flatten(1)))))


class HFEncoderBackbone(nn.Module):
    """Mean of a transformers encoder's last hidden state over the attention mask (sentence-embedding style).

    Input: the tokenizer's dict (input_ids, attention_mask, ...). Output: [N, hidden_size].
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _mlp(seed: int) -> Backbone:
    torch.manual_seed(seed)
    return Backbone(MLPBackbone(64, 128), 128, ["fc1", "fc2"], "MLP 64-128-128, GELU, random init (seeded)")


BACKBONES: dict[str, Callable[[int], Backbone]] = {"mlp": _mlp}


def build_backbone(name: str, seed: int) -> Backbone:
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'{did_you_mean(name, BACKBONES)}; available: {', '.join(BACKBONES)}")
    return BACKBONES[name](seed)
