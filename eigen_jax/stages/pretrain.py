"""Pretrain the from-scratch base on copy sequences and domain text (see ``pretrain_data``).

This is the tiny model's stand-in for a real base model's pretraining: what it must bring to SFT
is the in-context copy a tool-using agent lives on. Domain text is the policy, the tool schemas
and the *train* split's task records (never a test task). Batches are a pure function of
``(run.seed, step)``, so a resumed stage sees exactly the batches it would have seen.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eigen_core.config import DomainConfig, PoolConfig
from eigen_core.domains import get_domain
from eigen_core.pool import TaskPool
from eigen_core.tokenizer import SPECIAL_TOKENS, Tokenizer
from eigen_jax.learner import Learner, make_optimizer
from eigen_jax.objectives import SFTLoss, target_mask, token_aligned
from eigen_jax.pretrain_data import copy_sequences, mixed_batch, text_windows
from eigen_jax.stages.common import StageContext, model_mesh
from eigen_jax.stages.loop import LoopSettings, StageProgram, run_stage
from eigen_jax.train_config import PretrainSection

HELD_OUT_SHARE = 0.05
"""The tail of the text stream kept for the held-out loss."""


def text_stream(domain: DomainConfig, pool: PoolConfig, tok: Tokenizer) -> np.ndarray:
    """Token stream of the domain's policy, tool schemas and train-split task records."""
    d = get_domain(domain.name)
    texts = [d.policy, json.dumps(d.tool_schemas())]
    texts += [t.model_dump_json() for t in TaskPool(pool.dir).tasks("train")]
    ids: list[int] = []
    for text in texts:
        ids += [*tok.encode(text), tok.eos_id]
    return np.asarray(ids, np.int32)


def plain_ids(tok: Tokenizer, vocab: int) -> np.ndarray:
    """Token ids that copy sequences draw from: the tokenizer's, minus its special tokens."""
    special = {tok.tok.token_to_id(s) for s in SPECIAL_TOKENS} - {None}
    special |= {tok.eos_id, tok.pad_id}
    return np.asarray([i for i in range(min(vocab, tok.vocab_size)) if i not in special], np.int32)


class Pretrain(StageProgram):
    """Copy sequences and domain text, a pure function of ``(run.seed, step)`` per batch."""

    def __init__(self, ctx: StageContext, p: PretrainSection, stream: np.ndarray):
        self.p, tok = p, ctx.tok
        cut = int(len(stream) * (1 - HELD_OUT_SHARE))
        if cut <= p.seq_len or len(stream) - cut <= p.seq_len:
            raise ValueError(
                f"pretrain.seq_len: {p.seq_len} tokens is too long for the domain text ({len(stream)} tokens)"
            )
        self.seed, self.text_tokens, self.train_text = ctx.run.seed, len(stream), stream[:cut]
        model = ctx.base_model()
        self.ids = plain_ids(tok, model.embed_tokens[...].shape[0])
        self.loss_fn = SFTLoss()
        self.learner = Learner(
            model, make_optimizer(p.optim, p.steps), self.loss_fn, mesh=model_mesh(model), seed=self.seed
        )
        self.held = _held_out(p, self.seed, self.ids, stream[cut:])
        self._evaluate = _eval_fn(self.learner)
        self.last: dict[str, tuple[float, float]] = {}

    def step(self) -> dict[str, Any]:
        p, step = self.p, self.learner.step
        rng = np.random.default_rng([self.seed, step])
        frac = 1.0 if step < p.copy_only_steps else p.copy_fraction
        batch = self.learner.put(mixed_batch(rng, self.train_text, p.batch_size, p.seq_len, frac, self.ids))
        m = self.learner.update(batch, self.loss_fn.denom(batch))
        return {"loss": m["loss"], "grad_norm": m["grad_norm"], "copy_share": frac}

    def evaluate(self) -> dict[str, Any]:
        self.last = {name: self._evaluate(b) for name, b in self.held.items()}
        return {
            "copy_accuracy": self.last["copy"][0],
            "copy_nll": self.last["copy"][1],
            "text_nll": self.last["text"][1],
        }

    def summary(self) -> dict[str, Any]:
        return {
            "text_tokens": self.text_tokens,
            "copy_accuracy": self.last["copy"][0],
            "copy_nll": self.last["copy"][1],
            "held_out_text_nll": self.last["text"][1],
        }


def run_pretrain(
    ctx: StageContext, p: PretrainSection, *, domain: DomainConfig, pool: PoolConfig, resume: bool = False
) -> dict[str, Any]:
    """The pretrain stage: ``p``, on the text of ``domain`` and the train tasks in ``pool``."""
    if ctx.model.hf_dir is not None:
        raise ValueError(
            "pretrain: model.hf_dir is set; pretraining is for from-scratch models (drop the stage)"
        )
    ls = LoopSettings(p.steps, p.log_every, ctx.checkpoint, eval_every=p.eval_every)
    program = Pretrain(ctx, p, text_stream(domain, pool, ctx.tok))
    return run_stage(program, ctx.stage_dir("pretrain"), ctx.tok, ls, resume=resume)


def _held_out(
    p: PretrainSection, seed: int, ids: np.ndarray, held_text: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Fixed held-out batches: copy sequences from a seed no training step uses, text windows
    from the stream's held-out tail."""
    rng = np.random.default_rng([seed, -1 % 2**32])
    return {
        "copy": copy_sequences(rng, 32, p.seq_len, ids),
        "text": text_windows(rng, held_text, 16, p.seq_len),
    }


def _eval_fn(learner: Learner):
    from flax import nnx

    from eigen_jax.model import positions_from_mask
    from eigen_jax.ops import next_token_logprobs

    @jax.jit
    def stats(params, batch):
        model = nnx.merge(learner.graphdef, params)
        tokens, attn = batch["tokens"], batch["attn_mask"]
        logits, _ = model(tokens, positions_from_mask(attn), attn)
        lp = token_aligned(next_token_logprobs(logits, tokens))
        hit = token_aligned((jnp.argmax(logits[:, :-1], axis=-1) == tokens[:, 1:]).astype(jnp.float32))
        m = target_mask(batch).astype(jnp.float32)
        return (hit * m).sum() / m.sum(), -(lp * m).sum() / m.sum()

    def run(batch: dict[str, np.ndarray]) -> tuple[float, float]:
        """(greedy accuracy, mean NLL) over the batch's trained tokens."""
        acc, nll = stats(learner.state.params, learner.put(batch))
        return float(acc), float(nll)

    return run
