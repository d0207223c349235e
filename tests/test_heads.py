"""The head part: probe, refit, prototype rows, the LDA head against explicit constructions, the training logits,
the pretrained-backbone ensemble."""
from __future__ import annotations

import pytest
import torch

from helpers import explicit_lda as _explicit_lda, run_method as _run

# ---- classifier-protocol options (long-sequences issue) -------------------------------------------------------
def test_head_refit_and_prototypes_change_only_the_head(tmp_path):
    """The masked loss trains only the current block, so what is done to a finished task's rows cannot change
    later training: α is identical, accuracies differ."""
    base = _run("pm-lora", tmp_path / "base")
    refit = _run("pm-lora", tmp_path / "refit", "head.refit_epochs=3")
    proto = _run("pm-lora", tmp_path / "proto", "head.kind=prototype")
    lda = _run("pm-lora", tmp_path / "lda", "head.kind=lda")
    for variant in (refit, proto, lda):
        assert variant["alphas"] == base["alphas"] and variant["accuracy_matrix"] != base["accuracy_matrix"]
    losses = refit["task_logs"][1]["refit_losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_linear_probe_first_fits_the_new_rows_before_the_lora(tmp_path):
    base = _run("pm-lora", tmp_path / "base")
    probe = _run("pm-lora", tmp_path / "probe", "head.probe_epochs=2")
    losses = probe["task_logs"][0]["probe_losses"]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert probe["alphas"][1:] != base["alphas"][1:]  # the LoRA now trains against a fitted head


def test_prototype_rows_are_normalised_class_means_on_the_merged_backbone():
    import torch

    from perturbmerge.backbones import build_backbone
    from perturbmerge.config import RunConfig
    from perturbmerge.data import get_benchmark
    from perturbmerge.heads import ContinualClassifier
    from perturbmerge.learner import ContinualLearner
    from perturbmerge.methods import get_method

    from helpers import request

    config = RunConfig(benchmark="digits", method="pm-lora", tasks=2, epochs=1)
    config.head.kind = "prototype"
    stream = get_benchmark("digits").load(request(0, 2))
    torch.manual_seed(0)
    backbone = build_backbone("mlp", 0)
    method = get_method("pm-lora").build(config, backbone.lora_targets)
    learner = ContinualLearner(ContinualClassifier(backbone.module, backbone.feature_dim), method, stream, epochs=1,
                               batch_size=32, eval_batch_size=256, seed=0, device=torch.device("cpu"), progress=False)
    learner.run()
    model = learner.model.eval()
    for index, task in enumerate(stream.tasks[1:], 1):  # the last task: its rows were set on the final backbone
        x, y = task.train.tensors
        with torch.no_grad():
            features = model.backbone(x).double()
        block = model.head.blocks[index]
        for row in range(task.num_classes):
            mean = features[y == task.label_offset + row].mean(0)
            torch.testing.assert_close(block.weight[row].double(), mean / mean.norm(), rtol=1e-5, atol=1e-6)
        assert bool((block.bias == 0).all())


# ---- head.kind = lda: shared-covariance Gaussian classifier from stored statistics ---------------------------
@pytest.mark.parametrize("shrinkage", [0.0, 0.1, 1.0])
def test_lda_statistics_match_an_explicit_construction_from_raw_features(shrinkage):
    import numpy as np
    import torch

    from perturbmerge.heads import GaussianClassStatistics, ExpandingLinearHead

    rng = np.random.default_rng(0)
    d = 5
    mix = rng.normal(size=(d, d))
    tasks = []  # two tasks of 2 and 3 classes, features with a shared correlated covariance
    for classes in ([0, 1], [2, 3, 4]):
        y = np.repeat(classes, 40)
        x = rng.normal(size=(len(y), d)) @ mix + 3 * rng.normal(size=(5, d))[y]
        tasks.append((x, y))
    statistics = GaussianClassStatistics()
    head = ExpandingLinearHead(d).double()
    for (x, y), offset in zip(tasks, (0, 2)):
        block = head.add_block(len(np.unique(y))).double()
        rows = torch.tensor(y - offset)
        features = torch.tensor(x)
        sums = torch.zeros(block.out_features, d, dtype=torch.float64).index_add_(0, rows, features)
        counts = torch.bincount(rows).double()
        statistics.add(list(range(offset, offset + block.out_features)), sums, counts, features.T @ features)
    statistics.write_rows(head, shrinkage)
    weights, biases, means, inverse = _explicit_lda([x for x, _ in tasks], [y for _, y in tasks], shrinkage)
    written = torch.cat([b.weight for b in head.blocks]).detach().numpy()
    written_bias = torch.cat([b.bias for b in head.blocks]).detach().numpy()
    np.testing.assert_allclose(written, weights, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(written_bias, biases, rtol=1e-8, atol=1e-10)
    # the arg-max is the Gaussian Bayes rule with equal priors: the smallest Mahalanobis distance under Σ_γ
    x = np.concatenate([x for x, _ in tasks])
    distances = np.stack([np.einsum("nd,de,ne->n", x - m, inverse, x - m) for m in means], 1)
    with torch.no_grad():
        predicted = head(torch.tensor(x)).argmax(1).numpy()
    assert (predicted == distances.argmin(1)).all()


def test_simplecil_lda_head_is_the_gaussian_classifier_of_the_frozen_features(tmp_path):
    import numpy as np
    import torch

    from perturbmerge.backbones import build_backbone
    from perturbmerge.data import get_benchmark

    from helpers import request

    run = _run("simplecil", tmp_path, "head.kind=lda", "head.shrinkage=0.2")
    stream = get_benchmark("digits").load(request(0, 3))
    torch.manual_seed(0)
    backbone = build_backbone("mlp", 0).module.eval()
    with torch.no_grad():
        features = [backbone(t.train.tensors[0]).double().numpy() for t in stream.tasks]
        weights, biases, _, _ = _explicit_lda(features, [t.train.tensors[1].numpy() for t in stream.tasks], 0.2)
        x = torch.cat([t.test.tensors[0] for t in stream.tasks])
        y = torch.cat([t.test.tensors[1] for t in stream.tasks]).numpy()
        predicted = (backbone(x).double().numpy() @ weights.T + biases).argmax(1)
    assert run["final_acc"] == pytest.approx(100.0 * float((predicted == y).mean()), abs=1e-9)


def test_pm_lora_lda_rows_use_each_tasks_statistics_on_the_backbone_of_its_merge(tmp_path):
    """Old classes keep the statistics taken on the merged backbone of their own task (no example is kept);
    the final rows are the LDA of those, brute-forced from features captured at each task's end."""
    import numpy as np
    import torch

    from perturbmerge.runner import resolve_config, run_experiment

    captured = []

    def capture(event, learner, info):
        if event == "end_task":  # after the method's end_task: the folded backbone, the rows just rewritten
            task = learner.stream.tasks[info["task"]]
            x, y = task.train.tensors
            with torch.no_grad():
                captured.append((learner.model.backbone(x.to(learner.device)).double().cpu().numpy(), y.numpy()))
            if info["task"] == len(learner.stream.tasks) - 1:
                captured.append(torch.cat([b.weight for b in learner.model.head.blocks]).detach().double().numpy())

    config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora", "tasks": 3}, None,
                               ["epochs=1", "head.kind=lda", "head.shrinkage=0.3"])
    run_experiment(config, None, progress=False, callbacks=[capture])
    weights, _, _, _ = _explicit_lda([f for f, _ in captured[:3]], [y for _, y in captured[:3]], 0.3)
    np.testing.assert_allclose(captured[3], weights, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("train_logits", ["task", "seen"])
def test_training_loss_covers_the_task_or_every_seen_class(train_logits):
    """head.train_logits: the objective at task 2 equals the cross-entropy written out in numpy over the current
    block's logits with local labels (task), or over all blocks' logits with global labels (seen); earlier rows
    are fixed either way (no gradient, not in the optimiser)."""
    import numpy as np
    import torch

    from perturbmerge.runner import resolve_config, run_experiment

    checked = []

    def capture(event, learner, info):
        if event != "begin_task" or info["task"] != 1:
            return
        task = learner.stream.tasks[1]
        x, y = task.train.tensors[0][:16].to(learner.device), task.train.tensors[1][:16]
        local = (y - task.label_offset).to(learner.device)
        blocks = learner.model.head.blocks
        for block in blocks:
            block.zero_grad(set_to_none=True)
        objective, _ = learner.method.objective(learner.context, (x, local), 0)
        objective.backward()
        with torch.no_grad():
            features = learner.model.backbone(x).double().numpy()  # the fresh LoRA is zero: θ̂_1's features
        logits = [features @ b.weight.detach().double().numpy().T + b.bias.detach().double().numpy() for b in blocks]
        if train_logits == "seen":
            logits, targets = np.concatenate(logits, 1), y.numpy()
        else:
            logits, targets = logits[-1], y.numpy() - task.label_offset
        log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        expected = float((log_z - logits[np.arange(len(targets)), targets]).mean())
        optimised = {id(p) for group in learner.method.optimizer.param_groups for p in group["params"]}
        checked.append((float(objective.detach()), expected, blocks[0].weight.grad,
                        id(blocks[0].weight) in optimised, blocks[1].weight.grad is not None))

    config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora", "tasks": 2}, None,
                               ["epochs=1", "head.kind=lda", f"head.train_logits={train_logits}"])
    run_experiment(config, None, progress=False, callbacks=[capture])
    (objective, expected, old_rows_gradient, old_rows_optimised, new_rows_have_gradient), = checked
    assert objective == pytest.approx(expected, rel=1e-5)
    assert old_rows_gradient is None or not old_rows_gradient.any()
    assert not old_rows_optimised and new_rows_have_gradient


def test_frozen_weight_ensembles_the_lda_head_of_the_pretrained_backbone(tmp_path):
    """head.frozen_weight = w: after the last task the model scores log softmax(its LDA logits on θ̂) + w · log
    softmax(the LDA logits of the pretrained backbone's features, brute-forced in numpy on a freshly built
    backbone), and the reported accuracy is that score's arg-max. Training is untouched: same α, same losses."""
    import numpy as np
    import torch

    from perturbmerge.backbones import build_backbone
    from perturbmerge.runner import resolve_config, run_experiment

    captured = {}

    def capture(event, learner, info):
        if event == "end_task" and info["task"] == len(learner.stream.tasks) - 1:
            tasks = learner.stream.tasks
            captured["train"] = [t.train.tensors for t in tasks]
            x = torch.cat([t.test.tensors[0] for t in tasks])
            captured["test"] = x, torch.cat([t.test.tensors[1] for t in tasks]).numpy()
            with torch.no_grad():
                captured["scores"] = learner.model(x).double().numpy()
                captured["merged"] = learner.model.head(learner.model.backbone(x)).double()

    sets = ["epochs=1", "head.shrinkage=0.2"]
    config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora-plus", "tasks": 3}, None,
                               [*sets, "head.frozen_weight=0.7"])
    ensembled = run_experiment(config, None, progress=False, callbacks=[capture])
    torch.manual_seed(0)
    backbone = build_backbone("mlp", 0).module.eval()  # the pretrained weights, built anew
    x, y = captured["test"]
    with torch.no_grad():
        weights, biases, _, _ = _explicit_lda([backbone(xt).double().numpy() for xt, _ in captured["train"]],
                                              [yt.numpy() for _, yt in captured["train"]], 0.2)
        frozen = torch.tensor(backbone(x).double().numpy() @ weights.T + biases)
    expected = (captured["merged"].log_softmax(1) + 0.7 * frozen.log_softmax(1)).numpy()
    np.testing.assert_allclose(captured["scores"], expected, rtol=1e-4, atol=1e-4)
    assert ensembled["final_acc"] == pytest.approx(100.0 * float((expected.argmax(1) == y).mean()), abs=1e-9)
    plain = _run("pm-lora-plus", tmp_path, *sets, "head.frozen_weight=0")
    assert ensembled["alphas"] == plain["alphas"]
    assert [log["train_loss_last_epoch"] for log in ensembled["task_logs"]] == [
        log["train_loss_last_epoch"] for log in plain["task_logs"]]
    assert ensembled["final_acc"] != plain["final_acc"]  # the ensemble changes the predictions here


