"""What every learner stage needs: the run's context (where it lives, its seed, the model to
start from, the tokenizer), batch helpers, stage directories."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from eigen_core.config import DomainConfig, PoolConfig, RunSection
from eigen_core.domains import get_domain
from eigen_core.pool import TaskPool
from eigen_core.tokenizer import Tokenizer, build_small_tokenizer, qwen3_tokenizer_dir
from eigen_jax.distributed import primary_first
from eigen_jax.model import Decoder, DecoderConfig
from eigen_jax.model.hf import load_hf
from eigen_jax.model.sharding import make_mesh, shard_model
from eigen_jax.sampler import Sampler
from eigen_jax.stages.stage_dir import StageDir
from eigen_jax.train_config import CheckpointSection, ModelSection
from rollout.config import EpisodeConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def pad_rows(rows: list[dict[str, list]], length: int, pad_id: int) -> dict[str, np.ndarray]:
    """[len(rows), length] right-padded arrays from per-token lists, each row cut at ``length``:
    ``tokens`` (padded with ``pad_id``, int32), an ``attn_mask``, and every other key (zeros;
    ``*_mask`` int32, the rest float32)."""
    n = len(rows)
    out = {"tokens": np.full((n, length), pad_id, np.int32), "attn_mask": np.zeros((n, length), np.int32)}
    for key in rows[0] if rows else ():
        if key != "tokens":
            out[key] = np.zeros((n, length), np.int32 if key.endswith("_mask") else np.float32)
    for r, row in enumerate(rows):
        k = min(len(row["tokens"]), length)
        out["attn_mask"][r, :k] = 1
        for key, values in row.items():
            out[key][r, :k] = values[:k]
    return out


def corpus(domain: DomainConfig, pool: PoolConfig) -> list[str]:
    """Texts a ``small`` tokenizer is trained on: the policy, tool schemas and every task."""
    d = get_domain(domain.name)
    return [d.policy, json.dumps(d.tool_schemas())] + [
        t.model_dump_json() for t in TaskPool(pool.dir).tasks()
    ]


def tokenizer(model: ModelSection, out_dir: str | Path, corpus: Callable[[], list[str]]) -> Tokenizer:
    """The run's tokenizer. ``small`` is trained once on ``corpus()`` and kept in the run
    directory (``out_dir``), so every stage (and a resumed run) uses the same ids."""
    choice = model.tokenizer
    if model.hf_dir is not None and choice == "small":
        raise ValueError(
            "model.tokenizer: 'small' only fits a from-scratch model; with model.hf_dir use "
            "'qwen3' or the checkpoint's tokenizer directory"
        )
    if choice == "qwen3":
        return Tokenizer.from_dir(qwen3_tokenizer_dir())
    if choice != "small":
        return Tokenizer.from_dir(choice)
    saved = Path(out_dir) / "tokenizer"
    with primary_first("tokenizer") as mine:  # process 0 trains and saves it; the others load it
        if mine and not (saved / "tokenizer.json").exists():
            build_small_tokenizer(corpus(), model.small_vocab_size).save(saved)
    return Tokenizer.from_dir(saved)


def model_mesh(model: Decoder):
    """The mesh the model's parameters live on (None when they are on one device)."""
    return getattr(model.embed_tokens[...].sharding, "mesh", None)


def padded_vocab(size: int) -> int:
    """A from-scratch model's vocabulary for a tokenizer of ``size`` ids: the next multiple of 64
    (shards and tiles better)."""
    return -(-size // 64) * 64


def base_model(m: ModelSection, tok: Tokenizer, start: str | Path | None = None) -> Decoder:
    """The model a stage starts from: ``start`` (an earlier stage's HF export), else
    ``model.hf_dir``, else ``model.arch`` from scratch; sharded over ``model.mesh``."""
    dtype, pdtype = DTYPES[m.dtype], DTYPES[m.param_dtype]
    mesh = make_mesh(m.mesh)
    source = start or m.hf_dir
    if source is not None:
        model = load_hf(source, dtype=dtype, param_dtype=pdtype, mesh=mesh)
    else:
        arch = DecoderConfig.from_hf({**m.arch, "vocab_size": padded_vocab(tok.vocab_size)})
        model = shard_model(Decoder(arch, rngs=nnx.Rngs(m.seed), dtype=dtype, param_dtype=pdtype), mesh)
    return configure(model, m, mesh)


def configure(model: Decoder, m: ModelSection, mesh) -> Decoder:
    """Apply the model section's compute options (remat, attention, LM-head chunks) to ``model``
    on ``mesh``: what a built or loaded model and ``eigen_jax.plan``'s abstract one share."""
    model.remat, model.logits_chunk = m.remat, m.logits_chunk
    return model.use_attention(m.attention, mesh).use_experts(m.moe_kernel, m.expert_dispatch)


def episode_engine(
    model: Decoder,
    pad_id: int,
    ep: EpisodeConfig,
    *,
    capped: bool = True,
    keep_versions: int = 1,
    record_routes: bool = False,
) -> Sampler:
    """The embedded engine of an episode party (the policy or the user model): batches of 8 and
    up, the episode's prefix cache, and (``capped``) its ``max_len``; ``record_routes``: an MoE
    policy's routes, for routing replay."""
    return Sampler(
        model,
        pad_id=pad_id,
        min_batch_bucket=8,
        max_len=ep.max_len if capped else None,
        prefix_cache_mb=ep.prefix_cache_mb,
        keep_versions=keep_versions,
        record_routes=record_routes,
    )


@dataclass(frozen=True)
class StageContext:
    """What every learner stage shares, built once per run by ``eigen_jax.train``: where the run
    lives and its seed (``run``), what the model starts from and how it is laid out (``model``),
    the checkpoint cadence, the tokenizer. A stage gets this and the config sections it reads."""

    run: RunSection
    model: ModelSection
    checkpoint: CheckpointSection
    tok: Tokenizer

    def stage_dir(self, stage: str) -> StageDir:
        return StageDir(self.run.out_dir, stage)

    def base_model(self, start: str | Path | None = None) -> Decoder:
        """``base_model`` of the run's model section (``start``: an earlier stage's export)."""
        return base_model(self.model, self.tok, start)
