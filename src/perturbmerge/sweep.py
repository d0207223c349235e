"""`perturbmerge sweep`: a grid over config keys × methods × seeds, run through `compare`'s machinery.

Layout of DIR:
    runs/<method>[-<key>=<value>,...]-seed<seed>/   one run each; only the swept keys the method reads name it,
                                                    so a method that ignores a key runs once for all its values
    sweep.json                                      per grid point and method: mean/std over seeds, run folders
    sweep.md                                        the table and the plots
    sweep-<key>.png                                 final Acc and forgetting against each swept key, error bars

Re-running with the same DIR reuses finished runs, resumes interrupted ones, and refuses runs whose config
differs (like `compare`).
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from .compare import check_keys_apply_to_any, output_folder, resolve_method_configs, run_jobs
from .config import get_dotted, parse_set
from .errors import UserError
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text, machine_description
from .methods import get_method, unused_keys
from .report import _cell, mean_std

SWEEP_METRICS = ("final_acc", "aaa", "forgetting", "bwt", "plasticity", "wall_time_s")


def parse_params(texts: Sequence[str]) -> dict[str, list[Any]]:
    """['epochs=1,2,5', 'epsilon=0.1,0.5'] → {'epochs': [1, 2, 5], 'epsilon': [0.1, 0.5]} (values as YAML scalars)."""
    params: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()
        items = [item.strip() for item in raw.split(",") if item.strip()]
        if not sep or not key or not items:
            raise UserError(f"--param expects key=v1,v2,..., got '{text}'; e.g. --param epochs=1,2,5")
        if key in params:
            raise UserError(f"--param {key} is given twice; list all its values once, e.g. --param {key}=1,2")
        if key in ("method", "seed", "benchmark", "tasks"):
            raise UserError(f"--param {key}: {key} is not sweepable; use --methods, --seeds, or one sweep per "
                            f"benchmark and task count")
        values = [get_dotted(parse_set([f"{key}={item}"]), key) for item in items]
        if len({repr(v) for v in values}) != len(values):
            raise UserError(f"--param {key} lists a value twice ('{raw}'); give each once")
        params[key] = values
    if not params:
        raise UserError("sweep needs at least one --param key=v1,v2,...; e.g. --param epochs=1,2,5")
    return params


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_points(params: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, the first key varying slowest."""
    keys = list(params)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(params[k] for k in keys))]


def _run_name(method: str, assignment: Mapping[str, Any], seed: int) -> str:
    tag = ",".join(f"{k}={_format(v)}" for k, v in assignment.items())
    if "/" in tag or len(tag) > 150:
        raise UserError(f"swept values give an unusable folder name ('{tag[:40]}...'); sweep fewer or shorter values")
    return f"{method}-{tag}-seed{seed}" if tag else f"{method}-seed{seed}"


def run_sweep(methods: Sequence[str], params: Mapping[str, list[Any]], seeds: Sequence[int], out_dir: str | Path,
              overrides: Mapping[str, Any] | None = None, config_file: str | Path | None = None,
              sets: Sequence[str] = (), progress: bool = True, command: str = "") -> dict[str, Any]:
    """Run (or reuse) every (grid point, method, seed); write sweep.json, sweep.md and the plots; return the summary."""
    specs = {m: get_method(m) for m in methods}
    for key in params:
        if any(s.split("=", 1)[0].strip() == key for s in sets):
            raise UserError(f"{key} is both swept (--param) and set (--set); drop one")
        if unused_keys(list(specs.values()), {key}):
            raise UserError(f"none of the methods {', '.join(methods)} reads {key}; remove --param {key}")
    reads = {m: [k for k in params if not unused_keys([specs[m]], {k})] for m in methods}
    points = grid_points(params)
    configs_by_name: dict[str, Any] = {}  # one run per distinct name: a method ignoring a key shares its runs
    for point in points:
        for method in methods:
            own = {k: point[k] for k in reads[method]}
            assignments = [f"{k}={_format(v)}" for k, v in own.items()]
            configs, explicit = resolve_method_configs([method], seeds, overrides, config_file, [*sets, *assignments])
            check_keys_apply_to_any([method], explicit - set(own))
            for config in configs:
                for key, value in own.items():
                    if get_dotted(config.to_dict(), key) != value:
                        raise UserError(f"--param {key}={value!r} did not take effect; check the value's type")
                configs_by_name.setdefault(_run_name(method, own, config.seed), config)
    out = Path(out_dir)
    with output_folder(out) as created:
        jobs = [(config, out / "runs" / name) for name, config in configs_by_name.items()]
        runs = run_jobs(jobs, out, created, progress)
        by_name = dict(zip(configs_by_name, runs))
        summary = summarise_sweep(methods, params, seeds, points, reads, by_name, out)
        summary.update({"command": command, "machine": machine_description()})
        atomic_write_json(out / "sweep.json", summary)
        plots = plot_sweep(summary, out)
        atomic_write_text(out / "sweep.md", sweep_markdown(summary, plots))
        return summary


