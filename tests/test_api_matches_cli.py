"""`PerturbAndMerge` reproduces `perturbmerge run --method pm-lora` exactly: in a hand-written loop and with a plain
`transformers.Trainer` plus `PerturbAndMergeCallback`, on the same data and seed, α of every task and the whole
accuracy matrix are equal (==) to the CLI's. 3 class-incremental tasks of a CSV of texts, a tiny local BERT. The
hand-written loop also matches every merging method the API can express (merge-lora, avg-lora, task-arithmetic)
and every merge option of the CLI (alpha_rule, alpha_granularity, anchor_pretrained, fisher.normalise): both call
the same end-of-task sequence (methods/merger.py).

What the user's side must match, each from a public function: the task stream (`load_tasks`), the backbone built
after `torch.manual_seed(seed)` (`load_backbone`), one `ExpandingLinearHead` block per task created before the
adapter, the masked loss (the current task's logits), AdamW with the LoRA and head learning rates, the training
order (`training_loader`) and the Fisher/evaluation batches (`evaluation_loader`).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import csv_rows, save_tiny_hf_encoder, write_csv
from perturbmerge import (ExpandingLinearHead, PerturbAndMerge, evaluation_loader, load_backbone, load_tasks,
                          training_loader)
from perturbmerge.runner import resolve_config, run_experiment

SEED = 3


class Classifier(nn.Module):
    """Backbone features → logits over every class seen so far."""

    def __init__(self, encoder: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, ExpandingLinearHead(feature_dim)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(inputs))


def task_logits(module: nn.Module, inputs, task) -> torch.Tensor:
    """The current task's logits only (the masked loss of pm-method.md §5)."""
    return module(inputs)[:, task.label_offset:task.label_offset + task.num_classes]


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api-cli")
    save_tiny_hf_encoder(folder / "enc")
    write_csv(folder / "data.csv", csv_rows(classes=6, per_class=14))
    return folder


def run_cli(folder, method: str, sets: list[str] = ()):
    config, _ = resolve_config({"benchmark": f"csv:{folder / 'data.csv'}", "method": method, "seed": SEED,
                                "tasks": 3}, sets=[f"backbone=hf:{folder / 'enc'}", "epochs=2", "batch_size=8",
                                                   *sets])
    return config, run_experiment(config, None, progress=False)


@pytest.fixture(scope="module")
def cli(data_folder):
    """The CLI's pm-lora run: config and results."""
    config, results = run_cli(data_folder, "pm-lora")
    assert len(set(results["alphas"][1:])) == 2 and all(0 < a < 1 for a in results["alphas"][1:])  # a real merge
    return config, results, data_folder


def setup(config, **options):
    stream = load_tasks(config.benchmark, num_tasks=config.tasks, seed=config.seed, backbone=config.backbone)
    torch.manual_seed(config.seed)  # as `perturbmerge run`: the global stream seeds head and adapter inits, dropout
    backbone = load_backbone(config.backbone, config.seed)
    options = {"epsilon": config.epsilon, "p0": config.p0, **options}
    pm = PerturbAndMerge(Classifier(backbone.module, backbone.feature_dim), targets=backbone.lora_targets,
                         rank=config.lora.rank, lora_alpha=config.lora.alpha, dropout=config.lora.dropout,
                         seed=config.seed, **options)
    return stream, pm


def begin(pm: PerturbAndMerge, task, config):
    """A head block for the task's classes, then the task's adapter; AdamW over both (the CLI's two groups)."""
    block = pm.model.head.add_block(task.num_classes)
    trainable = pm.begin_task()
    lora_parameters = pm.parameters()
    block.requires_grad_(True)
    optimizer = torch.optim.AdamW([{"params": lora_parameters, "lr": config.lr},
                                   {"params": block.parameters(), "lr": config.head_lr}],
                                  weight_decay=config.weight_decay)
    return trainable, optimizer


@torch.no_grad()
def accuracies(pm: PerturbAndMerge, stream, seen_tasks, config) -> tuple[list[float], float]:
    model = pm.model.eval()
    per_task, correct_all, total_all = [], 0, 0
    for task in seen_tasks:
        correct = total = 0
        for inputs, labels in evaluation_loader(task.test, config.eval_batch_size, stream.collate):
            correct += int((model(inputs).argmax(-1) == labels).sum())
            total += len(labels)
        per_task.append(100.0 * correct / total)
        correct_all, total_all = correct_all + correct, total_all + total
    return per_task, 100.0 * correct_all / total_all


def fisher_batches(stream, task, config):
    for inputs, labels in evaluation_loader(task.train, config.fisher.batch_size, stream.collate):
        yield inputs, labels - task.label_offset


def assert_same_as_cli(results, alphas, matrix, overall):
    assert alphas == results["alphas"]
    assert matrix == [row[: t + 1] for t, row in enumerate(results["accuracy_matrix"])]
    assert overall == results["acc_all_seen"]


def test_hand_written_loop_gives_the_clis_alphas_and_accuracies(cli):
    config, results, _ = cli
    hand_written_loop(config, results)


