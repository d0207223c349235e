#!/usr/bin/env bash
# The queue of PLAN.md beside this file: seed-major, seq-lora, merge-lora, pm-lora; one torch thread per run.
# Usage (from a clean checkout of a committed tree): bash benchmarks/results/regime/langid-10-seeds/queue.sh SEEDS
# e.g. `... queue.sh 0 1 2 3`. A finished run (results.json) is skipped, an interrupted one resumed from its
# checkpoint (bit-identical), so the queue can be stopped and started again at any time.
set -uo pipefail
cd "$(dirname "$0")/../../../.."
PM=${PERTURBMERGE:-.venv/bin/perturbmerge}
OUT=benchmarks/results/regime/langid-10-seeds/runs
for seed in "$@"; do
  for method in seq-lora merge-lora pm-lora; do
    run="$OUT/$method-seed$seed"
    if [ -f "$run/results.json" ]; then continue; fi
    if [ -f "$run/run_config.json" ]; then
      OMP_NUM_THREADS=1 "$PM" run --resume "$run" --quiet || exit 1
    else
      OMP_NUM_THREADS=1 "$PM" run --benchmark langid --method "$method" --seed "$seed" --out "$run" --quiet || exit 1
    fi
  done
done
