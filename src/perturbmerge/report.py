"""Summaries and plots of finished runs: mean ± std tables, accuracy-matrix heatmaps, all-seen accuracy and α curves.

Inputs are results dicts as written to `results.json`; nothing here trains. Standard deviations are sample
standard deviations over seeds (ddof = 1; 0 for a single seed).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import fmean, stdev
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .stats import interval_text, paired_summary

from .io import atomic_write_bytes, atomic_write_json, atomic_write_text

METRICS = ("final_acc", "aaa", "forgetting", "bwt", "plasticity", "wall_time_s")
METRIC_LABELS = {"final_acc": "final Acc", "aaa": "AAA", "forgetting": "forgetting", "bwt": "BWT",
                 "plasticity": "plasticity", "wall_time_s": "wall s"}


def mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None}
    return {"mean": fmean(present), "std": stdev(present) if len(present) > 1 else 0.0}


def group_by_method(runs: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Runs grouped by method, in first-seen order, each group sorted by seed."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[run["method"]].append(run)
    return {method: sorted(group, key=lambda r: r["seed"]) for method, group in groups.items()}


def _as_array(nested: Sequence) -> np.ndarray:
    """Nested lists of floats with None (e.g. above the accuracy matrix's diagonal) → float array with NaN."""
    if isinstance(nested, (list, tuple)):
        return np.array([_as_array(item) for item in nested], dtype=float)
    return np.array(np.nan if nested is None else nested, dtype=float)


def _per_task_mean_std(rows: Sequence[Sequence[float | None] | None]) -> tuple[np.ndarray, np.ndarray] | None:
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    array = _as_array(rows)
    std = array.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(array.shape[1])
    return array.mean(axis=0), std


def summarise_runs(runs: Sequence[Mapping[str, Any]], run_dirs: Mapping[tuple[str, int], str] | None = None
                   ) -> dict[str, Any]:
    """Per method: mean and std of every metric over seeds, per-task curves, and the run folders."""
    methods = {}
    for method, group in group_by_method(runs).items():
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in group]}
        entry.update({metric: mean_std([r[metric] for r in group]) for metric in METRICS})
        for key in ("acc_all_seen", "alphas"):
            curve = _per_task_mean_std([r.get(key) for r in group])
            entry[key] = None if curve is None else {"mean": curve[0].tolist(), "std": curve[1].tolist()}
        entry["alphas_per_seed"] = [r.get("alphas") for r in group]
        matrix = _as_array([r["accuracy_matrix"] for r in group]).mean(axis=0)
        entry["matrix_mean"] = [[None if np.isnan(v) else float(v) for v in row] for row in matrix]
        general = [_final_log(r, "general_nll") for r in group]
        if all(v is not None for v in general):  # causal-LM runs with a general-ability set
            entry["general_nll"] = mean_std(general)
            entry["general_nll_base"] = mean_std([_final_log(r, "general_nll_base") for r in group])
        if run_dirs is not None:
            entry["run_dirs"] = [run_dirs[(method, r["seed"])] for r in group]
        methods[method] = entry
    first = runs[0]
    return {"benchmark": first["benchmark"], "num_tasks": first["num_tasks"], "scenario": first["scenario"],
            "backbone": first.get("backbone"), "task_names": task_names(first), "methods": methods}


def task_names(results: Mapping[str, Any]) -> list[str]:
    """A run's task names: each task's class names joined (a causal-LM task's one name)."""
    return [", ".join(map(str, group)) for group in results.get("classes_per_task") or []]


def score_matrix_lines(matrix: Sequence[Sequence[float | None]], names: Sequence[str], title: str) -> list[str]:
    """R[t][i] as aligned plain text: a row per 'after task t', a column per task i (named when names are given)."""
    size = len(matrix)
    labels = list(names) if len(names) == size else [f"task {i + 1}" for i in range(size)]
    width = max(7, *(len(label) for label in labels))
    lines = [title, (" " * 15 + "".join(f"{label:>{width + 2}}" for label in labels)).rstrip()]
    for t, row in enumerate(matrix):
        cells = "".join(f"{'' if v is None else f'{v:.1f}':>{width + 2}}" for v in row)
        lines.append((f"  after task {t + 1:<2}" + cells).rstrip())
    return lines


