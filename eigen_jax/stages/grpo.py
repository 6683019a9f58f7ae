"""Synchronous GRPO on a single-turn environment, through the real sampler -> reward -> decoupled
PPO update -> in-place weight swap path. Multi-turn episodes and the asynchronous controller
plug in here with the rollout issue; the update itself does not change.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eigen_jax import losses as L
from eigen_jax.config import RunConfig
from eigen_jax.learner import Learner, make_optimizer, merge_sums
from eigen_jax.metrics import MetricsLogger
from eigen_jax.objectives import GRPOLoss, sequence_logprobs
from eigen_jax.sampler import Sampler
from eigen_jax.stages.common import StageDir, base_model, model_mesh, tokenizer
from rollout.engine import SamplingParams


class ToyEnv:
    """Single-turn token task: a prompt of random tokens ending in one of ``classes`` instruction
    tokens (ids ``low .. low + classes - 1``); reward 1 iff the first generated token's id is
    congruent to the instruction's index modulo ``classes``. A random policy passes 1/classes of
    the time; the right policy always."""

    def __init__(self, vocab_size: int, prompt_len: int, classes: int, low: int = 3):
        self.vocab, self.prompt_len, self.classes, self.low = vocab_size, prompt_len, classes, low

    def prompts(self, rng: np.random.Generator, n: int) -> list[list[int]]:
        noise = rng.integers(self.low + self.classes, self.vocab, (n, self.prompt_len - 1))
        instruction = self.low + rng.integers(0, self.classes, (n, 1))
        return np.concatenate([noise, instruction], axis=1).tolist()

    def reward(self, prompt: list[int], completion: list[int]) -> float:
        want = (prompt[-1] - self.low) % self.classes
        return float(bool(completion) and completion[0] % self.classes == want)


def build_batch(
    prompts: list[list[int]], gens: list, advantages: np.ndarray, length: int, rows: int, pad_id: int
) -> dict[str, np.ndarray]:
    """[rows, length] arrays: prompt + completion, loss mask and behaviour logprobs on the completion
    (entry t is token t's); rows past ``len(prompts)`` are padding with an all-zero mask."""
    out = {
        "tokens": np.full((rows, length), pad_id, np.int32),
        "attn_mask": np.zeros((rows, length), np.int32),
        "loss_mask": np.zeros((rows, length), np.int32),
        "behaviour_logp": np.zeros((rows, length), np.float32),
        "advantages": np.zeros((rows,), np.float32),
    }
    for r, (p, g) in enumerate(zip(prompts, gens, strict=True)):
        seq = p + g.tokens
        out["tokens"][r, : len(seq)] = seq
        out["attn_mask"][r, : len(seq)] = 1
        out["loss_mask"][r, len(p) : len(seq)] = 1
        out["behaviour_logp"][r, len(p) : len(seq)] = g.logprobs
        out["advantages"][r] = advantages[r]
    return out


def run_grpo(cfg: RunConfig, *, resume: bool = False, start_from: str | None = None) -> dict[str, Any]:
    g = cfg.grpo
    sd = StageDir(cfg, "grpo")
    if resume and (done := sd.finished()):
        return done
    tok = tokenizer(cfg)
    model = base_model(cfg, tok, start=start_from)
    env = ToyEnv(model.cfg.vocab_size, g.toy_prompt_len, g.toy_classes)
    loss_fn = GRPOLoss(g.eps_low, g.eps_high, g.weight_cap, g.aggregation, g.kl_coef, g.temperature)
    mesh = model_mesh(model)
    learner = Learner(
        model,
        make_optimizer(g.optim, g.steps * g.minibatches),
        loss_fn,
        micro_batches=g.micro_batches,
        mesh=mesh,
        seed=cfg.run.seed,
    )
    sampler = Sampler(learner.model(), pad_id=tok.pad_id, min_batch_bucket=8, min_prompt_bucket=8)
    ref_params = learner.state.params if g.kl_coef > 0 else None
    logp_fn = jax.jit(
        lambda params, batch: sequence_logprobs(nnx.merge(learner.graphdef, params), batch, g.temperature)
    )
    ckpt = sd.checkpointer()
    start = ckpt.latest_step() if resume else None
    if start is not None:
        learner.state, _ = ckpt.restore(learner.state)
        sampler.update_weights(learner.state.params)
    log = MetricsLogger(sd.root, "grpo", g.steps, log_every=g.log_every, resume_step=start)
    n_rows = g.tasks_per_step * g.group_size
    length = g.toy_prompt_len + g.max_new_tokens
    first_pass = last_pass = None
    while learner.step < g.steps:
        t0 = time.perf_counter()
        step = learner.step
        # Seeds derive from the run's RNG and the step: a resumed run samples what the original would.
        seed = int(
            jax.random.randint(
                jax.random.fold_in(jax.random.wrap_key_data(learner.state.rng), step), (), 0, 2**31 - 1
            )
        )
        rng = np.random.default_rng(seed)
        tasks = env.prompts(rng, g.tasks_per_step)
        prompts = [p for p in tasks for _ in range(g.group_size)]
        params = [
            SamplingParams(temperature=g.temperature, max_new_tokens=g.max_new_tokens, seed=seed + i)
            for i in range(n_rows)
        ]
        gens = sampler.generate_batch(prompts, params)
        rewards = np.asarray(
            [env.reward(p, x.tokens) for p, x in zip(prompts, gens, strict=True)], np.float32
        )
        groups = np.repeat(np.arange(g.tasks_per_step), g.group_size)
        adv = np.asarray(
            L.group_advantages(jnp.asarray(rewards), jnp.asarray(groups), g.adv_eps, g.scale_by_std)
        )
        keep = (
            np.asarray(L.informative_groups(jnp.asarray(rewards), jnp.asarray(groups)))
            if g.filter_groups
            else (np.ones(n_rows, bool))
        )
        kept = [i for i in range(n_rows) if keep[i]]
        row: dict[str, Any] = {
            "reward_mean": float(rewards.mean()),
            "pass_rate": float((rewards == 1).mean()),
            "filtered_group_frac": float(1 - keep.reshape(-1, g.group_size)[:, 0].mean()),
            "staleness_mean": float(np.mean([sampler.version - x.version for x in gens])),
        }
        first_pass = row["pass_rate"] if first_pass is None else first_pass
        last_pass = row["pass_rate"]
        if kept:
            host = build_batch(
                [prompts[i] for i in kept], [gens[i] for i in kept], adv[kept], length, n_rows, tok.pad_id
            )
            batch = learner.put(host)
            prox = jnp.pad(logp_fn(learner.state.params, batch), ((0, 0), (1, 0)))
            batch = {**batch, "prox_logp": prox}
            if ref_params is not None:
                batch["ref_logp"] = jnp.pad(logp_fn(ref_params, batch), ((0, 0), (1, 0)))
            sums: dict[str, float] | None = None
            per = n_rows // g.minibatches
            for mb in range(g.minibatches):  # each minibatch is its own optimiser update
                part = {k: v[mb * per : (mb + 1) * per] for k, v in batch.items()}
                m = learner.update(part, loss_fn.denom(part), advance=mb == g.minibatches - 1)
                sums = m if sums is None else merge_sums(sums, m, max)
            tokens = max(sums["tokens"], 1.0)
            row.update(
                loss=sums["loss"],
                grad_norm=sums["grad_norm"] / g.minibatches,
                clip_frac=sums["clipped_tokens"] / tokens,
                capped_frac=1 - sums["kept_tokens"] / tokens,
                iw_mean=sums["weight_sum"] / tokens,
                iw_max=sums["weight_max"],
                tokens=sums["tokens"],
            )
        else:  # every group was uninformative: no update, the step still counts
            learner.skip()
        sampler.update_weights(learner.state.params)
        row["tokens_per_s"] = float(sum(len(x.tokens) for x in gens) / (time.perf_counter() - t0))
        log.log(learner.step, row)
        if learner.step % cfg.checkpoint.every == 0 or learner.step == g.steps:
            ckpt.save(learner.state, {"data": {"env": "toy"}})
    log.close()
    ckpt.close()
    return sd.finish(
        learner,
        tok,
        {"steps": g.steps, "env": g.env, "first_pass_rate": first_pass, "last_pass_rate": last_pass},
    )
