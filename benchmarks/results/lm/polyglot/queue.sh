#!/usr/bin/env bash
# The queue of PLAN.md beside this file: seed-major; in each seed the methods in the plan's order (zero-shot only at
# seed 0: greedy decoding of the untouched model does not depend on the seed); one torch thread per run.
# Usage (from a clean checkout of a committed tree): bash benchmarks/results/lm/polyglot/queue.sh SEEDS
# e.g. `... queue.sh 0 1 2`. A finished run (results.json) is skipped, an interrupted one resumed from its
# checkpoint (bit-identical), so the queue can be stopped and started again at any time.
set -uo pipefail
cd "$(dirname "$0")/../../../.."
PM=${PERTURBMERGE:-.venv/bin/perturbmerge}
OUT=benchmarks/results/lm/polyglot/runs
METHODS=${METHODS:-"zero-shot seq-lora pm-lora merge-lora avg-lora o-lora task-arithmetic ties magmax joint"}
for seed in "$@"; do
  for method in $METHODS; do
    if [ "$method" = zero-shot ] && [ "$seed" != 0 ]; then continue; fi
    run="$OUT/$method-seed$seed"
    if [ -f "$run/results.json" ]; then continue; fi
    if [ -f "$run/run_config.json" ]; then
      OMP_NUM_THREADS=1 "$PM" run --resume "$run" --quiet || exit 1
    else
      OMP_NUM_THREADS=1 "$PM" run --benchmark polyglot --method "$method" --seed "$seed" --out "$run" --quiet || exit 1
    fi
  done
done
