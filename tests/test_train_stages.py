"""``python -m eigen_jax.train`` with the learner stages: files, learning, and exact resume."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from eigen_core.configio import load_config
from eigen_jax.config import RunConfig
from eigen_jax.train import run

ROOT = Path(__file__).parents[1]
TOY_GRPO = (
    # The default tiny arch (16-dim heads), not the quickstart's 32: the toy's learning rate and
    # step count are calibrated on it.
    "model.arch.head_dim=16",
    "grpo.source=toy",
    "grpo.steps=40",
    "grpo.tasks_per_step=8",
    "grpo.group_size=8",
    "grpo.toy.max_new_tokens=1",
    "grpo.optim.lr=0.01",
    "grpo.filter_groups=false",
)


def _cfg(tmp: Path, *overrides: str) -> RunConfig:
    base = [
        f"run.out_dir={tmp}",
        f"pool.dir={tmp}/pool",
        "run.progress=false",
        "procedural.num_tasks=60",
        "sft_user.max_len=384",
        "sft_user.batch_size=8",
        "sft_user.eval_batches=1",
    ]
    return load_config(RunConfig, ROOT / "configs/quickstart.yaml", [*base, *overrides])


def _metrics(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_sft_user_and_grpo_write_metrics_checkpoints_and_hf(tmp_path):
    cfg = _cfg(
        tmp_path,
        "run.stages=[generate,sft_user,grpo]",
        "sft_user.steps=4",
        "sft_user.eval_every=2",
        "grpo.source=toy",
        "grpo.steps=3",
        "grpo.tasks_per_step=2",
        "checkpoint.every=2",
    )
    summary = run(cfg)
    sft = summary["sft_user"]
    assert sft["steps"] == 4 and sft["train_dialogues"] + sft["test_dialogues"] == 60
    rows = _metrics(tmp_path / "sft_user/metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "eval_loss" in rows[1] and rows[0]["tokens"] > 0
    assert all(100 < r["host_rss_mb"] < 2**20 for r in rows)  # a JAX process holds >100 MiB
    assert any((tmp_path / "sft_user/tb").iterdir())
    assert sorted(p.name for p in (tmp_path / "sft_user/checkpoints").iterdir() if p.name.isdigit()) == [
        "2",
        "4",
    ]
    assert (tmp_path / "sft_user/hf/config.json").exists() and (
        tmp_path / "sft_user/hf/tokenizer.json"
    ).exists()
    g = _metrics(tmp_path / "grpo/metrics.jsonl")
    assert [r["step"] for r in g] == [1, 2, 3]
    for key in ("reward_mean", "pass_rate", "filtered_group_frac", "staleness_mean", "tokens_per_s"):
        assert key in g[0]
    # a rerun with --resume skips finished stages
    again = run(cfg, resume=True)
    assert again["sft_user"] == sft


def test_a_run_reads_its_pool_and_writes_checkpoints_and_exports_where_it_is_told(tmp_path):
    """Pod storage: the pool on a tensorstore kvstore (``file://`` here, ``gs://`` on a pod),
    checkpoints under ``checkpoint.dir``, the HF export copied to ``checkpoint.export_to``."""
    from eigen_core.storage import open_store

    export = f"memory://export-{uuid.uuid4().hex}"
    cfg = _cfg(
        tmp_path / "run",
        f"pool.dir=file://{tmp_path}/bucket/pool",
        f"checkpoint.dir={tmp_path}/bucket/checkpoints",
        f"checkpoint.export_to={export}",
        "run.stages=[generate,sft_user]",
        "sft_user.steps=2",
        "checkpoint.every=1",
    )
    summary = run(cfg)
    assert (tmp_path / "bucket/pool/manifest.json").exists() and not (tmp_path / "run/pool").exists()
    saved = (tmp_path / "bucket/checkpoints/sft_user").iterdir()
    assert sorted(p.name for p in saved if p.name.isdigit()) == ["1", "2"]
    assert not (tmp_path / "run/sft_user/checkpoints").exists()
    store, hf = open_store(summary["sft_user"]["hf_copy"]), tmp_path / "run/sft_user/hf"
    assert summary["sft_user"]["hf_copy"] == f"{export}/sft_user/hf"
    local = sorted(p.relative_to(hf).as_posix() for p in hf.rglob("*") if p.is_file())
    assert store.keys("") == local and "model.safetensors" in local
    for key in local:
        assert store.read(key).data == (hf / key).read_bytes(), key


@pytest.mark.slow
def test_grpo_raises_reward_and_sft_lowers_held_out_loss(tmp_path):
    cfg = _cfg(
        tmp_path,
        "run.stages=[generate,sft_user,grpo]",
        "sft_user.steps=30",
        "sft_user.eval_every=10",
        *TOY_GRPO,
    )
    summary = run(cfg)
    rows = _metrics(tmp_path / "sft_user/metrics.jsonl")
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert evals[-1] < evals[0] - 0.5, evals
    passes = [r["pass_rate"] for r in _metrics(tmp_path / "grpo/metrics.jsonl")]
    first, last = sum(passes[:5]) / 5, sum(passes[-5:]) / 5
    assert first < 0.4 and last > first + 0.25, passes  # a random policy passes 1/4
    assert summary["grpo"]["last_pass_rate"] == passes[-1]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_losses(tmp_path):
    def cmd(out: Path, *extra: str) -> list[str]:
        args = [
            f"run.out_dir={out}",
            f"pool.dir={out}/pool",
            "run.progress=false",
            "procedural.num_tasks=60",
            "run.stages=[generate,sft_user]",
            "sft_user.steps=12",
            "sft_user.eval_every=4",
            "sft_user.max_len=384",
            "sft_user.eval_batches=1",
            "checkpoint.every=3",
        ]
        return [sys.executable, "-m", "eigen_jax.train", "--config", "configs/quickstart.yaml", *args, *extra]

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device: as a user's laptop run
    ref = tmp_path / "ref"
    subprocess.run(cmd(ref), cwd=ROOT, env=env, check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = killed / "sft_user/metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 7:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-way"
    assert not (killed / "sft_user/done.json").exists()
    subprocess.run(cmd(killed, "--resume"), cwd=ROOT, env=env, check=True, capture_output=True)
    a, b = _metrics(ref / "sft_user/metrics.jsonl"), _metrics(killed / "sft_user/metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 13))
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == rb["loss"] and ra.get("eval_loss") == rb.get("eval_loss"), (ra, rb)


def test_grpo_forking_tokens_train_on_the_highest_entropy_share(tmp_path):
    # 2 groups of 8 one-token samples; a group shares its prompt, so its 8 tokens share one
    # entropy: the top quarter (4 tokens) is the whole group with the higher entropy (ties kept).
    cfg = _cfg(
        tmp_path,
        "run.stages=[generate,grpo]",
        *TOY_GRPO,
        "grpo.steps=2",
        "grpo.tasks_per_step=2",
        "grpo.top_entropy_frac=0.25",
    )
    run(cfg)
    g = _metrics(tmp_path / "grpo/metrics.jsonl")
    assert [r["tokens"] for r in g] == [8, 8]
    assert all(0 < r["fork_entropy_min"] <= r["entropy_mean"] * 2 for r in g)
