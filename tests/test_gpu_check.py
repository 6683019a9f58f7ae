"""tools/gpu_check.sh without a GPU: its CPU path runs every check of tools/bench/gpu_check.py at
tiny sizes (HF parity, the attention implementations, a learner step, the sampler) and records
nothing. The GPU path itself runs only where a GPU is (BENCHMARKS.md, "GPU check")."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_its_cpu_path_and_records_nothing(tmp_path):
    bin_dir = tmp_path / "bin"  # an nvidia-smi that finds no GPU, as on a machine without one
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    before = (ROOT / "BENCHMARKS.md").read_text()
    path = f"{bin_dir}:{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, "EIGEN_PYTHON": sys.executable, "XLA_FLAGS": ""}
    out = subprocess.run(
        ["bash", "tools/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no NVIDIA GPU here" in out.stderr
    report = json.loads(out.stdout)
    assert report["backend"] == "cpu" and report["hf_parity"]["ok"]
    assert report["attention"]["blockwise"]["ok"] and "cudnn" not in report["attention"]
    assert report["learner_step"]["tokens_per_s"] > 0 and report["sampler"]["decode_tokens_per_s"] > 0
    assert (ROOT / "BENCHMARKS.md").read_text() == before
