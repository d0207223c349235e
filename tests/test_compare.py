"""`compare` and the default `run`: every (method, seed) once, summaries equal to hand-computed statistics,
finished runs skipped, changed configs refused, unfinished runs redone, reports written."""
from __future__ import annotations

import json
import shutil
from statistics import fmean, stdev

import pytest

from perturbmerge.cli import main
from perturbmerge.report import mean_std, table_lines

FAST = ["--benchmark", "digits", "--tasks", "2", "--quiet", "--set", "epochs=1"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "out"
    assert main(["compare", "--methods", "pm-lora,seq-lora", "--seeds", "0,1", "--out", str(out)] + FAST
                + ["checkpoint.keep_final=true"]) == 0  # so a test can play 'killed after the last checkpoint'
    assert (out / "runs" / "seq-lora-seed1" / "checkpoints" / "LATEST").is_file()
    return out


def test_compare_writes_every_run_and_summary(comparison):
    summary = json.loads((comparison / "summary.json").read_text())
    assert list(summary["methods"]) == ["pm-lora", "seq-lora"]
    for method, entry in summary["methods"].items():
        runs = [json.loads((comparison / "runs" / f"{method}-seed{s}" / "results.json").read_text()) for s in (0, 1)]
        assert entry["seeds"] == [0, 1]
        for metric in ("final_acc", "aaa", "forgetting", "bwt", "plasticity", "wall_time_s"):
            values = [r[metric] for r in runs]
            assert entry[metric]["mean"] == pytest.approx(fmean(values))
            assert entry[metric]["std"] == pytest.approx(stdev(values))
        assert entry["run_dirs"] == [str(comparison / "runs" / f"{method}-seed{s}") for s in (0, 1)]
    assert summary["methods"]["seq-lora"]["alphas"] is None
    assert summary["methods"]["pm-lora"]["alphas"]["mean"][0] == pytest.approx(1.0)
    text = (comparison / "summary.md").read_text()
    assert "| pm-lora | 2 |" in text and "perturbmerge compare" in text
    for png in ("accuracy_matrix.png", "acc_all_seen.png", "alpha.png"):
        assert (comparison / png).read_bytes()[:4] == b"\x89PNG"


def test_rerun_skips_finished_runs(comparison, capsys):
    stamp = {p: p.stat().st_mtime_ns for p in comparison.glob("runs/*/results.json")}
    assert main(["compare", "--methods", "pm-lora,seq-lora", "--seeds", "0,1", "--out", str(comparison)]
                + FAST[:-3] + ["--set", "epochs=1"]) == 0
    assert {p: p.stat().st_mtime_ns for p in comparison.glob("runs/*/results.json")} == stamp


@pytest.mark.parametrize("lost", ["results", "results-and-checkpoints"])
def test_unfinished_run_is_resumed_or_redone(comparison, tmp_path, lost):
    out = tmp_path / "copy"
    shutil.copytree(comparison, out)
    run = out / "runs" / "seq-lora-seed1"
    (run / "results.json").unlink()  # as if killed after its last checkpoint
    if lost == "results-and-checkpoints":
        shutil.rmtree(run / "checkpoints")  # as if killed before its first checkpoint
    assert main(["compare", "--methods", "pm-lora,seq-lora", "--seeds", "0,1", "--out", str(out)] + FAST) == 0
    again = json.loads((run / "results.json").read_text())
    original = json.loads((comparison / "runs" / "seq-lora-seed1" / "results.json").read_text())
    assert again["accuracy_matrix"] == original["accuracy_matrix"]  # deterministic on CPU
    if lost == "results":
        assert again["resumed_from"] == {"task": 1, "epoch": 1, "batch": 0, "done": True}
    else:
        assert again["resumed_from"] is None


def test_changed_config_is_refused(comparison, capsys):
    code = main(["compare", "--methods", "pm-lora", "--seeds", "0", "--out", str(comparison),
                 "--benchmark", "digits", "--tasks", "2", "--quiet", "--set", "epochs=2"])
    assert code == 2
    assert "different config (epochs)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--methods", "pm-lora,nope"], "unknown method 'nope'"),
    (["--methods", "pm-lora,pm-lora"], "lists an item twice"),
    (["--seeds", "0,x"], "comma-separated integers"),
    (["--methods", "seq-lora", "--set", "epsilon=0.3"], "none of the methods seq-lora uses epsilon"),
])
def test_compare_bad_input_leaves_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code = main(["compare", "--out", str(out), "--benchmark", "digits", "--quiet"] + argv)
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_key_for_one_compared_method_is_allowed(tmp_path):
    out = tmp_path / "out"
    assert main(["compare", "--methods", "pm-lora,seq-lora", "--seeds", "0", "--out", str(out)] + FAST
                + ["epsilon=0.25"]) == 0
    results = json.loads((out / "runs" / "pm-lora-seed0" / "results.json").read_text())
    assert results["config"]["epsilon"] == 0.25


