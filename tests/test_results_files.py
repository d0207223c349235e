"""The committed results stay small and purposeful: every file under benchmarks/results/ is a run's or a
comparison's own output (results.json, run_config.json, summary/sweep .json/.md, report.md) or is cited by a
document (README.md, docs/, or a Markdown file under benchmarks/), directly or through a cited folder. Per-step
CSVs never stay; a plot stays only when a document links that very file; JSON results are stored compact
(scripts/compact_results.py)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUN_OUTPUTS = {"results.json", "run_config.json", "summary.json", "summary.md", "sweep.json", "sweep.md", "report.md"}
PATH_LIKE = re.compile(r"[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]*)+")


def tracked_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "benchmarks/results"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the committed files cannot be listed")
    return [ROOT / name for name in names]


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").rglob("*.md"))]


def citations() -> tuple[set[Path], set[Path]]:
    """(cited files, cited folders): every path-like word of every document, read from the repository root and
    from the document's own folder; the two umbrella folders benchmarks/ and benchmarks/results/ cite nothing."""
    files, folders = set(), set()
    umbrella = {ROOT / "benchmarks", RESULTS}
    for document in documents():
        text = document.read_text(encoding="utf-8")
        for word in PATH_LIKE.findall(text):
            for base in (ROOT, document.parent):
                target = (base / word.rstrip("/.")).resolve()
                if target.is_file():
                    files.add(target)
                elif target.is_dir() and target not in umbrella and RESULTS in target.parents:
                    folders.add(target)
    return files, folders


def test_every_committed_result_file_is_a_run_output_or_cited():
    files, folders = citations()
    stray = []
    for path in tracked_files():
        resolved = path.resolve()
        if path.name == "steps.csv":
            stray.append(f"{path.relative_to(ROOT)} (per-step logs leave git; the run's command regenerates them)")
        elif path.suffix == ".png":
            if resolved not in files:
                stray.append(f"{path.relative_to(ROOT)} (a plot no document links; `perturbmerge report` redraws it)")
        elif path.name not in RUN_OUTPUTS and resolved not in files and not any(f in resolved.parents
                                                                                  for f in folders):
            stray.append(f"{path.relative_to(ROOT)} (cited by no document)")
    assert not stray, "\n".join(stray)


def test_committed_json_results_are_compact():
    completed = subprocess.run([sys.executable, str(ROOT / "scripts" / "compact_results.py"), "--check"],
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_committed_results_stay_under_their_budget():
    """12 MiB of file content under benchmarks/ (a fresh clone's `du -sh benchmarks` then stays under 15 MB)."""
    size = sum(path.stat().st_size for path in tracked_files() if path.exists())
    assert size < 12 * 2**20, f"benchmarks/results holds {size / 2**20:.1f} MiB; keep what documents cite"


def test_every_results_link_of_the_docs_exists():
    """A Markdown link of README or docs/ into benchmarks/results/ points at something committed (a plot removed
    from git or a renamed run folder would leave a dead link). Paths inside commands are templates, not links."""
    missing = []
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", document.read_text(encoding="utf-8")):
            resolved = (document.parent / target).resolve()
            if "benchmarks/results" in target and not resolved.exists():
                missing.append(f"{document.relative_to(ROOT)}: {target}")
    assert not missing, "\n".join(missing)
