"""`--set log.tensorboard=true`: the event files hold what steps.csv and results.json hold, once per step even
after an interrupted run was resumed; without the package, a one-line error before anything is written."""
from __future__ import annotations

import csv
import importlib.util
import json

import pytest

from perturbmerge.cli import main
from perturbmerge.errors import UserError
from perturbmerge.runner import resolve_config, run_experiment

pytest.importorskip("tensorboard")
SETS = ["epochs=1", "log.tensorboard=true", "checkpoint.every_steps=5"]


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def config():
    return resolve_config({"benchmark": "digits", "method": "pm-lora", "tasks": 3}, sets=SETS)[0]


def check_against_run_files(run) -> None:
    logged = scalars(run)
    results = json.loads((run / "results.json").read_text())
    rows = list(csv.DictReader((run / "steps.csv").open()))
    assert [s for s, _ in logged["train/loss"]] == [int(r["step"]) for r in rows]
    assert [v for _, v in logged["train/loss"]] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-6)
    assert [int(v) for _, v in logged["train/perturbation_draw"]] == [int(r["draw"]) for r in rows]
    task_ends = [int(rows[-1]["step"]) if t == 2 else max(int(r["step"]) for r in rows if r["task"] == str(t + 1))
                 for t in range(3)]
    assert logged["task/alpha"] == [(s, pytest.approx(a, rel=1e-6)) for s, a in zip(task_ends, results["alphas"])]
    assert [v for _, v in logged["accuracy/all_seen"]] == pytest.approx(results["acc_all_seen"], rel=1e-6)
    assert [v for _, v in logged["accuracy/task_1"]] == pytest.approx(
        [row[0] for row in results["accuracy_matrix"]], rel=1e-6)
    assert len(logged["accuracy/task_3"]) == 1


def test_event_files_match_steps_csv_and_results(tmp_path):
    assert main(["run", "--benchmark", "digits", "--method", "pm-lora", "--tasks", "3", "--out",
                 str(tmp_path / "run"), "--quiet", "--set", *SETS]) == 0
    check_against_run_files(tmp_path / "run")


def test_resumed_run_logs_every_step_once(tmp_path):
    run = tmp_path / "run"

    def stop(event, learner, info):
        if event == "train_step" and info["step"] == 23:  # before the loggers see step 23
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(config(), run, progress=False, callbacks=[stop])
    assert len(scalars(run)["train/loss"]) == 22  # the last checkpoint is step 20
    assert main(["run", "--resume", str(run), "--quiet"]) == 0
    check_against_run_files(run)  # steps 21–22 written twice, the first copies purged


def test_missing_package_is_a_one_line_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(UserError, match="log.tensorboard=true needs the tensorboard package: pip install tensorboard"):
        config()
