"""Numbers from `perturbmerge landscape` JSON files, as a markdown table: per run, the loss at θ̂_{t−1} (α=0, β=1),
at θ*_t (α=1, β=0), the lowest loss on the convex line α + β = 1 and where, the run's α*, and the share of the
(α, β) grid whose loss is within 25 % of the grid's minimum (a width of the low-loss region).

    python benchmarks/landscape_summary.py DIR/landscape-task3.json DIR/landscape-task10.json
"""
from __future__ import annotations

import json
import sys

import numpy as np


def summarise(grid: dict) -> dict:
    loss = np.array(grid["loss"])
    alphas, betas = np.array(grid["alphas"]), np.array(grid["betas"])
    def at(alpha: float, beta: float) -> float:
        return float(loss[int(np.argmin(abs(betas - beta))), int(np.argmin(abs(alphas - alpha)))])
    line = [(a, float(loss[r, c])) for r, b in enumerate(betas) for c, a in enumerate(alphas) if abs(a + b - 1) < 1e-9]
    best_alpha, best = min(line, key=lambda p: p[1])
    return {"method": grid["method"], "task": grid["task"], "alpha_star": grid["alpha_star"],
            "previous": at(0.0, 1.0), "optimum": at(1.0, 0.0), "line_min": best, "line_argmin": best_alpha,
            "low_area": float((loss <= 1.25 * loss.min()).mean()), "grid_min": float(loss.min())}


if __name__ == "__main__":
    print("| task | method | α* | loss at θ̂_(t−1) | loss at θ*_t | lowest on α+β=1 (at α) | grid min | share within 25 % of min |")
    print("|---|---|---|---|---|---|---|---|")
    for path in sys.argv[1:]:
        for grid in json.load(open(path))["grids"]:
            s = summarise(grid)
            print(f"| {s['task']} | {s['method']} | {s['alpha_star']:.3f} | {s['previous']:.3f} | {s['optimum']:.3f} | "
                  f"{s['line_min']:.3f} ({s['line_argmin']:.2f}) | {s['grid_min']:.3f} | {100 * s['low_area']:.0f} % |")
