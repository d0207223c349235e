"""`sweep` (a grid through compare's machinery) and `landscape` (the loss on the plane of θ̂_{t−1} and θ*_t), on
`digits` with tiny grids: runs equal to plain `run`s, summaries equal to hand-computed statistics, methods run
only the values of keys they read, and the landscape equal to the loss of explicitly built models."""
from __future__ import annotations

import json
from statistics import fmean, stdev

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from perturbmerge.cli import main

TINY = ["--benchmark", "digits", "--tasks", "2", "--quiet"]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    assert main(["sweep", "--methods", "pm-lora,seq-lora", "--param", "epochs=1,2", "--param", "epsilon=0.1,0.5",
                 "--seeds", "0,1", "--out", str(out), "--set", "lora.rank=4"] + TINY) == 0
    return out


def test_sweep_runs_each_method_on_the_keys_it_reads(sweep_dir):
    names = sorted(p.name for p in (sweep_dir / "runs").iterdir())
    expected = sorted([f"pm-lora-epochs={e},epsilon={x}-seed{s}" for e in (1, 2) for x in (0.1, 0.5) for s in (0, 1)]
                      + [f"seq-lora-epochs={e}-seed{s}" for e in (1, 2) for s in (0, 1)])
    assert names == expected  # seq-lora ignores epsilon: one run serves both values
    config = json.loads((sweep_dir / "runs" / "pm-lora-epochs=2,epsilon=0.1-seed1" / "results.json").read_text())["config"]
    assert (config["epochs"], config["epsilon"], config["seed"], config["lora"]["rank"]) == (2, 0.1, 1, 4)


def test_sweep_summary_matches_the_runs(sweep_dir):
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert summary["params"] == {"epochs": [1, 2], "epsilon": [0.1, 0.5]}
    assert [p["assignment"] for p in summary["points"]] == [
        {"epochs": e, "epsilon": x} for e in (1, 2) for x in (0.1, 0.5)]
    for point in summary["points"]:
        e, x = point["assignment"]["epochs"], point["assignment"]["epsilon"]
        for method, tag in (("pm-lora", f"epochs={e},epsilon={x}"), ("seq-lora", f"epochs={e}")):
            runs = [json.loads((sweep_dir / "runs" / f"{method}-{tag}-seed{s}" / "results.json").read_text())
                    for s in (0, 1)]
            stats = point["methods"][method]
            for metric in ("final_acc", "forgetting", "aaa"):
                values = [r[metric] for r in runs]
                assert stats[metric]["mean"] == pytest.approx(fmean(values))
                assert stats[metric]["std"] == pytest.approx(stdev(values))
    text = (sweep_dir / "sweep.md").read_text()
    assert "| 1 | 0.1 † | seq-lora |" in text and "perturbmerge sweep" in text
    for key in ("epochs", "epsilon"):
        assert (sweep_dir / f"sweep-{key}.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_point_equals_a_plain_run(sweep_dir, tmp_path):
    out = tmp_path / "one"
    assert main(["run", "--method", "pm-lora", "--seed", "1", "--out", str(out),
                 "--set", "lora.rank=4", "epochs=2", "epsilon=0.5"] + TINY) == 0
    plain = json.loads((out / "results.json").read_text())
    swept = json.loads((sweep_dir / "runs" / "pm-lora-epochs=2,epsilon=0.5-seed1" / "results.json").read_text())
    assert plain["accuracy_matrix"] == swept["accuracy_matrix"] and plain["alphas"] == swept["alphas"]


def test_sweep_rerun_reuses_and_changed_config_is_refused(sweep_dir, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("runs/*/results.json")}
    argv = ["sweep", "--methods", "pm-lora,seq-lora", "--param", "epochs=1,2", "--param", "epsilon=0.1,0.5",
            "--seeds", "0,1", "--out", str(sweep_dir)] + TINY
    assert main(argv + ["--set", "lora.rank=4"]) == 0
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("runs/*/results.json")} == stamps
    capsys.readouterr()
    assert main(argv + ["--set", "lora.rank=2"]) == 2
    assert "different config (lora.rank)" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("runs/*/results.json")} == stamps


