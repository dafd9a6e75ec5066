#!/usr/bin/env bash
# The second test environment: openMind 1.0.0 on the old stack it needs (transformers
# 4.45.2, peft 0.13, datasets 2.21, numpy<2), then the whole test suite in it. Here the
# npu backend's openMind path trains for real on the CPU (tests/unit/test_npu.py, tests/runs/test_npu_runs.py).
#   bash scripts/openmind-env.sh [VENV]        default VENV: .venv-openmind
set -euo pipefail
venv="${1:-.venv-openmind}"
python -m venv "$venv"
"$venv/bin/pip" install -q -c requirements/openmind.txt -r requirements/openmind.txt -e '.[dev]'
"$venv/bin/pip" install -q --no-deps --ignore-requires-python openmind==1.0.0 openmind-hub==0.9.1
"$venv/bin/python" -c "import openmind, transformers; print('openmind', openmind.__version__, 'transformers', transformers.__version__)"
"$venv/bin/python" -m pytest tests
