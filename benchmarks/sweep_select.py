"""The selection rule of benchmarks/results/heads/sweep/PLAN.md, applied to one finished sweep (no training):

    .venv/bin/python benchmarks/sweep_select.py SWEEP_DIR METHOD KEY DEFAULT

Reads SWEEP_DIR/sweep.json (validation split), takes METHOD's mean final Acc over the seeds at every value of KEY,
and prints the value with the highest mean; a tie at two decimals goes to DEFAULT. Exits 2 when the sweep was not
evaluated on the validation split or when a candidate's runs are missing, so that no queue acts on a partial sweep.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def value_text(value: object) -> str:
    """A swept value as the sweep's run folders write it (floats in %g)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def select(summary: dict, method: str, key: str, default: str) -> tuple[str, dict[str, float]]:
    """(winning value as written in the sweep, {value: mean validation final Acc}) under the pre-registered rule."""
    if not str(summary.get("evaluated_on", "")).startswith("validation"):
        raise ValueError(f"the sweep was evaluated on {summary.get('evaluated_on')!r}, not on the validation split")
    means: dict[str, float] = {}
    for point in summary["points"]:
        means[value_text(point["assignment"][key])] = point["methods"][method]["final_acc"]["mean"]
    if default not in means:
        raise ValueError(f"the default {default!r} is not among the swept values {sorted(means)}")
    best = max(round(m, 2) for m in means.values())
    winners = [v for v, m in means.items() if round(m, 2) == best]
    return (default if default in winners else winners[0]), means


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    folder, method, key, default = sys.argv[1:]
    path = Path(folder) / "sweep.json"
    if not path.is_file():
        print(f"error: {path} does not exist; run the sweep first", file=sys.stderr)
        return 2
    try:
        winner, means = select(json.loads(path.read_text()), method, key, default)
    except (ValueError, KeyError) as error:
        print(f"error: {path}: {error}", file=sys.stderr)
        return 2
    print(winner)
    print("  ".join(f"{v}: {m:.2f}" for v, m in means.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
