"""Seconds to choose RanPAC's λ for one task: from the sums (eigendecomposition of the M × M Gram, `choose_ridge`)
against from the rows (eigendecomposition of the n × n kernel, `choose_ridge_from_rows`), on one torch thread as
in the benchmark queues. The rows are ReLU(F W_rand) of random features F ∈ R^{n×d} (d = 384 as all-MiniLM-L6-v2)
with C one-hot classes; n = 2000 is a langid task (2 languages × 1,000 training words). Repetitions are
interleaved (sums, rows, sums, rows, …) and medians reported; both paths must choose the same λ.

    python benchmarks/ranpac_ridge_speed.py --widths 2048,4096,8192 --repeats 3 \
        --out benchmarks/results/ranpac-ridge/ridge-speed-cpu.json
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="2048,4096,8192", help="projection widths M, comma-separated")
    parser.add_argument("--rows", type=int, default=2000, help="training rows n of the task")
    parser.add_argument("--classes", type=int, default=20, help="seen classes C (columns of Y)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from perturbmerge.io import atomic_write_json, machine_description, package_versions
    from perturbmerge.methods.ranpac import HELD_OUT_EVERY, choose_ridge, choose_ridge_from_rows

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(args.rows, 384, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, args.classes, (args.rows,), generator=generator)
    targets = torch.nn.functional.one_hot(labels, args.classes).double()
    held = (torch.arange(args.rows) % HELD_OUT_EVERY) == HELD_OUT_EVERY - 1
    rows = []
    for width in [int(w) for w in args.widths.split(",")]:
        hidden = torch.relu(features @ torch.randn(384, width, generator=generator, dtype=torch.float64))
        fit, out = (hidden[~held], targets[~held]), (hidden[held], targets[held])
        sums = ((fit[0].T @ fit[0], fit[0].T @ fit[1]), (out[0].T @ out[0], out[0].T @ out[1]), float(held.sum()))
        seconds: dict[str, list[float]] = {"sums": [], "rows": []}
        chosen: dict[str, set[float]] = {"sums": set(), "rows": set()}
        for _ in range(args.repeats):
            paths = (("sums", lambda: choose_ridge(*sums)), ("rows", lambda: choose_ridge_from_rows(fit, out)))
            for name, choose in paths:
                start = time.perf_counter()
                chosen[name].add(choose())
                seconds[name].append(time.perf_counter() - start)
        row = {"width": width, "rows": args.rows, "classes": args.classes,
               "seconds_from_sums": seconds["sums"], "seconds_from_rows": seconds["rows"],
               "median_from_sums": statistics.median(seconds["sums"]),
               "median_from_rows": statistics.median(seconds["rows"]),
               "lambda_from_sums": sorted(chosen["sums"]), "lambda_from_rows": sorted(chosen["rows"])}
        row["speedup"] = row["median_from_sums"] / row["median_from_rows"]
        rows.append(row)
        print(f"| {width} | {row['median_from_sums']:.2f} | {row['median_from_rows']:.2f} | {row['speedup']:.1f}× | "
              f"{row['lambda_from_sums']} / {row['lambda_from_rows']} |", flush=True)
        if chosen["sums"] != chosen["rows"]:
            print(f"error: the two paths chose different λ at M = {width}", file=sys.stderr)
            return 1
    atomic_write_json(args.out, {"command": "python " + shlex.join(sys.argv),
                                 "device": machine_description(), "threads": args.threads,
                                 "repeats": args.repeats, "results": rows, "versions": package_versions()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
