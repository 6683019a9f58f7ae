"""GRPO on multi-turn episodes: the pieces (batches, seeds, task order, filtering) and the stage."""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from eigen_core.configio import load_config
from eigen_core.contracts import Message, Termination, Trajectory
from eigen_jax.config import RunConfig
from eigen_jax.stages.grpo_episodes import Group, _keep_fn, episode_batch, episode_seed
from eigen_jax.train import run

ROOT = Path(__file__).parents[1]


def _traj(tokens, mask, lps, reward=0.0):
    return Trajectory(
        task_id="t",
        messages=[Message(role="user", content="hi")],
        tokens=tokens,
        loss_mask=mask,
        behaviour_logprobs=lps,
        versions=[0 if m else -1 for m in mask],
        reward=reward,
        termination=Termination.USER_STOP,
    )


def test_episode_batch_keeps_the_transcript_token_for_token():
    a = _traj([5, 6, 7, 8], [0, 0, 1, 1], [0.0, 0.0, -0.5, -0.25])
    b = _traj([5, 9], [0, 1], [0.0, -1.0])
    out = episode_batch([a, b], np.asarray([1.0, -1.0]), 6, pad_id=0)
    assert out["tokens"].tolist() == [[5, 6, 7, 8, 0, 0], [5, 9, 0, 0, 0, 0]]
    assert out["attn_mask"].sum(1).tolist() == [4, 2]
    assert out["loss_mask"].tolist() == [[0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0]]
    np.testing.assert_array_equal(out["behaviour_logp"][0, :4], [0, 0, -0.5, -0.25])
    assert out["advantages"].tolist() == [1.0, -1.0]
    cut = episode_batch([a], np.zeros(1), 3, pad_id=0)  # longer transcripts are cut, not dropped
    assert cut["tokens"].tolist() == [[5, 6, 7]] and cut["loss_mask"].tolist() == [[0, 0, 1]]


def test_episode_seeds_differ_per_group_and_sample_and_repeat():
    seeds = {episode_seed(0, i, j) for i in range(20) for j in range(8)}
    assert len(seeds) == 160 and episode_seed(0, 3, 1) == episode_seed(0, 3, 1)


def test_filtering_drops_uninformative_groups_and_gives_up_after_a_streak():
    cfg = RunConfig.model_validate({"grpo": {"episodes": {"max_filtered_in_a_row": 3}}})
    keep = _keep_fn(cfg.grpo)
    same = Group(0, "t", [_traj([1], [0], [0.0], 0.0)] * 2)
    mixed = Group(1, "t", [_traj([1], [0], [0.0], 0.0), _traj([1], [0], [0.0], 1.0)])
    assert keep(mixed) and not keep(same) and not keep(same) and keep(mixed)  # a streak resets
    assert not keep(same) and not keep(same)
    with pytest.raises(RuntimeError, match="max_filtered_in_a_row"):
        keep(same)


def test_action_credit_shapes_training_rewards_only():
    fail, win = _traj([1], [0], [0.0], 0.0), _traj([1], [0], [0.0], 1.0)
    group = Group(0, "t", [fail, fail, win], credit=[-1.0, 0.5, 1.0])
    assert group.rewards.tolist() == [0.0, 0.0, 1.0]  # what pass rates count
    assert group.train_rewards(0.0).tolist() == [0.0, 0.0, 1.0]
    assert group.train_rewards(0.5).tolist() == [-0.5, 0.25, 1.0]
    # two failures with different credit carry signal once shaping is on
    cfg = RunConfig.model_validate({"grpo": {"episodes": {"action_credit": 0.5}}})
    assert _keep_fn(cfg.grpo)(Group(1, "t", [fail, fail], credit=[0.0, 1.0]))
    assert not _keep_fn(RunConfig().grpo)(Group(1, "t", [fail, fail], credit=[0.0, 1.0]))


def _cfg(tmp: Path, *overrides: str) -> RunConfig:
    base = [
        f"run.out_dir={tmp}",
        f"pool.dir={tmp}/pool",
        "run.progress=false",
        "procedural.num_tasks=40",
        "run.stages=[generate,grpo]",
        "episode.user=scripted",
        "episode.turn_tokens=24",
        "episode.max_len=512",
        "episode.max_steps=4",
        "grpo.steps=3",
        "grpo.tasks_per_step=2",
        "grpo.group_size=2",
        "grpo.filter_groups=false",
        "grpo.heldout.every=null",  # the quickstart's learning curve: off unless a test turns it on
        "checkpoint.every=2",
    ]
    return load_config(RunConfig, ROOT / "configs/quickstart.yaml", [*base, *overrides])


