"""A live task pool: GRPO trains on tasks a concurrent synth run publishes while it runs, and a
run killed and resumed meanwhile neither repeats nor skips a task."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eigen_core.pool import TaskPool

ROOT = Path(__file__).parents[1]


def _grpo_cmd(out: Path, *extra: str) -> list[str]:
    args = [
        f"run.out_dir={out}", f"pool.dir={out}/pool", "run.progress=false", "run.stages=[grpo]",
        "episode.user=scripted", "episode.turn_tokens=24", "episode.max_len=512", "episode.max_steps=4",
        "grpo.steps=14", "grpo.tasks_per_step=2", "grpo.group_size=2", "grpo.filter_groups=false",
        "grpo.episodes.max_staleness=0", "grpo.episodes.refresh_every=1", "checkpoint.every=1",
        "grpo.heldout.every=null",
    ]  # fmt: skip
    return [sys.executable, "-m", "eigen_jax.train", "--config", "configs/quickstart.yaml", *args, *extra]


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait(proc: subprocess.Popen, ready, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"GRPO ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_grpo_trains_on_tasks_published_while_it_runs_and_resumes_without_repeats_or_gaps(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    pool, out = tmp_path / "pool", tmp_path
    synth = [sys.executable, "-m", "synth.procedural", "--config", "configs/quickstart.yaml",
             "--out", str(pool), "--no-progress"]  # fmt: skip
    subprocess.run([*synth, "--num-tasks", "16"], cwd=ROOT, env=env, check=True, capture_output=True)
    before = set(TaskPool(pool).ids("train"))
    proc = subprocess.Popen(
        _grpo_cmd(out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        metrics, groups = out / "grpo/metrics.jsonl", out / "grpo/groups.jsonl"
        _wait(proc, lambda: len(_records(metrics)) >= 1, "its first step")
        # the synth run publishes tasks 16..39 (ids already in the pool are skipped) mid-run
        subprocess.run([*synth, "--num-tasks", "40"], cwd=ROOT, env=env, check=True, capture_output=True)
        new = set(TaskPool(pool).ids("train")) - before
        assert new

        def trained_a_new_one() -> bool:
            return any(r.get("task_id") in new for r in _records(groups))

        _wait(proc, trained_a_new_one, "a group of a task published after it started")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    subprocess.run(
        _grpo_cmd(out, "--resume"), cwd=ROOT, env=env, check=True, capture_output=True, timeout=900
    )

    steps = {r["step"]: r["groups"] for r in _records(metrics)}  # a resumed run rewrites later steps
    assert sorted(steps) == list(range(1, 15))
    trained = [i for s in sorted(steps) for i in steps[s]]
    assert trained == list(range(28))  # every group index once, in order: none repeated or skipped
    log = _records(groups)
    assert sum("session" in r for r in log) == 2
    task_of: dict[int, set[str]] = {}
    for r in log:
        if "index" in r:
            task_of.setdefault(r["index"], set()).add(r["task_id"])
    assert all(len(t) == 1 for t in task_of.values())  # a rerun group plays the task it played
    tasks = [next(iter(task_of[i])) for i in trained]
    assert len(set(tasks)) == len(tasks)  # fewer groups than tasks: no task twice, none skipped
    assert set(tasks) & new and set(tasks) - new
