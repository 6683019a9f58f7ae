#!/usr/bin/env bash
# libtpu (the `tpu` extra's pin) in a directory of its own, for the tests of eigen_jax.plan on TPU
# topologies: on a CPU machine libtpu is a compile-only client, and kept out of .venv it adds no
# start-up probe to every other JAX process.
#   bash tools/setup_libtpu.sh     -> prints the directory to put on PYTHONPATH (last line)
# Env: EIGEN_VENV (the venv whose pip installs it, default .venv), EIGEN_LIBTPU_DIR (default .libtpu).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${EIGEN_LIBTPU_DIR:-.libtpu}"
want="$(grep -o '"libtpu==[^"]*"' pyproject.toml | tr -d '"')"
stamp="$dir/.eigen-libtpu-setup"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing $want into $dir" >&2
  "${EIGEN_VENV:-.venv}/bin/python" -m pip install -q --disable-pip-version-check --no-deps --target "$dir" "$want"
  echo "$want" > "$stamp"
fi
echo "$(cd "$dir" && pwd)"
