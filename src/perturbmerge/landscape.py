"""`perturbmerge landscape`: the loss around a merge, on the plane of θ̂_{t−1} and θ*_t (the paper's Figure 2).

For a run made with `--set save_task_models=true`, task t's file holds θ̂_{t−1} (the merged model before the
task) and θ*_t (after training it), in merge space, and the head after the task. On a grid of (α, β),

    θ(α, β) = β · θ̂_{t−1} + α · θ*_t        (only the merge-space weights; every other weight as trained)

the landscape is the mean cross-entropy (all seen classes' logits compete, as at test time) over a fixed sample of
the evaluation data of tasks 1..t. The merge of the run lies on the convex line α + β = 1, at (α*_t, 1 − α*_t):
θ̂_t = (1 − α*) θ̂_{t−1} + α* θ*_t. Writes a PNG contour plot and the grid as JSON.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import UserError
from .io import atomic_write_bytes, atomic_write_json


def parse_range(text: str, what: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--{what} must be two numbers LOW,HIGH, got '{text}'; e.g. --{what} -0.25,1.25") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise UserError(f"--{what} needs finite LOW < HIGH, got '{text}'; e.g. --{what} -0.25,1.25")
    return low, high


def load_task_models(run_dir: Path, task: int) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """The run's results, task t's tensors and its JSON record; one-line errors for what is missing."""
    from safetensors.torch import load_file

    results_file = run_dir / "results.json"
    if not results_file.is_file():
        raise UserError(f"'{run_dir}' has no results.json; give the folder of a finished run")
    results = json.loads(results_file.read_text())
    if not 1 <= task <= results["num_tasks"]:
        raise UserError(f"--task must be in 1..{results['num_tasks']} for '{run_dir}', got {task}")
    from .runner import TASK_MODELS

    file = run_dir / TASK_MODELS / f"task{task}.safetensors"
    if not file.is_file():
        raise UserError(f"'{run_dir}' has no saved task models; run it with --set save_task_models=true")
    return results, load_file(str(file)), json.loads(file.with_suffix(".json").read_text())


@torch.no_grad()
def loss_grid(run_dir: str | Path, task: int, alphas: Sequence[float], betas: Sequence[float],
              samples_per_task: int = 200, progress: bool = True) -> dict[str, Any]:
    """Mean loss over tasks 1..t's evaluation samples at every θ(α, β); returns the grid and what it was made of."""
    from torch.func import functional_call

    from .config import build_config
    from .learner import move_to
    from .runner import build_stream_and_backbone, resolve_device

    run_dir = Path(run_dir)
    results, tensors, record = load_task_models(run_dir, task)
    config, _ = build_config([results["config"]], [])
    device = resolve_device(config.device)
    stream, backbone = build_stream_and_backbone(config, device, progress)
    previous = {k.removeprefix("previous."): v.to(device) for k, v in tensors.items() if k.startswith("previous.")}
    optimum = {k.removeprefix("optimum."): v.to(device) for k, v in tensors.items() if k.startswith("optimum.")}
    weight, bias = tensors["head.weight"].to(device), tensors["head.bias"].to(device)
    module = backbone.module.to(device).eval()
    generator = torch.Generator().manual_seed(0)
    batches = []
    for seen in stream.tasks[:task]:
        picks = torch.randperm(len(seen.test), generator=generator)[:samples_per_task].tolist()
        items = [seen.test[i] for i in picks]
        batch = stream.collate(items) if stream.collate is not None else torch.utils.data.default_collate(items)
        batches.append(batch)

    grid = np.zeros((len(betas), len(alphas)))
    bar = tqdm(total=grid.size, desc=f"loss landscape, task {task}", unit="point", disable=not progress, leave=False)
    for row, beta in enumerate(betas):
        for col, alpha in enumerate(alphas):
            weights = {k: beta * previous[k] + alpha * optimum[k] for k in previous}
            total, count = 0.0, 0
            for inputs, labels in batches:
                features = functional_call(module, weights, (move_to(inputs, device),), strict=False)
                logits = features @ weight.T + bias
                total += float(F.cross_entropy(logits, labels.to(device), reduction="sum"))
                count += len(labels)
            grid[row, col] = total / count
            bar.update(1)
    bar.close()
    return {"run": str(run_dir), "method": results["method"], "benchmark": results["benchmark"],
            "seed": results["seed"], "task": task, "alpha_star": record["alpha"], "alphas": list(alphas),
            "betas": list(betas), "loss": grid.tolist(), "samples_per_task": samples_per_task,
            "evaluated_on": results.get("evaluated_on", "test")}