def test_run_without_method_compares_the_default_trio(tmp_path, capsys):
    out = tmp_path / "default"
    assert main(["run", "--out", str(out)] + FAST) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["merge-lora-seed0", "pm-lora-seed0", "seq-lora-seed0"]
    report = (out / "report.md").read_text()
    assert "![accuracy matrices](accuracy_matrix.png)" in report and "| merge-lora | 1 |" in report
    assert "final Acc" in capsys.readouterr().out


def test_mean_std_and_bold_best():
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2 ** 0.5)}
    assert mean_std([None, 4.0]) == {"mean": 4.0, "std": 0.0}
    assert mean_std([None]) == {"mean": None, "std": None}
    cell = {"mean": 1.0, "std": 0.0}
    summary = {"methods": {
        "a": {"seeds": [0], **{m: cell for m in ("aaa", "forgetting", "bwt", "plasticity", "wall_time_s")},
              "final_acc": {"mean": 50.0, "std": 0.0}},
        "b": {"seeds": [0], **{m: cell for m in ("aaa", "forgetting", "bwt", "plasticity", "wall_time_s")},
              "final_acc": {"mean": 60.0, "std": 0.0}},
    }}
    lines = table_lines(summary)
    assert "**60.00**" in lines[3] and "**" not in lines[2].split("|")[3]
    summary["methods"]["a"]["final_acc"] = {"mean": 60.0 - 1e-12, "std": 0.0}  # equal as shown: both are the best
    lines = table_lines(summary)
    assert "**60.00**" in lines[2] and "**60.00**" in lines[3]


def test_config_from_an_older_version_matches_when_new_keys_are_at_default():
    from perturbmerge.config import config_differences as _config_differences
    from perturbmerge.config import RunConfig

    new = RunConfig().to_dict()
    old = {k: v for k, v in new.items() if k != "task_merge"}
    assert _config_differences(old, new) == []
    changed = {**new, "task_merge": {**new["task_merge"], "lam": 0.7}}
    assert _config_differences(old, changed) == ["task_merge"]
    assert _config_differences({**old, "lr": 1.0}, new) == ["lr"]


def test_difference_to_seq_lora_is_paired_by_seed(comparison):
    summary = json.loads((comparison / "summary.json").read_text())
    runs = {(m, s): json.loads((comparison / "runs" / f"{m}-seed{s}" / "results.json").read_text())
            for m in ("pm-lora", "seq-lora") for s in (0, 1)}
    differences = summary["differences"]
    assert differences["reference"] == "seq-lora" and list(differences["methods"]) == ["pm-lora"]
    paired = [runs["pm-lora", s]["final_acc"] - runs["seq-lora", s]["final_acc"] for s in (0, 1)]
    entry = differences["methods"]["pm-lora"]
    assert entry["final_acc"]["mean"] == pytest.approx(fmean(paired))
    assert entry["final_acc"]["std"] == pytest.approx(stdev(paired))
    last = [runs["pm-lora", s]["acc_all_seen"][-1] - runs["seq-lora", s]["acc_all_seen"][-1] for s in (0, 1)]
    assert entry["acc_all_seen"]["mean"][-1] == pytest.approx(fmean(last))
    assert (comparison / "difference_to_seq_lora.png").read_bytes()[:4] == b"\x89PNG"
    std = summary["methods"]["seq-lora"]["final_acc"]["std"]
    text = (comparison / "summary.md").read_text()
    assert f"std of seq-lora's final Acc over 2 seeds is {std:.2f} points" in text and "## Difference to seq-lora" in text