def summarise_sweep(methods: Sequence[str], params: Mapping[str, list[Any]], seeds: Sequence[int],
                    points: list[dict[str, Any]], reads: Mapping[str, list[str]],
                    runs: Mapping[str, Mapping[str, Any]], out: Path) -> dict[str, Any]:
    """Per grid point and method: mean and sample std over seeds of every metric, and the run folders."""
    first = next(iter(runs.values()))
    rows = []
    for point in points:
        entry: dict[str, Any] = {"assignment": point, "methods": {}}
        for method in methods:
            names = [_run_name(method, {k: point[k] for k in reads[method]}, seed) for seed in seeds]
            group = [runs[n] for n in names]
            stats = {metric: mean_std([r[metric] for r in group]) for metric in SWEEP_METRICS}
            stats["per_seed_final_acc"] = [r["final_acc"] for r in group]
            stats["run_dirs"] = [str(out / "runs" / n) for n in names]
            stats["reads"] = reads[method]
            entry["methods"][method] = stats
        rows.append(entry)
    return {"benchmark": first["benchmark"], "num_tasks": first["num_tasks"], "backbone": first.get("backbone"),
            "evaluated_on": first.get("evaluated_on", "test"), "methods": list(methods), "seeds": list(seeds),
            "params": {k: list(v) for k, v in params.items()}, "points": rows}


def sweep_markdown(summary: Mapping[str, Any], plots: Sequence[str]) -> str:
    keys = list(summary["params"])
    seeds = summary["seeds"]
    lines = [f"# Sweep: {summary['benchmark']}, {summary['num_tasks']} tasks ({summary['backbone']})", "",
             f"Evaluated on: {summary['evaluated_on']}. Seeds: {', '.join(map(str, seeds))}; "
             f"{'mean ± sample std over seeds' if len(seeds) > 1 else 'one seed (no spread)'}. "
             "† the method does not read that key: the same runs at every value.", "",
             f"Command: `{summary.get('command', '')}`", "",
             "| " + " | ".join(keys) + " | method | final Acc | forgetting | AAA | wall s |",
             "|" + "---|" * (len(keys) + 5)]
    for point in summary["points"]:
        for method, stats in point["methods"].items():
            cells = [_format(point["assignment"][k]) + ("" if k in stats["reads"] else " †") for k in keys]
            lines.append("| " + " | ".join(cells) + f" | {method} | {_cell(stats['final_acc'])} | "
                         f"{_cell(stats['forgetting'])} | {_cell(stats['aaa'])} | {stats['wall_time_s']['mean']:.0f} |")
    lines.append("")
    lines += [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def plot_sweep(summary: Mapping[str, Any], out: Path) -> list[str]:
    """One PNG per swept key: final Acc and forgetting against its values, one line per method (and per
    combination of the other keys), error bars = sample std over seeds. Returns the file names."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(summary["params"])
    spread = "mean ± std over seeds" if len(summary["seeds"]) > 1 else "one seed"
    names = []
    for key in keys:
        values = summary["params"][key]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        xs = [float(v) for v in values] if numeric else list(range(len(values)))
        others = [k for k in keys if k != key]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for method in summary["methods"]:
            reads = summary["points"][0]["methods"][method]["reads"]
            own = [k for k in others if k in reads]  # keys the method ignores give no extra lines
            combos = sorted({tuple(_format(p["assignment"][k]) for k in own) for p in summary["points"]})
            for combo in combos:
                label = method + ("" if not own else " (" + ", ".join(f"{k}={v}" for k, v in zip(own, combo)) + ")")
                for ax, metric in zip(axes, ("final_acc", "forgetting")):
                    means, stds = [], []
                    for value in values:
                        point = next(p for p in summary["points"] if p["assignment"][key] == value
                                     and tuple(_format(p["assignment"][k]) for k in own) == combo)
                        stats = point["methods"][method][metric]
                        means.append(math.nan if stats["mean"] is None else stats["mean"])
                        stds.append(0.0 if stats["std"] is None else stats["std"])
                    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label,
                                linestyle="-" if key in reads else ":")
        for ax, title in zip(axes, ("final Acc (%)", "forgetting (%)")):
            ax.set_xlabel(key)
            ax.set_title(f"{title}, {spread}")
            ax.grid(alpha=0.3)
            if numeric and min(xs) > 0 and max(xs) / min(xs) >= 20:
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(xs, [_format(v) for v in values])
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{summary['benchmark']}, {summary['num_tasks']} tasks: sweep of {key}")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        name = f"sweep-{key}.png"
        atomic_write_bytes(out / name, buffer.getvalue())
        names.append(name)
    return names