def plot_landscapes(grids: Sequence[dict[str, Any]], path: Path) -> None:
    """Contour plots side by side on one colour scale; α* on the convex line α + β = 1, θ̂_{t−1} and θ*_t marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low = min(float(np.min(g["loss"])) for g in grids)
    high = max(float(np.percentile(g["loss"], 90)) for g in grids)
    levels = np.linspace(low, max(high, low + 1e-6), 20)
    fig, axes = plt.subplots(1, len(grids), figsize=(5.2 * len(grids) + 1, 5.2), squeeze=False, layout="constrained")
    for ax, g in zip(axes[0], grids):
        alphas, betas, loss = np.array(g["alphas"]), np.array(g["betas"]), np.array(g["loss"])
        contour = ax.contourf(alphas, betas, np.clip(loss, None, levels[-1]), levels=levels, cmap="viridis_r")
        ax.contour(alphas, betas, loss, levels=levels[::3], colors="white", linewidths=0.5, alpha=0.6)
        line = np.linspace(max(alphas[0], 1 - betas[-1]), min(alphas[-1], 1 - betas[0]), 50)
        ax.plot(line, 1 - line, "w--", linewidth=1, label="α + β = 1 (convex merges)")
        ax.plot([0], [1], "o", color="orange", label="θ̂(t−1), before the task")
        ax.plot([1], [0], "s", color="red", label="θ*(t), after training")
        star = g["alpha_star"]
        if isinstance(star, (int, float)):
            ax.plot([star], [1 - star], "*", color="white", markersize=14, markeredgecolor="black",
                    label=f"merged, α* = {star:.3f}")
        ax.set_xlabel("α (weight of θ*(t))")
        ax.set_ylabel("β (weight of θ̂(t−1))")
        ax.set_title(f"{g['method']}, task {g['task']} (seed {g['seed']})")
        ax.legend(fontsize=7, loc="lower left", framealpha=0.7)
    fig.colorbar(contour, ax=axes[0].tolist(), label=f"mean loss, tasks 1..t ({grids[0]['evaluated_on']})")
    fig.suptitle(f"{grids[0]['benchmark']}: loss at θ = β·θ̂(t−1) + α·θ*(t), merge-space weights")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def run_landscape(run_dirs: Sequence[str | Path], task: int, grid_size: int, alpha_range: tuple[float, float],
                  beta_range: tuple[float, float], samples_per_task: int, out: str | Path | None,
                  progress: bool = True) -> tuple[Path, Path]:
    """Compute each run's grid and write `<out>.png` and `<out>.json` (default: the first run's folder,
    landscape-task<t>); returns both paths."""
    if grid_size < 2:
        raise UserError(f"--grid must be >= 2, got {grid_size}")
    if samples_per_task < 1:
        raise UserError(f"--samples must be >= 1, got {samples_per_task}")
    alphas = np.linspace(*alpha_range, grid_size).tolist()
    betas = np.linspace(*beta_range, grid_size).tolist()
    stem = Path(out) if out is not None else Path(run_dirs[0]) / f"landscape-task{task}"
    if stem.suffix in (".png", ".json"):
        stem = stem.with_suffix("")
    if not stem.parent.is_dir():
        raise UserError(f"folder '{stem.parent}' does not exist; create it or choose another --out")
    grids = [loss_grid(d, task, alphas, betas, samples_per_task, progress) for d in run_dirs]
    png, data = stem.with_suffix(".png"), stem.with_suffix(".json")
    atomic_write_json(data, {"task": task, "grids": grids})
    plot_landscapes(grids, png)
    return png, data
