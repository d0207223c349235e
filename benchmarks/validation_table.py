"""Markdown table of validation-split runs (data.validation_fraction > 0): one row per method and option set, one
column per benchmark, final accuracy / AAA in % (no training here; the test split is never read by these runs).

    .venv/bin/python benchmarks/validation_table.py benchmarks/results/long/validation

Options shown are those of the classifier protocol and the merge that differ from the defaults.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from perturbmerge.config import RunConfig, get_dotted

SHOWN = ("head.kind", "head.shrinkage", "head.drift", "head.drift_ridge", "head.frozen_weight", "anchor_pretrained",
         "fisher.normalise", "fisher.kind")
# Named option sets, shown as their base method + options so one variant is one row whatever its name was when it ran
# (pm-lora-plus is pm-lora with its defaults; frozen-lda is simplecil with head.kind=lda).
ALIASES = {"pm-lora-plus": "pm-lora", "frozen-lda": "simplecil"}


def options(run: dict) -> str:
    """The SHOWN keys whose values differ from the dataclass defaults (so a method's own defaults show too); a key
    missing from an older run's config had its default."""
    defaults = RunConfig().to_dict()
    shown = []
    for key in SHOWN:
        try:
            value = get_dotted(run["config"], key)
        except KeyError:
            continue
        if value != get_dotted(defaults, key):
            shown.append(f"{key}={value}")
    return ", ".join(shown) or "defaults"


def main(folder: str) -> None:
    cells: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    benchmarks: list[str] = []
    for path in sorted(Path(folder).rglob("results.json")):
        run = json.loads(path.read_text())
        if not run["config"]["data"].get("validation_fraction"):
            raise SystemExit(f"{path} is not a validation run (data.validation_fraction is 0)")
        column = f"{run['benchmark']}-{run['num_tasks']}, seed {run['seed']}"
        if column not in benchmarks:
            benchmarks.append(column)
        cells[(ALIASES.get(run["method"], run["method"]), options(run))][column] = f"{run['final_acc']:.2f} / {run['aaa']:.2f}"
    print("| method | options | " + " | ".join(benchmarks) + " |")
    print("|---|---|" + "---|" * len(benchmarks))
    for (method, shown), row in sorted(cells.items()):
        print(f"| {method} | {shown} | " + " | ".join(row.get(b, "–") for b in benchmarks) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
