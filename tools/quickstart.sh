#!/usr/bin/env bash
# The quickstart (README): set up .venv if needed, then run the whole loop on CPU.
# Extra arguments are config overrides, e.g. `bash tools/quickstart.sh procedural.num_tasks=100`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh jax
exec "${EIGEN_VENV:-.venv}/bin/python" -m eigen_jax.train --config configs/quickstart.yaml "$@"
