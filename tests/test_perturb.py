"""Perturbation against explicit weight construction, the quadratic expectation, and pass counting."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perturbmerge.adaptation import FullAdaptation, LoraAdaptation
from perturbmerge.perturb import PerturbationSchedule, gaussian_like

from conftest import TinyConvNet, tiny_bert, tiny_text_batch


def _randomise_lora(adaptation):
    with torch.no_grad():
        for p in adaptation.trainable_parameters():
            p.normal_(0, 0.2)


def _explicit_model(plain: nn.Module, adaptation: LoraAdaptation, factor: float) -> nn.Module:
    """A plain copy of the backbone with W + factor·ΔW written into its weights."""
    explicit = copy.deepcopy(plain)
    deltas = adaptation.task_vector()
    params = dict(explicit.named_parameters())
    with torch.no_grad():
        for key, delta in deltas.items():
            params[key].add_(factor * delta)
    return explicit


@pytest.mark.parametrize("sign", [-1, 0, 1])
@pytest.mark.parametrize("family", ["bert", "conv"])
def test_lora_branch_scale_equals_explicit_weights(sign, family):
    epsilon = 0.5
    if family == "bert":
        backbone, inputs, targets = tiny_bert(), tiny_text_batch(), ["key", "value"]
    else:
        torch.manual_seed(0)
        backbone, inputs, targets = TinyConvNet(), torch.randn(4, 3, 6, 6), ["conv1", "pw"]
    backbone.eval()
    plain = copy.deepcopy(backbone)
    adaptation = LoraAdaptation(rank=4, alpha=8, dropout=0.0, targets=targets)
    adaptation.attach(backbone)
    _randomise_lora(adaptation)
    perturbed = adaptation.features_along_task_vector(inputs, sign * epsilon)
    explicit = _explicit_model(plain, adaptation, 1 + sign * epsilon)(inputs)
    torch.testing.assert_close(perturbed, explicit, rtol=1e-5, atol=1e-5)
    # the scale is restored afterwards
    torch.testing.assert_close(adaptation.features(inputs), _explicit_model(plain, adaptation, 1.0)(inputs),
                               rtol=1e-5, atol=1e-5)


def test_schedule_probabilities():
    schedule = PerturbationSchedule(epsilon=0.5, p0=0.2, seed=3)
    draws = torch.tensor([schedule.draw() for _ in range(30_000)])
    n = draws.numel()
    for value, p in ((-1, 0.4), (0, 0.2), (1, 0.4)):
        freq = float((draws == value).float().mean())
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert schedule.regulariser_weight == pytest.approx(0.4 * 0.25)


class Quadratic(nn.Module):
    """'Backbone' whose output is L(θ) = ½ (θ − c)ᵀ H (θ − c), for any input."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        self.register_buffer("H", a @ a.T / dim + torch.eye(dim, dtype=torch.float64))
        self.register_buffer("c", torch.randn(dim, generator=g, dtype=torch.float64))
        self.theta = nn.Parameter(torch.zeros(dim, dtype=torch.float64))

    def forward(self, x):
        d = self.theta - self.c
        return 0.5 * d @ self.H @ d


@pytest.mark.parametrize("p0", [1 / 3, 0.6])
def test_expected_perturbed_loss_on_a_quadratic(p0):
    """E_s L(θ + sεΔ) = L(θ) + p± ε² ΔᵀHΔ exactly for a quadratic; the sample mean is within 5 standard errors."""
    epsilon, draws = 0.5, 20_000
    model = Quadratic(6)
    adaptation = FullAdaptation()
    adaptation.attach(model)  # anchor θ̂ = 0
    with torch.no_grad():
        model.theta.copy_(torch.linspace(-1, 1, 6, dtype=torch.float64))
    delta = model.theta.detach() - 0
    schedule = PerturbationSchedule(epsilon, p0, seed=11)
    with torch.no_grad():
        samples = torch.stack([adaptation.features_along_task_vector(None, schedule.draw() * epsilon)
                               for _ in range(draws)])
        expected = model(None) + schedule.regulariser_weight * (delta @ model.H @ delta)
    standard_error = float(samples.std()) / math.sqrt(draws)
    assert abs(float(samples.mean()) - float(expected)) < 5 * standard_error
    assert standard_error < 0.05 * float(expected)  # the test has power


def test_full_parameter_gradient_carries_chain_rule_factor(mlp):
    """Gradient of the functional perturbed loss = autograd of L(θ + sε(θ − θ̂)) written out by hand."""
    mlp = mlp.double()
    adaptation = FullAdaptation()
    adaptation.attach(mlp)
    anchor = {k: v.clone() for k, v in adaptation.anchor.items()}
    with torch.no_grad():
        for p in mlp.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(5, 64, dtype=torch.float64)
    y = torch.randint(0, 16, (5,))
    shift = -0.5
    loss = F.cross_entropy(adaptation.features_along_task_vector(x, shift), y)
    grads = torch.autograd.grad(loss, list(mlp.parameters()))

    theta = {k: p.detach().clone().requires_grad_(True) for k, p in mlp.named_parameters()}
    eff = {k: theta[k] + shift * (theta[k] - anchor[k]) for k in theta}
    h = F.gelu(F.linear(x, eff["fc1.weight"], eff["fc1.bias"]))
    out = F.gelu(F.linear(h, eff["fc2.weight"], eff["fc2.bias"]))
    brute = torch.autograd.grad(F.cross_entropy(out, y), list(theta.values()))
    for g, b in zip(grads, brute):
        torch.testing.assert_close(g, b, rtol=1e-12, atol=1e-14)


def test_gaussian_direction_matches_task_vector_norm():
    g = torch.Generator().manual_seed(0)
    direction = {"a": torch.randn(4, 5), "b": torch.zeros(3)}
    noise = gaussian_like(direction, g)
    assert float(noise["a"].norm()) == pytest.approx(float(direction["a"].norm()), rel=1e-5)
    assert float(noise["b"].abs().sum()) == 0.0
    assert float((noise["a"] * direction["a"]).sum()).__abs__() < float(direction["a"].norm()) ** 2


def test_gaussian_lora_perturbation_adds_noise_times_input():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4))
    adaptation = LoraAdaptation(rank=2, alpha=2, dropout=0.0, targets=["0"])
    model = adaptation.attach(net)
    _randomise_lora(adaptation)
    x = torch.randn(3, 5)
    base = adaptation.features(x)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    noisy = adaptation.features_with_noise(x, 0.5, gen_a)
    noise = gaussian_like(adaptation.task_vector(), gen_b)["0.weight"]
    torch.testing.assert_close(noisy, base + 0.5 * x @ noise.T, rtol=1e-5, atol=1e-6)
    assert model is adaptation.peft_model
