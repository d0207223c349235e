"""Merge options of the closed-form family: per-module α, Fisher kind and logits, the pretrained anchor, trace
normalisation."""
from __future__ import annotations

import pytest
import torch

from helpers import run_method as _run

def test_pm_lora_with_per_module_alpha(tmp_path):
    run = _run("pm-lora", tmp_path, "alpha_granularity=module")
    logs = run["task_logs"]
    assert set(logs[1]["alpha_per_module"]) == {"fc1.weight", "fc2.weight"}
    for log in logs:
        values = list(log["alpha_per_module"].values())
        assert all(0.0 <= a <= 1.0 for a in values) and log["alpha"] == pytest.approx(sum(values) / len(values))
    assert logs[0]["alpha_per_module"] == {"fc1.weight": 1.0, "fc2.weight": 1.0}


@pytest.mark.parametrize("sets", [["fisher.kind=sampled"], ["fisher.logits=seen"], ["fisher.kind=sampled", "fisher.logits=seen"],
                                  ["fisher.normalise=trace"]])
def test_fisher_options_change_the_fisher_and_alpha(tmp_path, sets):
    base = _run("pm-lora", tmp_path / "base")
    other = _run("pm-lora", tmp_path / "other", *sets)
    same_fisher = sets == ["fisher.normalise=trace"]  # task 2 starts from θ̂_1 = θ*_1 either way; only α_2 moves
    assert (other["task_logs"][1]["fisher_mass"] == base["task_logs"][1]["fisher_mass"]) == same_fisher
    assert other["alphas"][0] == 1.0 and all(0.0 <= a <= 1.0 for a in other["alphas"])
    assert other["alphas"][1:] != base["alphas"][1:]


def test_true_fisher_labels_are_draws_from_the_models_predictive_distribution():
    import torch

    from perturbmerge.kinds.classification import model_sampled_labels

    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 9.0]]).repeat(500, 1)
    drawn = torch.cat([labels for _, labels in model_sampled_labels(
        [(logits, torch.zeros(1000, dtype=torch.long))], lambda x: x, lambda x: x, torch.Generator().manual_seed(0))])
    expected = torch.multinomial(logits.double().softmax(-1), 1, generator=torch.Generator().manual_seed(0)).squeeze(1)
    assert torch.equal(drawn, expected)
    first = drawn[0::2]  # p(class 0) = e⁴ / (e⁴ + 2) ≈ 0.965
    assert 0.94 < float((first == 0).double().mean()) < 0.99
    assert float((drawn[1::2] == 2).double().mean()) > 0.99  # p(class 2) = e⁹ / (e⁹ + 2) ≈ 0.9998


@pytest.mark.parametrize("method", ["pm-lora", "merge-lora"])
def test_anchored_merge_treats_the_pretrained_weights_as_task_zero(tmp_path, method):
    """anchor_pretrained: S_1 = F_0 + F_1, M_1 = F_0 θ_0 + F_1 θ*_1 with θ̂_0 = θ_0, so the closed form gives
    α_1 = Δ F_1 Δ / Δ (F_0 + F_1) Δ — exactly the simplified rule's value, and below 1. Had F_0 entered with any
    other optimum than θ_0, the two would differ."""
    base = _run(method, tmp_path / "base")
    anchored = _run(method, tmp_path / "anchored", "anchor_pretrained=true")
    first = anchored["task_logs"][0]
    assert base["alphas"][0] == 1.0 and 0.0 < first["alpha_raw"] < 1.0
    assert first["alpha_raw"] == pytest.approx(first["alpha_simplified"], rel=1e-9)
    assert first["pretrained_fisher_mass"] > 0
    assert all("pretrained_fisher_mass" not in log for log in anchored["task_logs"][1:])


def test_trace_normalised_merge_logs_the_raw_fisher_and_anchored_alpha_uses_unit_masses(tmp_path):
    """fisher.normalise = trace changes only what enters the merge: task 1 trains identically and logs the same
    raw Fisher mass; anchored, α_1 = Δ F̃_1 Δ / Δ (F̃_0 + F̃_1) Δ is still the simplified value (of unit-mass
    Fishers), and differs from the unnormalised anchored α_1 unless F_0 and F_1 had equal mass."""
    base = _run("pm-lora", tmp_path / "base", "anchor_pretrained=true")
    unit = _run("pm-lora", tmp_path / "unit", "anchor_pretrained=true", "fisher.normalise=trace")
    first, base_first = unit["task_logs"][0], base["task_logs"][0]
    assert first["fisher_mass"] == pytest.approx(base_first["fisher_mass"], rel=1e-9)
    assert first["pretrained_fisher_mass"] == pytest.approx(base_first["pretrained_fisher_mass"], rel=1e-9)
    assert first["alpha_raw"] == pytest.approx(first["alpha_simplified"], rel=1e-9)
    assert first["alpha_raw"] != pytest.approx(base_first["alpha_raw"], rel=1e-6)
