"""Diagnostic: how much accuracy do stale stored class statistics cost an LDA-head run, and which drift estimate
recovers it? Runs one (benchmark, method, seed) and, after every task, scores several LDA heads on the same
backbone against the same evaluation data:

  method      the run's own head (what results.json reports)
  stale       each class's statistics as stored when its task ended, never moved
  linear-ρ    stored statistics moved by an affine drift map x ↦ xW + b fitted on the current task's data
              (features before vs after this task), ridge towards W = I with λ = ρ·tr(ZᵀZ)/d:
                  W = (Z̃ᵀZ̃ + λI)⁻¹ (Z̃ᵀZ̃' + λI),  b = z̄' − z̄W   (Z̃: centred features)
              means and the second moment both move: s_c ← s_c W + n_c b,
              M ← WᵀMW + (SW)ᵀb + bᵀ(SW) + N bᵀb
  oracle      statistics recomputed from every seen task's training data on the current backbone
              (uses old data: an upper bound for drift compensation, not a method)
  frozen      statistics on the pretrained backbone (the frozen-lda baseline's head)
  concat-*    the same on concatenated features [pretrained, current] (stale / linear-1 on the current half /
              oracle): does adding the adapted features to the frozen ones help?
  ensemble-w  w · frozen-LDA log-posterior + the method's LDA log-posterior (w = 0.5, 1 ('ensemble'), 2)

Run on a validation split (--set data.validation_fraction=0.2) when choosing among them. Writes JSON lines to
--out, one per task, with the exact command; `summary FILE...` prints the final accuracies as a table.

    python benchmarks/diagnose_head_drift.py --benchmark mnist-fashion --tasks 10 --seed 0 \\
        --method pm-lora-plus --set data.validation_fraction=0.2 --out diag.jsonl
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from perturbmerge.heads import GaussianClassStatistics, fit_affine_drift
from perturbmerge.learner import move_to
from perturbmerge.runner import resolve_config, run_experiment

RIDGES = (0.3, 1.0, 3.0, 10.0)
ENSEMBLE_WEIGHTS = (0.5, 1.0, 2.0)  # w in w·log p_frozen + log p_method


@torch.no_grad()
def features_and_labels(learner, dataset, state=None):
    """Features of `dataset` on the backbone (with `state` loaded temporarily, if given) and global labels."""
    backbone = learner.model.backbone
    saved = None
    if state is not None:
        saved = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
        backbone.load_state_dict(state)
    learner.model.eval()
    feats, labels = [], []
    try:
        for inputs, y in learner.loader(dataset, learner.eval_batch_size):
            feats.append(backbone(move_to(inputs, learner.device)).double().cpu())
            labels.append(y)
    finally:
        if saved is not None:
            backbone.load_state_dict(saved)
    return torch.cat(feats), torch.cat(labels)


def add_task(statistics: GaussianClassStatistics, features: torch.Tensor, labels: torch.Tensor) -> None:
    classes = sorted(set(labels.tolist()))
    sums = torch.stack([features[labels == c].sum(0) for c in classes])
    counts = torch.tensor([float((labels == c).sum()) for c in classes])
    statistics.add(classes, sums, counts, features.T @ features)


def fit_affine(before: torch.Tensor, after: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    return fit_affine_drift(torch.tensor(float(len(before))), before.sum(0), after.sum(0), before.T @ before,
                            before.T @ after, ridge)


def lda_logits(statistics: GaussianClassStatistics, shrinkage: float, features: torch.Tensor
               ) -> tuple[list[int], torch.Tensor]:
    weights, biases = statistics.classifier(shrinkage)
    classes = sorted(weights)
    return classes, features @ torch.stack([weights[c] for c in classes]).T + torch.tensor([biases[c] for c in classes])


def accuracy_of(classes: list[int], logits: torch.Tensor, labels: torch.Tensor) -> float:
    predictions = torch.tensor(classes)[logits.argmax(1)]
    return 100.0 * float((predictions == labels).double().mean())


def accuracy(statistics: GaussianClassStatistics, shrinkage: float, features: torch.Tensor,
             labels: torch.Tensor) -> float:
    return accuracy_of(*lda_logits(statistics, shrinkage, features), labels)


class HeadDriftProbe:
    def __init__(self, out: Path, command: str) -> None:
        self.out, self.command = out, command
        self.pretrained = self.previous = None
        self.stale = GaussianClassStatistics()
        self.frozen = GaussianClassStatistics()
        self.linear = {rho: GaussianClassStatistics() for rho in RIDGES}
        self.concat_stale = GaussianClassStatistics()
        self.concat_linear = GaussianClassStatistics()
        self.pretrained_features: dict[tuple[int, str], torch.Tensor] = {}  # (task, split) -> features at θ_0

    def features_at_pretrained(self, learner, index: int, split: str) -> torch.Tensor:
        """Features of task `index`'s split on the pretrained backbone, computed once (they never change)."""
        if (index, split) not in self.pretrained_features:
            dataset = getattr(learner.stream.tasks[index], split)
            self.pretrained_features[index, split] = features_and_labels(learner, dataset, self.pretrained)[0]
        return self.pretrained_features[index, split]

    def __call__(self, event: str, learner, info: dict) -> None:
        if event == "begin_task" and info["task"] == 0:  # a fresh LoRA (B = 0) sits on the pretrained weights
            self.pretrained = {k.replace(".base_layer.", "."): v.detach().clone()
                               for k, v in learner.model.backbone.state_dict().items() if "lora_" not in k}
            self.previous = self.pretrained
        if event != "evaluated":
            return
        t = info["task"]
        tasks = learner.stream.tasks[: t + 1]
        shrinkage = learner.method.config.head.shrinkage
        task = tasks[-1]
        now, labels = features_and_labels(learner, task.train)
        before, _ = features_and_labels(learner, task.train, self.previous)
        frozen_train = self.features_at_pretrained(learner, t, "train")
        for rho, statistics in self.linear.items():
            if statistics.sums:
                statistics.move_affine(*fit_affine(before, now, rho))
            add_task(statistics, now, labels)
        add_task(self.stale, now, labels)
        add_task(self.frozen, frozen_train, labels)
        add_task(self.concat_stale, torch.cat([frozen_train, now], 1), labels)
        if self.concat_linear.sums:
            weight, bias = fit_affine(before, now, 1.0)
            dim = weight.shape[0]
            block = torch.eye(2 * dim, dtype=torch.float64)
            block[dim:, dim:] = weight
            self.concat_linear.move_affine(block, torch.cat([torch.zeros(dim, dtype=torch.float64), bias]))
        add_task(self.concat_linear, torch.cat([frozen_train, now], 1), labels)
        oracle, concat_oracle = GaussianClassStatistics(), GaussianClassStatistics()
        for index, seen in enumerate(tasks):
            seen_now, seen_labels = (now, labels) if index == t else features_and_labels(learner, seen.train)
            add_task(oracle, seen_now, seen_labels)
            add_task(concat_oracle, torch.cat([self.features_at_pretrained(learner, index, "train"), seen_now], 1),
                     seen_labels)
        test = [features_and_labels(learner, seen.test) for seen in tasks]
        test_features, test_labels = torch.cat([f for f, _ in test]), torch.cat([y for _, y in test])
        frozen_test = torch.cat([self.features_at_pretrained(learner, index, "test") for index in range(t + 1)])
        concat_test = torch.cat([frozen_test, test_features], 1)
        classes, frozen_logits = lda_logits(self.frozen, shrinkage, frozen_test)
        method_statistics = getattr(learner.method, "class_statistics", None)
        row = {"task": t, "method": info["acc_all_seen"],
               "stale": accuracy(self.stale, shrinkage, test_features, test_labels),
               "oracle": accuracy(oracle, shrinkage, test_features, test_labels),
               "frozen": accuracy_of(classes, frozen_logits, test_labels),
               "concat-stale": accuracy(self.concat_stale, shrinkage, concat_test, test_labels),
               "concat-linear-1.0": accuracy(self.concat_linear, shrinkage, concat_test, test_labels),
               "concat-oracle": accuracy(concat_oracle, shrinkage, concat_test, test_labels)}
        if method_statistics is not None and method_statistics.sums:  # the method has an LDA head of its own
            method_logits = lda_logits(method_statistics, shrinkage, test_features)[1]
            for weight in ENSEMBLE_WEIGHTS:
                row["ensemble" if weight == 1.0 else f"ensemble-{weight}"] = accuracy_of(
                    classes, weight * frozen_logits.log_softmax(1) + method_logits.log_softmax(1), test_labels)
        row.update({f"linear-{rho}": accuracy(s, shrinkage, test_features, test_labels)
                    for rho, s in self.linear.items()})
        row["command"] = self.command
        with self.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items() if k != "command"}),
              flush=True)
        self.previous = {k: v.detach().clone() for k, v in learner.model.backbone.state_dict().items()}


