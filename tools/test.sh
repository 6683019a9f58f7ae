#!/usr/bin/env bash
# The test command (README; .ci/run calls this very script). Sets up .venv if needed, then runs
# pytest. Extra arguments go to pytest, e.g. `bash tools/test.sh -m slow` or `-k pool`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh jax,hf,tau2,dev
exec "${EIGEN_VENV:-.venv}/bin/python" -m pytest -n 2 "$@"