def score_matrix_markdown(summary: Mapping[str, Any]) -> list[str]:
    """Per method, R[t][i] (mean over seeds) as a markdown table with the tasks' names."""
    names = summary.get("task_names") or [f"task {i + 1}" for i in range(summary["num_tasks"])]
    lines: list[str] = []
    for method, entry in summary["methods"].items():
        matrix = entry["matrix_mean"]
        columns = names if len(names) == len(matrix[0]) else [f"task {i + 1}" for i in range(len(matrix[0]))]
        lines += ["", f"{method} (mean over {len(entry['seeds'])} seed(s)):", "",
                  "| after task | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        lines += [f"| {t + 1} | " + " | ".join("" if v is None else f"{v:.1f}" for v in row) + " |"
                  for t, row in enumerate(matrix)]
    return lines


def _final_log(run: Mapping[str, Any], key: str) -> float | None:
    """`key` of the run's last task log (None when the run did not log it)."""
    logs = run.get("task_logs") or []
    return logs[-1].get(key) if logs else None


def general_ability_lines(summary: Mapping[str, Any]) -> list[str]:
    """Markdown table of the general-ability NLL after the last task against the pretrained model's (causal LM)."""
    rows = [(m, e) for m, e in summary["methods"].items() if "general_nll" in e]
    if not rows:
        return []
    lines = ["| method | seeds | NLL after the last task | pretrained | change |", "|---|---|---|---|---|"]
    for method, entry in rows:
        count = len(entry["seeds"])
        change = entry["general_nll"]["mean"] - entry["general_nll_base"]["mean"]
        lines.append(f"| {method} | {count} | {_cell(entry['general_nll'], 3, count)} | "
                     f"{entry['general_nll_base']['mean']:.3f} | {change:+.3f} |")
    return lines


def score_words(summary: Mapping[str, Any]) -> tuple[str, str]:
    """What R[t][i] is called in this summary's text: (its name, the all-seen curve's name)."""
    if summary.get("scenario") == "task-incremental":  # causal-LM tasks: exact match or chrF per task
        return "score", "mean score on all seen tasks"
    return "accuracy", "accuracy on all seen classes"


def final_label(summary: Mapping[str, Any]) -> str:
    """The name of A_T in this summary's (or run's) text: final score for causal-LM tasks, else final Acc."""
    return "final score" if score_words(summary)[0] == "score" else "final Acc"


