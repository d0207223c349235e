"""Shared tiny models. Everything is randomly initialised and small enough for a 2-core CPU."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from perturbmerge.backbones import HFEncoderBackbone, MLPBackbone

# Files whose tests run whole runs (CLI, runner, Trainer, subprocesses): marked e2e, so `pytest -m "not e2e"` is
# the quick inner loop; CI runs everything.
E2E_MODULES = {"test_api_matches_cli", "test_bad_input", "test_baselines", "test_bench", "test_checkpoint",
               "test_cli", "test_compare", "test_continual_lora", "test_distributed", "test_examples", "test_export",
               "test_fecam", "test_golden", "test_heads", "test_integrations", "test_merge_options",
               "test_paper_path", "test_parts", "test_ranpac", "test_reliability", "test_sweep_landscape",
               "test_kill_entry_points", "test_provenance", "test_docs_audit", "test_causal_lm",
               "test_tensorboard"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)


def tiny_bert(seed: int = 0) -> HFEncoderBackbone:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)
    return HFEncoderBackbone(BertModel(config, add_pooling_layer=False))


def tiny_text_batch(n: int = 6, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    for i in range(n):  # ragged lengths, right padding
        keep = 3 + i % (length - 2)
        mask[i, keep:] = 0
        ids[i, keep:] = 0
    return {"input_ids": ids, "attention_mask": mask}


class TinyConvNet(nn.Module):
    """conv(3→4, 3×3) → GELU → conv(4→6, 1×1) → global mean: [N, 6] features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.pw = nn.Conv2d(4, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(torch.nn.functional.gelu(self.conv1(x))).mean((2, 3))


@pytest.fixture
def mlp() -> MLPBackbone:
    torch.manual_seed(0)
    return MLPBackbone(64, 16)
