"""Loss functions over a model and a batch, in the ``Learner``'s contract (see learner.py).

Batches are dicts of [N, T] arrays: ``tokens``, ``attn_mask`` (1 on real tokens), ``loss_mask``
(1 on tokens the trained role produced), and for GRPO ``advantages`` [N], ``behaviour_logp``,
``prox_logp``, optionally ``ref_logp`` and ``fork_mask``. MoE batches may carry the sampler's
``routes`` [N, T, layers, k]: with ``replay`` [N, T] (bool) every forward pass routes the marked
tokens through those experts (routing replay).

One alignment convention, from batch building to the loss: every per-token array is [N, T] and
entry t is about token t (its logprob, its mask, its entropy). Nothing predicts token 0, so
column 0 of every computed array is 0 and ``target_mask`` never selects it. The shift from the
model's next-token outputs (position t's logits predict token t + 1) happens once, in
``token_aligned``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from eigen_jax import losses as L
from eigen_jax.learner import Batch
from eigen_jax.model import Decoder, positions_from_mask
from eigen_jax.model.decoder import Routes
from eigen_jax.ops import head_logprobs


def token_aligned(next_token: jax.Array) -> jax.Array:
    """[N, T] from an [N, T-1] array over next-token predictions (entry t about token t + 1):
    entry t about token t, column 0 zero."""
    return jnp.pad(next_token, ((0, 0), (1, 0)))


def sequence_logprobs(model: Decoder, batch: Batch, temperature: float = 1.0) -> jax.Array:
    """[N, T]: entry t is the logprob of token t under ``model`` (0 for t = 0)."""
    return sequence_logprobs_and_entropy(model, batch, temperature, entropy=False)[0]


def sequence_logprobs_and_entropy(
    model: Decoder, batch: Batch, temperature: float = 1.0, entropy: bool = True
) -> tuple[jax.Array, jax.Array | None]:
    """[N, T] each: ``sequence_logprobs`` and (``entropy``) the entropy of the distribution each
    token was drawn from, in one forward pass; the LM head runs ``model.logits_chunk`` positions
    at a time (0: all at once)."""
    lp, ent, _ = forward_stats(model, batch, temperature, entropy)
    return lp, ent


def forward_stats(
    model: Decoder, batch: Batch, temperature: float = 1.0, entropy: bool = False
) -> tuple[jax.Array, jax.Array | None, Routes | None]:
    """``sequence_logprobs_and_entropy`` and the ``Routes`` the forward pass took (None for a
    dense model); replays the batch's ``routes`` where its ``replay`` mask says so."""
    tokens, attn = batch["tokens"], batch["attn_mask"]
    replay = batch.get("replay")
    routes = batch["routes"] if replay is not None else None
    x, _, taken = model.hidden_routed(tokens, positions_from_mask(attn), attn, routes=routes, replay=replay)
    lp, ent = head_logprobs(x[:, :-1], model.head(), tokens[:, 1:], temperature, model.logits_chunk, entropy)
    return token_aligned(lp), None if ent is None else token_aligned(ent), taken


def with_balance(
    model: Decoder,
    taken: Routes | None,
    loss: jax.Array,
    sums: dict,
    mask: jax.Array,
    mode: L.Aggregation,
    denom: jax.Array,
) -> jax.Array:
    """``loss`` plus the MoE load-balancing loss (the config's coefficient times this
    micro-batch's share of the batch, ``L.batch_share``), its weighted value recorded in
    ``sums["balance_loss_sum"]``; ``loss`` unchanged for a dense model."""
    if taken is None:
        return loss
    share = L.batch_share(mask, mode, denom)
    sums["balance_loss_sum"] = taken.balance_loss * share
    coef = model.cfg.router_aux_loss_coef
    return loss + coef * taken.balance_loss * share if coef else loss


def route_mismatch(recorded: jax.Array, taken: jax.Array, known: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mismatched, total) (token, layer) pairs among the ``known`` [N, T] tokens: pairs whose
    set of experts in ``taken`` differs from ``recorded`` (both [N, T, layers, k])."""
    differs = jnp.any(jnp.sort(recorded, -1) != jnp.sort(taken, -1), axis=-1)  # [N, T, layers]
    k = jnp.broadcast_to(known[..., None], differs.shape).astype(jnp.float32)
    return (differs * k).sum(), k.sum()


def target_mask(batch: Batch) -> jax.Array:
    """[N, T]: 1 on the tokens a loss trains on (the trained role's real tokens, never token 0)."""
    m = jnp.asarray(batch["loss_mask"] * batch["attn_mask"])
    return m * (jnp.arange(m.shape[1]) > 0).astype(m.dtype)


class SFTLoss(NamedTuple):
    """Masked next-token cross-entropy (hashable: it is static jit metadata)."""

    aggregation: L.Aggregation = "token_mean"

    def denom(self, batch: Batch) -> jax.Array:
        return L.normaliser(target_mask(batch), self.aggregation)

    def __call__(self, model: Decoder, batch: Batch, denom: jax.Array):
        lp, _, taken = forward_stats(model, batch)
        m = target_mask(batch).astype(jnp.float32)
        loss = L.aggregate(-lp, m, self.aggregation, denom)
        sums = {"tokens": m.sum(), "nll_sum": -(lp * m).sum()}
        return with_balance(model, taken, loss, sums, m, self.aggregation, denom), sums


class GRPOLoss(NamedTuple):
    """Decoupled PPO over group-relative advantages (on-policy when prox == behaviour)."""

    eps_low: float = 0.4
    eps_high: float = 0.4
    weight_cap: float | None = 5.0
    aggregation: L.Aggregation = "token_mean"
    kl_coef: float = 0.0
    temperature: float = 1.0

    def denom(self, batch: Batch) -> jax.Array:
        # Normalised by the tokens the policy generated (the selected forking tokens when there
        # is a selection), before the weight cap drops any: the cap then removes a token's term
        # without re-weighting the others.
        m = target_mask(batch)
        if "fork_mask" in batch:
            m = m * batch["fork_mask"]
        return L.normaliser(m, self.aggregation)

    def __call__(self, model: Decoder, batch: Batch, denom: jax.Array):
        lp, _, taken = forward_stats(model, batch, self.temperature)
        m = target_mask(batch).astype(jnp.float32)
        if "fork_mask" in batch:  # forking-token selection (GRPOSection.top_entropy_frac)
            m = m * batch["fork_mask"]
        adv = L.broadcast_to_tokens(batch["advantages"].astype(jnp.float32), m)
        t = L.decoupled_policy_loss(
            lp,
            batch["prox_logp"],
            batch["behaviour_logp"],
            adv,
            m,
            self.eps_low,
            self.eps_high,
            self.weight_cap,
        )
        loss = L.aggregate(t.loss, t.mask, self.aggregation, denom)
        sums = {
            "tokens": m.sum(),
            "kept_tokens": t.mask.sum(),
            "clipped_tokens": t.clipped.sum().astype(jnp.float32),
            "weight_sum": (t.weight * m).sum(),
            "weight_max": jnp.max(jnp.where(m > 0, t.weight, 0.0)),
            "ratio_sum": (t.ratio * m).sum(),
        }
        if self.kl_coef > 0:
            kl = L.kl_k3(lp, batch["ref_logp"])
            loss = loss + self.kl_coef * L.aggregate(kl, m, self.aggregation, denom)
            sums["kl_sum"] = (kl * m).sum()
        return with_balance(model, taken, loss, sums, m, self.aggregation, denom), sums
