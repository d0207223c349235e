"""Write a golden file: every registered method on `digits` (3 tasks, 1 epoch, seed 0, one torch thread) and the
option variants of tests/test_golden.py — accuracy matrix, α, Fisher mass, task-vector norms and training losses —
the reference that refactors must reproduce bit for bit. Run from the repository root at the commit whose results
are the reference (with that commit's source first on the path, e.g. a worktree and PYTHONPATH=its/src):

    .venv/bin/python tests/golden/make_golden.py                  # tests/golden/digits.json (the first file)
    .venv/bin/python tests/golden/make_golden.py --machine-file   # tests/golden/digits-<this machine>.json
    .venv/bin/python tests/golden/make_golden.py --add NAME ...   # add methods registered later to this
                                                                  # machine's file; existing records stay

Bit equality is defined per CPU kind, so each file records the machine that wrote it and the test picks the file
of its own machine."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_golden import (CLASSIFICATION_METHODS, FOLDER, GOLDEN, VARIANTS, golden_for_this_machine,  # noqa: E402
                         golden_record, machine, machine_file_name, run_digits, run_variant)

from perturbmerge.methods import METHODS  # noqa: E402
from perturbmerge.runner import run_versions  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    adding = sys.argv[2:] if sys.argv[1:2] == ["--add"] else None
    if adding:
        existing = golden_for_this_machine()
        if existing is None:
            sys.exit("refused: no golden file of this machine kind to add to; write one with --machine-file")
        taken = [name for name in adding if name in existing["methods"]]
        if taken or any(name not in METHODS for name in adding):
            sys.exit(f"refused: {taken or adding} already present or unknown")
    target = FOLDER / machine_file_name(machine()) if "--machine-file" in sys.argv[1:] else GOLDEN
    records, variants = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in adding or CLASSIFICATION_METHODS:
            records[name] = golden_record(run_digits(name, Path(scratch) / name))
            print(name, records[name]["accuracy_matrix"][-1], flush=True)
        for index, variant in enumerate(() if adding else VARIANTS):
            variants[variant] = golden_record(run_variant(variant, Path(scratch) / f"variant-{index}"))
            print(variant, variants[variant]["accuracy_matrix"][-1], flush=True)
    if adding:
        path = next(p for p in sorted(FOLDER.glob("digits*.json")) if json.loads(p.read_text()) == existing)
        existing["methods"] = dict(sorted({**existing["methods"], **records}.items()))
        path.write_text(json.dumps(existing, indent=1) + "\n")
    else:
        target.write_text(json.dumps({"machine": machine(), "versions": run_versions(), "methods": records,
                                      "variants": variants}, indent=1) + "\n")
        print("wrote", target)
