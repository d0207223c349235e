"""Markdown tables for docs/results.md from finished `perturbmerge compare` folders (no training here).

    .venv/bin/python benchmarks/results_tables.py benchmarks/results/wordnet-5 benchmarks/results/mnist-fashion-5 ...

Per folder: the summary table (mean ± sample std over seeds), then for merging methods the α sequence per seed,
the mean Fisher mass Σ F_t per task, and the merge cost: the current task's accuracy (all seen classes compete)
just before its merge minus just after, averaged over tasks 2..T and seeds.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import fmean

from perturbmerge.report import alpha_lines, table_lines


def merge_cost(run: dict) -> float | None:
    """Mean over tasks t ≥ 2 of (acc on task t before merging) − R[t][t] (after merging). None where the head's
    rows are rewritten after the merge (head.kind prototype / lda): "before" then mixes two kinds of rows."""
    if run["config"].get("head", {}).get("kind", "linear") != "linear":
        return None
    costs = [log["acc_before_merge"] - run["accuracy_matrix"][t][t]
             for t, log in enumerate(run["task_logs"]) if t > 0 and "acc_before_merge" in log]
    return fmean(costs) if costs else None


def section(folder: Path) -> list[str]:
    summary = json.loads((folder / "summary.json").read_text())
    lines = [f"### {summary['benchmark']}, {summary['num_tasks']} tasks ({summary['scenario']})", "",
             f"Command: `{summary['command']}`  ", f"Machine: {summary.get('machine', '?')}  ",
             f"Backbone: {summary['backbone']}", ""]
    lines += table_lines(summary)
    runs = {m: [json.loads((folder / "runs" / Path(d).name / "results.json").read_text()) for d in e["run_dirs"]]
            for m, e in summary["methods"].items()}
    merging = {m: rs for m, rs in runs.items() if rs[0]["alphas"] is not None}
    if merging:
        lines += ["", "| method | mean Fisher mass Σ F_t per task (tasks 1..T) | merge cost (pts, before − after) |",
                  "|---|---|---|"]
        for method, rs in merging.items():
            has_fisher = "fisher_mass" in rs[0]["task_logs"][-1]  # data-free α rules (avg, fixed) have none
            masses = ", ".join(f"{fmean(r['task_logs'][t]['fisher_mass'] for r in rs):.3g}"
                               for t in range(summary["num_tasks"])) if has_fisher else "– (no Fisher)"
            costs = [c for c in (merge_cost(r) for r in rs) if c is not None]
            cost = f"{fmean(costs):.2f}" if costs else "–"
            lines.append(f"| {method} | {masses} | {cost} |")
        lines += ["", "α per task:", ""] + alpha_lines(summary)
    return lines + [""]


def main(folders: list[str]) -> None:
    for folder in folders:
        print("\n".join(section(Path(folder))))


if __name__ == "__main__":
    main(sys.argv[1:])
