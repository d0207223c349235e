"""`python -m perturbmerge.bench` runs end to end (tiny: digits, 2 steps, 1 repeat) and writes every figure."""
from __future__ import annotations

import json

import pytest

from perturbmerge.bench import main, median_time


def test_median_time_interleaves_and_takes_the_median():
    calls = []
    medians = median_time({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] * 4 and set(medians) == {"a", "b"}  # one warm-up, then a, b, a, b, …
    assert all(value >= 0 for value in medians.values())


def test_bench_writes_its_figures(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--benchmark", "digits", "--tasks", "3", "--steps", "2", "--repeats", "1", "--no-memory",
                 "--scaling", "", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["figures"]) == {"step_pm_over_seq", "step_seq_over_plain_peft", "fisher_over_epoch",
                                      "merge_seconds"}
    assert all(figure["value"] > 0 for figure in result["figures"].values())
    assert result["command"].startswith("python -m perturbmerge.bench --benchmark digits")


def test_bench_breaks_runs_down_and_scales_the_task_count(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--benchmark", "digits", "--tasks", "2", "--steps", "1", "--repeats", "1", "--scaling", "2,3",
                 "--out", str(out)]) == 0
    figures = json.loads(out.read_text())["figures"]
    runs = figures["run_wall_pm_over_seq"]["runs"]
    for name, run in runs.items():  # the parts and the rest add up to the process's wall time
        assert sum(run["seconds"].values()) == pytest.approx(run["wall_s"], rel=1e-9)
        assert len(run["eval_s_per_task"]) == 2 and run["seconds"]["train_time_s"] > 0
    assert runs["pm-lora"]["seconds"]["fisher_s"] > 0 and runs["seq-lora"]["seconds"]["fisher_s"] == 0
    scaling = figures["scaling_peak_rss_last_over_first"]["per_task_count"]
    assert set(scaling) == {"2", "3"} and all(v["peak_rss_mib"] > 0 for v in scaling.values())
