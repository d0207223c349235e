"""End to end through the CLI and the API; bad input gives exit 2, one line, and no output left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from perturbmerge.cli import main
from perturbmerge.methods import METHODS

REQUIRED_KEYS = {
    "benchmark", "method", "seed", "scenario", "num_tasks", "accuracy_matrix", "acc_all_seen", "final_acc", "aaa",
    "forgetting", "bwt", "plasticity", "alphas", "alpha_simplified", "wall_time_s", "config", "versions",
}


def check_schema(results: dict) -> None:
    assert REQUIRED_KEYS <= set(results)
    t = results["num_tasks"]
    matrix = results["accuracy_matrix"]
    assert len(matrix) == t and all(len(row) == t for row in matrix)
    for i, row in enumerate(matrix):
        assert all(0.0 <= v <= 100.0 for v in row[: i + 1]) and all(v is None for v in row[i + 1 :])
    assert len(results["acc_all_seen"]) == t
    assert results["final_acc"] == results["acc_all_seen"][-1]
    for key in ("torch", "peft", "transformers", "perturbmerge", "python"):
        assert key in results["versions"]
    assert results["config"]["method"] == results["method"]


def test_cli_run_pm_lora_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "perturbmerge.cli", "run", "--benchmark", "digits", "--method", "pm-lora",
         "--out", str(out), "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    check_schema(results)
    assert results["alphas"][0] == pytest.approx(1.0, abs=1e-9)
    assert all(0.0 <= a <= 1.0 for a in results["alphas"])
    assert all(s is not None and 0.0 < s <= 1.0 for s in results["alpha_simplified"])
    assert results["config"]["epsilon"] == 0.5 and results["config"]["p0"] == pytest.approx(1 / 3)
    assert "final acc" in proc.stdout
    # peak memory: the run's own figure against what the OS reports for its process (a unit slip is off by 1024×)
    import resource

    children_peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    assert 0.2 < results["peak_memory_gib"]["resident"] <= children_peak_gib
    assert f"peak {results['peak_memory_gib']['resident']:.2f} GiB resident" in proc.stdout
    assert "Peak memory (this run, one process" in (out / "report.md").read_text()


@pytest.mark.parametrize("method", sorted(m for m, spec in METHODS.items()
                                          if spec.kinds is None or "classification" in spec.kinds))
def test_every_classification_method_runs(method, tmp_path, capsys):
    assert main(["run", "--benchmark", "digits", "--method", method, "--out", str(tmp_path / method), "--quiet",
                 "--tasks", "3", "--set", "epochs=1"]) == 0
    results = json.loads((tmp_path / method / "results.json").read_text())
    check_schema(results)
    if results["task_logs"][0].get("alpha") is not None:  # merging methods
        assert all(0 <= a <= 1 for a in results["alphas"])
        if method.startswith(("pm-", "merge-", "noise-")) and not results["config"].get("anchor_pretrained"):
            assert results["alphas"][0] == pytest.approx(1.0)  # closed form: α_1 = 1 exactly
        elif method.startswith("pm-"):  # the pretrained weights are task 0 of the merge: α_1 < 1
            assert results["alphas"][0] < 1.0
    else:
        assert results["alphas"] is None and not method.startswith(("pm-", "merge-", "noise-", "avg-"))


def test_listing_commands(capsys):
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("pm-lora", "pm-full", "merge-lora", "noise-lora", "seq-lora", "seq-full"))
    assert main(["benchmarks"]) == 0
    assert "digits" in capsys.readouterr().out
    assert main(["keys"]) == 0
    assert "lora.rank" in capsys.readouterr().out


def test_bad_yaml_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: [1, 2\n")
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


def test_yaml_config_is_applied(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("benchmark: digits\nmethod: merge-lora\ntasks: 2\nepochs: 1\nalpha_rule: simplified\nlora:\n  rank: 2\n")
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--set", "lr=1e-3"]) == 0
    config = json.loads((tmp_path / "o" / "results.json").read_text())["config"]
    assert config["lora"]["rank"] == 2 and config["alpha_rule"] == "simplified" and config["lr"] == 0.001
    assert config["epochs"] == 1 and config["method"] == "merge-lora"


def test_non_empty_out_dir_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["run", "--benchmark", "digits", "--out", str(tmp_path), "--quiet"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
