"""Peak resident memory of whole causal-LM runs (issue 49's "peak RSS ≤ 3 GiB on SmolLM2"): each method runs in a
fresh process (`perturbmerge.bench.profile_run`: checkpoints off, --quiet), and its peak RSS, wall time and where the
time went (training, Fisher, merge, evaluation) are written to --out with the command. For example, a cut of
polyglot (all six tasks, 64 training and 16 test pairs each, one epoch):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lm_memory.py --benchmark polyglot --tasks 6 \\
        --set data.train_per_task=64 --set data.test_per_task=16 --set epochs=1 --out FILE

Add `--set fisher.batch_size=64` for the Fisher batch that causal-LM benchmarks used before they defaulted to their
training batch. Memory figures do not need an idle machine; the wall times do.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="polyglot")
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--methods", default="pm-lora,seq-lora")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every run, as `perturbmerge run --set` (repeatable)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from perturbmerge.bench import breakdown, profile_run
    from perturbmerge.io import atomic_write_json, machine_description, package_versions
    from perturbmerge.runner import resolve_config

    load_before = os.getloadavg()
    runs = {}
    for method in args.methods.split(","):
        config, _ = resolve_config({"benchmark": args.benchmark, "method": method, "tasks": args.tasks},
                                   sets=args.sets)
        profile = breakdown(profile_run(method, args.benchmark, args.tasks, args.sets))
        runs[method] = {"fisher_batch_size": config.fisher.batch_size, "batch_size": config.batch_size,
                        "peak_rss_gib": profile["peak_rss_mib"] / 1024, **profile}
        print(f"{method}: peak RSS {runs[method]['peak_rss_gib']:.2f} GiB, {profile['wall_s']:.0f} s "
              f"(Fisher batch {config.fisher.batch_size})", flush=True)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_description(), "versions": package_versions(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "benchmark": args.benchmark, "tasks": args.tasks, "sets": args.sets, "runs": runs,
    }
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
