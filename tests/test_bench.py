"""`python -m perturbmerge.bench` runs end to end (tiny: digits, 2 steps, 1 repeat) and writes every figure."""
from __future__ import annotations

import json

from perturbmerge.bench import main, median_time


def test_median_time_interleaves_and_takes_the_median():
    calls = []
    medians = median_time({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] * 4 and set(medians) == {"a", "b"}  # one warm-up, then a, b, a, b, …
    assert all(value >= 0 for value in medians.values())


def test_bench_writes_its_figures(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--benchmark", "digits", "--tasks", "3", "--steps", "2", "--repeats", "1", "--no-memory",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["figures"]) == {"step_pm_over_seq", "step_seq_over_plain_peft", "fisher_over_epoch",
                                      "merge_seconds"}
    assert all(figure["value"] > 0 for figure in result["figures"].values())
    assert result["command"].startswith("python -m perturbmerge.bench --benchmark digits")
