.PHONY: setup test test-all demo

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q

test-all: setup
	.venv/bin/python -m pytest -q -m "slow or not slow"

demo: setup
	.venv/bin/perturbmerge data fetch wordnet
	.venv/bin/perturbmerge run --out runs/default
