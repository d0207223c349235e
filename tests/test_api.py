"""`PerturbAndMerge` in a hand-written loop, against explicit weight construction and per-sample autograd loops."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perturbmerge import PerturbAndMerge, UserError

EPSILON = 0.5


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def explicit_forward(net: Net, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The same network with fc1/fc2 weights given explicitly (biases and head from `net`)."""
    h = torch.tanh(F.linear(x, weights["fc1.weight"], net.fc1.bias))
    h = torch.tanh(F.linear(h, weights["fc2.weight"], net.fc2.bias))
    return net.head(h)


def task_data(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=g)
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]


def per_sample_loss(module: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(module(x), y, reduction="none")


def train(pm: PerturbAndMerge, batches, steps: int = 6) -> nn.Module:
    """The hand-written loop of the README: 6 added lines around a plain PyTorch loop."""
    trainable = pm.begin_task()
    optimizer = torch.optim.SGD(pm.parameters(), lr=0.5)
    for step in range(steps):
        x, y = batches[step % len(batches)]
        with pm.perturbed():
            loss = F.cross_entropy(trainable(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return trainable


def brute_force_fisher(net: Net, weights: dict[str, torch.Tensor], batches) -> dict[str, torch.Tensor]:
    """(1/N) Σ_n (∂ℓ_n/∂W)², one example per backward pass, W a leaf."""
    leaves = {k: w.detach().clone().requires_grad_(True) for k, w in weights.items()}
    total = {k: torch.zeros_like(w) for k, w in weights.items()}
    count = 0
    for x, y in batches:
        for i in range(len(y)):
            loss = F.cross_entropy(explicit_forward(net, leaves, x[i:i + 1]), y[i:i + 1])
            for k, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values()))):
                total[k] += g ** 2
            count += 1
    return {k: v / count for k, v in total.items()}


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().double()


def test_two_tasks_alpha_and_merged_weights_match_brute_force(net):
    base = copy.deepcopy(net)
    pm = PerturbAndMerge(net, targets=["fc1", "fc2"], rank=2, lora_alpha=2.0, epsilon=EPSILON, seed=3)
    optima, fishers, merged = [], [], {k: getattr(base, k.split(".")[0]).weight.detach().clone()
                                       for k in ("fc1.weight", "fc2.weight")}
    records = []
    for task in range(2):
        batches = task_data(task)
        train(pm, batches)
        delta = pm.adaptation.task_vector()
        optimum = {k: merged[k] + delta[k] for k in merged}
        optima.append(optimum)
        fishers.append(brute_force_fisher(base, optimum, batches))
        record = pm.end_task(batches, per_sample_loss)
        records.append(record)
        # α*: the minimiser of Σ_i Σ_k F_i (θ̂_{t-1} + αΔ_t − θ*_i)², by a dense 1-D search
        grid = torch.linspace(-0.5, 1.5, 20001, dtype=torch.float64)
        objective = sum(((fishers[i][k] * (merged[k][None] + grid[:, None, None] * delta[k][None]
                                           - optima[i][k][None]) ** 2).sum((1, 2)))
                        for i in range(len(optima)) for k in merged)
        best = float(grid[objective.argmin()])
        assert record.alpha_raw == pytest.approx(best, abs=1e-4)
        assert record.alpha == pytest.approx(min(max(best, 0.0), 1.0), abs=1e-4)
        merged = {k: merged[k] + record.alpha * delta[k] for k in merged}
        for k in merged:  # W ← W + α·ΔW, folded into the plain model
            torch.testing.assert_close(dict(pm.model.named_parameters())[k], merged[k], rtol=1e-12, atol=1e-12)
    assert records[0].alpha == pytest.approx(1.0, abs=1e-12) and 0.0 < records[1].alpha < 1.0  # θ̂_1 = θ*_1
    assert sum(records[1].perturbation_draws.values()) == 6
    assert type(pm.model) is Net and not any(p.requires_grad for p in pm.model.parameters())


