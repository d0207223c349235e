"""The task loop: frozen head rows, one forward per step, matrix shape, determinism."""
from __future__ import annotations

import pytest
import torch

from perturbmerge.backbones import build_backbone
from perturbmerge.data import get_benchmark
from perturbmerge.heads import ContinualClassifier
from perturbmerge.learner import ContinualLearner
from perturbmerge.methods import get_method
from perturbmerge.runner import resolve_config

from helpers import request


def make_learner(method: str, tasks: int = 3, epochs: int = 1, **sets):
    config, _ = resolve_config({"benchmark": "digits", "method": method, "tasks": tasks},
                               sets=[f"epochs={epochs}"] + [f"{k}={v}" for k, v in sets.items()])
    stream = get_benchmark("digits").load(request(config.seed, tasks))
    torch.manual_seed(config.seed)
    backbone = build_backbone(stream.backbone, config.seed)
    model = ContinualClassifier(backbone.module, backbone.feature_dim)
    method_obj = get_method(method).build(config, backbone.lora_targets)
    return ContinualLearner(model, method_obj, stream, epochs=config.epochs, batch_size=config.batch_size,
                            eval_batch_size=config.eval_batch_size, seed=config.seed, device=torch.device("cpu"),
                            progress=False)


@pytest.mark.parametrize("method", ["pm-lora", "pm-full", "seq-lora"])
def test_earlier_head_rows_stay_bit_identical(method):
    learner = make_learner(method, tasks=3)
    tasks = learner.stream.tasks
    learner.train_task(tasks[0])
    snapshot = {k: v.clone() for k, v in learner.model.head.blocks[0].state_dict().items()}
    learner.train_task(tasks[1])
    learner.train_task(tasks[2])
    for k, v in learner.model.head.blocks[0].state_dict().items():
        assert torch.equal(v, snapshot[k])
    assert learner.model.head.num_classes == sum(t.num_classes for t in tasks)


@pytest.mark.parametrize("method", ["pm-lora", "pm-full", "noise-lora"])
def test_one_forward_per_training_step(method):
    learner = make_learner(method, tasks=2, epochs=2)
    calls = {"train": 0}

    def count(module, args, output):
        if module.training:
            calls["train"] += 1

    learner.model.backbone.register_forward_hook(count)
    learner.train_task(learner.stream.tasks[0])
    assert learner.step == 2 * -(-len(learner.stream.tasks[0].train) // learner.batch_size)
    assert calls["train"] == learner.step


def test_run_produces_lower_triangular_matrix_and_logs():
    learner = make_learner("pm-lora", tasks=3)
    result = learner.run()
    assert len(result.accuracy_matrix) == 3
    for t, row in enumerate(result.accuracy_matrix):
        assert len(row) == 3
        assert all(v is not None for v in row[: t + 1]) and all(v is None for v in row[t + 1 :])
    alphas = [log["alpha"] for log in result.task_logs]
    assert alphas[0] == pytest.approx(1.0, abs=1e-9)
    assert all(0.0 <= a <= 1.0 for a in alphas)
    assert all(log["fisher_mass"] > 0 for log in result.task_logs)


def test_same_seed_same_results():
    a = make_learner("pm-lora", tasks=2).run()
    b = make_learner("pm-lora", tasks=2).run()
    assert a.accuracy_matrix == b.accuracy_matrix
    assert [l["alpha"] for l in a.task_logs] == [l["alpha"] for l in b.task_logs]


def test_perturbation_draws_only_for_perturbing_methods():
    seq = make_learner("seq-lora", tasks=1)
    log = seq.train_task(seq.stream.tasks[0])
    assert log["perturbation_draws"]["0"] == seq.step
    pm = make_learner("pm-lora", tasks=1, epochs=3)
    log = pm.train_task(pm.stream.tasks[0])
    assert log["perturbation_draws"]["1"] > 0 and log["perturbation_draws"]["-1"] > 0


def test_evaluation_batches_go_by_length_and_cover_every_example():
    from perturbmerge.data.text import TokenizedDataset, make_pad_collate

    learner = make_learner("seq-lora", tasks=2)
    learner.stream.collate = make_pad_collate(0)
    lengths = [5, 1, 3, 7, 2, 2, 6]
    dataset = TokenizedDataset([[i + 1] * n for i, n in enumerate(lengths)], list(range(7)))
    batches = list(learner.loader(dataset, 3))
    seen = [int(label) for _, labels in batches for label in labels]
    assert sorted(seen) == list(range(7))
    assert [lengths[i] for i in seen] == sorted(lengths)
    assert [b[0]["input_ids"].shape[1] for b in batches] == [2, 6, 7]  # padded to each batch's longest
    shuffled = [int(label) for _, labels in learner.loader(dataset, 3, shuffle=True) for label in labels]
    assert sorted(shuffled) == list(range(7))


def test_evaluation_and_fisher_passes_do_not_touch_the_global_rng():
    learner = make_learner("seq-lora", tasks=2)
    learner.train_task(learner.stream.tasks[0])
    state = torch.get_rng_state()
    learner.evaluate(learner.stream.tasks[:1])
    for _ in learner.local_batches(learner.stream.tasks[0].train, 16):
        pass
    assert torch.equal(torch.get_rng_state(), state)


def _digits_run(tmp_path, name, *sets):
    import json

    from perturbmerge.cli import main

    out = tmp_path / name
    assert main(["run", "--benchmark", "digits", "--method", "pm-lora", "--tasks", "3", "--out", str(out), "--quiet",
                 "--set", "epochs=2", "checkpoint.enabled=false", *sets]) == 0
    return json.loads((out / "results.json").read_text())


def test_gradient_accumulation_equals_the_whole_batch(tmp_path):
    """4 micro-batches per step, each weighted by its share: the same update up to float summation order."""
    whole = _digits_run(tmp_path, "whole")
    parts = _digits_run(tmp_path, "parts", "grad_accumulation=4")
    assert parts["alphas"] == pytest.approx(whole["alphas"], rel=1e-6)
    for a, b in zip(whole["task_logs"], parts["task_logs"]):
        assert b["train_loss_last_epoch"] == pytest.approx(a["train_loss_last_epoch"], rel=1e-6)
    for row_a, row_b in zip(whole["accuracy_matrix"], parts["accuracy_matrix"]):
        assert row_b == pytest.approx(row_a, abs=0.5)


def test_bf16_autocast_runs_and_stays_close(tmp_path):
    fp32 = _digits_run(tmp_path, "fp32")
    bf16 = _digits_run(tmp_path, "bf16", "precision=bf16")
    assert bf16["config"]["precision"] == "bf16"
    losses = [[log["train_loss_last_epoch"] for log in run["task_logs"]] for run in (fp32, bf16)]
    assert losses[1] != losses[0]  # autocast engaged: bf16 rounding changes every task's training
    assert losses[1] == pytest.approx(losses[0], rel=0.02)  # measured: within 0.4 %
    assert bf16["alphas"][1:] == pytest.approx(fp32["alphas"][1:], abs=0.02)  # measured: within 0.002
    assert bf16["final_acc"] == pytest.approx(fp32["final_acc"], abs=3.0)  # measured: 0.4 points