def _cell(stats: Mapping[str, float | None], digits: int = 2, count: int = 2) -> str:
    if stats["mean"] is None:
        return "–"
    if count == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def table_lines(summary: Mapping[str, Any]) -> list[str]:
    """Markdown table: one row per method, mean ± std over seeds; the best final Acc (final score: causal-LM tasks)
    and AAA in bold."""
    methods = summary["methods"]
    continual = {name: e for name, e in methods.items() if not _is_not_continual(name)}
    best = {m: max((e[m]["mean"] for e in continual.values() if e[m]["mean"] is not None), default=None)
            for m in ("final_acc", "aaa")}
    final = final_label(summary)
    header = "| method | seeds | " + " | ".join(final if m == "final_acc" else METRIC_LABELS[m] for m in METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 2)]
    ordered = list(continual.items()) + [(m, e) for m, e in methods.items() if m not in continual]
    for method, entry in ordered:
        cells = []
        for metric in METRICS:
            text = _cell(entry[metric], 1 if metric == "wall_time_s" else 2, len(entry["seeds"]))
            if (method in continual and metric in best and entry[metric]["mean"] is not None
                    and f"{entry[metric]['mean']:.2f}" == f"{best[metric]:.2f}"):  # a tie as shown: all in bold
                text = f"**{text}**"
            cells.append(text)
        label = f"{method} (reference, not continual)" if method not in continual else method
        lines.append(f"| {label} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    return lines


def _is_not_continual(method: str) -> bool:
    from .methods import METHODS

    return method in METHODS and METHODS[method].joint


REFERENCE = "seq-lora"  # differences are reported against sequential LoRA when it is among the methods


def reference_method(runs: Sequence[Mapping[str, Any]]) -> str:
    """What differences are taken against: seq-lora when it ran, else the first method of the comparison."""
    methods = list(group_by_method(runs))
    return REFERENCE if REFERENCE in methods else methods[0]


def paired_differences(runs: Sequence[Mapping[str, Any]], reference: str | None = None) -> dict[str, Any] | None:
    """Per method: final Acc and all-seen accuracy after each task minus the reference method's, seed by seed
    (seeds both ran), as mean and sample std over those seeds, and the final Acc difference's 95 % t-interval and
    paired bootstrap interval (stats.py); None if the reference did not run."""
    groups = group_by_method(runs)
    reference = reference or reference_method(runs)
    if reference not in groups:
        return None
    base = {r["seed"]: r for r in groups[reference]}
    out: dict[str, Any] = {}
    for method, group in groups.items():
        pairs = [(r, base[r["seed"]]) for r in group if r["seed"] in base and method != reference]
        if not pairs or len(pairs[0][0]["acc_all_seen"]) != len(pairs[0][1]["acc_all_seen"]):
            continue  # the reference itself, no common seed, or a joint run (one task)
        curve = _per_task_mean_std([[a - b for a, b in zip(r["acc_all_seen"], ref["acc_all_seen"])] for r, ref in pairs])
        final = [r["final_acc"] - ref["final_acc"] for r, ref in pairs]
        out[method] = {"seeds": [r["seed"] for r, _ in pairs],
                       "final_acc": mean_std(final), "final_acc_paired": paired_summary(final),
                       "acc_all_seen": {"mean": curve[0].tolist(), "std": curve[1].tolist()}}
    return {"reference": reference, "methods": out}


def difference_lines(differences: Mapping[str, Any] | None) -> list[str]:
    """One line per method: its paired final Acc difference to the reference, with both intervals."""
    if not differences:
        return []
    return [f"- {m} − {differences['reference']}: {interval_text(d['final_acc_paired'])} points"
            for m, d in differences["methods"].items()]


def seed_noise_sentence(summary: Mapping[str, Any], reference: str = REFERENCE) -> str:
    """One sentence on how large the seed noise is (the reference's sample std of final Acc over seeds)."""
    entry = summary["methods"].get(reference) or next(iter(summary["methods"].values()))
    name = reference if reference in summary["methods"] else next(iter(summary["methods"]))
    final = final_label(summary)
    if len(entry["seeds"]) < 2:
        known = ("" if final == "final score" else "; on our classification benchmarks the std of final Acc over 3 "
                 "seeds is 1–6 points (docs/results.md)")
        return (f"Seed noise: one seed ran, so it is not estimated here{known} — run `--seeds 0,1,2` before trusting "
                f"a difference.")
    std = entry["final_acc"]["std"]
    return (f"Seed noise: the sample std of {name}'s {final} over {len(entry['seeds'])} seeds is {std:.2f} points, "
            f"so a difference smaller than about {2 * std:.1f} points is within the noise.")


def head_bias_sentence(runs: Sequence[Mapping[str, Any]]) -> str:
    """One sentence for a class-incremental comparison with trained linear heads: a low diagonal R[t][t] is mostly the
    head's bias (rows of different tasks never calibrated against each other), not backbone forgetting; a frozen-backbone
    statistics head, where it ran, shows the backbone's own level. Empty when no such method ran."""
    linear = {}
    for run in runs:
        config = run.get("config", {})
        if (run.get("scenario") == "class-incremental" and config.get("head", {}).get("kind") == "linear"
                and len(run["accuracy_matrix"]) > 1 and not _is_not_continual(run["method"])):
            diagonal = [row[t] for t, row in enumerate(run["accuracy_matrix"])]
            linear.setdefault(run["method"], []).append(sum(diagonal) / len(diagonal))
    if not linear:
        return ""
    lowest = min(linear, key=lambda m: sum(linear[m]) / len(linear[m]))
    mean = sum(linear[lowest]) / len(linear[lowest])
    frozen = [r for r in runs if r["method"] in ("frozen-lda", "simplecil", "ranpac", "fecam")]
    reference = (f"; `{frozen[0]['method']}` (no training: its backbone never changes) shows the backbone's own level, "
                 f"{sum(r['final_acc'] for r in frozen) / len(frozen):.1f} % final Acc" if frozen else
                 "; a frozen-backbone statistics head (`frozen-lda`) beside it shows the backbone's own level")
    return (f"Head bias: a linear head trained with the masked loss ranks each task's classes only against each "
            f"other, so when every seen class competes its rows of different tasks are not calibrated against each "
            f"other; a low diagonal of the accuracy matrix (`{lowest}`: mean R[t][t] {mean:.1f} %) comes in part "
            f"from that head bias, not only from backbone forgetting{reference}.")


def alpha_lines(summary: Mapping[str, Any]) -> list[str]:
    lines = []
    for method, entry in summary["methods"].items():
        for seed, alphas in zip(entry["seeds"], entry["alphas_per_seed"]):
            if alphas is not None:
                lines.append(f"- {method}, seed {seed}: " + ", ".join(f"{a:.3f}" for a in alphas))
    return lines


# ---- plots ----------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())


MATRIX_COLUMNS = 4  # heatmaps per row; more methods wrap to further rows


def plot_accuracy_matrices(runs: Sequence[Mapping[str, Any]], path: Path, score: str = "accuracy") -> None:
    """One heatmap per method: R[t][i] (`score` on task i after task t), mean over seeds."""
    plt = _pyplot()
    groups = group_by_method(runs)
    columns = min(len(groups), MATRIX_COLUMNS)
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.2 * rows), squeeze=False)
    for index, (ax, (method, group)) in enumerate(zip(axes.flat, groups.items())):
        matrix = _as_array([r["accuracy_matrix"] for r in group]).mean(axis=0)  # NaN above the diagonal stays NaN
        image = ax.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
        size = matrix.shape[0]
        if size <= 10:
            for t in range(size):
                for i in range(t + 1):
                    ax.text(i, t, f"{matrix[t, i]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if matrix[t, i] < 60 else "black")
        ax.set_title(f"{method} (n={len(group)})", fontsize=9)
        if index // columns == rows - 1 or index + columns >= len(groups):  # the lowest panel of its column
            ax.set_xlabel("evaluated task")
        if index % columns == 0:
            ax.set_ylabel("after training task")
        ax.set_xticks(range(size), [str(i + 1) for i in range(size)], fontsize=7)
        ax.set_yticks(range(size), [str(i + 1) for i in range(size)], fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=f"{score} (%)")
    _save(fig, path)


def _plot_curves(summary: Mapping[str, Any], key: str, ylabel: str, path: Path, ylim: tuple[float, float] | None,
                 methods: Mapping[str, Any] | None = None, band: tuple[float, float] | None = None,
                 zero_line: bool = False) -> bool:
    """Per-task curves of `key` (mean, ± std band when several seeds ran, clipped to `band`); False if none."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    drawn = False
    entries = summary["methods"] if methods is None else methods
    several = any(len(e["seeds"]) > 1 for e in entries.values())
    for method, entry in entries.items():
        curve = entry.get(key)
        if curve is None:
            continue
        x = np.arange(1, len(curve["mean"]) + 1)
        mean, std = np.array(curve["mean"]), np.array(curve["std"])
        ax.plot(x, mean, marker="o", label=method)
        if len(entry["seeds"]) > 1:
            low, high = mean - std, mean + std
            if band is not None:
                low, high = np.clip(low, *band), np.clip(high, *band)
            ax.fill_between(x, low, high, alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    if zero_line:
        ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("after task")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xticks(np.arange(1, summary["num_tasks"] + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    spread = "mean ± std over seeds" if several else "one seed"
    ax.set_title(f"{summary['benchmark']}, {summary['num_tasks']} tasks ({spread})", fontsize=9)
    _save(fig, path)
    return True


PLOTS = {
    "accuracy_matrix": "accuracy_matrix.png",
    "acc_all_seen": "acc_all_seen.png",
    "alpha": "alpha.png",
    "difference": "difference_to_seq_lora.png",
}


PEAK_MEMORY_LABELS = (("resident", "resident"), ("cuda", "CUDA (torch's allocator)"))


def peak_memory_text(peak: Mapping[str, float]) -> str:
    """"2.74 GiB resident, 5.10 GiB CUDA (torch's allocator)" from results' `peak_memory_gib`."""
    return ", ".join(f"{peak[kind]:.2f} GiB {label}" for kind, label in PEAK_MEMORY_LABELS if kind in peak)


def peak_memory_line(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """"Peak memory: …" of the run (of the largest run of several), from results' `peak_memory_gib`."""
    peaks = [run["peak_memory_gib"] for run in runs if run.get("peak_memory_gib")]
    if not peaks:
        return None
    largest = {kind: max(p[kind] for p in peaks if kind in p) for kind, _ in PEAK_MEMORY_LABELS
               if any(kind in p for p in peaks)}
    whose = "this run" if len(runs) == 1 else "the largest of these runs"
    return f"Peak memory ({whose}, one process; a resumed run counts from its resume): {peak_memory_text(largest)}  "


def write_report(out_dir: str | Path, runs: Sequence[Mapping[str, Any]], markdown_name: str,
                 command: str, run_dirs: Mapping[tuple[str, int], str] | None = None,
                 machine: str | None = None) -> dict[str, Any]:
    """Write summary.json, `markdown_name` (table + plots) and the PNGs into `out_dir`; return the summary."""
    out = Path(out_dir)
    summary = summarise_runs(runs, run_dirs)
    summary["command"] = command
    if machine:
        summary["machine"] = machine
    score, seen = score_words(summary)
    plot_accuracy_matrices(runs, out / PLOTS["accuracy_matrix"], score)
    _plot_curves(summary, "acc_all_seen", f"{seen} (%)", out / PLOTS["acc_all_seen"], (0, 100))
    has_alpha = _plot_curves(summary, "alphas", "merge coefficient α", out / PLOTS["alpha"], (-0.02, 1.02),
                             band=(0.0, 1.0))
    differences = paired_differences(runs)
    reference = differences["reference"] if differences else REFERENCE
    has_difference = bool(differences and differences["methods"]) and _plot_curves(
        summary, "acc_all_seen", f"{seen} − {reference} (points)", out / PLOTS["difference"],
        None, methods=differences["methods"], zero_line=True)
    summary["differences"] = differences
    summary["plots"] = ([PLOTS["accuracy_matrix"], PLOTS["acc_all_seen"]] + ([PLOTS["alpha"]] if has_alpha else [])
                        + ([PLOTS["difference"]] if has_difference else []))
    atomic_write_json(out / "summary.json", summary)
    lines = [
        f"# {summary['benchmark']}: {summary['num_tasks']} tasks, {summary['scenario']}",
        "",
        f"Command: `{command}`  ",
        f"Backbone: {summary['backbone']}  ",
    ]
    if machine:
        lines.append(f"Machine: {machine}  ")
    peak = peak_memory_line(runs)
    if peak:
        lines.append(peak)
    lines += ["Metrics in %, mean ± std over seeds (sample std) where several seeds ran; wall time in seconds.", ""]
    lines += table_lines(summary)
    lines += ["", seed_noise_sentence(summary)]
    bias = head_bias_sentence(runs)
    if bias:
        lines += ["", bias]
    flagged = [(run["method"], run["seed"], w) for run in runs for w in run.get("warnings", [])]
    if flagged:
        lines += ["", "## Warnings", "", "These runs finished, but their numbers may be meaningless:", ""]
        lines += [f"- **{m}**, seed {seed}: {w}" for m, seed, w in flagged]
    if has_difference:
        lines += ["", f"## Difference to {reference}", "",
                  f"{final_label(summary).replace('final', 'Final', 1)} minus {reference}'s, seed by seed: mean ± sample std over the common seeds, with the "
                  f"95 % t-interval and paired bootstrap interval of the mean (an interval that contains 0 does not "
                  f"show a difference):", ""]
        lines += difference_lines(differences)
        lines += ["", f"![difference to {reference}]({PLOTS['difference']})"]
    general = general_ability_lines(summary)
    if general:
        lines += ["", "## General ability", "", "Mean NLL per completion token of the held-out general set (no task "
                  "trains on it) after the last task, against the pretrained model's; lower is better:", ""] + general
    lines += ["", f"## {seen[0].upper() + seen[1:]} after each task", "", f"![acc_all_seen]({PLOTS['acc_all_seen']})",
              "", f"## {score[0].upper() + score[1:]} matrices", "",
              f"Row t, column i: {score} on task i after training task t.", "",
              f"![accuracy matrices]({PLOTS['accuracy_matrix']})"]
    if summary["scenario"] == "task-incremental":
        lines += score_matrix_markdown(summary)
    if has_alpha:
        lines += ["", "## Merge coefficient α per task", "", f"![alpha]({PLOTS['alpha']})", ""] + alpha_lines(summary)
    atomic_write_text(out / markdown_name, "\n".join(lines) + "\n")
    return summary


RESULT_KEYS = ("benchmark", "method", "seed", "num_tasks", "accuracy_matrix", "acc_all_seen", "final_acc", "config")


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """A run's results.json, checked to be the mapping a finished run writes (one-line error otherwise)."""
    import json

    from .errors import UserError

    path = Path(run_dir) / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc.__class__.__name__}); delete {run_dir} to run it again") from None
    missing = [k for k in RESULT_KEYS if k not in results] if isinstance(results, dict) else list(RESULT_KEYS)
    if missing:
        raise UserError(f"{path} is not the results of a perturbmerge run (missing {', '.join(missing)}); delete "
                        f"{run_dir} to run it again")
    return results


