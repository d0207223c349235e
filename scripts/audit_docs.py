"""Keep the docs true: recompute the tables of docs/results.md from the committed per-run files (with the scripts the
docs name) and check every figure the docs and the README cite against them; exit 1 on any mismatch.

    .venv/bin/python scripts/audit_docs.py

1. Every generator below is run; for each table row it prints, the rows of docs/results.md with the same key (the
   first two cells) must hold only numbers the regenerated row holds (a docs table may show fewer columns or fewer
   rows than the script prints, never other numbers). A docs table with a row of a generator's output is that
   generator's table: each of its rows with figures must be a row the generators print (a stale row, e.g. one whose
   seed or run count has changed since, is a mismatch, not a row the script does not make).
2. Every "mean ± std" and "+mean [low, high]" figure of README.md must appear in a regenerated table or in
   docs/results.md (where the regenerated tables were checked by 1), and every other decimal of README.md
   (e.g. "36.4") must be one of theirs rounded to the digits shown (arXiv identifiers aside).
No training: the scripts read results.json files only.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "benchmarks/results"
GENERATORS = [  # (script, arguments): the commands docs/results.md names for its tables
    ("benchmarks/heads_table.py", []),
    ("benchmarks/validation_table.py", [f"{RESULTS}/long/validation"]),
    ("benchmarks/regime_map_table.py", [f"{RESULTS}/regime/langid-10-map/map"]),
    ("benchmarks/regime_map_table.py", [f"{RESULTS}/regime/wordnet-10-map/map"]),
    ("benchmarks/provenance_table.py", []),
    ("benchmarks/results_tables.py", [f"{RESULTS}/regime/langid-10-test"]),
    ("benchmarks/settings_table.py", ["--default", "**ε = 0.5, p0 = 1/3 (default)**", *[
        part for label, run in (
            ("ε = 0 (`merge-lora`)", "map/runs/merge-lora-epochs=4"), ("ε = 0.1", "epsilon/runs/pm-lora-epsilon=0.1"),
            ("**ε = 0.5, p0 = 1/3 (default)**", "map/runs/pm-lora-epochs=4"),
            ("ε = 1.0", "epsilon/runs/pm-lora-epsilon=1"), ("p0 = 0 (always ±ε)", "p0/runs/pm-lora-p0=0"),
            ("p0 = 2/3", "p0/runs/pm-lora-p0=0.6667"))
        for part in ("--row", f"{label}={RESULTS}/regime/langid-10-map/{run}-seed{{seed}}")]]),
    ("benchmarks/paired_table.py", [f"{RESULTS}/lm/polyglot", "--criteria", "--matrix", "seq-lora:0", "--methods",
                                    "zero-shot,seq-lora,pm-lora,merge-lora,avg-lora,o-lora,task-arithmetic,ties,magmax,"
                                    "joint", "--pairs",
                                    "pm-lora:seq-lora,merge-lora:seq-lora,avg-lora:seq-lora,o-lora:seq-lora,"
                                    "task-arithmetic:seq-lora,ties:seq-lora,magmax:seq-lora,joint:seq-lora,"
                                    "pm-lora:merge-lora,pm-lora:avg-lora", "--final-rows",
                                    "seq-lora,pm-lora,merge-lora,avg-lora,o-lora,task-arithmetic,ties,magmax"]),
    ("benchmarks/paired_table.py", [f"{RESULTS}/regime/langid-10-seeds", "--methods", "seq-lora,merge-lora,pm-lora",
                                    "--pairs", "pm-lora:seq-lora,merge-lora:seq-lora,pm-lora:merge-lora",
                                    "--pair-metrics", "final_acc,forgetting"]),
    *[("benchmarks/results_tables.py", [f"{RESULTS}/{folder}"]) for folder in (
        "long/mnist-fashion-10", "long/wordnet-10", "long/wordnet-5", "baselines/digits-domains-3",
        "baselines/mnist-fashion-5", "baselines/wordnet-10", "baselines/wordnet-5")],
]
NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?")
README_FIGURE = re.compile(r"[-+−]?\d+\.\d+ ± \d+\.\d+|[-+−]\d+\.\d+ \[[-+−]\d+\.\d+, [-+−]\d+\.\d+\]")


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def numbers(text: str) -> list[float]:
    return [float(token.replace("−", "-")) for token in NUMBER.findall(text)]


def table_rows(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip().startswith("|") and not set(line.strip()) <= set("|-: ")]


def generated() -> dict[str, list[str]]:
    outputs = {}
    for script, arguments in GENERATORS:
        done = subprocess.run([sys.executable, script, *arguments], cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{script} {' '.join(arguments)} failed: {done.stderr.strip().splitlines()[-1:]}")
        outputs[f"{script} {' '.join(arguments)}".strip()] = table_rows(done.stdout)
    return outputs


def key(row: str) -> tuple[str, ...]:
    return tuple(cells(row)[:2])


def has_figures(row: str) -> bool:
    parts = cells(row)
    return len(parts) >= 3 and bool(numbers(" ".join(parts[2:])))


def fits(doc_row: str, generated_row: str) -> bool:
    """Every number of the docs row (after its key) is one the generated row holds."""
    own = numbers(" ".join(cells(generated_row)[2:]))
    return all(any(abs(n - m) < 1e-9 for m in own) for n in numbers(" ".join(cells(doc_row)[2:])))


def docs_tables(text: str) -> list[list[str]]:
    """The tables of a markdown text: runs of consecutive table lines, separator lines left out."""
    tables: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip().startswith("|"):
            if not set(line.strip()) <= set("|-: "):
                tables[-1].append(line.strip())
        elif tables[-1]:
            tables.append([])
    return [table for table in tables if table]


def row_mismatches(outputs: dict[str, list[str]], document: str) -> list[str]:
    doc_rows = table_rows(document)
    by_key: dict[tuple[str, ...], list[str]] = {}
    for row in doc_rows:
        if len(cells(row)) >= 2:
            by_key.setdefault(key(row), []).append(row)
    problems = []
    for command, rows in outputs.items():
        for row in rows:
            if not has_figures(row):
                continue  # a header or a row without figures
            candidates = by_key.get(key(row), [])
            if not candidates:
                continue  # not cited
            if not any(fits(c, row) for c in candidates):
                problems.append(f"{command}: docs row {candidates[0][:120]!r} differs from the regenerated "
                                f"{row[:120]!r}")
    generated_keys = {command: {key(row) for row in rows if has_figures(row)} for command, rows in outputs.items()}
    for table in docs_tables(document):
        owners = [command for command, rows in outputs.items()
                  if any(has_figures(row) and fits(doc_row, row) for row in rows for doc_row in table
                         if key(doc_row) == key(row))]
        if not owners:
            continue  # a table no script regenerates
        known = set().union(*(generated_keys[command] for command in owners))
        problems += [f"{owners[0]}: docs row {row[:120]!r} is in a table this script prints, but it prints no row "
                     f"{' | '.join(key(row))!r} (stale?)" for row in table if has_figures(row) and key(row) not in known]
    return problems


DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
ARXIV_ID = re.compile(r"^\d{4}\.\d{4,5}$")


def readme_mismatches(outputs: dict[str, list[str]], document: str, readme: str) -> list[str]:
    backed = ("\n".join(row for rows in outputs.values() for row in rows) + "\n" + document).replace("−", "-")
    problems = [f"README.md: {figure!r} appears in no regenerated table or docs/results.md"
                for figure in dict.fromkeys(README_FIGURE.findall(readme)) if figure.replace("−", "-") not in backed]
    known = {float(token) for token in DECIMAL.findall(backed)}
    for token in dict.fromkeys(DECIMAL.findall(README_FIGURE.sub(" ", readme))):  # figures above: checked already
        digits = len(token.split(".")[1])
        if not ARXIV_ID.match(token) and not any(abs(round(v, digits) - float(token)) < 1e-9 for v in known):
            problems.append(f"README.md: the figure {token} is no number of a regenerated table or docs/results.md "
                            f"(to {digits} decimals)")
    return problems


def main() -> int:
    document = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    outputs = generated()
    problems = row_mismatches(outputs, document) + readme_mismatches(outputs, document, readme)
    checked = sum(len(rows) for rows in outputs.values())
    if problems:
        print(f"{len(problems)} figure(s) of the docs do not follow from the per-run files:")
        print("\n".join(f"  {p}" for p in problems))
        return 1
    print(f"docs audit: {checked} regenerated table rows from {len(GENERATORS)} commands; every docs row and "
          f"README figure they cover matches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
