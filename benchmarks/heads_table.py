"""The table of docs/results.md's "strongest rehearsal-free baselines" section, from committed run folders (no training):

    .venv/bin/python benchmarks/heads_table.py

Per benchmark (10 tasks; digits-domains its 3 domains; test split): final Acc of every method with a run there, as
the mean ± sample std over seeds 0, 1, 2 where all three ran and as seed 0's value, marked "(1 seed)", where only it
ran; then, per statistics head, the same head on the frozen backbone vs on P&M's merged backbone (final Acc,
forgetting, plasticity), averaged over the seeds both sides ran; then every method minus seq-lora and the pairs the
README states, paired over seeds 0, 1, 2 with the 95 % t-interval (stats.py); then the validation sweep
(benchmarks/results/heads/sweep/PLAN.md): every candidate's mean ± std validation final Acc over seeds 0, 1, the value
the pre-registered rule selects, and its test cell.
"""
from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean, stdev

from sweep_select import select, value_text

ROOT = Path(__file__).resolve().parent / "results"
FOLDERS = {  # benchmark -> folders whose runs/ hold its test-split runs
    "langid-10": ["regime/langid-10-test", "heads/langid-10"],
    "wordnet-10": ["long/wordnet-10", "heads/wordnet-10"],
    "mnist-fashion-10": ["long/mnist-fashion-10", "heads/mnist-fashion-10"],
    "digits-domains-3": ["heads/digits-domains-3"],
    "glyphs-10": ["heads/glyphs-10"],
}
METHODS = ["seq-lora", "pm-lora", "pm-lora-plus", "frozen-lda", "ranpac", "pm-lora-ranpac", "fecam", "pm-lora-fecam",
           "slca", "pm-lora-slca", "inflora", "sd-lora", "o-lora", "joint"]
P_AND_M = {"pm-lora", "pm-lora-plus", "pm-lora-ranpac", "pm-lora-fecam", "pm-lora-slca"}


def runs(benchmark: str) -> dict[str, dict[int, dict]]:
    found: dict[str, dict[int, dict]] = {}
    for folder in FOLDERS[benchmark]:
        for path in sorted((ROOT / folder / "runs").glob("*-seed*/results.json")):
            method, seed = path.parent.name.rsplit("-seed", 1)
            found.setdefault(method, {})[int(seed)] = json.loads(path.read_text())
    return found


def forgetting_and_plasticity(result: dict) -> tuple[float, float]:
    matrix = result["accuracy_matrix"]
    last = len(matrix) - 1
    forgetting = fmean(max(matrix[t][i] for t in range(i, last)) - matrix[last][i] for i in range(last))
    return forgetting, fmean(matrix[t][t] for t in range(len(matrix)))


SEEDS = (0, 1, 2)


def cell(per_seed: dict[int, dict] | None) -> str:
    if not per_seed or 0 not in per_seed:
        return "not run"
    if all(seed in per_seed for seed in SEEDS):
        final = [per_seed[seed]["acc_all_seen"][-1] for seed in SEEDS]
        return f"{fmean(final):.2f} ± {stdev(final):.2f}"
    return f"{per_seed[0]['acc_all_seen'][-1]:.2f} (1 seed)"


def main() -> None:
    found = {benchmark: runs(benchmark) for benchmark in FOLDERS}
    print("| method | " + " | ".join(FOLDERS) + " |")
    print("|---|" + "---|" * len(FOLDERS))
    for method in METHODS:
        name = f"`{method}`" + (" (P&M)" if method in P_AND_M else "") + (" (not continual)" if method == "joint" else "")
        print(f"| {name} | " + " | ".join(cell(found[b].get(method)) for b in FOLDERS) + " |")
    print()
    print("| benchmark | head | seeds | frozen backbone: final / forgetting / plasticity | P&M's merged backbone: final / "
          "forgetting / plasticity | final: merged − frozen, paired over seeds |")
    print("|---|---|---|---|---|---|")
    for benchmark in FOLDERS:
        for head in ("ranpac", "fecam", "lda"):
            frozen = found[benchmark].get("frozen-lda" if head == "lda" else head, {})
            merged = found[benchmark].get("pm-lora-plus" if head == "lda" else f"pm-lora-{head}", {})
            seeds = [seed for seed in SEEDS if seed in frozen and seed in merged]
            parts = []
            for per_seed in (frozen, merged):
                if not seeds:
                    parts.append("not run")
                    continue
                measured = [(r["acc_all_seen"][-1], *forgetting_and_plasticity(r)) for r in (per_seed[s] for s in seeds)]
                parts.append(" / ".join(f"{fmean(column):.2f}" for column in zip(*measured)))
            differences = [merged[s]["acc_all_seen"][-1] - frozen[s]["acc_all_seen"][-1] for s in seeds]
            parts.append("not run" if not seeds else f"{fmean(differences):+.2f}"
                         + (f" ± {stdev(differences):.2f}" if len(seeds) > 1 else ""))
            name = head if head != "lda" else "lda (pm-lora-plus: + drift, anchor, ensemble)"
            print(f"| {benchmark} | {name} | {len(seeds)} | " + " | ".join(parts) + " |")
    print()
    paired_table(found)
    print()
    sweep_table()


