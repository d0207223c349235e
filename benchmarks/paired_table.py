"""Markdown tables of one benchmark's committed runs (no training): per method the mean ± sample std over seeds of
final score, AAA, forgetting and BWT (and, for causal-LM runs, the general-ability NLL after the last task minus
the pretrained model's), then paired differences over the seeds both methods ran, with the 95 % t-interval and
paired bootstrap interval (perturbmerge.stats), optionally issue 49's benchmark criteria, one run's score matrix
(--matrix) and each method's scores per task after the last task (--final-rows).

    .venv/bin/python benchmarks/paired_table.py benchmarks/results/lm/polyglot --criteria \\
        --pairs pm-lora:seq-lora,merge-lora:seq-lora,pm-lora:merge-lora,pm-lora:avg-lora
    .venv/bin/python benchmarks/paired_table.py benchmarks/results/regime/langid-10-seeds \\
        --pairs pm-lora:seq-lora,merge-lora:seq-lora,pm-lora:merge-lora --pair-metrics final_acc,forgetting

Runs are FOLDER/runs/METHOD-seedN/results.json. Methods appear in the order given by --methods (default: the order
of their folders' names).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import fmean, stdev

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from perturbmerge.stats import bracket_text, interval_text, paired_summary  # noqa: E402

METRICS = (("final_acc", "final"), ("aaa", "AAA"), ("forgetting", "forgetting"), ("bwt", "BWT"))


def load_runs(folder: Path) -> dict[str, dict[int, dict]]:
    found: dict[str, dict[int, dict]] = {}
    for path in sorted((folder / "runs").glob("*-seed*/results.json")):
        method, seed = path.parent.name.rsplit("-seed", 1)
        found.setdefault(method, {})[int(seed)] = json.loads(path.read_text())
    return found


def spread(values: list[float | None], digits: int = 2) -> str:
    """mean ± sample std; "–" where a run has no value (joint: no forgetting, one training)."""
    if None in values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{fmean(values):.{digits}f} ± {stdev(values):.{digits}f}"


def general_change(run: dict) -> float | None:
    last = (run.get("task_logs") or [{}])[-1]
    if last.get("general_nll") is None:
        return None
    return last["general_nll"] - last["general_nll_base"]


def method_table(runs: dict[str, dict[int, dict]], methods: list[str]) -> list[str]:
    general = any(general_change(r) is not None for by_seed in runs.values() for r in by_seed.values())
    header = "| method | seeds | " + " | ".join(label for _, label in METRICS) + (
        " | general NLL change |" if general else " |")
    lines = [header, "|---|---|" + "---|" * (len(METRICS) + general)]
    for method in methods:
        by_seed = runs[method]
        seeds = sorted(by_seed)
        cells = [spread([by_seed[s][key] for s in seeds]) for key, _ in METRICS]
        if general:
            changes = [general_change(by_seed[s]) for s in seeds]
            cells.append(spread(changes, 3))
        lines.append(f"| {method} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return lines


PAIR_LABELS = {"final_acc": "final score", "aaa": "AAA", "forgetting": "forgetting", "bwt": "BWT"}


def pair_lines(runs: dict[str, dict[int, dict]], pairs: list[tuple[str, str]], metric: str = "final_acc") -> list[str]:
    """A − B of `metric` seed by seed, over the seeds both ran: mean ± std with the t and bootstrap intervals (rows
    of a metric other than the final score name it, so that each row's key is its own)."""
    lines = [f"| difference of {PAIR_LABELS[metric]} | paired seeds | mean ± std (95 % intervals of the mean) | "
             "mean [95 % t-interval] |", "|---|---|---|---|"]
    for first, second in pairs:
        if first not in runs or second not in runs:
            continue
        seeds = sorted(set(runs[first]) & set(runs[second]))
        differences = [runs[first][s][metric] - runs[second][s][metric] for s in seeds]
        if differences:
            name = f"{first} − {second}" + ("" if metric == "final_acc" else f", {PAIR_LABELS[metric]}")
            lines.append(f"| {name} | {','.join(map(str, seeds))} | {interval_text(paired_summary(differences))} | "
                         f"{bracket_text(differences)} |")
    return lines


def criteria_lines(runs: dict[str, dict[int, dict]], seed: int = 0) -> list[str]:
    """Issue 49's criteria at `seed`: C1 = mean_i (seq-lora R[i][i] − zero-shot R[i][i]) ≥ 20; C2 = seq-lora
    forgetting ≥ 10 (benchmarks/results/lm/polyglot/PLAN.md)."""
    zero, seq = runs["zero-shot"][seed], runs["seq-lora"][seed]
    size = len(seq["accuracy_matrix"])
    gains = [seq["accuracy_matrix"][i][i] - zero["accuracy_matrix"][i][i] for i in range(size)]
    c1, c2 = fmean(gains), seq["forgetting"]
    return ["| criterion (test split) | seed | measured | threshold | passes |", "|---|---|---|---|---|",
            f"| C1: mean of seq-lora R[i][i] − zero-shot R[i][i] | {seed} | {c1:.2f} (per task: "
            f"{', '.join(f'{g:+.1f}' for g in gains)}) | ≥ 20 | {'yes' if c1 >= 20 else 'no'} |",
            f"| C2: seq-lora forgetting | {seed} | {c2:.2f} | ≥ 10 | {'yes' if c2 >= 10 else 'no'} |"]


def task_names(run: dict) -> list[str]:
    """The run's task names (its classes per task), or "task 1", … where they do not match its score matrix."""
    size = len(run.get("accuracy_matrix") or [])
    names = [", ".join(map(str, group)) for group in run.get("classes_per_task") or []]
    return names if len(names) == size else [f"task {i + 1}" for i in range(size)]


def matrix_lines(runs: dict[str, dict[int, dict]], method: str, seed: int) -> list[str]:
    """R[t][i] of one run, a row per 'after task t', the columns named by the run's tasks."""
    run = runs[method][seed]
    names = task_names(run)
    matrix = run["accuracy_matrix"]
    lines = ["| run | after task | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for t, row in enumerate(matrix):
        lines.append(f"| {method} seed {seed} | {t + 1} | "
                     + " | ".join("" if v is None else f"{v:.1f}" for v in row) + " |")
    return lines


def final_row_lines(runs: dict[str, dict[int, dict]], methods: list[str]) -> list[str]:
    """Each method's score on every task after the last one (the score matrix's last row), mean ± sample std over
    seeds, one decimal; a method whose runs have another number of tasks (joint: one pooled task) is left out."""
    names = task_names(runs[methods[0]][min(runs[methods[0]])]) if methods else []
    size = len(names)
    lines = ["| score after the last task | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * size]
    for method in methods:
        by_seed = runs[method]
        seeds = sorted(by_seed)
        rows = [by_seed[s]["accuracy_matrix"][-1] for s in seeds]
        if any(len(row) != size for row in rows):
            continue
        cells = [spread([row[i] for row in rows], 1) for i in range(size)]
        lines.append(f"| {method}, after task {size} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--methods", default="", help="comma-separated order (default: all, by name)")
    parser.add_argument("--pairs", default="", help="A:B,... paired differences A − B (of --pair-metrics)")
    parser.add_argument("--pair-metrics", default="final_acc",
                        help=f"comma-separated, a table each, from {', '.join(PAIR_LABELS)} (default final_acc)")
    parser.add_argument("--criteria", action="store_true", help="issue 49's criteria (zero-shot and seq-lora)")
    parser.add_argument("--matrix", default="", help="METHOD:SEED,... the score matrices of these runs")
    parser.add_argument("--final-rows", default="",
                        help="METHOD,...: each one's score per task after the last task, mean ± std over seeds")
    args = parser.parse_args(argv)
    runs = load_runs(args.folder)
    if not runs:
        print(f"no runs under {args.folder}/runs", file=sys.stderr)
        return 1
    methods = [m for m in args.methods.split(",") if m in runs] if args.methods else sorted(runs)
    lines: list[str] = []
    if args.criteria and {"zero-shot", "seq-lora"} <= set(runs):
        lines += criteria_lines(runs) + [""]
    for item in filter(None, args.matrix.split(",")):
        method, seed = item.split(":")
        if method in runs and int(seed) in runs[method]:
            lines += matrix_lines(runs, method, int(seed)) + [""]
    lines += method_table(runs, methods)
    pairs = [tuple(p.split(":", 1)) for p in args.pairs.split(",") if ":" in p]
    metrics = args.pair_metrics.split(",")
    unknown = [m for m in metrics if m not in PAIR_LABELS]
    if unknown:
        print(f"unknown --pair-metrics {','.join(unknown)}: choose from {','.join(PAIR_LABELS)}", file=sys.stderr)
        return 2
    for metric in metrics if pairs else []:
        lines += [""] + pair_lines(runs, pairs, metric)
    final_methods = [m for m in args.final_rows.split(",") if m in runs]
    if final_methods:
        lines += [""] + final_row_lines(runs, final_methods)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
