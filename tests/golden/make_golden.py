"""Write tests/golden/digits.json: every registered method on `digits` (3 tasks, 1 epoch, seed 0, one torch thread)
— accuracy matrix, α, Fisher mass, task-vector norms and training losses — the reference that refactors must
reproduce bit for bit (tests/test_golden.py). Run from the repository root at the commit whose results are the
reference: `.venv/bin/python tests/golden/make_golden.py`. A method registered later is added with `--add NAME ...`:
only its record is computed and written, every existing record stays as it is (a name already there is refused)."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_golden import GOLDEN, golden_record, machine, run_digits  # noqa: E402

from perturbmerge.methods import METHODS  # noqa: E402
from perturbmerge.runner import run_versions  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    adding = sys.argv[2:] if sys.argv[1:2] == ["--add"] else None
    existing = json.loads(GOLDEN.read_text()) if adding else None
    if adding:
        taken = [name for name in adding if name in existing["methods"]]
        if taken or any(name not in METHODS for name in adding) or existing["machine"] != machine():
            sys.exit(f"refused: {taken or adding} already present, unknown, or another machine kind than the file's")
    records = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in adding or sorted(METHODS):
            records[name] = golden_record(run_digits(name, Path(scratch) / name))
            print(name, records[name]["accuracy_matrix"][-1], flush=True)
    if adding:
        existing["methods"] = dict(sorted({**existing["methods"], **records}.items()))
        GOLDEN.write_text(json.dumps(existing, indent=1) + "\n")
    else:
        GOLDEN.write_text(json.dumps({"machine": machine(), "versions": run_versions(), "methods": records},
                                     indent=1) + "\n")
