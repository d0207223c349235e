"""Collect finished runs from several `perturbmerge compare` folders into one report (nothing is trained).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/collect_runs.py OUT_DIR "COMMANDS" RUNS_DIR [RUNS_DIR ...]

Copies every `<RUNS_DIR>/<method>-seed<N>/results.json` that exists (unfinished runs are skipped and listed) into
`OUT_DIR/runs/`, and writes summary.json, summary.md and the plots there with `perturbmerge.report.write_report`.
COMMANDS is recorded as the command that produced the runs. Used when a comparison's seeds ran as separate
`compare` calls (one per core).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from perturbmerge.io import machine_description
from perturbmerge.methods import METHODS
from perturbmerge.report import write_report


def main(out_dir: str, command: str, sources: list[str]) -> int:
    out = Path(out_dir)
    runs, run_dirs, skipped = [], {}, []
    for source in sources:
        for folder in sorted(Path(source).iterdir()):
            results = folder / "results.json"
            if not results.is_file():
                skipped.append(str(folder))
                continue
            target = out / "runs" / folder.name
            target.mkdir(parents=True, exist_ok=True)
            for name in ("results.json", "report.md"):
                if (folder / name).is_file():
                    shutil.copy2(folder / name, target / name)
            run = json.loads(results.read_text())
            runs.append(run)
            run_dirs[(run["method"], run["seed"])] = str(target)
    listed = command.split("--methods ", 1)[1].split()[0].split(",") if "--methods " in command else list(METHODS)
    order = {name: i for i, name in enumerate(listed)}  # the order of the compare command's --methods
    runs.sort(key=lambda r: (order.get(r["method"], len(order)), r["seed"]))
    write_report(out, runs, "summary.md", command, run_dirs, machine_description())
    print(f"{len(runs)} runs collected into {out}; unfinished, skipped: {skipped or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
