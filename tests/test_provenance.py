"""Pre-registration that can be checked: a PLAN.md under benchmarks/results/ is committed in a commit of its own,
before any result it covers (every results.json in its folder); and a run written under benchmarks/results/ refuses
to start from a source tree with uncommitted changes, so every committed run names the commit that produced it."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from perturbmerge import io
from perturbmerge.cli import main

ROOT = Path(__file__).resolve().parent.parent
# Plans committed together with their first results before this check existed (docs/results.md, "Provenance"):
# nothing shows that they came first, and they are listed there as such.
EARLIER_PLANS = {"benchmarks/results/heads/PLAN.md", "benchmarks/results/heads/fecam-drift-validation/PLAN.md",
                 "benchmarks/results/regime/wordnet-10-map/PLAN.md"}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def history() -> tuple[dict[str, int], dict[str, str]]:
    """(commit → position in history, oldest first; file → the commit that added it) for benchmarks/results."""
    try:
        if git("rev-parse", "--is-shallow-repository").strip() == "true":
            pytest.skip("a shallow clone has no history to check plans against")
        order = {commit: i for i, commit in enumerate(git("rev-list", "--reverse", "--topo-order", "HEAD").split())}
        added: dict[str, str] = {}
        commit = None
        for line in git("log", "--reverse", "--diff-filter=A", "--name-only", "--format=@%H", "--",
                        "benchmarks/results").splitlines():
            if line.startswith("@"):
                commit = line[1:]
            elif line.strip():
                added.setdefault(line.strip(), commit)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return order, added


def test_every_plan_is_committed_alone_before_the_results_it_covers():
    order, added = history()
    late = []
    for plan in sorted(p for p in added if p.endswith("/PLAN.md")):
        if plan in EARLIER_PLANS or not (ROOT / plan).exists():
            continue
        folder = plan.removesuffix("PLAN.md")
        plan_commit = added[plan]
        in_plan_commit = [f for f in git("show", "--name-only", "--format=", plan_commit).split() if f != plan]
        if any(f.startswith(folder) and f.endswith("results.json") for f in in_plan_commit):
            late.append(f"{plan}: committed together with results ({plan_commit[:8]})")
        for path, commit in added.items():
            if path.startswith(folder) and path.endswith("results.json") and order[commit] <= order[plan_commit]:
                late.append(f"{plan}: {path} was committed at or before the plan ({commit[:8]})")
    assert not late, "\n".join(late[:20])


def test_a_run_under_benchmarks_results_refuses_a_dirty_source_tree(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(io, "_git_commit", lambda: "0123abcd+dirty")
    out = tmp_path / "benchmarks" / "results" / "run"
    code = main(["run", "--benchmark", "digits", "--method", "seq-lora", "--tasks", "2", "--quiet", "--out", str(out),
                 "--set", "epochs=1"])
    assert code == 2 and not out.exists()
    assert "uncommitted changes" in capsys.readouterr().err
    elsewhere = tmp_path / "runs" / "run"  # outside benchmarks/results: allowed (its results.json says +dirty)
    assert main(["run", "--benchmark", "digits", "--method", "seq-lora", "--tasks", "2", "--quiet", "--out",
                 str(elsewhere), "--set", "epochs=1"]) == 0


def test_a_clean_tree_runs_under_benchmarks_results(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_git_commit", lambda: "0123abcd")
    out = tmp_path / "benchmarks" / "results" / "run"
    assert main(["run", "--benchmark", "digits", "--method", "seq-lora", "--tasks", "2", "--quiet", "--out", str(out),
                 "--set", "epochs=1"]) == 0
    assert io.is_committed_results_path(out) and not io.is_committed_results_path(tmp_path / "benchmarks" / "x")
