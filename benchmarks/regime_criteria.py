"""The criteria of a benchmark "in the paper's regime" (docs/results.md, "Where P&M's premise holds"), from run
folders and head-drift diagnostics of the baselines only (no P&M result decides):

  1. adaptation is worth a lot: joint (its own head, or LDA on the jointly trained backbone) ≥ 10 points above
     frozen-lda, final Acc;
  2. sequential LoRA forgets in the backbone: LDA with statistics recomputed on all seen data (the diagnostic's
     `oracle`) on the seq-lora backbone ≥ 10 points below the same on the joint backbone;
  3. ≥ 10 tasks, ≥ 1,000 training examples per task, one method-run ≤ 15 minutes.

    python benchmarks/regime_criteria.py --name "langid, k,v, lr 1e-3" --frozen RUN --joint RUN \\
        [--joint-diag FILE.jsonl] [--seq RUN] [--seq-diag FILE.jsonl]

prints one markdown row (the columns of `HEADER`; `--header` prints the header first); a criterion whose runs are not given is shown as "–".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HEADER = ("| candidate | tasks | frozen-lda | joint | LDA on joint | 1: gap ≥ 10 | seq-lora | "
          "oracle LDA on seq-lora | 2: gap ≥ 10 | slowest run (s) |\n|---|---|---|---|---|---|---|---|---|---|")


def results(run: str | None) -> dict | None:
    return None if run is None else json.loads((Path(run) / "results.json").read_text())


def final_row(path: str | None, column: str) -> float | None:
    """The diagnostic's last task: `oracle` (LDA, statistics recomputed on all seen data) or `method` (the run's head)."""
    if path is None:
        return None
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return rows[-1][column]


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def verdict(gap: float | None) -> str:
    return "–" if gap is None else f"{gap:+.2f} {'yes' if gap >= 10 else 'no'}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--frozen", required=True, help="a frozen-lda run folder")
    parser.add_argument("--joint", help="a joint run folder (else the joint diagnostic's own head is used)")
    parser.add_argument("--joint-diag", help="diagnose_head_drift.py output of the joint run")
    parser.add_argument("--seq", help="a seq-lora run folder (else the seq-lora diagnostic's own head is used)")
    parser.add_argument("--seq-diag", help="diagnose_head_drift.py output of the seq-lora run")
    parser.add_argument("--header", action="store_true", help="print the table header first")
    args = parser.parse_args(argv)
    if args.header:
        print(HEADER)
    if args.joint is None and args.joint_diag is None:
        parser.error("give --joint or --joint-diag")
    frozen, joint, seq = results(args.frozen), results(args.joint), results(args.seq)
    joint_lda, seq_oracle = final_row(args.joint_diag, "oracle"), final_row(args.seq_diag, "oracle")
    joint_acc = joint["final_acc"] if joint is not None else final_row(args.joint_diag, "method")
    seq_acc = seq["final_acc"] if seq is not None else final_row(args.seq_diag, "method")
    best_joint = max(v for v in (joint_acc, joint_lda) if v is not None)
    gap_1 = best_joint - frozen["final_acc"]
    gap_2 = None if joint_lda is None or seq_oracle is None else joint_lda - seq_oracle
    runs = [r for r in (frozen, joint, seq) if r is not None]
    print(f"| {args.name} | {frozen['num_tasks']} | "
          f"{fmt(frozen['final_acc'])} | {fmt(joint_acc)} | {fmt(joint_lda)} | {verdict(gap_1)} | "
          f"{fmt(seq_acc)} | {fmt(seq_oracle)} | {verdict(gap_2)} | "
          f"{max(r['wall_time_s'] for r in runs):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
