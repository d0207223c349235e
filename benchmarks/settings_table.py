"""One row per setting, one column per seed (no training): final Acc of committed runs, the mean ± sample std over
seeds and the paired difference to the default setting's runs (mean ± sample std over the seeds both ran).

    .venv/bin/python benchmarks/settings_table.py --seeds 0,1,2 --default "**ε = 0.5, p0 = 1/3 (default)**" \\
        --row "ε = 0.1=benchmarks/results/regime/langid-10-map/epsilon/runs/pm-lora-epsilon=0.1-seed{seed}" ...

Each --row is LABEL=RUN_FOLDER with `{seed}` where the seed goes; the label is everything before the first
"=benchmarks/" (labels may hold "="). Used by docs/results.md's ε and p0 table (and checked by scripts/audit_docs.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import fmean, stdev

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_table import spread  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def parse_row(text: str) -> tuple[str, str]:
    label, separator, pattern = text.partition("=benchmarks/")
    if not separator or "{seed}" not in pattern:
        raise SystemExit(f"--row {text!r}: give LABEL=benchmarks/.../RUN-seed{{seed}}")
    return label, "benchmarks/" + pattern


def final_accuracies(pattern: str, seeds: list[int]) -> dict[int, float]:
    found = {}
    for seed in seeds:
        path = ROOT / pattern.format(seed=seed) / "results.json"
        if path.is_file():
            found[seed] = json.loads(path.read_text())["final_acc"]
    return found


def signed_spread(values: list[float]) -> str:
    """A difference: signed mean, and ± the sample std when there are several."""
    if len(values) == 1:
        return f"{values[0]:+.2f}"
    return f"{fmean(values):+.2f} ± {stdev(values):.2f}"


def table(rows: list[tuple[str, str]], default: str, seeds: list[int]) -> list[str]:
    values = {label: final_accuracies(pattern, seeds) for label, pattern in rows}
    if default not in values:
        raise SystemExit(f"--default {default!r} is none of the --row labels")
    lines = ["| setting | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | minus the default, paired |",
             "|---|" + "---|" * (len(seeds) + 2)]
    for label, by_seed in values.items():
        cells = [f"{by_seed[s]:.2f}" if s in by_seed else "–" for s in seeds]
        common = [s for s in seeds if s in by_seed and s in values[default]]
        differences = [by_seed[s] - values[default][s] for s in common]
        difference = "–" if label == default or not differences else signed_spread(differences)
        mean = spread(list(by_seed.values())) if by_seed else "–"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} | {difference} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", action="append", required=True, metavar="LABEL=RUN_FOLDER")
    parser.add_argument("--default", required=True, help="the label of the row the others are compared with")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    print("\n".join(table([parse_row(r) for r in args.row], args.default, [int(s) for s in args.seeds.split(",")])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
