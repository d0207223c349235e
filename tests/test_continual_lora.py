"""The continual-LoRA baselines and SLCA's alignment, each against its defining property computed by brute force:
InfLoRA's design (orthogonal to the memory, the best r directions inside its complement) and GPM's growth rule;
the trained InfLoRA update annihilating the earlier tasks' input subspace; SD-LoRA's hooked forward and fold equal to
the explicit weights; O-LoRA's penalty equal to its sum of squared overlaps; SLCA's samples matching the stored
moments and the logit normalisation its formula."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from perturbmerge.methods.alignment import class_covariance, normalised_logits, sample_features
from perturbmerge.methods.fecam import ClassGaussians
from perturbmerge.methods.inflora import designed_down_projection, grown_memory, layer_input_rows
from perturbmerge.methods.olora import OrthogonalSubspacePenalty
from perturbmerge.methods.sdlora import dense_directions, direction_output
from perturbmerge.runner import resolve_config, run_experiment


def random_moment(dim: int, seed: int) -> torch.Tensor:
    x = torch.randn(200, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.T @ (x * torch.linspace(0.1, 3.0, dim, dtype=torch.float64))  # unequal energies

def test_inflora_design_is_orthogonal_to_the_memory_and_best_inside_its_complement():
    dim, rank = 12, 3
    moment = random_moment(dim, 0)
    moment = (moment + moment.T) / 2
    memory, _ = torch.linalg.qr(torch.randn(dim, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    down = designed_down_projection(moment, memory, rank)
    assert torch.allclose(down @ memory, torch.zeros(rank, 4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(down @ down.T, torch.eye(rank, dtype=torch.float64), atol=1e-12)
    # brute force: the r largest eigenvalues of P C P (P the projector off the memory) are the captured energy
    projector = torch.eye(dim, dtype=torch.float64) - memory @ memory.T
    best = np.sort(np.linalg.eigvalsh((projector @ moment @ projector).numpy()))[-rank:].sum()
    assert float((down @ moment @ down.T).trace()) == pytest.approx(best, rel=1e-10)
    # and no orthonormal r-frame in the complement drawn at random does better
    for seed in range(20):
        frame, _ = torch.linalg.qr(projector @ torch.randn(dim, rank, generator=torch.Generator().manual_seed(seed),
                                                           dtype=torch.float64))
        assert float((frame.T @ moment @ frame).trace()) <= best + 1e-9


def test_gpm_memory_grows_by_the_fewest_directions_that_reach_the_threshold():
    dim = 10
    moment = random_moment(dim, 2)
    moment = (moment + moment.T) / 2
    first = grown_memory(None, moment, 0.8, dim)
    values = np.sort(np.linalg.eigvalsh(moment.numpy()))[::-1]
    shares = np.cumsum(values) / values.sum()
    assert first.shape[1] == int(np.argmax(shares >= 0.8)) + 1  # brute force: the first k reaching 80 %
    second = grown_memory(first, random_moment(dim, 3), 0.95, dim - 2)
    assert torch.equal(second[:, :first.shape[1]], first)  # the old memory is kept as it was
    assert torch.allclose(second.T @ second, torch.eye(second.shape[1], dtype=torch.float64), atol=1e-10)
    assert second.shape[1] <= dim - 2  # room for a next task's rank-2 design is kept
    full = grown_memory(None, moment, 1.0, 4)
    assert full.shape[1] == 4  # capped


def test_inflora_update_annihilates_the_earlier_tasks_input_subspace():
    config, _ = resolve_config({"benchmark": "digits", "method": "inflora", "tasks": 3, "epochs": 1})
    seen: list[dict] = []

    def record(event, learner, info):
        if event == "begin_task":  # the designed down-projections and the memory of the earlier tasks
            method = learner.method
            seen.append({"memory": {k: v.clone() for k, v in method.memory.items()},
                         "down": {k: layer.lora_A["default"].weight.detach().clone()
                                  for k, layer in method.adaptation.layers.items()}})
        if event == "end_task":
            seen[-1]["memory_after"] = {k: v.clone() for k, v in learner.method.memory.items()}

    def before_fold(event, learner, info):
        if event == "train_step" and learner.method.adaptation is not None:
            for key, layer in learner.method.adaptation.layers.items():
                assert not layer.lora_A["default"].weight.requires_grad  # only B trains
                assert torch.equal(layer.lora_A["default"].weight, seen[-1]["down"][key])

    result = run_experiment(config, None, progress=False, callbacks=[record, before_fold])
    assert len(seen) == 3 and all(result["task_logs"][t]["memory_dims"] for t in range(3))
    for task in (1, 2):
        for key, down in seen[task]["down"].items():
            memory = seen[task]["memory"][key].to(down)
            # ΔW_t M = s B_t (A_t M) = 0 for every earlier input direction
            assert (down @ memory).abs().max() < 1e-5
    dims = [seen[t]["memory_after"] for t in range(3)]
    assert all(dims[1][k].shape[1] >= dims[0][k].shape[1] for k in dims[0])


def test_sdlora_forward_and_fold_equal_the_explicit_weights():
    generator = torch.Generator().manual_seed(0)
    d_out, d_in, rank = 5, 7, 2
    directions = []
    for _ in range(3):
        up, down = torch.randn(d_out, rank, generator=generator), torch.randn(rank, d_in, generator=generator)
        norm = float((up.double() @ down.double()).norm())
        directions.append((up / norm, down))
    magnitudes = torch.tensor([0.3, -1.2, 2.0])
    x = torch.randn(4, d_in, generator=generator)
    explicit = sum(m * (up @ down) for (up, down), m in zip(directions, magnitudes))
    assert torch.allclose(direction_output(x, directions, magnitudes), x @ explicit.T, atol=1e-5)
    assert torch.allclose(dense_directions(directions, magnitudes), explicit.double(), atol=1e-6)


def test_sdlora_run_learns_magnitudes_and_folds_them():
    config, _ = resolve_config({"benchmark": "digits", "method": "sd-lora", "tasks": 3, "epochs": 1})
    stored = []
    result = run_experiment(config, None, progress=False, callbacks=[
        lambda event, learner, info: stored.append(learner.method.directions) if event == "end_task" else None])
    for key, pairs in stored[-1].items():  # after the last task: one unit-norm direction per task
        assert len(pairs) == 3
        assert all(float((up.double() @ down.double()).norm()) == pytest.approx(1.0, rel=1e-5) for up, down in pairs)
    logs = result["task_logs"]
    assert "magnitude_offsets" not in logs[0]  # no earlier direction in the first task
    assert [len(v) for v in logs[2]["magnitude_offsets"].values()] == [2] * len(logs[2]["magnitude_offsets"])
    assert any(abs(x) > 0 for values in logs[1]["magnitude_offsets"].values() for x in values)  # they trained


class FakeLayer:
    def __init__(self, down, up):
        self.lora_A = {"default": type("L", (), {"weight": down})()}
        self.lora_B = {"default": type("L", (), {"weight": up})()}


def test_olora_penalty_is_the_sum_of_squared_overlaps_and_reaches_only_the_new_adapter():
    generator = torch.Generator().manual_seed(0)
    penalty = OrthogonalSubspacePenalty(orthogonal=0.5, l2=0.1)
    old = {k: [torch.randn(2, 6, generator=generator) for _ in range(2)] for k in ("a", "b")}
    penalty.earlier = {k: [t.clone() for t in v] for k, v in old.items()}
    layers = {k: FakeLayer(torch.randn(2, 6, generator=generator, requires_grad=True),
                           torch.randn(4, 2, generator=generator, requires_grad=True)) for k in ("a", "b")}
    adaptation = type("Adaptation", (), {"layers": layers})()
    value = penalty.penalty(adaptation)
    brute = 0.0
    for key, layer in layers.items():
        down = layer.lora_A["default"].weight.detach().double()
        for a_i, (j, k) in itertools.product(old[key], itertools.product(range(2), range(2))):
            brute += 0.5 * float(a_i.double()[j] @ down[k]) ** 2
        brute += 0.1 * (float(down.norm()) + float(layer.lora_B["default"].weight.detach().norm()))
    assert float(value.detach()) == pytest.approx(brute, rel=1e-5)
    value.backward()
    assert all(layer.lora_A["default"].weight.grad is not None for layer in layers.values())
    assert all(not t.requires_grad for v in penalty.earlier.values() for t in v)


def test_olora_penalty_reduces_the_overlap_it_measures():
    overlaps = {}
    for strength in (0.0, 50.0):
        config, _ = resolve_config({"benchmark": "digits", "method": "o-lora", "tasks": 2, "epochs": 2},
                                   sets=[f"continual_lora.olora_orthogonal={strength}"])
        overlaps[strength] = run_experiment(config, None, progress=False)["task_logs"][1]["subspace_overlap"]
    assert overlaps[50.0] < 0.5 * overlaps[0.0]


def test_slca_samples_match_the_stored_class_moments():
    generator = torch.Generator().manual_seed(0)
    gaussians = ClassGaussians()
    truth = {}
    for position in range(2):
        mixing = torch.randn(3, 3, generator=generator, dtype=torch.float64)
        x = torch.randn(500, 3, generator=generator, dtype=torch.float64) @ mixing + 3.0 * position
        gaussians.sums[position], gaussians.counts[position], gaussians.moments[position] = x.sum(0), 500.0, x.T @ x
        truth[position] = (x.mean(0), torch.from_numpy(np.cov(x.numpy().T)))  # numpy's unbiased covariance
    for position, (mean, covariance) in truth.items():
        stored = class_covariance(gaussians.sums[position], 500.0, gaussians.moments[position])
        assert torch.allclose(stored, covariance + 1e-4 * torch.eye(3, dtype=torch.float64), atol=1e-10)
    samples, positions = sample_features(gaussians, 40_000, torch.Generator().manual_seed(1))
    for position, (mean, covariance) in truth.items():
        drawn = samples[positions == position]
        assert torch.allclose(drawn.mean(0), mean, atol=0.05 * float(covariance.diagonal().max().sqrt()))
        assert torch.allclose(torch.from_numpy(np.cov(drawn.numpy().T)), covariance, rtol=0.05, atol=0.05)


def test_slca_logit_normalisation_formula():
    logits = torch.tensor([[1.0, 2.0, 3.0, -1.0, 0.5]])
    blocks = [2, 3]
    mean_norm = (torch.tensor([1.0, 2.0]).norm() + torch.tensor([3.0, -1.0, 0.5]).norm()) / 2
    assert torch.allclose(normalised_logits(logits, blocks), logits / mean_norm / 0.1, rtol=1e-6)


def test_slca_alignment_retrains_every_seen_row():
    config, _ = resolve_config({"benchmark": "digits", "method": "slca", "tasks": 3, "epochs": 1})
    rows: list[torch.Tensor] = []

    def record(event, learner, info):
        if event in ("begin_task", "end_task") and learner.task.index == 2:
            rows.append(learner.model.head.blocks[0].weight.detach().clone())

    result = run_experiment(config, None, progress=False, callbacks=[record])
    assert len(result["task_logs"][2]["align_losses"]) == 5
    assert not torch.equal(rows[0], rows[1])  # task 1's rows moved during task 3's alignment, not its training


@pytest.mark.parametrize("conv", [torch.nn.Conv2d(3, 5, 1), torch.nn.Conv2d(3, 5, 3, stride=2, padding=1),
                                  torch.nn.Linear(3, 5)], ids=["pointwise", "3x3-stride2", "linear"])
def test_inflora_layer_inputs_are_what_the_flattened_weight_multiplies(conv):
    """conv(x) = rows · W_flatᵀ + b: the moment Σ x xᵀ is taken over exactly the vectors ΔW acts on."""
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    if isinstance(conv, torch.nn.Linear):
        x = x.permute(0, 2, 3, 1)  # [..., d_in]
    rows = layer_input_rows(conv, x)
    by_rows = rows @ conv.weight.detach().reshape(conv.weight.shape[0], -1).T + conv.bias.detach()
    out = conv(x).detach()
    expected = out.movedim(1, -1).reshape(-1, out.shape[1]) if isinstance(conv, torch.nn.Conv2d) else \
        out.reshape(-1, out.shape[-1])
    assert torch.allclose(by_rows, expected, atol=1e-5)


def test_sdlora_directions_on_a_conv_layer_equal_the_explicit_kernel():
    """For a Conv2d layer the stored direction (up [d_out, r] @ down [r, C·k·k]) acts as a convolution whose kernel is
    the dense direction reshaped: the hooked output equals conv2d with Σ δα_i D_i as its kernel."""
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    directions = [(torch.randn(4, 2, generator=generator), torch.randn(2, 27, generator=generator)) for _ in range(2)]
    magnitudes = torch.tensor([0.7, -0.4])
    x = torch.randn(2, 3, 7, 7, generator=generator)
    kernel = dense_directions(directions, magnitudes).float().reshape(4, 3, 3, 3)
    expected = torch.nn.functional.conv2d(x, kernel, None, conv.stride, conv.padding)
    assert torch.allclose(direction_output(x, directions, magnitudes, conv), expected, atol=1e-4)