def test_named_lda_methods_are_their_option_spellings(tmp_path):
    plus = _run("pm-lora-plus", tmp_path / "plus")
    spelled = _run("pm-lora", tmp_path / "spelled", "head.kind=lda", "head.drift=linear", "anchor_pretrained=true",
                   "fisher.normalise=trace", "head.drift_ridge=3", "head.frozen_weight=0.5")
    assert plus["accuracy_matrix"] == spelled["accuracy_matrix"] and plus["alphas"] == spelled["alphas"]
    frozen = _run("frozen-lda", tmp_path / "frozen")
    assert frozen["accuracy_matrix"] == _run("simplecil", tmp_path / "simplecil", "head.kind=lda")["accuracy_matrix"]


def test_options_that_need_a_method_default_are_checked_with_it():
    """pm-lora-plus sets head.kind=lda itself, so head.drift=sdc is valid for it (and not for pm-lora)."""
    from perturbmerge.errors import UserError
    from perturbmerge.runner import resolve_config

    config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora-plus"}, None, ["head.drift=sdc"])
    assert config.head.kind == "lda" and config.head.drift == "sdc"
    config, _ = resolve_config({"benchmark": "digits", "method": "pm-lora-plus"}, None, ["head.drift=none"])
    assert config.head.drift == "none" and config.anchor_pretrained  # one option off, the others kept
    with pytest.raises(UserError, match="head.drift=sdc needs head.kind=lda"):
        resolve_config({"benchmark": "digits", "method": "pm-lora"}, None, ["head.drift=sdc"])
