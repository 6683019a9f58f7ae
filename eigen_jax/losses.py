"""The learner's math as small pure functions (jnp in, jnp out; no model, no state).

Conventions: a batch is N sequences of T tokens; per-token arrays are [N, T] and already aligned
to the *target* token (the one whose logprob is taken); ``mask`` is 1 on tokens that enter the
loss. Groups are integer ids, one per sequence (the G samples of one task share one). Losses
return per-token terms; ``aggregate`` turns them into a scalar with a normaliser
the caller computes once for the whole batch, so that micro-batches sum to exactly the
full-batch loss.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from eigen_jax.ops import token_logprobs

Aggregation = Literal["token_mean", "seq_mean_token_mean"]


def _dense(groups: jax.Array) -> jax.Array:
    """Any integer group ids -> ids in [0, N) (jit-safe: ``unique`` with a static size)."""
    return jnp.unique(groups, return_inverse=True, size=groups.shape[0])[1].reshape(groups.shape)


def _group_stats(values: jax.Array, groups: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-sequence (count, mean, population std) of its group's ``values``."""
    n = values.shape[0]
    groups = _dense(groups)
    count = jax.ops.segment_sum(jnp.ones_like(values), groups, n)
    mean = jax.ops.segment_sum(values, groups, n) / jnp.maximum(count, 1)
    dev = values - mean[groups]
    var = jax.ops.segment_sum(dev * dev, groups, n) / jnp.maximum(count, 1)
    return count[groups], mean[groups], jnp.sqrt(var)[groups]


def group_advantages(
    rewards: jax.Array, groups: jax.Array, eps: float = 1e-6, scale_by_std: bool = True
) -> jax.Array:
    """GRPO's group-relative advantage per sequence: (R - mean_g) / (std_g + eps).

    ``std`` is the population std of the group. A group whose rewards are all equal gets 0 for
    every member (its numerator is 0), so it contributes no gradient; ``scale_by_std=False``
    gives the unscaled R - mean_g (Dr. GRPO).
    """
    rewards = rewards.astype(jnp.float32)
    _, mean, std = _group_stats(rewards, groups)
    adv = rewards - mean
    return adv / (std + eps) if scale_by_std else adv


def informative_groups(rewards: jax.Array, groups: jax.Array) -> jax.Array:
    """Dynamic filtering: bool [N], False for members of groups whose rewards are all equal."""
    n = rewards.shape[0]
    groups = _dense(groups)
    hi = jax.ops.segment_max(rewards, groups, n)[groups]
    lo = jax.ops.segment_min(rewards, groups, n)[groups]
    return hi > lo


def top_fraction_mask(values: jax.Array, mask: jax.Array, frac: float) -> jax.Array:
    """bool [N, T]: the masked tokens whose ``values`` are in the top ``frac`` of all masked
    tokens of the batch (ties at the threshold are kept; ``frac`` >= 1 keeps every masked token).

    With ``values`` the policy's per-token entropy this selects the "forking" tokens, where the
    policy's choice decides the outcome (Wang et al. 2025, "Beyond the 80/20 rule": RL on the top
    20% of tokens by entropy matches or beats RL on all of them); the near-deterministic tokens
    that it drops mostly add noise to the gradient.
    """
    m = mask > 0
    if frac >= 1.0:
        return m
    n = m.sum()
    k = jnp.maximum(jnp.ceil(frac * n), 1).astype(jnp.int32)
    ranked = jnp.sort(jnp.where(m, values, -jnp.inf).ravel())[::-1]
    threshold = ranked[jnp.minimum(k, ranked.shape[0]) - 1]
    return m & (values >= threshold)


def broadcast_to_tokens(per_sequence: jax.Array, mask: jax.Array) -> jax.Array:
    """[N] -> [N, T]: a sequence's value on each of its masked tokens, 0 elsewhere."""
    return per_sequence[:, None] * mask.astype(per_sequence.dtype)


