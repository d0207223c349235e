"""Hook-based and vmap per-sample Fisher against one-sample-at-a-time autograd loops."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perturbmerge.adaptation import FullAdaptation, LoraAdaptation
from perturbmerge.fisher import layer_weight_fisher

from conftest import TinyConvNet, tiny_bert, tiny_text_batch



def cross_entropy_of(head):
    """The classification kind's per-example loss on backbone outputs: cross-entropy of `head`'s logits."""
    return lambda outputs, labels: F.cross_entropy(head(outputs), labels, reduction="none")

def _loop_fisher(backbone_call, weights: dict[str, torch.Tensor], head: nn.Module, inputs, labels, take):
    """Brute force: (1/N) Σ_n (∂ℓ_n/∂W)², one sample per backward pass, W made a leaf for the occasion."""
    for w in weights.values():
        w.requires_grad_(True)
    total = {k: torch.zeros_like(w) for k, w in weights.items()}
    n = labels.shape[0]
    for i in range(n):
        loss = F.cross_entropy(head(backbone_call(take(inputs, i))), labels[i : i + 1])
        grads = torch.autograd.grad(loss, list(weights.values()))
        for k, g in zip(weights, grads):
            total[k] += g**2
    for w in weights.values():
        w.requires_grad_(False)
    return {k: v / n for k, v in total.items()}


def _take_dict(inputs, i):
    return {k: v[i : i + 1] for k, v in inputs.items()}


def _take_tensor(inputs, i):
    return inputs[i : i + 1]


def _batches(inputs, labels, size, take_many):
    n = labels.shape[0]
    for start in range(0, n, size):
        yield take_many(inputs, slice(start, start + size)), labels[start : start + size]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_lora_weight_fisher_matches_per_sample_autograd_on_tiny_bert(dtype, tol):
    backbone = tiny_bert().to(dtype)
    adaptation = LoraAdaptation(rank=4, alpha=8, dropout=0.1, targets=["key", "value"])
    model = adaptation.attach(backbone)
    with torch.no_grad():  # non-zero B so the LoRA branch is active
        for p in adaptation.trainable_parameters():
            p.normal_(0, 0.2)
    model.eval()
    torch.manual_seed(1)
    head = nn.Linear(16, 3).to(dtype)
    inputs = tiny_text_batch(n=7)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    hooks = adaptation.fisher(_batches(inputs, labels, 3, lambda x, s: {k: v[s] for k, v in x.items()}),
                              cross_entropy_of(head), progress=False, description="test")
    assert len(hooks) == 4 and all(k.endswith((".key.weight", ".value.weight")) for k in hooks)
    weights = {k: layer.get_base_layer().weight for k, layer in adaptation.layers.items()}
    loop = _loop_fisher(model, weights, head, inputs, labels, _take_dict)
    for k in loop:
        torch.testing.assert_close(hooks[k].to(dtype), loop[k], rtol=tol, atol=tol * float(loop[k].abs().max()))
        assert float(loop[k].abs().max()) > 0


def test_lora_weight_fisher_matches_on_conv_and_sample_cap():
    torch.manual_seed(0)
    net = TinyConvNet().double()
    adaptation = LoraAdaptation(rank=2, alpha=2, dropout=0.0, targets=["conv1", "pw"])
    model = adaptation.attach(net)
    with torch.no_grad():
        for p in adaptation.trainable_parameters():
            p.normal_(0, 0.3)
    model.eval()
    head = nn.Linear(6, 2).double()
    x = torch.randn(9, 3, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 2, (9,))
    hooks = adaptation.fisher(_batches(x, y, 4, lambda a, s: a[s]), cross_entropy_of(head), max_samples=6,
                              progress=False, description="test")
    weights = {k: layer.get_base_layer().weight for k, layer in adaptation.layers.items()}
    loop = _loop_fisher(model, weights, head, x[:6], y[:6], _take_tensor)
    for k in loop:
        torch.testing.assert_close(hooks[k], loop[k], rtol=1e-10, atol=1e-12)


def test_shared_layer_called_twice_sums_its_gradients():
    layer = nn.Linear(4, 4).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    bias = nn.Parameter(torch.zeros(4, dtype=torch.float64))  # something upstream that requires grad

    def per_sample(batch):
        inputs, labels = batch
        return F.cross_entropy(layer(torch.tanh(layer(inputs + bias))), labels, reduction="none")

    hooks = layer_weight_fisher({"w": layer}, [(x, y)], per_sample)
    loop = _loop_fisher(lambda a: torch.tanh(layer(a + bias)), {"w": layer.weight}, layer, x, y, _take_tensor)
    torch.testing.assert_close(hooks["w"], loop["w"], rtol=1e-10, atol=1e-12)


def test_a_layer_whose_output_misses_the_loss_gets_zero_fisher():
    """BERT computes its pooler, mean pooling ignores it: LoRA on `dense` also hits the pooler. Its per-sample
    gradient is zero (autograd loop: allow_unused → None), so its Fisher is exactly zero; the used layer's matches."""
    torch.manual_seed(0)
    used, unused = nn.Linear(4, 3).double(), nn.Linear(4, 4).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    bias = nn.Parameter(torch.zeros(4, dtype=torch.float64))

    def per_sample(batch):
        inputs, labels = batch
        unused(inputs + bias)  # computed and thrown away, like the pooler
        return F.cross_entropy(used(inputs + bias), labels, reduction="none")

    hooks = layer_weight_fisher({"used": used, "unused": unused}, [(x[:4], y[:4]), (x[4:], y[4:])], per_sample)
    assert torch.equal(hooks["unused"], torch.zeros_like(unused.weight))
    loop = _loop_fisher(lambda a: a + bias, {"used": used.weight}, used, x, y, _take_tensor)
    torch.testing.assert_close(hooks["used"], loop["used"], rtol=1e-10, atol=1e-12)


