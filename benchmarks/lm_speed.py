"""Speed and memory of P&M on a causal LM (issue 49): a LoRA step's tokens/s, the pm-lora / seq-lora step ratio, the
Fisher pass against a training epoch over the same examples, the merge (closed-form α + fold) and the peak RSS. Run
it on an otherwise idle machine:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm_speed.py --backbone smollm2 \\
        --out benchmarks/results/lm-speed/smollm2-cpu.json

Batches are the training pairs of every task of examples/number_words.jsonl (or of the first --tasks tasks of
--benchmark, e.g. `--benchmark polyglot --tasks 1 --batch-size 8`) through the backbone's chat template (batch 16),
LoRA rank 8 on the default targets; epochs of the two methods are interleaved and the medians reported.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--jsonl", default=str(ROOT / "examples" / "number_words.jsonl"))
    parser.add_argument("--benchmark", default=None, help="a benchmark instead of --jsonl, e.g. polyglot")
    parser.add_argument("--tasks", type=int, default=None, help="the training pairs of the first N tasks only")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from perturbmerge.adaptation import LoraAdaptation
    from perturbmerge.api import load_backbone, load_tasks
    from perturbmerge.config import FisherSettings
    from perturbmerge.io import package_versions
    from perturbmerge.context import TaskContext
    from perturbmerge.kinds.causal_lm import CausalLMKind, LanguageModel
    from perturbmerge.merge import RunningMergeState
    from perturbmerge.methods.merger import MergeOptions, closed_form_decision
    from perturbmerge.methods.perturbation import Perturbation
    from perturbmerge.methods.task_fisher import task_fisher

    torch.manual_seed(0)
    started = time.perf_counter()
    stream = load_tasks(args.benchmark or f"jsonl:{args.jsonl}", backbone=args.backbone,
                        num_tasks=args.tasks)
    backbone = load_backbone(args.backbone)
    load_s = time.perf_counter() - started
    from perturbmerge.data import Task
    from perturbmerge.data.completions import CompletionDataset

    pairs = CompletionDataset.concatenate([t.train for t in stream.tasks])  # the (chosen) tasks' training pairs
    task = Task(0, ["all"], 0, pairs, pairs)
    examples = [pairs[i] for i in range(len(pairs))]
    batches = [stream.collate(examples[i:i + args.batch_size]) for i in range(0, len(examples), args.batch_size)]
    tokens = [int(inputs["attention_mask"].sum()) for inputs, _ in batches]

    adaptation = LoraAdaptation(8, 16.0, 0.0, backbone.lora_targets)
    model = LanguageModel(adaptation.attach(backbone.module))
    optimizer = torch.optim.AdamW(adaptation.trainable_parameters(), lr=1e-3)
    kind = CausalLMKind()
    plans = {"seq-lora": Perturbation("none", 0.5, 1 / 3, 0), "pm-lora": Perturbation("task_vector", 0.5, 0.0, 0)}

    def step(name: str, inputs) -> float:
        perturbation = plans[name]
        begin = time.perf_counter()
        sign = perturbation.draw()
        outputs = perturbation.features(adaptation, inputs, sign)
        kind.loss(None, outputs, None).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - begin

    times = {"seq-lora": [], "pm-lora": []}
    step("seq-lora", batches[0][0])  # warm-up
    for _ in range(args.repeats):
        for name in ("seq-lora", "pm-lora"):  # interleaved
            times[name].append(sum(step(name, inputs) for inputs, _ in batches))
    epoch = {name: statistics.median(values) for name, values in times.items()}

    context = TaskContext(model, kind, torch.device("cpu"), 1, task=task, collate=stream.collate,
                          eval_batch_size=args.batch_size)
    fisher_times, fisher = [], None
    for _ in range(max(1, args.repeats // 2)):
        begin = time.perf_counter()
        fisher = task_fisher(adaptation, context, task, FisherSettings(batch_size=args.batch_size))
        fisher_times.append(time.perf_counter() - begin)
    vector, previous = adaptation.task_vector(), adaptation.merged_weights()
    begin = time.perf_counter()
    alpha, _ = closed_form_decision(RunningMergeState(), previous, vector, lambda at_start: fisher, MergeOptions())
    adaptation.fold(alpha)
    merge_s = time.perf_counter() - begin
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "versions": package_versions(),
        "backbone": args.backbone, "data": args.benchmark or f"jsonl:{args.jsonl}", "tasks": len(stream.tasks),
        "examples": len(examples), "batch_size": args.batch_size,
        "tokens_per_epoch": sum(tokens), "load_s": load_s, "repeats": args.repeats,
        "epoch_s": epoch, "tokens_per_s": {name: sum(tokens) / value for name, value in epoch.items()},
        "pm_over_seq_step_ratio": epoch["pm-lora"] / epoch["seq-lora"],
        "fisher_s": statistics.median(fisher_times),
        "fisher_over_epoch": statistics.median(fisher_times) / epoch["seq-lora"],
        "merge_s": merge_s, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "times_s": times,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "times_s"}, indent=1))


if __name__ == "__main__":
    main()
