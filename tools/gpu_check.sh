#!/usr/bin/env bash
# The GPU check (tools/bench/gpu_check.py): on a machine with an NVIDIA GPU, sets up a CUDA JAX
# environment (and, unless EIGEN_VLLM_PYTHON names one, a GPU vLLM environment), runs HF parity,
# the attention kernels (cuDNN included), a learner step and the sampler with MFU against the
# chip's bf16 peak, and vLLM weight sync, then records the figures in BENCHMARKS.md ("GPU check").
# About 10 minutes on one H100/H200 with a warm pip cache (the installs are most of it).
#   bash tools/gpu_check.sh
# Without a GPU it runs the same checks on CPU at tiny sizes (the script's own test) and records
# nothing. Env: EIGEN_GPU_VENV (default .venv-gpu), EIGEN_VLLM_PYTHON, PYTHON (a Python 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "[gpu_check] no NVIDIA GPU here: the CPU path (tiny sizes, nothing recorded)" >&2
  py="${EIGEN_PYTHON:-.venv/bin/python}"
  JAX_PLATFORMS=cpu exec "$py" tools/bench/gpu_check.py --quick
fi
nvidia-smi -L >&2
venv="${EIGEN_GPU_VENV:-.venv-gpu}"
want="$(sha256sum pyproject.toml | cut -c1-16) jax[cuda12]==0.10.2"
if [ "$(cat "$venv/.eigen-gpu-setup" 2>/dev/null || true)" != "$want" ]; then
  [ -x "$venv/bin/python" ] || "${PYTHON:-python3.11}" -m venv "$venv"
  echo "[gpu_check] installing the project with CUDA JAX into $venv" >&2
  # torch only serves the parity reference: its CPU build, from PyTorch's CPU index
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    --extra-index-url https://download.pytorch.org/whl/cpu -e ".[jax,hf]" "jax[cuda12]==0.10.2"
  echo "$want" > "$venv/.eigen-gpu-setup"
fi
vllm="${EIGEN_VLLM_PYTHON:-}"
if [ -z "$vllm" ]; then
  vvenv=.venv-vllm-gpu
  if [ ! -x "$vvenv/bin/vllm" ]; then
    echo "[gpu_check] installing GPU vLLM into $vvenv" >&2
    [ -x "$vvenv/bin/python" ] || "${PYTHON:-python3.11}" -m venv "$vvenv"
    "$vvenv/bin/python" -m pip install -q --disable-pip-version-check "vllm==0.32.0" || {
      echo "[gpu_check] GPU vLLM did not install: the weight-sync check is skipped" >&2; vvenv=""; }
  fi
  vllm="${vvenv:+$(pwd)/$vvenv/bin/python}"
fi
args=(--write)
[ -n "$vllm" ] && args+=(--vllm-python "$vllm")
exec "$venv/bin/python" tools/bench/gpu_check.py "${args[@]}"