def test_full_parameter_fisher_matches_per_sample_autograd(mlp):
    mlp = mlp.double()
    adaptation = FullAdaptation()
    adaptation.attach(mlp)
    mlp.eval()
    head = nn.Linear(16, 3).double()
    x = torch.randn(10, 64, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    fisher = adaptation.fisher(_batches(x, y, 4, lambda a, s: a[s]), cross_entropy_of(head), False, "test")
    assert set(fisher) == {n for n, _ in mlp.named_parameters()}
    params = dict(mlp.named_parameters())
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(10):
        loss = F.cross_entropy(head(mlp(x[i : i + 1])), y[i : i + 1])
        for k, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            total[k] += g**2
    for k in total:
        torch.testing.assert_close(fisher[k], total[k] / 10, rtol=1e-10, atol=1e-14)


def test_full_parameter_fisher_on_padded_text_matches_per_sample_autograd():
    """Per-sample vmap through a transformers encoder with ragged padding (pm-full / ewc-full on text)."""
    backbone = tiny_bert().double().eval()
    adaptation = FullAdaptation()
    adaptation.attach(backbone)
    head = nn.Linear(16, 3).double()
    inputs = tiny_text_batch(n=6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    fisher = adaptation.fisher(_batches(inputs, labels, 4, lambda a, s: {k: v[s] for k, v in a.items()}),
                               cross_entropy_of(head), False, "test")
    loop = _loop_fisher(backbone, dict(backbone.named_parameters()), head, inputs, labels, _take_dict)
    for k in loop:
        torch.testing.assert_close(fisher[k], loop[k], rtol=1e-8, atol=1e-14)


def test_text_backbone_ignores_padding():
    backbone = tiny_bert().double().eval()
    inputs = tiny_text_batch(n=6)
    with torch.no_grad():
        batched = backbone(inputs)
        for i in range(6):
            length = int(inputs["attention_mask"][i].sum())
            alone = backbone({k: v[i : i + 1, :length] for k, v in inputs.items()})
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("positions", [1, 3, 9])
@pytest.mark.parametrize("gram", [True, False])
@pytest.mark.parametrize("chunk_entries", [1 << 21, 24, 1])  # one chunk; 2 examples a chunk; one example a chunk
def test_both_squared_sum_routes_equal_explicit_per_sample_gradients(positions, gram, chunk_entries, monkeypatch):
    from perturbmerge import fisher
    from perturbmerge.fisher import sum_squared_sample_grads

    monkeypatch.setattr(fisher, "PER_SAMPLE_CHUNK_ENTRIES", chunk_entries)
    g_ = torch.Generator().manual_seed(positions)
    x = torch.randn(5, positions, 4, generator=g_, dtype=torch.float64)
    g = torch.randn(5, positions, 3, generator=g_, dtype=torch.float64)
    explicit = sum((sum(torch.outer(g[n, l], x[n, l]) for l in range(positions))) ** 2 for n in range(5))
    torch.testing.assert_close(sum_squared_sample_grads(x, g, gram=gram), explicit, rtol=1e-12, atol=1e-12)


def test_square_gpt2_conv1d_fisher_keeps_the_in_out_layout():
    """transformers' Conv1D stores W as [in, out]; with in == out the shapes alone cannot tell the layout."""
    from transformers.pytorch_utils import Conv1D

    from perturbmerge.fisher import layer_weight_fisher

    torch.manual_seed(0)
    layer = Conv1D(6, 6).double()  # nf = out = 6, nx = in = 6
    with torch.no_grad():
        layer.weight.normal_()
    head = nn.Linear(6, 3).double()
    x = torch.randn(8, 2, 6, dtype=torch.float64)  # 8 samples, 2 tokens
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    shift = torch.zeros(6, dtype=torch.float64, requires_grad=True)  # makes the layer output require grad

    def per_sample_loss(batch):
        inputs, y = batch
        return F.cross_entropy(head(layer(inputs + shift).mean(1)), y, reduction="none")

    fisher = layer_weight_fisher({"c": layer}, [(x, labels)], per_sample_loss)["c"]
    loop = _loop_fisher(lambda inp: layer(inp).mean(1), {"c": layer.weight}, head, x, labels, _take_tensor)["c"]
    torch.testing.assert_close(fisher.double(), loop, rtol=1e-10, atol=1e-12)


def test_progress_bar_shows_the_number_of_batches(capsys):
    """A generator of batches wrapped in KnownLength gives the Fisher bar its total ("0/3", not a bare count)."""
    from perturbmerge.fisher import KnownLength

    layer = nn.Linear(4, 3).double()
    bias = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    batches = ((torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 1])) for _ in range(3))

    def per_sample(batch):
        return F.cross_entropy(layer(batch[0] + bias), batch[1], reduction="none")

    layer_weight_fisher({"w": layer}, KnownLength(batches, 3), per_sample, progress=True, description="Fisher")
    assert "0/3" in capsys.readouterr().err
