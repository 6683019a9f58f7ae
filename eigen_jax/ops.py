"""Small pure functions over logits shared by the learner and the sampler."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
    """log p(target) under softmax(logits / temperature), in fp32; shapes [..., V] and [...]."""
    # logit[target] - logsumexp(logits) rather than indexing a log_softmax: no [..., V] log-prob
    # array is materialised, which halves a 151k-vocab loss's forward+backward time on CPU.
    scaled = logits.astype(jnp.float32) / temperature
    picked = jnp.take_along_axis(scaled, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(scaled, axis=-1)


def next_token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0) -> jax.Array:
    """[B, T-1]: logprob of ``tokens[:, 1:]`` given the prefix, from logits [B, T, V]."""
    return token_logprobs(logits[:, :-1], tokens[:, 1:], temperature)


def token_entropy(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Entropy (nats) of softmax(logits / temperature) per position, in fp32; [..., V] -> [...]."""
    scaled = logits.astype(jnp.float32) / temperature
    logp = jax.nn.log_softmax(scaled, axis=-1)
    return -(jnp.exp(logp) * logp).sum(-1)


def lm_logits(x: jax.Array, weight: jax.Array, tied: bool) -> jax.Array:
    """fp32 logits of ``x`` [..., hidden] under an LM-head ``weight`` (``Decoder.head``): a tied
    head is the embedding [vocab, hidden], contracted on its hidden axis (no transposed copy)."""
    dims = (((x.ndim - 1,), (1 if tied else 0,)), ((), ()))
    return jax.lax.dot_general(x.astype(weight.dtype), weight, dims, preferred_element_type=jnp.float32)


def head_logprobs(
    x: jax.Array,
    head: tuple[jax.Array, bool],
    targets: jax.Array,
    temperature: float = 1.0,
    chunk: int = 0,
    entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """Logprob of ``targets`` [N, L] (and, with ``entropy``, the entropy per position) under the
    LM head ``head`` = (weight, tied) applied to hidden states ``x`` [N, L, hidden].

    ``chunk`` > 0 computes the logits ``chunk`` positions at a time and recomputes each chunk in
    the backward pass, so at most [N, chunk, vocab] logits exist at once instead of [N, L, vocab]
    (a 151k vocabulary at 8k tokens is 4.6 GiB per row in fp32). Same values either way.
    """

    def stats(xc: jax.Array, tc: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = lm_logits(xc, *head)
        ent = token_entropy(logits, temperature) if entropy else jnp.zeros(tc.shape, jnp.float32)
        return token_logprobs(logits, tc, temperature), ent

    n, length = targets.shape
    if chunk <= 0 or chunk >= length:
        lp, ent = stats(x, targets)
        return lp, ent if entropy else None
    padded = -(-length // chunk) * chunk
    xs = jnp.pad(x, ((0, 0), (0, padded - length), (0, 0))).reshape(n, -1, chunk, x.shape[-1])
    ts = jnp.pad(targets, ((0, 0), (0, padded - length))).reshape(n, -1, chunk)
    lp, ent = jax.lax.map(lambda a: jax.checkpoint(stats)(*a), (xs.swapaxes(0, 1), ts.swapaxes(0, 1)))
    lp, ent = (a.swapaxes(0, 1).reshape(n, padded)[:, :length] for a in (lp, ent))
    return lp, ent if entropy else None
