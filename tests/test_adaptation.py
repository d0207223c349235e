"""Fold-in: the deployed model is a plain model with W + α·ΔW; no adapter remains."""
from __future__ import annotations

import copy

import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from perturbmerge.adaptation import FullAdaptation, LoraAdaptation, resolve_lora_targets
from perturbmerge.errors import UserError

from conftest import TinyConvNet, tiny_bert, tiny_text_batch


def _cases():
    torch.manual_seed(0)
    from perturbmerge.backbones import MLPBackbone

    return {
        "mlp": (MLPBackbone(64, 16), torch.randn(3, 64), ["fc1", "fc2"]),
        "bert": (tiny_bert(), tiny_text_batch(), ["key", "value"]),
        "conv": (TinyConvNet(), torch.randn(2, 3, 6, 6), ["conv1", "pw"]),
    }


@pytest.mark.parametrize("family", ["mlp", "bert", "conv"])
@pytest.mark.parametrize("alpha", [0.0, 0.37, 1.0, "per-module"])
def test_fold_equals_explicit_weights(family, alpha):
    backbone, inputs, targets = _cases()[family]
    backbone.eval()
    plain = copy.deepcopy(backbone)
    count = sum(p.numel() for p in plain.parameters())
    adaptation = LoraAdaptation(rank=3, alpha=6, dropout=0.0, targets=targets)
    adaptation.attach(backbone)
    with torch.no_grad():
        for p in adaptation.trainable_parameters():
            p.normal_(0, 0.2)
    deltas = adaptation.task_vector()
    if alpha == "per-module":  # each adapted matrix its own α
        alpha = {key: 0.1 + 0.8 * i / len(deltas) for i, key in enumerate(sorted(deltas))}
    folded = adaptation.fold(alpha)
    explicit = dict(plain.named_parameters())
    with torch.no_grad():
        for key, delta in deltas.items():
            explicit[key].add_((alpha[key] if isinstance(alpha, dict) else alpha) * delta)
    assert type(folded) is type(plain)
    assert not any(isinstance(m, LoraLayer) for m in folded.modules())
    assert not any("lora" in n for n, _ in folded.named_parameters())
    assert sum(p.numel() for p in folded.parameters()) == count
    assert set(folded.state_dict()) == set(plain.state_dict())
    folded.eval()
    torch.testing.assert_close(folded(inputs), plain(inputs), rtol=1e-5, atol=1e-6)


def test_delta_is_scale_times_b_a():
    backbone, _, _ = _cases()["mlp"]
    adaptation = LoraAdaptation(rank=3, alpha=6, dropout=0.0, targets=["fc1"])
    adaptation.attach(backbone)
    layer = adaptation.layers["fc1.weight"]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    expected = 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(adaptation.task_vector()["fc1.weight"], expected)


def test_fresh_adapter_starts_at_zero_and_reattaches_after_fold():
    backbone, x, targets = _cases()["mlp"]
    adaptation = LoraAdaptation(rank=2, alpha=2, dropout=0.0, targets=targets)
    for _ in range(3):
        adaptation.attach(backbone)
        assert all(float(d.abs().max()) == 0 for d in adaptation.task_vector().values())
        with torch.no_grad():
            for p in adaptation.trainable_parameters():
                p.add_(0.1)
        backbone = adaptation.fold(0.5)
    assert not any(isinstance(m, LoraLayer) for m in backbone.modules())


def test_full_fold_interpolates(mlp):
    adaptation = FullAdaptation()
    adaptation.attach(mlp)
    anchor = {k: v.clone() for k, v in adaptation.anchor.items()}
    with torch.no_grad():
        for p in mlp.parameters():
            p.add_(1.0)
    folded = adaptation.fold(0.25)
    for k, p in folded.named_parameters():
        torch.testing.assert_close(p.detach(), anchor[k] + 0.25)


def test_missing_target_lists_available_modules():
    backbone, _, _ = _cases()["bert"]
    with pytest.raises(UserError, match=r"match no Linear/Conv module.*available: .*attention\.self\.query"):
        resolve_lora_targets(backbone, ["key", "qkv"])


def test_minilm_backbone_loads_offline_with_key_value_targets():
    from perturbmerge.backbones import build_backbone

    backbone = build_backbone("minilm", 0)
    assert backbone.feature_dim == 384
    adaptation = LoraAdaptation(rank=2, alpha=4, dropout=0.0, targets=backbone.lora_targets)
    adaptation.attach(backbone.module)
    assert len(adaptation.layers) == 12
    assert all(k.endswith(("attention.self.key.weight", "attention.self.value.weight")) for k in adaptation.layers)


@pytest.mark.parametrize("family", ["mlp", "bert", "conv"])
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_at_start_holds_the_starting_weights_and_restores_the_trained_ones(family, kind):
    """Inside `at_start()` the model computes what the backbone did before the task's training (for the
    pretrained-anchor Fisher); after it, the trained model again."""
    from perturbmerge.adaptation import call_backbone

    backbone, inputs, targets = _cases()[family]
    backbone.eval()
    start = copy.deepcopy(backbone)
    adaptation = LoraAdaptation(rank=3, alpha=6, dropout=0.0, targets=targets) if kind == "lora" else FullAdaptation()
    adaptation.attach(backbone)
    with torch.no_grad():
        for p in adaptation.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.2)
        trained = adaptation.features(inputs)
        expected = call_backbone(start, inputs)
        assert not torch.allclose(trained, expected, atol=1e-4)
        with adaptation.at_start():
            torch.testing.assert_close(adaptation.features(inputs), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(adaptation.features(inputs), trained, rtol=0, atol=0)
