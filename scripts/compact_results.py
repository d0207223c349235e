"""Keep the committed results small: rewrite every results.json, summary.json and sweep.json under
benchmarks/results/ as compact JSON (no indentation; the same data, checked by parsing both), and report what
else there does not belong in git (per-step CSVs, plots that no document links; tests/test_results_files.py).

    .venv/bin/python scripts/compact_results.py            # rewrite in place; prints the bytes saved
    .venv/bin/python scripts/compact_results.py --check    # exit 1 if any file would change

Run it before committing new runs. A run's plots and steps.csv are regenerable: `perturbmerge report RUN`
redraws the plots from results.json, and the command in results.json reruns the steps."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
COMPACT_NAMES = ("results.json", "summary.json", "sweep.json")


def compact_text(text: str) -> str:
    return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    changed, saved = [], 0
    for path in sorted(p for name in COMPACT_NAMES for p in ROOT.rglob(name)):
        text = path.read_text(encoding="utf-8")
        compact = compact_text(text)
        if compact == text:
            continue
        assert json.loads(compact) == json.loads(text), path  # the same data
        changed.append(path)
        saved += len(text.encode()) - len(compact.encode())
        if not check:
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False) as handle:
                handle.write(compact)
            os.replace(handle.name, path)
    if check and changed:
        print(f"{len(changed)} results file(s) are not compact, e.g. {changed[0]}; run "
              f"`.venv/bin/python scripts/compact_results.py`")
        return 1
    print(f"{'would rewrite' if check else 'rewrote'} {len(changed)} file(s), {saved / 2**20:.2f} MiB saved")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
