"""Measure every core method on `digits` over several seeds; write JSON + a markdown table with the command.

    .venv/bin/python benchmarks/core_digits.py --seeds 0,1,2 --out benchmarks/results/digits-core
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path
from statistics import mean, stdev

import torch

from perturbmerge.io import atomic_write_json, atomic_write_text
from perturbmerge.runner import resolve_config, run_experiment

METHODS = ["pm-lora", "merge-lora", "noise-lora", "seq-lora", "pm-full", "seq-full"]
METRICS = ["final_acc", "aaa", "forgetting", "bwt", "plasticity", "wall_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="benchmarks/results/digits-core")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {}
    for method in args.methods.split(","):
        runs = []
        for seed in seeds:
            config, _ = resolve_config({"benchmark": "digits", "method": method, "seed": seed})
            runs.append(run_experiment(config, progress=False))
        rows[method] = {
            m: {"mean": mean(r[m] for r in runs), "std": stdev(r[m] for r in runs) if len(runs) > 1 else 0.0}
            for m in METRICS
        }
        rows[method]["alphas"] = [r["alphas"] for r in runs]
        print(method, {m: round(rows[method][m]["mean"], 2) for m in METRICS}, flush=True)
    command = " ".join([".venv/bin/python"] + [shlex.quote(a) for a in sys.argv])
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), {"command": command, "machine": machine, "seeds": seeds, "methods": rows})
    lines = [f"Command: `{command}`  ", f"Machine: {machine}; seeds {seeds}; mean ± std over seeds, percent.", "",
             "| method | final Acc | AAA | forgetting | BWT | plasticity | wall s |", "|---|---|---|---|---|---|---|"]
    for method, r in rows.items():
        cells = [f"{r[m]['mean']:.2f} ± {r[m]['std']:.2f}" for m in METRICS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