# (CLI method, its --set keys, PerturbAndMerge's arguments): each merging method the API expresses, each merge option
MERGING = [
    ("merge-lora", [], {"epsilon": 0.0}),
    ("avg-lora", [], {"epsilon": 0.0, "merge": "average"}),
    ("task-arithmetic", [], {"epsilon": 0.0, "merge": "fixed", "fixed_alpha": 0.3}),
    ("pm-lora", ["alpha_rule=simplified"], {"merge": "simplified"}),
    ("pm-lora", ["alpha_granularity=module"], {"alpha_granularity": "module"}),
    ("pm-lora", ["anchor_pretrained=true", "fisher.normalise=trace"],
     {"anchor_pretrained": True, "fisher_normalise": "trace"}),
]


@pytest.mark.parametrize("method, sets, options", MERGING, ids=[f"{m}-{'-'.join(s) or 'defaults'}"
                                                                for m, s, _ in MERGING])
def test_every_merging_method_and_merge_option_matches_the_cli(data_folder, method, sets, options):
    config, results = run_cli(data_folder, method, sets)
    records = hand_written_loop(config, results, **options)
    if "alpha_granularity" in options:
        # (the API's names carry the user's wrapper, `encoder.`; the CLI's are the backbone's own)
        assert [list(r.alpha_per_module.values()) for r in records] == [
            list(log["alpha_per_module"].values()) for log in results["task_logs"]]
        assert all(name.endswith(own) for r, log in zip(records, results["task_logs"])
                   for name, own in zip(r.alpha_per_module, log["alpha_per_module"]))
    if options.get("anchor_pretrained"):
        assert records[0].alpha < 1.0  # θ_0 took part in the first merge


def hand_written_loop(config, results, **options):
    """The library's recipe by hand: train each task with pm.perturbed(), end_task, evaluate; == the CLI."""
    stream, pm = setup(config, **options)
    alphas, matrix, overall, records = [], [], [], []
    for task in stream.tasks:
        trainable, optimizer = begin(pm, task, config)
        for epoch in range(config.epochs):
            trainable.train()
            for inputs, labels in training_loader(task.train, config.batch_size, stream.collate, config.seed,
                                                  task.index, epoch):
                with pm.perturbed():
                    loss = F.cross_entropy(task_logits(trainable, inputs, task), labels - task.label_offset)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        def per_sample_loss(module, batch, task=task):
            inputs, labels = batch
            return F.cross_entropy(task_logits(module, inputs, task), labels, reduction="none")

        record = pm.end_task(fisher_batches(stream, task, config), per_sample_loss)
        alphas.append(record.alpha)
        records.append(record)
        per_task, all_seen = accuracies(pm, stream, stream.tasks[: task.index + 1], config)
        matrix.append(per_task)
        overall.append(all_seen)
    assert_same_as_cli(results, alphas, matrix, overall)
    return records


class TaskLossModel(nn.Module):
    """What the Trainer calls: the masked loss of the current task on a batch of the CLI's inputs."""

    def __init__(self, module: nn.Module, task) -> None:
        super().__init__()
        self.module, self.task = module, task

    def forward(self, input_ids, attention_mask, labels):
        logits = task_logits(self.module, {"input_ids": input_ids, "attention_mask": attention_mask}, self.task)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class CliTrainingBatches:
    """The CLI's training batches as a Trainer dataloader (epoch set by the Trainer), labels within the task."""

    def __init__(self, stream, task, config) -> None:
        self.stream, self.task, self.config, self.epoch = stream, task, config, 0
        self.dataset = task.train

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.config.batch_size)

    def __iter__(self):
        for inputs, labels in training_loader(self.dataset, self.config.batch_size, self.stream.collate,
                                              self.config.seed, self.task.index, self.epoch):
            yield {**inputs, "labels": labels - self.task.label_offset}


def test_trainer_with_the_callback_gives_the_clis_alphas_and_accuracies(cli):
    from transformers import Trainer, TrainingArguments

    from perturbmerge.integrations import PerturbAndMergeCallback

    config, results, folder = cli
    stream, pm = setup(config)
    alphas, matrix, overall = [], [], []
    args = TrainingArguments(output_dir=str(folder / "trainer"), num_train_epochs=config.epochs,
                             per_device_train_batch_size=config.batch_size, max_grad_norm=0.0, report_to="none",
                             save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True, seed=config.seed)
    for task in stream.tasks:
        trainable, optimizer = begin(pm, task, config)

        def per_sample_loss(module, batch, task=task):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            return F.cross_entropy(task_logits(module, inputs, task), batch["labels"], reduction="none")

        callback = PerturbAndMergeCallback(pm, per_sample_loss, fisher_batches=(
            {**inputs, "labels": labels} for inputs, labels in fisher_batches(stream, task, config)))

        class CliBatchesTrainer(Trainer):
            def get_train_dataloader(self, stream=stream, task=task):
                return CliTrainingBatches(stream, task, config)

        constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        rng = torch.random.get_rng_state()  # Trainer() reseeds the global stream; the CLI's run continues it
        trainer = CliBatchesTrainer(model=TaskLossModel(trainable, task), args=args, train_dataset=task.train,
                                    optimizers=(optimizer, constant), callbacks=[callback])
        torch.random.set_rng_state(rng)
        trainer.train()
        assert len(callback.records) == 1 and len(callback.losses) == config.epochs * len(CliTrainingBatches(
            stream, task, config))
        alphas.append(callback.records[0].alpha)
        per_task, all_seen = accuracies(pm, stream, stream.tasks[: task.index + 1], config)
        matrix.append(per_task)
        overall.append(all_seen)
    assert_same_as_cli(results, alphas, matrix, overall)