def test_perturbed_scales_the_lora_branch_like_explicit_weights(net):
    base = copy.deepcopy(net)
    pm = PerturbAndMerge(net, targets=["fc1", "fc2"], rank=2, lora_alpha=2.0, epsilon=EPSILON, p0=0.0, seed=1)
    trainable = pm.begin_task()
    with torch.no_grad():
        for p in pm.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(4, 5, dtype=torch.float64)
    delta = pm.adaptation.task_vector()
    weights = {k: getattr(base, k.split(".")[0]).weight for k in delta}
    seen = set()
    for _ in range(8):
        with pm.perturbed() as sign:
            out = trainable(x)
        seen.add(sign)
        explicit = explicit_forward(base, {k: weights[k] + (1 + sign * EPSILON) * delta[k] for k in delta}, x)
        torch.testing.assert_close(out, explicit, rtol=1e-12, atol=1e-12)
    assert seen == {-1, 1}  # p0 = 0: never the unperturbed point
    torch.testing.assert_close(trainable(x), explicit_forward(base, {k: weights[k] + delta[k] for k in delta}, x))


def test_state_dict_lets_the_next_task_run_in_another_process_bit_identically(net):
    continuous = PerturbAndMerge(copy.deepcopy(net), targets=["fc1", "fc2"], rank=2, seed=5)
    torch.manual_seed(10)
    train(continuous, task_data(0))
    continuous.end_task(task_data(0), per_sample_loss)
    saved_model = copy.deepcopy(continuous.model.state_dict())
    saved_state = {k: (copy.deepcopy(v)) for k, v in continuous.state_dict().items()}
    torch.manual_seed(11)
    train(continuous, task_data(1))
    expected = continuous.end_task(task_data(1), per_sample_loss)

    fresh_model = Net().double()  # "another process": a new model loaded from the merged weights
    fresh_model.load_state_dict(saved_model)
    resumed = PerturbAndMerge(fresh_model, targets=["fc1", "fc2"], rank=2, seed=999)
    resumed.load_state_dict(saved_state)
    torch.manual_seed(11)
    train(resumed, task_data(1))
    record = resumed.end_task(task_data(1), per_sample_loss)
    assert record.alpha == expected.alpha and record.alpha_raw == expected.alpha_raw and record.task == 2
    for (k, a), b in zip(continuous.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("merge, expected", [("average", 0.5), ("fixed", 0.25)])
def test_data_free_rules_need_no_fisher(net, merge, expected):
    pm = PerturbAndMerge(net, targets=["fc1"], merge=merge, fixed_alpha=0.25)
    for task in range(2):
        train(pm, task_data(task), steps=2)
        record = pm.end_task([], per_sample_loss)  # no batches: nothing is read
    assert record.alpha == expected and record.fisher_mass is None


def test_misuse_is_one_clear_error(net):
    with pytest.raises(UserError, match="merge must be one of"):
        PerturbAndMerge(net, targets=["fc1"], merge="magic")
    with pytest.raises(UserError, match="needs a list of LoRA targets"):
        PerturbAndMerge(net, targets=[])
    with pytest.raises(UserError, match="needs an nn.Module"):
        PerturbAndMerge("hf:model", targets=["fc1"])
    pm = PerturbAndMerge(net, targets=["fc1"])
    with pytest.raises(UserError, match="call begin_task"):
        pm.end_task([], per_sample_loss)
    pm.begin_task()
    with pytest.raises(UserError, match="begin_task called twice"):
        pm.begin_task()
    with pytest.raises(UserError, match="between tasks only"):
        pm.state_dict()
    with pytest.raises(UserError, match="match no Linear/Conv module"):
        PerturbAndMerge(Net(), targets=["nope"]).begin_task()
    with pytest.raises(UserError, match="train_modules \\['hed'\\] match no module"):
        PerturbAndMerge(Net(), targets=["fc1"], train_modules=["hed"]).begin_task()


def test_train_modules_train_directly_and_are_not_merged(net):
    pm = PerturbAndMerge(net, targets=["fc1"], train_modules=["head"])
    before = net.head.weight.detach().clone()
    train(pm, task_data(0), steps=3)
    assert any(p is net.head.weight for p in pm.parameters())
    pm.end_task(task_data(0), per_sample_loss)
    assert not torch.equal(pm.model.head.weight, before)  # trained in place, kept as trained
