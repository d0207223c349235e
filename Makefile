.PHONY: setup test test-quick test-all demo demo-llm demo-wordnet bench

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q

test-quick: setup
	.venv/bin/python -m pytest -q -m "not e2e and not slow"

test-all: setup
	.venv/bin/python -m pytest -q -m "slow or not slow"

# P&M where its premise holds (docs/results.md): langid, 10 tasks of 2 languages, cut to 50 training and 50 test
# words per language so that it fits 10 minutes from a fresh clone; the paper's pm-lora, our pm-lora-plus and
# sequential LoRA, seed 0 (timed in docs/results.md).
demo: setup
	.venv/bin/perturbmerge data fetch langid-words
	.venv/bin/perturbmerge compare --benchmark langid --methods pm-lora,pm-lora-plus,seq-lora,frozen-lda --seeds 0 \
	    --set data.train_per_class=50 data.test_per_class=50 --out runs/demo

# P&M on a decoder language model (issue 49): a cut of the `polyglot` benchmark (docs/data.md) — SmolLM2-135M learns
# numbers as words in English, then translates software messages into German, then numbers as words in German (64
# training and 25 test pairs a task, 4 epochs); pm-lora vs seq-lora, seed 0 → runs/demo-llm/summary.md (score
# matrix printed, α, general-ability NLL). A demo, not a result: the cut was not selected on any split.
demo-llm: setup
	.venv/bin/perturbmerge data fetch smollm2 polyglot-catalogs
	.venv/bin/perturbmerge compare --benchmark polyglot --tasks 3 --methods pm-lora,seq-lora --seeds 0 \
	    --set data.train_per_task=64 data.test_per_task=25 epochs=4 --out runs/demo-llm

# The earlier default: wordnet, 5 tasks, pm-lora / merge-lora / seq-lora (adapting the backbone is worth little there).
demo-wordnet: setup
	.venv/bin/perturbmerge data fetch wordnet
	.venv/bin/perturbmerge run --out runs/default

# Speed of P&M's parts against their floors (docs/performance.md); run it on an otherwise idle machine.
bench: setup
	.venv/bin/perturbmerge data fetch wordnet
	OMP_NUM_THREADS=2 .venv/bin/python -m perturbmerge.bench --out benchmarks/results/bench-cpu.json
