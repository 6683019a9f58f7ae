"""GRPO's update (shared by every environment) and the single-turn toy environment.

``GRPOUpdate`` turns one sampled batch (tokens, loss mask, behaviour logprobs, advantages) into
optimiser updates: the learner recomputes the proximal policy's logprobs (decoupled PPO), then
runs ``minibatches`` updates. ``run_grpo`` on ``source: toy`` is synchronous GRPO on a token task
through the real sampler -> reward -> update -> weight swap path; ``source: episodes`` (multi-turn,
asynchronous) lives in ``grpo_episodes``.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eigen_core.routes import padded_routes
from eigen_jax import losses as L
from eigen_jax.learner import Learner, make_optimizer, merge_sums
from eigen_jax.model import Decoder
from eigen_jax.model.sharding import batch_ways
from eigen_jax.objectives import (
    GRPOLoss,
    forward_stats,
    route_mismatch,
    sequence_logprobs,
    target_mask,
)
from eigen_jax.sampler import Sampler
from eigen_jax.stages.common import StageContext, model_mesh
from eigen_jax.stages.loop import LoopSettings, StageProgram, run_stage
from eigen_jax.train_config import GRPOSection
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
    if gens and gens[0].routes is not None:  # an MoE sampler's routes: the last tokens of each row
        like = gens[0].routes
        starts = [len(p) + len(g.tokens) - g.routes.tokens for p, g in zip(prompts, gens, strict=True)]
        recs = [g.routes for g in gens] + [None] * (rows - len(gens))
        routes, known = padded_routes(recs, length, like.layers, like.k, starts + [0] * (rows - len(gens)))
        out.update(routes=routes, routes_known=known.astype(np.int32))
    return out


class GRPOUpdate:
    """The learner side of GRPO for one sampled batch (any environment)."""

    def __init__(self, g: GRPOSection, seed: int, model: Decoder, total_updates: int):
        self.g = g
        self.loss_fn = GRPOLoss(g.eps_low, g.eps_high, g.weight_cap, g.aggregation, g.kl_coef, g.temperature)
        self.learner = Learner(
            model,
            make_optimizer(g.optim, total_updates * g.minibatches),
            self.loss_fn,
            micro_batches=g.micro_batches,
            mesh=model_mesh(model),
            seed=seed,
        )
        graphdef = self.learner.graphdef
        if g.routing_replay and not model.cfg.moe_layers:
            raise ValueError("grpo.routing_replay: the model has no MoE layers (replay is for MoE policies)")
        self.ref_params = self.learner.state.params if g.kl_coef > 0 else None
        self._logp = jax.jit(
            lambda params, batch: sequence_logprobs(nnx.merge(graphdef, params), batch, g.temperature)
        )

        def prox(params, batch, entropy: bool):
            """The proximal policy's logprobs, (``entropy``) entropies, and, for recorded routes
            not replayed, the (mismatched, total) routes: one forward pass."""
            lp, ent, taken = forward_stats(nnx.merge(graphdef, params), batch, g.temperature, entropy)
            if "routes" not in batch or "replay" in batch:
                return lp, ent, None
            known = (batch["routes_known"] * batch["attn_mask"]) > 0
            return lp, ent, route_mismatch(batch["routes"], taken.experts, known)

        self._prox = jax.jit(prox, static_argnames="entropy")

    def step_seed(self) -> int:
        """A seed for the current step's sampling, from the run's RNG: a resumed run samples what
        the original would."""
        key = jax.random.fold_in(jax.random.wrap_key_data(self.learner.state.rng), self.learner.step)
        return int(jax.random.randint(key, (), 0, 2**31 - 1))

    def _padded(self, host: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``host`` with all-masked rows appended until every minibatch and micro-batch splits
        evenly over the mesh (padding rows train nothing and count no tokens)."""
        mesh = self.learner.mesh
        ways = 1 if mesh is None else batch_ways(mesh)
        multiple = ways * self.g.micro_batches * self.g.minibatches
        extra = -len(host["tokens"]) % multiple
        if not extra:
            return host
        return {k: np.concatenate([v, np.zeros((extra, *v.shape[1:]), v.dtype)]) for k, v in host.items()}

    def __call__(self, host: dict[str, np.ndarray] | None) -> dict[str, float]:
        """Update on ``host`` (numpy arrays; rows with an all-zero loss mask are padding); None
        (every group filtered out) skips the update but counts the step."""
        g, learner = self.g, self.learner
        if host is None:
            learner.skip()
            return {}
        host = self._padded(host)
        batch = learner.put(host)
        extra: dict[str, float] = {}
        if g.routing_replay:  # an MoE policy's recorded routes, replayed where known
            real = max(float(np.sum(host["attn_mask"])), 1.0)
            known = float(np.sum(host["routes_known"] * host["attn_mask"])) if "routes" in host else 0.0
            extra["replayed_frac"] = known / real
            if "routes" in batch:
                batch = {**batch, "replay": batch["routes_known"] > 0}
        lp, ent, mismatch = self._prox(learner.state.params, batch, entropy=g.top_entropy_frac < 1.0)
        if mismatch is not None:
            extra["route_mismatch_frac"] = float(mismatch[0]) / max(float(mismatch[1]), 1.0)
        if ent is not None:
            fork = L.top_fraction_mask(ent, target_mask(batch), g.top_entropy_frac)
            batch = {**batch, "fork_mask": fork.astype(jnp.int32)}
            tm = target_mask(batch) > 0
            extra["fork_entropy_min"] = float(jnp.min(jnp.where(fork, ent, jnp.inf)))
            extra["entropy_mean"] = float(jnp.sum(jnp.where(tm, ent, 0.0)) / jnp.maximum(tm.sum(), 1))
        batch = {**batch, "prox_logp": lp}
        if self.ref_params is not None:
            batch["ref_logp"] = self._logp(self.ref_params, batch)
        rows = len(host["tokens"])
        sums: dict[str, float] | None = None
        per = rows // g.minibatches
        for mb in range(g.minibatches):  # each minibatch is its own optimiser update
            part = {k: v[mb * per : (mb + 1) * per] for k, v in batch.items()}
            m = learner.update(part, self.loss_fn.denom(part), advance=mb == g.minibatches - 1)
            sums = m if sums is None else merge_sums(sums, m, max)
        assert sums is not None
        tokens = max(sums["tokens"], 1.0)
        return dict(
            loss=sums["loss"],
            grad_norm=sums["grad_norm"] / g.minibatches,
            clip_frac=sums["clipped_tokens"] / tokens,
            capped_frac=1 - sums["kept_tokens"] / tokens,
            iw_mean=sums["weight_sum"] / tokens,
            iw_max=sums["weight_max"],
            tokens=sums["tokens"],
            **(
                {"balance_loss": sums["balance_loss_sum"] / g.minibatches}
                if "balance_loss_sum" in sums
                else {}
            ),
            **extra,
        )


