"""Which committed runs name a clean commit of this repository, and which a dirty tree or a commit that is not in
it (docs/results.md, "Provenance"); no training:

    .venv/bin/python benchmarks/provenance_table.py

Per results folder (the directory above `runs/`, or the run's own folder): the number of runs whose results.json
records a clean commit that `git cat-file` finds, a commit with uncommitted changes ('+dirty'), a commit that is
not in the repository, or none.
"""
from __future__ import annotations

import json
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def known_commits() -> set[str]:
    return set(subprocess.run(["git", "rev-list", "--all"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.split())


def kind(commit: str | None, known: set[str]) -> str:
    if not commit or commit == "unknown":
        return "none"
    base = commit.removesuffix("+dirty")
    if base not in known:
        return "not in the repository" + (" (and dirty)" if commit.endswith("+dirty") else "")
    return "dirty" if commit.endswith("+dirty") else "clean"


def main() -> None:
    known = known_commits()
    groups: dict[str, Counter] = defaultdict(Counter)
    for path in sorted(RESULTS.rglob("results.json")):
        run = path.parent
        group = run.parent.parent if run.parent.name == "runs" else run
        commit = json.loads(path.read_text()).get("versions", {}).get("git_commit")
        groups[str(group.relative_to(ROOT))][kind(commit, known)] += 1
    columns = ["clean", "dirty", "not in the repository", "not in the repository (and dirty)", "none"]
    totals = Counter()
    print("| results folder | runs | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for group, counts in sorted(groups.items()):
        totals.update(counts)
        print(f"| `{group}` | {sum(counts.values())} | " + " | ".join(str(counts[c] or "") for c in columns) + " |")
    print(f"| **all** | {sum(totals.values())} | " + " | ".join(str(totals[c] or "") for c in columns) + " |")


if __name__ == "__main__":
    main()
