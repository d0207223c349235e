"""Run every (method, seed) of a comparison into one folder, skip finished runs, and write the summary report.

Layout of DIR:
    runs/<method>-seed<seed>/results.json   one finished run each (a folder without results.json is unfinished)
    summary.json                            per method: mean/std of every metric, curves, run folders
    <markdown>                              summary.md (compare) or report.md (default run): table + plots
    accuracy_matrix.png, acc_all_seen.png, alpha.png
"""
from __future__ import annotations

import json
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import lock
from .config import RunConfig, config_differences
from .errors import UserError
from .io import machine_description, make_out_folder
from .methods import get_method, unused_keys
from .report import difference_lines, read_results, score_matrix_lines, table_lines, write_report

DEFAULT_METHODS = ("pm-lora", "merge-lora", "seq-lora")


def parse_list(text: str, what: str, cast=str) -> list[Any]:
    """'a,b,c' → ['a', 'b', 'c'] (cast each); empty items or duplicates are an error."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"--{what} is empty; give a comma-separated list, e.g. --{what} "
                        f"{'0,1,2' if cast is int else 'pm-lora,seq-lora'}")
    try:
        values = [cast(item) for item in items]
    except ValueError:
        raise UserError(f"--{what} must be comma-separated integers, got '{text}'; e.g. --{what} 0,1,2") from None
    if len(set(values)) != len(values):
        raise UserError(f"--{what} lists an item twice ('{text}'); give each once")
    return values


def _resumable(run_dir: Path, config: RunConfig) -> bool:
    """An interrupted run of the same config under this version, with a checkpoint to continue from."""
    from .checkpoint import latest_checkpoint
    from .runner import RUN_CONFIG, VERSION_KEYS, run_versions

    try:
        saved = json.loads((run_dir / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        return False
    same_versions = all(saved.get("versions", {}).get(k) == run_versions().get(k) for k in VERSION_KEYS)
    return (same_versions and not config_differences(saved.get("config", {}), config.to_dict())
            and latest_checkpoint(run_dir) is not None)


def _finished_run(run_dir: Path, config: RunConfig) -> dict[str, Any] | str | None:
    """The results of a finished run with the same config; "resume" for an interrupted one that can continue
    from its checkpoint; None if there is nothing to reuse; error if a finished run's config differs."""
    results_file = run_dir / "results.json"
    if not results_file.is_file():
        holder = lock.held_by_other(run_dir) if run_dir.is_dir() else None
        if holder is not None:
            raise UserError(f"run '{run_dir}' is being written by {holder}; wait for it to finish or stop it, "
                            f"or use another --out")
        if run_dir.exists():
            if _resumable(run_dir, config):
                return "resume"
            shutil.rmtree(run_dir)  # killed before its first checkpoint, or another config: start it again
        return None
    results = read_results(run_dir)
    differing = config_differences(results.get("config", {}), config.to_dict())
    if differing:
        raise UserError(f"{run_dir} was run with a different config ({', '.join(differing)}); "
                        f"use a new --out or delete that folder")
    return results


def check_keys_apply_to_any(methods: Sequence[str], explicit: set[str]) -> None:
    """A key the user set that none of the compared methods reads is an error."""
    unused = unused_keys([get_method(m) for m in methods], explicit)
    if unused:
        raise UserError(f"none of the methods {', '.join(methods)} uses {', '.join(unused)}; remove it")


@contextmanager
def output_folder(out: Path) -> Iterator[bool]:
    """Create (if needed) and lock `out` for a comparison — new, empty, or an earlier one with runs/ — while the
    block runs; yields True if this call created it. A second writer is refused by the lock, before it deletes
    or writes anything."""
    out, created = make_out_folder(out)
    with lock.locked(out):
        if not created and any(not lock.is_lock_file(p) for p in out.iterdir()) and not (out / "runs").is_dir():
            raise UserError(f"output folder '{out}' is not empty and holds no earlier comparison; choose another --out")
        yield created


def run_jobs(jobs: Sequence[tuple[RunConfig, Path]], out: Path, created: bool, progress: bool = True
             ) -> list[dict[str, Any]]:
    """Run (or reuse a finished, or resume an interrupted) run for every (config, run folder); results in order.

    A bad-input error before any run finished removes `out` if this call's caller created it."""
    from .runner import run_experiment

    runs: list[dict[str, Any]] = []
    try:
        for index, (config, run_dir) in enumerate(jobs, 1):
            label = f"[{index}/{len(jobs)}] {run_dir.name}"
            results = _finished_run(run_dir, config)
            if results == "resume":
                if progress:
                    print(f"{label}: interrupted earlier, resuming from its checkpoint", file=sys.stderr, flush=True)
                results = run_experiment(config, run_dir, progress=progress, resume=True)
            elif results is None:
                if progress:
                    print(f"{label}: running", file=sys.stderr, flush=True)
                results = run_experiment(config, run_dir, progress=progress)
            elif progress:
                print(f"{label}: finished earlier, reusing {run_dir}/results.json", file=sys.stderr, flush=True)
            runs.append(results)
    except UserError:
        if created and not runs:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return runs


def resolve_method_configs(methods: Sequence[str], seeds: Sequence[int], overrides: Mapping[str, Any] | None,
                           config_file: str | Path | None, sets: Sequence[str]) -> tuple[list[RunConfig], set[str]]:
    """One config per (method, seed), method-major; and the keys the user set explicitly (method and seed aside)."""
    from .runner import resolve_config

    configs: list[RunConfig] = []
    explicit: set[str] = set()
    for method in methods:
        for seed in seeds:
            config, keys = resolve_config({**(overrides or {}), "method": method, "seed": seed}, config_file, sets,
                                          check_method_keys=False)
            configs.append(config)
            explicit |= keys - {"method", "seed"}
    return configs, explicit


def run_comparison(
    methods: Sequence[str],
    seeds: Sequence[int],
    out_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    sets: Sequence[str] = (),
    progress: bool = True,
    markdown_name: str = "summary.md",
    command: str = "",
) -> dict[str, Any]:
    """Run (or reuse) every (method, seed) and write the report; return the summary dict."""
    configs, explicit = resolve_method_configs(methods, seeds, overrides, config_file, sets)
    check_keys_apply_to_any(methods, explicit)
    out = Path(out_dir)
    with output_folder(out) as created:
        jobs = [(config, out / "runs" / f"{config.method}-seed{config.seed}") for config in configs]
        runs = run_jobs(jobs, out, created, progress)
        run_dirs = {(config.method, config.seed): str(run_dir) for config, run_dir in jobs}
        return write_report(out, runs, markdown_name, command, run_dirs, machine_description())


def summary_text(summary: Mapping[str, Any], out_dir: str | Path, markdown_name: str) -> str:
    lines = [f"{summary['benchmark']}, {summary['num_tasks']} tasks ({summary['backbone']})"]
    lines += table_lines(summary)
    lines += difference_lines(summary.get("differences"))
    if summary["scenario"] == "task-incremental":  # causal-LM tasks: few, named; the matrix says what was forgotten
        for method, entry in summary["methods"].items():
            lines += score_matrix_lines(entry["matrix_mean"], summary.get("task_names", []),
                                        f"{method}: score matrix (%, mean over {len(entry['seeds'])} seed(s))")
    lines.append(f"report: {Path(out_dir) / markdown_name}")
    return "\n".join(lines)