@pytest.mark.parametrize("extra, message", [
    (["--param", "epochs"], "--param expects key=v1,v2"),
    (["--param", "epochs=1,1"], "lists a value twice"),
    (["--param", "epochs=1", "--param", "epochs=2"], "given twice"),
    (["--param", "ewc_lambda=1,10"], "none of the methods pm-lora, seq-lora reads ewc_lambda"),
    (["--param", "epochs=1,2", "--set", "epochs=3"], "both swept (--param) and set (--set)"),
    (["--param", "seed=1,2"], "not sweepable"),
    (["--param", "epochs=0,1"], "epochs must be >= 1"),
    ([], "at least one --param"),
])
def test_sweep_bad_input(tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(["sweep", "--methods", "pm-lora,seq-lora", "--seeds", "0", "--out", str(out)] + TINY + extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("landscape")
    for method in ("pm-lora", "merge-lora"):
        assert main(["run", "--method", method, "--seed", "0", "--out", str(root / method),
                     "--set", "epochs=2", "save_task_models=true"] + TINY) == 0
    return root


def test_saving_task_models_does_not_change_results(saved_run, tmp_path):
    assert main(["run", "--method", "pm-lora", "--seed", "0", "--out", str(tmp_path / "plain"),
                 "--set", "epochs=2"] + TINY) == 0
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    saved = json.loads((saved_run / "pm-lora" / "results.json").read_text())
    assert plain["accuracy_matrix"] == saved["accuracy_matrix"] and plain["alphas"] == saved["alphas"]
    assert not (tmp_path / "plain" / "task_models").exists()


def test_saved_models_chain_through_the_merge(saved_run):
    """θ̂_t = θ̂_{t−1} + α_t (θ*_t − θ̂_{t−1}) is the next task's θ̂; θ̂_0 is the pretrained backbone."""
    from perturbmerge.backbones import build_backbone

    run = saved_run / "pm-lora"
    results = json.loads((run / "results.json").read_text())
    first, second = (load_file(str(run / "task_models" / f"task{t}.safetensors")) for t in (1, 2))
    records = [json.loads((run / "task_models" / f"task{t}.json").read_text()) for t in (1, 2)]
    assert [r["alpha"] for r in records] == results["alphas"]
    torch.manual_seed(0)
    pretrained = dict(build_backbone("mlp", 0).module.named_parameters())
    alpha = records[0]["alpha"]
    for key in [k.removeprefix("previous.") for k in first if k.startswith("previous.")]:
        assert torch.equal(first[f"previous.{key}"], pretrained[key].detach())
        merged = first[f"previous.{key}"] + alpha * (first[f"optimum.{key}"] - first[f"previous.{key}"])
        torch.testing.assert_close(second[f"previous.{key}"], merged, rtol=1e-5, atol=1e-6)
    sizes = [len(names) for names in results["classes_per_task"]]
    assert (first["head.weight"].shape[0], second["head.weight"].shape[0]) == (sizes[0], sum(sizes))


def test_landscape_equals_explicitly_built_models(saved_run, tmp_path):
    from perturbmerge.config import build_config
    from perturbmerge.runner import build_stream_and_backbone

    run = saved_run / "pm-lora"
    out = tmp_path / "land"
    assert main(["landscape", "--run", str(run), "--run", str(saved_run / "merge-lora"), "--task", "2",
                 "--grid", "3", "--alpha-range", "0,1", "--beta-range", "0,1", "--samples", "30",
                 "--out", str(out), "--quiet"]) == 0
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    grids = json.loads(out.with_suffix(".json").read_text())["grids"]
    assert [g["method"] for g in grids] == ["pm-lora", "merge-lora"]
    grid = grids[0]
    assert grid["alphas"] == [0.0, 0.5, 1.0] and grid["alpha_star"] == json.loads(
        (run / "results.json").read_text())["alphas"][1]
    # Brute force: copy β·θ̂ + α·θ* into a fresh backbone's parameters and evaluate the same 30 + 30 examples.
    results = json.loads((run / "results.json").read_text())
    config, _ = build_config([results["config"]], [])
    stream, backbone = build_stream_and_backbone(config, torch.device("cpu"), False)
    tensors = load_file(str(run / "task_models" / "task2.safetensors"))
    generator = torch.Generator().manual_seed(0)
    samples = []
    for task in stream.tasks[:2]:
        picks = torch.randperm(len(task.test), generator=generator)[:30].tolist()
        samples += [task.test[i] for i in picks]
    inputs = torch.stack([x for x, _ in samples])
    labels = torch.stack([y for _, y in samples])
    params = dict(backbone.module.named_parameters())
    for row, beta in enumerate(grid["betas"]):
        for col, alpha in enumerate(grid["alphas"]):
            with torch.no_grad():
                for key in [k.removeprefix("previous.") for k in tensors if k.startswith("previous.")]:
                    params[key].copy_(beta * tensors[f"previous.{key}"] + alpha * tensors[f"optimum.{key}"])
                logits = backbone.module.eval()(inputs) @ tensors["head.weight"].T + tensors["head.bias"]
            expected = float(F.cross_entropy(logits, labels))
            assert grid["loss"][row][col] == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(np.array(grids[1]["loss"])).all()


def test_landscape_needs_saved_task_models(saved_run, tmp_path, capsys):
    assert main(["run", "--method", "seq-lora", "--seed", "0", "--out", str(tmp_path / "r"), "--set", "epochs=1"]
                + TINY) == 0
    capsys.readouterr()
    assert main(["landscape", "--run", str(tmp_path / "r"), "--task", "1", "--quiet"]) == 2
    assert "save_task_models=true" in capsys.readouterr().err
    assert main(["landscape", "--run", str(saved_run / "pm-lora"), "--task", "3", "--quiet"]) == 2
    assert "--task must be in 1..2" in capsys.readouterr().err
