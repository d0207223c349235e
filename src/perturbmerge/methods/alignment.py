"""SLCA's classifier alignment (Zhang et al., ICCV 2023) as a head part: after each task, every seen class's rows of
the linear head are re-trained on features sampled from the stored class Gaussians, so that old and new rows are
calibrated against each other without any stored example:

    μ_c = s_c / n_c,   Σ_c = (M_c − n_c μ_c μ_cᵀ) / (n_c − 1) + 10⁻⁴ I      per class, from sums (float64)
    x ~ N(μ_c, Σ_c):   x = μ_c + L_c z,  L_c L_cᵀ = Σ_c,  z ~ N(0, I)          head.align_samples per class and epoch
    logits ← logits / (mean_t ‖logits_t‖ · τ),  τ = 0.1                      SLCA's logit normalisation (‖·‖ per task block)
    SGD, momentum 0.9, weight decay 5·10⁻⁴, lr = head_lr with a cosine schedule over head.align_epochs epochs,
    one batch of align_samples sampled features per seen class and epoch

Each class's statistics are taken on the backbone at the end of its own task (as SLCA does). The official code also
scales old classes' means by a task-dependent factor in one of its variants; that variant is not reproduced.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .fecam import ClassGaussians
from .fecam import class_covariance as unbiased_covariance

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext

JITTER, LOGIT_TEMPERATURE, MOMENTUM, WEIGHT_DECAY = 1e-4, 0.1, 0.9, 5e-4


def class_covariance(sums: torch.Tensor, count: float, moment: torch.Tensor) -> torch.Tensor:
    """FeCAM's unbiased per-class covariance from the class's sums, plus SLCA's 10⁻⁴ I."""
    covariance = unbiased_covariance(sums, count, moment)
    return covariance + JITTER * torch.eye(len(sums), dtype=covariance.dtype)


def sample_features(gaussians: ClassGaussians, samples: int, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """`samples` draws from every stored class Gaussian (float64) and their head positions."""
    features, positions = [], []
    for position in sorted(gaussians.sums):
        mean = gaussians.sums[position] / gaussians.counts[position]
        factor = torch.linalg.cholesky(class_covariance(gaussians.sums[position], gaussians.counts[position],
                                                        gaussians.moments[position]))
        noise = torch.randn(samples, len(mean), dtype=torch.float64, generator=generator)
        features.append(mean + noise @ factor.T)
        positions.append(torch.full((samples,), position, dtype=torch.long))
    return torch.cat(features), torch.cat(positions)


def normalised_logits(logits: torch.Tensor, block_sizes: list[int]) -> torch.Tensor:
    """SLCA's logit normalisation: divide by the mean over task blocks of each block's logit norm, and by τ."""
    norms = torch.stack([part.norm(dim=-1) + 1e-7 for part in logits.split(block_sizes, dim=-1)], dim=-1)
    return logits / norms.mean(dim=-1, keepdim=True) / LOGIT_TEMPERATURE


class ClassifierAlignment:
    """The stored class Gaussians and the re-training of the head's rows on samples from them."""

    def __init__(self, epochs: int, samples: int, lr: float, run_seed: int) -> None:
        self.epochs, self.samples, self.lr, self.run_seed = epochs, samples, lr, run_seed
        self.gaussians = ClassGaussians()

    def align(self, context: "TaskContext", task: "Task") -> dict[str, Any]:
        """Add the task's class statistics on the backbone as it is now, then re-train every seen row; returns the
        mean loss per epoch."""
        self.gaussians.add_task(context, task)
        head = context.model.head
        parameters = [p for block in head.blocks for p in block.parameters()]
        frozen = [p.requires_grad for p in parameters]
        for p in parameters:
            p.requires_grad_(True)
        optimizer = torch.optim.SGD(parameters, lr=self.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        generator = torch.Generator().manual_seed(self.run_seed * 1009 + task.index)
        block_sizes = [block.out_features for block in head.blocks]
        dtype = head.blocks[0].weight.dtype
        losses = []
        for _ in range(self.epochs):
            features, positions = sample_features(self.gaussians, self.samples, generator)
            order = torch.randperm(len(positions), generator=generator)
            features, positions = features[order], positions[order]
            total = 0.0
            for batch in range(len(self.gaussians.sums)):
                rows = slice(batch * self.samples, (batch + 1) * self.samples)
                logits = head(features[rows].to(context.device, dtype))
                loss = F.cross_entropy(normalised_logits(logits, block_sizes), positions[rows].to(context.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
            schedule.step()
            losses.append(total / len(self.gaussians.sums))
        for p, grad in zip(parameters, frozen):
            p.requires_grad_(grad)
        return {"align_losses": losses}

    def state_dict(self) -> dict[str, Any]:
        return self.gaussians.state_dict()

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.gaussians.load_state_dict(state, device)
