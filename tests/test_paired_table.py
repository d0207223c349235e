"""benchmarks/paired_table.py: issue 49's criteria and the paired differences, on hand-made run files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_script


@pytest.fixture(scope="module")
def table():
    return load_script("benchmarks/paired_table.py")


def write(folder: Path, method: str, seed: int, matrix, forgetting=0.0, general=None):
    run = folder / "runs" / f"{method}-seed{seed}"
    run.mkdir(parents=True)
    final = sum(matrix[-1]) / len(matrix[-1])
    logs = [{"general_nll": general[0], "general_nll_base": general[1]}] if general else [{}]
    (run / "results.json").write_text(json.dumps({"accuracy_matrix": matrix, "final_acc": final, "aaa": final,
                                                  "forgetting": forgetting, "bwt": -forgetting, "task_logs": logs}))


def test_criteria_and_pairs(table, tmp_path, capsys):
    write(tmp_path, "zero-shot", 0, [[2.0, None], [2.0, 10.0]], general=(5.0, 5.0))
    write(tmp_path, "seq-lora", 0, [[80.0, None], [30.0, 60.0]], forgetting=50.0, general=(5.5, 5.0))
    write(tmp_path, "seq-lora", 1, [[70.0, None], [20.0, 50.0]], forgetting=50.0, general=(5.25, 5.0))
    write(tmp_path, "pm-lora", 0, [[80.0, None], [60.0, 60.0]], forgetting=20.0, general=(5.125, 5.0))
    write(tmp_path, "pm-lora", 1, [[70.0, None], [50.0, 56.0]], forgetting=20.0, general=(5.0, 5.0))
    assert table.main([str(tmp_path), "--criteria", "--methods", "zero-shot,seq-lora,pm-lora",
                       "--pairs", "pm-lora:seq-lora,pm-lora:absent", "--matrix", "seq-lora:1"]) == 0
    out = capsys.readouterr().out
    # C1 = mean(80 − 2, 60 − 10) = 64; C2 = 50
    assert "| C1: mean of seq-lora R[i][i] − zero-shot R[i][i] | 0 | 64.00 (per task: +78.0, +50.0) | ≥ 20 | yes |" in out
    assert "| C2: seq-lora forgetting | 0 | 50.00 | ≥ 10 | yes |" in out
    assert "| seq-lora | 0,1 | 40.00 ± 7.07 |" in out  # finals 45 and 35
    assert "| zero-shot | 0 | 6.00 |" in out and out.count("| 0.000 |") == 1  # zero-shot's general NLL is unchanged
    assert "| seq-lora | 0,1 | 40.00 ± 7.07 | 40.00 ± 7.07 | 50.00 ± 0.00 | -50.00 ± 0.00 | 0.375 ± 0.177 |" in out
    # pm − seq per seed: 60 − 45 = 15, 53 − 35 = 18 → +16.50 ± 2.12
    assert "| pm-lora − seq-lora | 0,1 | +16.50 ± 2.12 (2 seeds; 95 % CI t" in out and "absent" not in out
    assert "| seq-lora seed 1 | 1 | 70.0 |  |" in out and "| seq-lora seed 1 | 2 | 20.0 | 50.0 |" in out


def test_pair_metrics_table_each_and_unknown_metric_refused(table, tmp_path, capsys):
    for seed, (seq_f, pm_f) in enumerate([(40.0, 10.0), (50.0, 14.0), (30.0, 12.0)]):
        write(tmp_path, "seq-lora", seed, [[80.0, None], [30.0, 60.0]], forgetting=seq_f)
        write(tmp_path, "pm-lora", seed, [[80.0, None], [60.0, 60.0]], forgetting=pm_f)
    assert table.main([str(tmp_path), "--pairs", "pm-lora:seq-lora", "--pair-metrics", "final_acc,forgetting"]) == 0
    out = capsys.readouterr().out
    assert "| difference of final score |" in out and "| difference of forgetting |" in out
    # forgetting pm − seq per seed: −30, −36, −18 → −28.00 ± 9.17; final: +15 at every seed
    assert "| pm-lora − seq-lora, forgetting | 0,1,2 | -28.00 ± 9.17 (3 seeds; 95 % CI t" in out
    assert "| pm-lora − seq-lora | 0,1,2 | +15.00 ± 0.00 (3 seeds;" in out
    # the compact column: mean [t-interval]; std = √84, t(0.975, 2) = 4.3027, 4.3027 · √84 / √3 = 22.77
    assert "| -28.00 [-50.77, -5.23] |" in out
    assert table.main([str(tmp_path), "--pairs", "pm-lora:seq-lora", "--pair-metrics", "forgeting"]) == 2
    assert "unknown --pair-metrics forgeting" in capsys.readouterr().err


def test_a_run_without_forgetting_shows_a_dash(table, tmp_path, capsys):
    """joint trains once on every task: its results.json has forgetting and BWT null and no general NLL."""
    write(tmp_path, "joint", 0, [[50.0, 70.0]])
    run = tmp_path / "runs" / "joint-seed0" / "results.json"
    results = json.loads(run.read_text())
    results.update(forgetting=None, bwt=None)
    run.write_text(json.dumps(results))
    write(tmp_path, "seq-lora", 0, [[80.0, None], [30.0, 60.0]], forgetting=50.0, general=(5.5, 5.0))
    assert table.main([str(tmp_path), "--methods", "seq-lora,joint", "--pairs", "joint:seq-lora"]) == 0
    out = capsys.readouterr().out
    assert "| joint | 0 | 60.00 | 60.00 | – | – | – |" in out and "| joint − seq-lora | 0 | +15.00 (1 seed; no interval) | – |" in out


def test_final_rows_per_task_over_seeds(table, tmp_path, capsys):
    """--final-rows: the last row of each method's score matrix, mean ± sample std over seeds; a run with another
    number of tasks (joint: one pooled task) has no such row."""
    write(tmp_path, "seq-lora", 0, [[80.0, None], [30.0, 60.0]])
    write(tmp_path, "seq-lora", 1, [[70.0, None], [20.0, 50.0]])
    write(tmp_path, "joint", 0, [[55.0]])
    assert table.main([str(tmp_path), "--final-rows", "seq-lora,joint"]) == 0
    out = capsys.readouterr().out
    # task 1: 30, 20 → 25.0 ± 7.1; task 2: 60, 50 → 55.0 ± 7.1
    assert "| score after the last task | seeds | task 1 | task 2 |" in out
    assert "| seq-lora, after task 2 | 0,1 | 25.0 ± 7.1 | 55.0 ± 7.1 |" in out
    assert "joint, after" not in out
