"""The pretrain stage: its batches (pure functions), the stage's files, the hand-off to SFT and
eval, resume, and (slow) that the in-context copy actually forms."""

import json
from pathlib import Path

import numpy as np
import pytest

from eigen_core.configio import load_config
from eigen_jax.config import RunConfig
from eigen_jax.pretrain_data import copy_sequences, mixed_batch, text_windows
from eigen_jax.stages.evaluate import agent_sources
from eigen_jax.train import run, stage_context

ROOT = Path(__file__).parents[1]
IDS = np.arange(3, 200, dtype=np.int32)


def test_copy_sequences_train_only_tokens_a_copy_predicts():
    b = copy_sequences(np.random.default_rng(0), 64, 64, IDS)
    toks, mask = b["tokens"], b["loss_mask"]
    assert toks.shape == mask.shape == (64, 64) and b["attn_mask"].all()
    assert np.isin(toks, IDS).all()
    offsets = set()
    for row, m in zip(toks, mask, strict=True):
        trained = np.flatnonzero(m)
        assert len(trained) >= 6 and (np.diff(trained) == 1).all()  # one contiguous copied span
        start = trained[0] - 1  # the first copied token is not trained (nothing predicts it)
        # the span repeats the row's prefix: the previous occurrence fixes every trained token
        assert (row[start : trained[-1] + 1] == row[: trained[-1] + 1 - start]).all()
        offsets.add(int(start))
    assert len(offsets) > 10  # the copy distance varies: no fixed-offset shortcut


def test_batches_are_pure_functions_of_the_seed():
    stream = np.arange(1000, dtype=np.int32)
    a = mixed_batch(np.random.default_rng([7, 3]), stream, 8, 32, 0.5, IDS)
    b = mixed_batch(np.random.default_rng([7, 3]), stream, 8, 32, 0.5, IDS)
    c = mixed_batch(np.random.default_rng([7, 4]), stream, 8, 32, 0.5, IDS)
    assert all((a[k] == b[k]).all() for k in a) and not (a["tokens"] == c["tokens"]).all()
    # the last half are text windows: contiguous slices of the stream, every token trained
    for row, m in zip(a["tokens"][4:], a["loss_mask"][4:], strict=True):
        assert (np.diff(row) == 1).all() and m.all()
    assert mixed_batch(np.random.default_rng(0), stream, 8, 32, 1.0, IDS)["loss_mask"].sum(1).max() < 32


def test_bad_lengths_are_named():
    with pytest.raises(ValueError, match="length >= 24"):
        copy_sequences(np.random.default_rng(0), 1, 16, IDS)
    with pytest.raises(ValueError, match="fewer than one window"):
        text_windows(np.random.default_rng(0), np.arange(10), 1, 32)


def _cfg(tmp: Path, *overrides: str) -> RunConfig:
    base = [
        f"run.out_dir={tmp}",
        f"pool.dir={tmp}/pool",
        "run.progress=false",
        "procedural.num_tasks=40",
        "pretrain.steps=6",
        "pretrain.copy_only_steps=3",
        "pretrain.batch_size=8",
        "pretrain.seq_len=32",
        "pretrain.eval_every=3",
        "checkpoint.every=3",
    ]
    return load_config(RunConfig, ROOT / "configs/quickstart.yaml", [*base, *overrides])


def test_pretrain_stage_feeds_sft_and_the_base_agent(tmp_path):
    cfg = _cfg(
        tmp_path,
        "run.stages=[generate,pretrain,sft_user]",
        "sft_user.steps=1",
        "sft_user.eval_batches=1",
        "sft_user.optim.lr=1e-12",
    )
    summary = run(cfg)
    pre = summary["pretrain"]
    assert pre["steps"] == 6 and 0.0 <= pre["copy_accuracy"] <= 1.0 and pre["held_out_text_nll"] > 0
    rows = [json.loads(ln) for ln in (tmp_path / "pretrain/metrics.jsonl").read_text().splitlines()]
    assert [r["copy_share"] for r in rows] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    assert "copy_accuracy" in rows[2] and "copy_accuracy" not in rows[3]
    assert (tmp_path / "pretrain/hf/model.safetensors").exists()
    # SFT starts from the pretrained weights (a vanishing lr leaves them where they started)
    from eigen_jax.model.hf import load_hf

    pre_w = np.asarray(load_hf(tmp_path / "pretrain/hf").embed_tokens[...])
    sft_w = np.asarray(load_hf(tmp_path / "sft_user/hf").embed_tokens[...])
    assert np.allclose(pre_w, sft_w, atol=1e-6)
    # eval's base agent is the pretrained model when the stage ran
    assert agent_sources(stage_context(cfg), cfg.eval, str(tmp_path / "pretrain/hf"))["base"] == str(
        tmp_path / "pretrain/hf"
    )
    # resume: a finished stage is not rerun
    again = run(cfg, resume=True)
    assert again["pretrain"] == pre


def test_pretrain_refuses_a_checkpoint_start(tmp_path):
    cfg = _cfg(
        tmp_path, "run.stages=[generate,pretrain]", f"model.hf_dir={tmp_path}/x", "model.tokenizer=qwen3"
    )
    with pytest.raises(ValueError, match=r"model\.hf_dir is set"):
        run(cfg)


@pytest.mark.slow
def test_pretraining_forms_the_in_context_copy(tmp_path):
    """The point of the stage: held-out copy accuracy goes from chance to most tokens (the
    quickstart model forms the copy after ~700 steps; 1,100 leaves room)."""
    cfg = _cfg(
        tmp_path,
        "run.stages=[generate,pretrain]",
        "procedural.num_tasks=100",
        "pretrain.steps=1100",
        "pretrain.copy_only_steps=1100",
        "pretrain.seq_len=128",
        "pretrain.batch_size=16",
        "pretrain.eval_every=1100",
        "checkpoint.every=1100",
    )
    assert run(cfg)["pretrain"]["copy_accuracy"] > 0.5