def test_grpo_on_episodes_trains_logs_and_checkpoints_the_controller(tmp_path):
    """A random agent (rewards mostly 0, so no filtering here): the whole async loop runs, every
    token carries a version no newer than the learner, staleness stays within eta."""
    overrides = (
        "grpo.episodes.max_staleness=1",
        "grpo.episodes.action_credit=0.5",
        "grpo.episodes.max_tasks=3",
    )
    summary = run(_cfg(tmp_path, *overrides))["grpo"]
    rows = [json.loads(x) for x in (tmp_path / "grpo/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    keys = ("pass_rate", "loss", "staleness_max", "learner_idle_frac", "episode_tokens", "step_s")
    for key in (*keys, "train_reward_mean", "prefix_hit_rate", "compiled_programs"):
        assert key in rows[0], key
    assert rows[-1]["compiled_programs"] >= 1  # the sampler's generation programs (soak: memory)
    assert max(r["staleness_max"] for r in rows) <= 1  # eta: batches are consumed in start order
    assert summary["source"] == "episodes" and summary["max_staleness"] == 1
    assert summary["train_tasks"] == 3  # grpo.max_tasks: the train split's first 3
    from eigen_jax.checkpoint import Checkpointer

    ck = Checkpointer(tmp_path / "grpo/checkpoints")
    assert ck.latest_step() == 3
    assert (tmp_path / "grpo/hf/config.json").exists()


def test_model_user_needs_the_user_stage(tmp_path):
    with pytest.raises(ValueError, match="sft_user"):
        run(_cfg(tmp_path, "episode.user=model"))


def test_grpo_on_episodes_resumes_where_the_checkpoint_says(tmp_path):
    """A run stopped after step 2 (its checkpoint says which group comes next) resumes at step 3
    with the controller at that group, not at group 0."""
    run(_cfg(tmp_path, "grpo.steps=2", "checkpoint.every=1"))
    metas = [
        p
        for p in (tmp_path / "grpo/checkpoints/2").rglob("*")
        if p.is_file() and b"next_index" in p.read_bytes()
    ]
    assert (
        metas and json.loads(metas[0].read_text())["data"]["controller"]["next_index"] == 4
    )  # 2 batches x 2 groups
    (tmp_path / "grpo/done.json").unlink()  # as if killed after the step-2 checkpoint
    summary = run(_cfg(tmp_path, "grpo.steps=4", "checkpoint.every=1"), resume=True)["grpo"]
    rows = [json.loads(x) for x in (tmp_path / "grpo/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and summary["steps"] == 4


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _jittered_coin(monkeypatch):
    """The coin reward (tests/coin_reward.py), each scoring and each engine request after a
    random pause (an unseeded RNG: the two runs' timings differ), and the learner's update
    delayed at random too."""
    import asyncio
    import random

    import verifiers.reward as reward
    from eigen_core.contracts import RewardInfo
    from eigen_jax.sampler import Sampler
    from eigen_jax.stages.grpo import GRPOUpdate

    jitter = random.Random()
    generate = Sampler.generate

    async def late_generate(self, prompt, sampling):
        await asyncio.sleep(jitter.random() * 0.02)
        return await generate(self, prompt, sampling)

    async def coin(self, task, traj):
        await asyncio.sleep(jitter.random() * 0.05)
        first = next((t for t, m in zip(traj.tokens, traj.loss_mask, strict=True) if m), 0)
        return RewardInfo(reward=float(first % 2), components={"coin": float(first % 2)})

    update = GRPOUpdate.__call__

    def slow_update(self, host):
        time.sleep(jitter.random() * 0.3)
        return update(self, host)

    monkeypatch.setattr(reward.Verifier, "score", coin)
    monkeypatch.setattr(GRPOUpdate, "__call__", slow_update)
    monkeypatch.setattr(Sampler, "generate", late_generate)


def test_deterministic_grpo_gives_the_same_losses_and_weights_whatever_the_timing(tmp_path, monkeypatch):
    """grpo.episodes.deterministic at eta 2 with dynamic filtering on: two runs whose episode and
    update timings differ at random train on the same groups, generated by the same versions,
    to the same losses, the same held-out curve and the same weights, bit for bit."""
    _jittered_coin(monkeypatch)
    overrides = (
        "grpo.episodes.deterministic=true", "grpo.episodes.max_staleness=2", "grpo.filter_groups=true",
        "grpo.steps=4", "grpo.group_size=4", "checkpoint.every=10",
        "grpo.heldout.every=2", "grpo.heldout.max_tasks=3", "grpo.heldout.trials=2",
    )  # fmt: skip
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        run(_cfg(out, *overrides))
        rows = [r for r in _records(out / "grpo/metrics.jsonl") if r["step"] > 0]  # 0: the curve's start
        weights = {f.name: f.read_bytes() for f in sorted((out / "grpo/hf").glob("*.safetensors"))}
        groups = [r for r in _records(out / "grpo/groups.jsonl") if "index" in r]
        runs.append((rows, weights, sorted((g["index"], g["tokens"]) for g in groups)))
    (a_rows, a_w, a_groups), (b_rows, b_w, b_groups) = runs
    keys = (
        "groups",
        "loss",
        "grad_norm",
        "staleness_mean",
        "batch_pass_rate",
        "pass_rate",
        "filtered_group_frac",
    )
    assert [[r[k] for k in keys] for r in a_rows] == [[r[k] for k in keys] for r in b_rows]
    assert any(r["loss"] != 0 for r in a_rows) and max(r["staleness_max"] for r in a_rows) >= 1
    assert a_rows[-1]["filtered_group_frac"] > 0  # refills for dropped groups were exercised
    assert a_groups[: len(b_groups)] == b_groups[: len(a_groups)]
    assert a_w and a_w == b_w
    curves = [_records(tmp_path / name / "grpo/heldout.jsonl") for name in ("a", "b")]
    assert curves[0] == curves[1] and [p["step"] for p in curves[0]] == [0, 2, 4]
    logged = [r.get("heldout_pass1") for r in _records(tmp_path / "a/grpo/metrics.jsonl")]
    assert [x for x in logged if x is not None] == [p["pass^1"] for p in curves[0]]
    assert (tmp_path / "a/grpo/heldout.png").stat().st_size > 0