def rewrite_report(folder: str | Path, command: str) -> Path:
    """Write the report of a finished run (report.md) or of a comparison (its existing report.md or summary.md,
    from runs/*/results.json) again from the recorded results; return the markdown's path."""
    from . import lock
    from .errors import UserError
    from .io import machine_description

    out = Path(folder)
    if (out / "sweep.json").is_file():
        raise UserError(f"'{out}' is a sweep; run the same `perturbmerge sweep` command again (finished runs are "
                        f"reused) to rewrite its report")
    if (out / "results.json").is_file():
        runs, name = [read_results(out)], "report.md"
        dirs = {(runs[0]["method"], runs[0]["seed"]): str(out)}
    elif (out / "runs").is_dir():
        finished = sorted(p for p in (out / "runs").iterdir() if (p / "results.json").is_file())
        if not finished:
            raise UserError(f"'{out}/runs' holds no finished run; run the comparison (its runs resume)")
        runs = [read_results(p) for p in finished]
        dirs = {(r["method"], r["seed"]): str(p) for r, p in zip(runs, finished)}
        name = "report.md" if (out / "report.md").is_file() else "summary.md"
    else:
        raise UserError(f"'{out}' holds neither results.json nor runs/; give a finished run's or a comparison's "
                        f"folder")
    previous = _previous_summary(out)  # the command and machine that produced the numbers stay in the report
    machine = previous.get("machine") or _recorded_machine([Path(d) for d in dirs.values()])
    with lock.locked(out):
        write_report(out, runs, name, previous.get("command", command), dirs,
                     machine or f"not recorded with these runs (this report was written on {machine_description()})")
    return out / name


def _recorded_machine(run_dirs: Sequence[Path]) -> str | None:
    """The machine every run recorded in its own summary.json, if they all recorded the same one (committed runs keep
    only results.json: then None, and this process's machine would say nothing about theirs)."""
    machines = {_previous_summary(d).get("machine") for d in run_dirs}
    return machines.pop() if len(machines) == 1 and None not in machines else None


def _previous_summary(out: Path) -> dict[str, Any]:
    import json

    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}