def advantages(rewards: np.ndarray, group_size: int, g: GRPOSection) -> tuple[np.ndarray, np.ndarray]:
    """Group-relative advantages of consecutive groups of ``group_size`` rewards, and which rows
    dynamic filtering keeps (all rows when ``g.filter_groups`` is off)."""
    groups = jnp.asarray(np.arange(len(rewards)) // group_size)
    r = jnp.asarray(rewards, jnp.float32)
    adv = np.asarray(L.group_advantages(r, groups, g.adv_eps, g.scale_by_std))
    keep = np.asarray(L.informative_groups(r, groups)) if g.filter_groups else np.ones(len(rewards), bool)
    return adv, keep


class ToyGRPO(StageProgram):
    """Synchronous GRPO on ``ToyEnv``: sample groups, score, update, swap the sampler's weights."""

    def __init__(self, ctx: StageContext, g: GRPOSection, start_from: str | None):
        self.g = g
        model = ctx.base_model(start_from)
        self.env = ToyEnv(model.cfg.vocab_size, g.toy.prompt_len, g.toy.classes)
        self.update = GRPOUpdate(g, ctx.run.seed, model, g.steps)
        self.learner = self.update.learner
        self.pad_id = ctx.tok.pad_id
        self.sampler = Sampler(
            self.learner.model(),
            pad_id=self.pad_id,
            min_batch_bucket=8,
            min_prompt_bucket=8,
            record_routes=bool(model.cfg.moe_layers),
        )
        self.first_pass: float | None = None
        self.last_pass: float | None = None

    def restore(self, data: dict[str, Any]) -> None:
        self.sampler.update_weights(self.learner.state.params)

    def data_state(self) -> dict[str, Any]:
        return {"env": "toy"}  # batches are a function of the run's RNG and the step

    def step(self) -> dict[str, Any]:
        g, sampler, t0 = self.g, self.sampler, time.perf_counter()
        n_rows = g.tasks_per_step * g.group_size
        seed = self.update.step_seed()
        tasks = self.env.prompts(np.random.default_rng(seed), g.tasks_per_step)
        prompts = [p for p in tasks for _ in range(g.group_size)]
        params = [
            SamplingParams(temperature=g.temperature, max_new_tokens=g.toy.max_new_tokens, seed=seed + i)
            for i in range(n_rows)
        ]
        gens = sampler.generate_batch(prompts, params)
        rewards = np.asarray(
            [self.env.reward(p, x.tokens) for p, x in zip(prompts, gens, strict=True)], np.float32
        )
        adv, keep = advantages(rewards, g.group_size, g)
        kept = [i for i in range(n_rows) if keep[i]]
        row: dict[str, Any] = {
            "reward_mean": float(rewards.mean()),
            "pass_rate": float((rewards == 1).mean()),
            "filtered_group_frac": float(1 - keep.reshape(-1, g.group_size)[:, 0].mean()),
            "staleness_mean": float(np.mean([sampler.version - x.version for x in gens])),
        }
        self.first_pass = row["pass_rate"] if self.first_pass is None else self.first_pass
        self.last_pass = row["pass_rate"]
        length = g.toy.prompt_len + g.toy.max_new_tokens
        host = (
            build_batch(
                [prompts[i] for i in kept], [gens[i] for i in kept], adv[kept], length, n_rows, self.pad_id
            )
            if kept
            else None
        )
        row.update(self.update(host))
        sampler.update_weights(self.learner.state.params)
        row["tokens_per_s"] = float(sum(len(x.tokens) for x in gens) / (time.perf_counter() - t0))
        return row

    def summary(self) -> dict[str, Any]:
        return {"source": self.g.source, "first_pass_rate": self.first_pass, "last_pass_rate": self.last_pass}


def run_grpo(
    ctx: StageContext, g: GRPOSection, *, resume: bool = False, start_from: str | None = None
) -> dict[str, Any]:
    """Synchronous GRPO on the toy environment (see ``ToyEnv``)."""
    ls = LoopSettings(g.steps, g.log_every, ctx.checkpoint)
    return run_stage(ToyGRPO(ctx, g, start_from), ctx.stage_dir("grpo"), ctx.tok, ls, resume=resume)
