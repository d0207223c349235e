"""The docs checker (scripts/audit_docs.py, issue 50): it fails on a docs figure that the per-run files do not give,
and the committed README and docs/results.md pass it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
audit = load_script("scripts/audit_docs.py")

GENERATED = {"table.py": ["| pm-lora | defaults | 30.92 / 50.37 | – |", "| seq-lora | defaults | 20.00 / 40.00 | – |"]}


def test_a_docs_row_with_other_numbers_is_a_mismatch():
    good = "| pm-lora | defaults | 30.92 / 50.37 |\n| seq-lora | defaults | 20.00 |\n"
    assert audit.row_mismatches(GENERATED, good) == []  # fewer columns, same numbers: fine
    swapped = "| pm-lora | defaults | 20.00 / 40.00 |\n| seq-lora | defaults | 30.92 / 50.37 |\n"  # labels swapped
    assert len(audit.row_mismatches(GENERATED, swapped)) == 2
    assert audit.row_mismatches(GENERATED, "| other | defaults | 1.00 |\n") == []  # a row the script does not make


def test_a_stale_row_in_a_generated_table_is_a_mismatch():
    """A row whose key changed since (a run count, the seeds) would match no generated row and used to pass as 'a row
    the script does not make'; in a table that holds a generated row it is now a mismatch."""
    generated = {"provenance.py": ["| `results/a` | 4 | 4 |", "| `results/b` | 2 | 1 |"]}
    current = "| folder | runs | clean |\n|---|---|---|\n| `results/a` | 4 | 4 |\n| `results/b` | 2 | 1 |\n"
    assert audit.row_mismatches(generated, current) == []
    stale = current.replace("| `results/a` | 4 | 4 |", "| `results/a` | 3 | 3 |")
    problems = audit.row_mismatches(generated, stale)
    assert len(problems) == 1 and "`results/a` | 3" in problems[0]
    other_table = current + "\nText.\n\n| `results/c` | 9 | 9 |\n"  # a separate table no script makes: not checked
    assert audit.row_mismatches(generated, other_table) == []


def test_a_readme_figure_must_be_backed_by_a_table():
    outputs = {"t": ["| `pm-lora` | +9.21 [-4.13, +22.55] |"]}
    assert audit.readme_mismatches(outputs, "| x | 53.22 ± 0.00 |", "is +9.21 [−4.13, +22.55] and 53.22 ± 0.00") == []
    assert len(audit.readme_mismatches(outputs, "", "is +9.31 [−4.13, +22.55]")) == 1


def test_every_other_readme_decimal_must_round_from_a_backed_number():
    document = "C1 = 36.40 and forgetting 29.17"
    assert audit.readme_mismatches({}, document, "gains 36.4 points and forgets 29.2 (arXiv 2505.22389)") == []
    problems = audit.readme_mismatches({}, document, "gains 36.7 points and forgets 29.2")
    assert len(problems) == 1 and "36.7" in problems[0]


def test_the_committed_docs_pass_the_audit():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "audit_docs.py")], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
