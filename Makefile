.PHONY: setup test test-all demo demo-wordnet

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q

test-all: setup
	.venv/bin/python -m pytest -q -m "slow or not slow"

# P&M where its premise holds (docs/results.md): langid, 5 tasks of 4 languages, 100 training words per language,
# the paper's pm-lora, our pm-lora-plus and sequential LoRA, seed 0 (timed from a fresh clone in docs/results.md).
demo: setup
	.venv/bin/perturbmerge data fetch langid-words
	.venv/bin/perturbmerge compare --benchmark langid --tasks 5 --methods pm-lora,pm-lora-plus,seq-lora --seeds 0 \
	    --set data.train_per_class=100 --out runs/demo

# The earlier default: wordnet, 5 tasks, pm-lora / merge-lora / seq-lora (adapting the backbone is worth little there).
demo-wordnet: setup
	.venv/bin/perturbmerge data fetch wordnet
	.venv/bin/perturbmerge run --out runs/default
