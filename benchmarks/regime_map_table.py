"""The regime map as the answer table: per training intensity (epochs), the mean task-vector norm ‖Δ‖ (the drift
each task adds to the backbone), final Acc of every method, and the paired differences (same seed) of `pm-lora` and
`merge-lora` to `seq-lora` and of `pm-lora` to `merge-lora`; mean ± sample std over the seeds present.

    python benchmarks/regime_map_table.py benchmarks/results/regime/langid-10-map/map
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from statistics import fmean, stdev

METHODS = ["seq-lora", "merge-lora", "pm-lora", "pm-lora-plus", "joint", "frozen-lda"]


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{fmean(values):.2f} ± {stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main(folder: Path) -> None:
    runs: dict[tuple[str, int, int], dict] = {}
    for path in folder.glob("runs/*/results.json"):
        match = re.fullmatch(r"(.+)-epochs=(\d+)-seed(\d+)", path.parent.name)
        if match:
            runs[(match[1], int(match[2]), int(match[3]))] = json.loads(path.read_text())
    epochs = sorted({e for _, e, _ in runs})
    print("| epochs | seeds | ‖Δ‖ per task (seq-lora) | " + " | ".join(METHODS)
          + " | pm − seq | merge − seq | pm − merge |")
    print("|---" * (len(METHODS) + 6) + "|")
    for e in epochs:
        seeds = sorted({s for m, ee, s in runs if ee == e and m == "seq-lora"})
        final = {m: {s: runs[(m, e, s)]["final_acc"] for s in seeds if (m, e, s) in runs} for m in METHODS}
        norms = [fmean(t["task_vector_norm"] for t in runs[("seq-lora", e, s)]["task_logs"]) for s in seeds]
        def paired(a: str, b: str) -> str:
            common = [s for s in seeds if s in final[a] and s in final[b]]
            return cell([final[a][s] - final[b][s] for s in common]) + (f" (n={len(common)})" if common else "")
        print(f"| {e} | {','.join(map(str, seeds))} | {cell(norms)} | "
              + " | ".join(cell(list(final[m].values())) for m in METHODS)
              + f" | {paired('pm-lora', 'seq-lora')} | {paired('merge-lora', 'seq-lora')} | {paired('pm-lora', 'merge-lora')} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
