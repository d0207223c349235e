"""Speed of P&M's parts against their floors, on a real benchmark and backbone (default wordnet, MiniLM):

    python -m perturbmerge.bench --out benchmarks/results/bench-cpu.json      (make bench)

Each figure is the median of `--repeats` timings after one warm-up, the variants interleaved (A, B, A, B, …) so that
load drifts hit both alike, and is quoted as a ratio:
    step        an optimiser step of pm-lora / seq-lora on the same batches (target ≤ 1.03)
    peft        a seq-lora step / a minimal plain PEFT loop with the same model, batches and AdamW (≤ 1.05)
    fisher      the Fisher pass over a task / one training epoch over the same data (≤ 1.5)
    merge       S, M update + α (two tasks) + the fold for the backbone's adapted matrices, and S, M update + α
                for random tensors shaped like ViT-B/16's 24 key/value matrices (< 1 s)
    memory      peak resident memory of a pm-lora run / a seq-lora run (each in its own process; ≤ 2 + the
                S, M buffers' share), and where each run's time goes (training, Fisher, accuracy before the merge,
                merge, evaluation, the rest) from its task logs
    scaling     time per task and peak memory of whole pm-lora runs as the task count grows (5 → 10 → 20)
Only meaningful on an otherwise idle machine: the JSON records the load average before and after.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F


def median_time(variants: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each variant, interleaved, after one warm-up call each."""
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def learner_for(method_name: str, config, stream, targets: list[str], backbone_module, feature_dim):
    from .heads import ContinualClassifier
    from .learner import ContinualLearner
    from .methods import get_method

    model = ContinualClassifier(copy.deepcopy(backbone_module), feature_dim)
    method = get_method(method_name).build(config, targets)
    learner = ContinualLearner(model, method, stream, epochs=1, batch_size=config.batch_size,
                               eval_batch_size=config.eval_batch_size, seed=config.seed, device=torch.device("cpu"),
                               progress=False)
    context = learner.context
    learner.task = context.task = stream.tasks[0]
    context.kind_parameters = learner.kind.begin_task(context)
    method.begin_task(context, stream.tasks[0])
    return context, method


def profile_run(method: str, benchmark: str, tasks: int, sets: list[str]) -> dict:
    """A whole run in a fresh process: its peak resident memory (MiB), wall time and per-task logs."""
    import json
    import tempfile

    code = ("import resource, sys; from perturbmerge.cli import main; "
            f"code = main(['run', '--benchmark', {benchmark!r}, '--method', {method!r}, '--tasks', '{tasks}', "
            f"'--quiet', '--out', sys.argv[1], '--set', 'checkpoint.enabled=false', *{sets!r}]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, os.path.join(folder, "run")], capture_output=True,
                              text=True, check=True)
        wall = time.perf_counter() - started
        logs = json.loads(open(os.path.join(folder, "run", "results.json")).read())["task_logs"]
    return {"peak_rss_mib": int(done.stdout.strip().splitlines()[-1]) / 1024, "wall_s": wall, "task_logs": logs}


PARTS = ("train_time_s", "fisher_s", "acc_before_merge_s", "merge_s", "eval_s")


