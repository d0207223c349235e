"""Classifier heads and the continual classifier (pm-method.md §5).

`ExpandingLinearHead` keeps one linear block per task: task t's classes get their own [n_t, d] block, trained
only while task t trains (its logits alone enter the loss), then frozen. Separate parameters per block make
"earlier rows frozen" exact: no optimiser, weight decay or moment ever touches them again. Head rows are not
merged. At test time all seen blocks are concatenated and every seen class competes (no task id).

For domain-incremental streams one shared block is trained in every task.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ExpandingLinearHead(nn.Module):
    """Logits over all classes seen so far: concatenation of per-task linear blocks."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.blocks = nn.ModuleList()

    @property
    def num_classes(self) -> int:
        return sum(block.out_features for block in self.blocks)

    def add_block(self, num_classes: int) -> nn.Linear:
        """New rows for a task's classes; earlier blocks are frozen."""
        for block in self.blocks:
            block.requires_grad_(False)
        block = nn.Linear(self.feature_dim, num_classes)
        device = next(self.parameters()).device if len(self.blocks) else None
        if device is not None:
            block.to(device)
        self.blocks.append(block)
        return block

    def block_logits(self, features: torch.Tensor, index: int) -> torch.Tensor:
        """Logits of one block only (the masked loss of the task that owns it)."""
        return self.blocks[index](features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([block(features) for block in self.blocks], dim=-1)


class ContinualClassifier(nn.Module):
    """backbone (one input → [N, d] features) + expanding head."""

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ExpandingLinearHead(feature_dim)

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.head(self.backbone(inputs))
