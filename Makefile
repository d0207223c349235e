.PHONY: setup test test-all demo demo-langid

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q

test-all: setup
	.venv/bin/python -m pytest -q -m "slow or not slow"

demo: setup
	.venv/bin/perturbmerge data fetch wordnet
	.venv/bin/perturbmerge run --out runs/default

# P&M where its premise holds (docs/results.md): langid, 5 tasks of 4 languages, 100 training words per language,
# pm-lora, pm-lora-plus and seq-lora, seed 0. Not yet timed from a fresh clone (the full benchmark: ~10 min/method).
demo-langid: setup
	.venv/bin/perturbmerge data fetch langid-words
	.venv/bin/perturbmerge compare --benchmark langid --tasks 5 --methods pm-lora,pm-lora-plus,seq-lora --seeds 0 \
	    --set data.train_per_class=100 --out runs/demo-langid
