"""A 30-minute GRPO-on-episodes run (tiny model, embedded sampler, prefix cache on), sampled every
30 s: resident memory after warm-up grows < 5% (at the end of each step: ``soak_trend``), open
descriptors and threads do not grow, the prefix cache stays within its budget. By hand:
``bash tools/test.sh -m soak -s`` (minutes: ``EIGEN_SOAK_MINUTES``); the figures go to
RELIABILITY.md's soak section."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from soak_trend import trend

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.soak


def _sample(pid: int) -> dict:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "threads": int(status["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


@pytest.mark.timeout(0)  # the run is the point: pytest's 10-minute default does not apply
def test_thirty_minutes_of_grpo_do_not_leak(tmp_path):
    minutes = float(os.environ.get("EIGEN_SOAK_MINUTES", "30"))
    budget_mb = 64
    cmd = [
        sys.executable, "-m", "eigen_jax.train", "--config", "configs/quickstart.yaml",
        f"run.out_dir={tmp_path}/run", f"pool.dir={tmp_path}/run/pool", "run.progress=false",
        "procedural.num_tasks=200", "run.stages=[generate,grpo]", "grpo.steps=100000", "grpo.log_every=1",
        f"episode.prefix_cache_mb={budget_mb}", "checkpoint.every=20", "episode.user=scripted",
        "grpo.filter_groups=false", "grpo.heldout.every=null",
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    metrics = tmp_path / "run/grpo/metrics.jsonl"
    samples, t0 = [], time.monotonic()
    try:
        while time.monotonic() - t0 < minutes * 60:
            time.sleep(30 if minutes >= 5 else 10)
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            programs = json.loads(lines[-1]).get("compiled_programs", -1) if lines else -1
            samples.append(
                {"minute": round((time.monotonic() - t0) / 60, 1), "steps": len(lines), **_sample(proc.pid),
                 "programs": programs}
            )  # fmt: skip
            print(json.dumps(samples[-1]), flush=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    (ROOT / "runs").mkdir(exist_ok=True)
    (ROOT / "runs/soak.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    kept = ("step", "time", "host_rss_mb", "compiled_programs", "prefix_cache_mb")
    (ROOT / "runs/soak_steps.jsonl").write_text(
        "".join(json.dumps({k: r[k] for k in kept if k in r}) + "\n" for r in rows)
    )
    t = trend(samples, rows)
    print(json.dumps({**t, "steps": rows[-1]["step"] if rows else 0}))
    assert t["warm_samples"] >= 3 and t["rss_growth"] < 0.05, samples
    assert t["fds"][1] <= t["fds"][0] and t["threads"][1] <= t["threads"][0], samples
    assert max(r.get("prefix_cache_mb", 0) for r in rows) <= budget_mb