def summary_table(paths: list[Path]) -> str:
    """Markdown: per head, final accuracy (last task's row) per file, and mean ± std over the files."""
    runs = [[json.loads(line) for line in path.read_text().splitlines() if line.strip()] for path in paths]
    heads = [k for k in runs[0][-1] if k not in ("task", "command")]
    lines = ["| head | " + " | ".join(p.stem for p in paths) + " | mean ± std |",
             "|---|" + "---|" * (len(paths) + 1)]
    for head in heads:
        finals = torch.tensor([rows[-1].get(head, float("nan")) for rows in runs], dtype=torch.float64)
        spread = f"{float(finals.std()):.2f}" if len(finals) > 1 else "–"
        lines.append(f"| {head} | " + " | ".join(f"{float(v):.2f}" for v in finals)
                     + f" | {float(finals.mean()):.2f} ± {spread} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["summary"]:  # python benchmarks/diagnose_head_drift.py summary A.jsonl B.jsonl ...
        print(summary_table([Path(p) for p in argv[1:]]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="pm-lora-plus")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"--out {args.out} exists; choose another path")
    config, _ = resolve_config({"benchmark": args.benchmark, "tasks": args.tasks, "seed": args.seed,
                                "method": args.method}, sets=args.sets)
    probe = HeadDriftProbe(args.out, "python benchmarks/diagnose_head_drift.py " + shlex.join(argv))
    run_experiment(config, None, progress=False, callbacks=[probe])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