# Comparisons the README states, besides every method against seq-lora: (benchmark, method, reference)
NAMED_PAIRS = [("langid-10", "merge-lora", "seq-lora"), ("langid-10", "pm-lora", "merge-lora"), ("langid-10", "pm-lora-plus", "frozen-lda"),
               ("wordnet-10", "pm-lora-ranpac", "pm-lora-plus"), ("wordnet-10", "pm-lora-slca", "frozen-lda"),
               ("glyphs-10", "ranpac", "joint"), ("digits-domains-3", "frozen-lda", "joint")]


def paired_cell(per_seed: dict[int, dict] | None, reference: dict[int, dict] | None) -> str:
    """Mean paired final Acc difference over seeds 0, 1, 2 with its 95 % t-interval (stats.py)."""
    from perturbmerge.stats import bracket_text

    if not per_seed or not reference or not all(s in per_seed and s in reference for s in SEEDS):
        return "–"
    differences = [per_seed[s]["acc_all_seen"][-1] - reference[s]["acc_all_seen"][-1] for s in SEEDS]
    return bracket_text(differences)


def paired_table(found: dict[str, dict[str, dict[int, dict]]]) -> None:
    """Every method minus seq-lora, paired over seeds 0, 1, 2, with the 95 % t-interval; then the named pairs."""
    print("| method − `seq-lora` | " + " | ".join(FOLDERS) + " |")
    print("|---|" + "---|" * len(FOLDERS))
    for method in METHODS[1:]:
        print(f"| `{method}` | " + " | ".join(paired_cell(found[b].get(method), found[b].get("seq-lora"))
                                            for b in FOLDERS) + " |")
    print()
    print("| benchmark | comparison | final Acc difference [95 % t-interval], seeds 0, 1, 2 |")
    print("|---|---|---|")
    for benchmark, method, reference in NAMED_PAIRS:
        cell_text = paired_cell(found[benchmark].get(method), found[benchmark].get(reference))
        print(f"| {benchmark} | `{method}` − `{reference}` | {cell_text} |")


SWEPT = [  # (method, key, registered default as the sweep writes it) — benchmarks/results/heads/sweep/PLAN.md
    ("ranpac", "head.rp_dim", "2048"), ("pm-lora-ranpac", "head.rp_dim", "2048"),
    ("slca", "head.align_epochs", "5"), ("pm-lora-slca", "head.align_epochs", "5"),
    ("inflora", "continual_lora.inflora_threshold", "0.95"), ("sd-lora", "lr", "0.001"),
    ("o-lora", "continual_lora.olora_orthogonal", "0.5"),
]


def sweep_table() -> None:
    print("| benchmark | method | key | validation final Acc per candidate (seeds 0, 1) | selected | test, 3 seeds |")
    print("|---|---|---|---|---|---|")
    for benchmark in FOLDERS:
        for method, key, default in SWEPT:
            folder = ROOT / "heads" / "sweep" / f"{benchmark}-{method}"
            if not (folder / "sweep.json").is_file():
                print(f"| {benchmark} | `{method}` | `{key}` | not run | | |")
                continue
            summary = json.loads((folder / "sweep.json").read_text())
            winner, _ = select(summary, method, key, default)
            candidates = []
            for point in summary["points"]:
                text = value_text(point["assignment"][key])
                stats = point["methods"][method]["final_acc"]
                mark = "**" if text == winner else ""
                candidates.append(f"{mark}{text}: {stats['mean']:.2f} ± {stats['std']:.2f}{mark}")
            if winner == default:
                test = "the default's cell above"
            else:
                tuned = {int(p.parent.name.rsplit("-seed", 1)[1]): json.loads(p.read_text())
                         for p in sorted(folder.with_name(folder.name + "-test").glob("runs/*-seed*/results.json"))}
                test = cell(tuned)
            print(f"| {benchmark} | `{method}` | `{key}` | " + "; ".join(candidates) + f" | {winner} | {test} |")


if __name__ == "__main__":
    main()