class PolicyTerms(NamedTuple):
    """Per-token policy-loss terms and the masks the metrics need."""

    loss: jax.Array
    """[N, T] loss per token (0 where masked)."""
    mask: jax.Array
    """[N, T] tokens that enter the loss (the input mask minus capped tokens)."""
    clipped: jax.Array
    """[N, T] bool: the clipped branch was the one taken (no gradient through the ratio)."""
    ratio: jax.Array
    """[N, T] pi_theta / pi_prox."""
    weight: jax.Array
    """[N, T] importance weight pi_prox / pi_behaviour (1 for on-policy PPO)."""


def clipped_policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    eps_low: float = 0.4,
    eps_high: float = 0.4,
) -> PolicyTerms:
    """Token-level PPO/GRPO surrogate: -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)."""
    ratio = jnp.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    m = mask.astype(jnp.float32)
    loss = -jnp.minimum(unclipped, clipped) * m
    took_clip = (clipped < unclipped) & (m > 0)
    return PolicyTerms(loss, m, took_clip, ratio, jnp.ones_like(ratio))


def decoupled_policy_loss(
    logp: jax.Array,
    prox_logp: jax.Array,
    behaviour_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    eps_low: float = 0.4,
    eps_high: float = 0.4,
    weight_cap: float | None = 5.0,
) -> PolicyTerms:
    """The decoupled PPO objective (AReaL): clip against the proximal policy and weight each token
    by pi_prox / pi_behaviour, dropping tokens whose weight exceeds ``weight_cap`` (None: keep all).

    The weight is a constant (no gradient): it corrects for sampling from a stale policy, while
    the trust region is taken around the recent proximal one.
    """
    weight = jax.lax.stop_gradient(jnp.exp(prox_logp - behaviour_logp))
    m = mask.astype(jnp.float32)
    if weight_cap is not None:
        m = m * (weight <= weight_cap)
    terms = clipped_policy_loss(logp, prox_logp, advantages, m, eps_low, eps_high)
    return terms._replace(loss=terms.loss * weight, weight=weight)


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """Per-token KL(pi_theta || pi_ref) estimate k3 = exp(d) - d - 1 with d = ref - logp (>= 0)."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def normaliser(mask: jax.Array, mode: Aggregation = "token_mean") -> jax.Array:
    """The denominator ``aggregate`` divides by, computed once over the *whole* batch."""
    m = mask.astype(jnp.float32)
    if mode == "token_mean":
        return jnp.maximum(m.sum(), 1.0)
    if mode == "seq_mean_token_mean":
        return jnp.maximum((m.sum(-1) > 0).sum().astype(jnp.float32), 1.0)
    raise ValueError(f"unknown aggregation {mode!r}; expected 'token_mean' or 'seq_mean_token_mean'")


def batch_share(mask: jax.Array, mode: Aggregation, denom: jax.Array) -> jax.Array:
    """This micro-batch's share of the whole batch's ``normaliser`` (``denom``): weights a
    per-forward term (the MoE load-balancing loss) so that micro-batches sum to one batch's."""
    m = mask.astype(jnp.float32)
    part = m.sum() if mode == "token_mean" else (m.sum(-1) > 0).sum().astype(jnp.float32)
    return part / denom


def aggregate(
    per_token: jax.Array, mask: jax.Array, mode: Aggregation = "token_mean", denom: jax.Array | None = None
) -> jax.Array:
    """Scalar loss from per-token terms.

    ``token_mean``: sum over every masked token of the batch / their number (each token weighs the
    same, so long episodes weigh more). ``seq_mean_token_mean``: the mean over sequences of each
    sequence's token mean. ``denom`` defaults to this batch's own ``normaliser``; pass the full
    batch's when ``per_token`` is one micro-batch of it.
    """
    m = mask.astype(jnp.float32)
    denom = normaliser(mask, mode) if denom is None else denom
    if mode == "token_mean":
        return (per_token * m).sum() / denom
    if mode == "seq_mean_token_mean":
        per_seq = (per_token * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)
        return per_seq.sum() / denom
    raise ValueError(f"unknown aggregation {mode!r}; expected 'token_mean' or 'seq_mean_token_mean'")


def masked_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    mode: Aggregation = "token_mean",
    denom: jax.Array | None = None,
) -> jax.Array:
    """SFT loss: mean negative log-likelihood of ``targets`` [N, T] over ``mask`` (logits [N, T, V])."""
    return aggregate(-token_logprobs(logits, targets), mask, mode, denom)