def breakdown(profile: dict) -> dict:
    """Seconds and share of the process's wall time per part of a run (the rest: start-up, data, model loading)."""
    logs = profile["task_logs"]
    seconds = {part: sum(log.get(part) or 0.0 for log in logs) for part in PARTS}
    seconds["other"] = profile["wall_s"] - sum(seconds.values())
    return {"wall_s": profile["wall_s"], "seconds": seconds,
            "share": {part: value / profile["wall_s"] for part, value in seconds.items()},
            "eval_s_per_task": [log["eval_s"] for log in logs], "peak_rss_mib": profile["peak_rss_mib"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="wordnet")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="also run whole pm-lora and seq-lora runs for their peak memory (1 epoch)")
    parser.add_argument("--scaling", type=lambda text: [int(n) for n in text.split(",") if n], default=[5, 10, 20],
                        help="task counts of whole pm-lora runs (1 epoch) for time per task and peak memory; "
                             "'' skips them")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from peft import LoraConfig, get_peft_model

    from .io import atomic_write_json, machine_description, package_versions
    from .merge import RunningMergeState
    from .methods.task_fisher import task_fisher
    from .runner import build_stream_and_backbone, resolve_config

    load_before = os.getloadavg()
    config, _ = resolve_config({"benchmark": args.benchmark, "tasks": args.tasks, "method": "pm-lora"})
    stream, backbone = build_stream_and_backbone(config, torch.device("cpu"), progress=False)
    targets = config.lora.targets or backbone.lora_targets
    task = stream.tasks[0]
    batches = []
    for inputs, labels in torch.utils.data.DataLoader(task.train, batch_size=config.batch_size,
                                                      collate_fn=stream.collate):
        batches.append((inputs, labels - task.label_offset))
        if len(batches) == args.steps:
            break
    learners = {name: learner_for(name, config, stream, targets, backbone.module, backbone.feature_dim)
                for name in ("pm-lora", "seq-lora")}

    def steps_of(name: str) -> Callable[[], None]:
        context, method = learners[name]
        return lambda: [method.train_step(context, batch) for batch in batches]

    peft_model = get_peft_model(copy.deepcopy(backbone.module), LoraConfig(
        r=config.lora.rank, lora_alpha=config.lora.alpha, target_modules=targets))
    head = torch.nn.Linear(backbone.feature_dim, task.num_classes)
    optimizer = torch.optim.AdamW([{"params": [p for p in peft_model.parameters() if p.requires_grad],
                                    "lr": config.lr}, {"params": head.parameters(), "lr": config.head_lr}])

    def plain_peft() -> None:
        for inputs, labels in batches:
            loss = F.cross_entropy(head(peft_model(inputs)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    step = median_time({"pm-lora": steps_of("pm-lora"), "seq-lora": steps_of("seq-lora"), "peft": plain_peft},
                       args.repeats)
    context, method = learners["pm-lora"]
    half_batch = dataclasses.replace(config.fisher, batch_size=max(1, config.fisher.batch_size // 2))
    epoch = median_time({"epoch": lambda: [method.train_step(context, b) for b in context.batches(
        task.train, config.batch_size)], "fisher": lambda: task_fisher(method.adaptation, context, task,
                                                                        config.fisher),
        "fisher_half_batch": lambda: task_fisher(method.adaptation, context, task, half_batch)},
        max(1, args.repeats // 2))

    fisher = task_fisher(method.adaptation, context, task, config.fisher)
    vector, previous = method.adaptation.task_vector(), method.adaptation.merged_weights()
    optimum = {k: previous[k].double() + vector[k].double() for k in vector}

    def merge_backbone() -> None:
        state = RunningMergeState()
        for _ in range(2):  # a second task: the α of a real merge
            state.update(fisher, optimum)
        state.decide(previous, vector, fisher, "closed_form")

    spare = copy.deepcopy(method.adaptation)  # the fold is destructive: timed once, on a copy
    started = time.perf_counter()
    spare.fold(0.5)
    fold_seconds = time.perf_counter() - started

    g = torch.Generator().manual_seed(0)
    vit = {f"layer{i}.{kind}": torch.randn(768, 768, generator=g) for i in range(12) for kind in ("key", "value")}
    vit_fisher = {k: v.abs() for k, v in vit.items()}

    def merge_vit() -> None:
        state = RunningMergeState()
        for _ in range(2):
            state.update(vit_fisher, vit)
        state.decide(vit, vit, vit_fisher, "closed_form")

    merge = median_time({"backbone": merge_backbone, "vit_b16_kv": merge_vit}, args.repeats)
    figures = {
        "step_pm_over_seq": {"value": step["pm-lora"] / step["seq-lora"], "target": "<= 1.03",
                             "seconds": {"pm-lora": step["pm-lora"] / args.steps,
                                         "seq-lora": step["seq-lora"] / args.steps}},
        "step_seq_over_plain_peft": {"value": step["seq-lora"] / step["peft"], "target": "<= 1.05",
                                     "seconds": {"plain PEFT": step["peft"] / args.steps}},
        "fisher_over_epoch": {"value": epoch["fisher"] / epoch["epoch"], "target": "<= 1.5",
                              "seconds": epoch, "examples": len(task.train),
                              "half_batch_over_epoch": epoch["fisher_half_batch"] / epoch["epoch"]},
        "merge_seconds": {"value": merge["backbone"] + fold_seconds, "target": "< 1",
                          "alpha_and_sums_seconds": merge["backbone"], "fold_seconds": fold_seconds,
                          "vit_b16_kv_alpha_and_sums_seconds": merge["vit_b16_kv"]},
    }
    if args.memory:
        runs = {name: breakdown(profile_run(name, args.benchmark, args.tasks, ["epochs=1"]))
                for name in ("pm-lora", "seq-lora")}
        rss = {name: run["peak_rss_mib"] for name, run in runs.items()}
        figures["peak_rss_pm_over_seq"] = {"value": rss["pm-lora"] / rss["seq-lora"], "mib": rss,
                                           "target": "overhead <= 2 x the adapted weights (S, M)"}
        figures["run_wall_pm_over_seq"] = {"value": runs["pm-lora"]["wall_s"] / runs["seq-lora"]["wall_s"],
                                           "target": "(reported)", "runs": runs}
    if args.scaling:
        # head.train_logits=seen: at 20 tasks a task holds one class, whose masked loss would be identically 0
        scaling = {n: breakdown(profile_run("pm-lora", args.benchmark, n, ["epochs=1", "head.train_logits=seen"]))
                   for n in args.scaling}
        first, last = scaling[args.scaling[0]], scaling[args.scaling[-1]]
        figures["scaling_peak_rss_last_over_first"] = {
            "value": last["peak_rss_mib"] / first["peak_rss_mib"], "target": "flat (constant-memory alpha)",
            "per_task_count": {str(n): {"wall_s": r["wall_s"], "wall_s_per_task": r["wall_s"] / n,
                                        "peak_rss_mib": r["peak_rss_mib"], "seconds": r["seconds"]}
                               for n, r in scaling.items()}}
    result = {"command": "python -m perturbmerge.bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_description(), "torch_threads": torch.get_num_threads(),
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "versions": package_versions(), "benchmark": args.benchmark, "steps": args.steps,
              "repeats": args.repeats, "figures": figures}
    atomic_write_json(args.out, result)
    for name, figure in figures.items():
        print(f"{name:<26} {figure['value']:.3f}   target {figure['target']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
