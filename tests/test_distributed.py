"""Two processes (torchrun, gloo on CPU) against one process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

RUN = ["run", "--benchmark", "digits", "--tasks", "3", "--quiet", "--set", "epochs=2", "checkpoint.enabled=false"]


def _launch(processes: int, method: str, out, port: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "perturbmerge"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(port), "-m", "perturbmerge"]
    done = subprocess.run(command + RUN[:1] + ["--method", method, "--out", str(out)] + RUN[1:], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("method,port", [("pm-lora", 29531), ("simplecil", 29532), ("pm-lora-plus", 29533)])
def test_two_processes_match_one_process(tmp_path, method, port):
    """Same α sequence (float tolerance 1e-6 relative: sums run in another order) and the same accuracy matrix.
    digits has uneven shards: 499/379 training examples in batches of 32, 215/166 test examples."""
    one = _launch(1, method, tmp_path / "one", port)
    two = _launch(2, method, tmp_path / "two", port)
    assert two["processes"] == 2 and one["processes"] == 1
    if method.startswith("pm-lora"):
        assert two["alphas"] == pytest.approx(one["alphas"], rel=1e-6)
        for a, b in zip(one["task_logs"], two["task_logs"]):
            assert b["fisher_mass"] == pytest.approx(a["fisher_mass"], rel=1e-6)
            assert b["train_loss_last_epoch"] == pytest.approx(a["train_loss_last_epoch"], rel=1e-6)
            if "mean_drift" in a:  # pm-lora-plus: the linear drift map from moments summed over processes
                assert b["mean_drift"] == pytest.approx(a["mean_drift"], rel=1e-5)
    for row_one, row_two in zip(one["accuracy_matrix"], two["accuracy_matrix"]):
        assert row_two == pytest.approx(row_one, abs=0.5)  # at most one test example flips
    assert not list((tmp_path / "two").glob("*rank*"))  # only rank 0 wrote


def test_compare_refuses_several_processes(monkeypatch, tmp_path, capsys):
    from perturbmerge.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["compare", "--benchmark", "digits", "--methods", "pm-lora", "--out", str(tmp_path / "c")]) == 2
    assert "give one method" in capsys.readouterr().err
