"""The decoder (Flax NNX) shared by the learner and the embedded sampler.

Module and parameter names mirror HF's (``layers.3.self_attn.q_proj.kernel`` is
``model.layers.3.self_attn.q_proj.weight`` transposed), so checkpoint I/O and sharding rules are
simple tables. Numerics follow HF: RMSNorm and softmax in fp32, RoPE tables in fp32; matmuls take
``dtype`` inputs and accumulate in fp32 (bf16 inputs are the fast path on CPUs, GPUs and TPUs).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from eigen_jax.model.attention import IMPLS, AttnMask, attend
from eigen_jax.model.config import DecoderConfig
from eigen_jax.model.moe import (
    BalanceStats,
    Forced,
    Routing,
    SparseMoE,
    balance_loss,
    balance_stats,
    kernel_for,
)
from eigen_jax.model.rope import apply_rope, inverse_frequencies, rope_tables
from eigen_jax.ops import lm_logits


class LayerCache(NamedTuple):
    """One layer's KV cache: [B, S, n_kv_heads, head_dim] each."""

    k: jax.Array
    v: jax.Array


class Linear(nnx.Module):
    def __init__(self, din: int, dout: int, *, bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (din, dout), param_dtype) * 0.02)
        self.bias = nnx.Param(jnp.zeros((dout,), param_dtype)) if bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype), preferred_element_type=jnp.float32
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * xf.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        h, nh, nkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        if nh % nkv:
            raise ValueError(f"num_attention_heads ({nh}) must be a multiple of num_key_value_heads ({nkv})")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Linear(h, nh * hd, bias=cfg.qkv_bias, **kw)
        self.k_proj = Linear(h, nkv * hd, bias=cfg.qkv_bias, **kw)
        self.v_proj = Linear(h, nkv * hd, bias=cfg.qkv_bias, **kw)
        self.o_proj = Linear(nh * hd, h, bias=cfg.o_bias, **kw)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, param_dtype=param_dtype) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, param_dtype=param_dtype) if cfg.qk_norm else None
        self.nh, self.nkv, self.hd, self.dtype = nh, nkv, hd, dtype
        self.impl, self.mesh, self.interpret = "dense", None, False  # Decoder.use_attention sets them

    def __call__(self, x, cos, sin, mask: AttnMask, cache: LayerCache | None, cache_index):
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.nh, self.hd)
        k = self.k_proj(x).reshape(b, t, self.nkv, self.hd)
        v = self.v_proj(x).reshape(b, t, self.nkv, self.hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k_all = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), cache_index, axis=1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), cache_index, axis=1)
            cache, k, v = LayerCache(k_all, v_all), k_all, v_all
        # A decode step is one query over the cache: the dense scores are [B, heads, 1, S], small.
        # A prefill into the cache may be long, and only blockwise takes any mask.
        impl = self.impl if cache is None else "blockwise" if self.impl != "dense" and t > 1 else "dense"
        out = attend(q, k, v, mask, impl, mesh=self.mesh, interpret=self.interpret)
        return self.o_proj(out.reshape(b, t, self.nh * self.hd).astype(self.dtype)), cache


class MLP(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(bias=cfg.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, sparse: bool = False, dtype, param_dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = Attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        ffn = SparseMoE if sparse else MLP
        self.mlp = ffn(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.sparse = sparse

    def __call__(self, x, cos, sin, mask, cache, cache_index, forced: Forced | None = None):
        """(output, cache, routing: None in a dense layer)."""
        h, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_index)
        x = x + h
        if not self.sparse:
            return x + self.mlp(self.post_attention_layernorm(x)), cache, None
        y, routing = self.mlp(self.post_attention_layernorm(x), forced)
        return x + y, cache, routing


class Routes(NamedTuple):
    """What the sparse layers of one forward pass did (``Decoder.hidden_routed``)."""

    experts: jax.Array
    """[B, T, n_moe_layers, k] int32: the experts each token went to, per sparse layer."""
    balance_loss: jax.Array
    """Scalar: the load-balancing loss over the real tokens (``moe.balance_loss``); 0 in a call
    with a KV cache (inference: nothing trains on it, and a decode step should not pay for it)."""


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
"""Activation checkpointing per block: ``full`` keeps only each block's input and recomputes the
block in the backward pass; ``save_dots`` also keeps the matmul outputs (recomputes norms,
softmax, activations)."""


class Decoder(nnx.Module):
    """Decoder-only transformer for the Qwen3 and Llama/Qwen2 families.

    Args:
        cfg: architecture (``DecoderConfig.from_hf(config_json)``).
        dtype: compute dtype of activations and matmul inputs (float32 for parity tests,
            bfloat16 for real runs).
        param_dtype: storage dtype of parameters.

    ``remat`` (an attribute, ``"none"`` or a ``REMAT_POLICIES`` key; set it after building or
    loading) checkpoints each block's activations for the backward pass: the same gradients,
    less activation memory, more compute. ``logits_chunk`` (an attribute; 0 = off) is how many
    positions the losses' LM head computes at once (``ops.head_logprobs``); ``use_attention``
    picks the attention implementation.
    """

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = "none"
        self.logits_chunk = 0
        self.embed_tokens = nnx.Param(
            jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size), param_dtype) * 0.02
        )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List(
            [Block(cfg, sparse=cfg.is_moe_layer(i), **kw) for i in range(cfg.num_hidden_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.lm_head = (
            None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, bias=False, **kw)
        )

    def use_attention(self, impl: str, mesh: Mesh | None = None, *, interpret: bool = False) -> Decoder:
        """Compute attention with ``impl`` (``attention.IMPLS``) in every layer; ``mesh``: the one
        the model is sharded over (splash and MoE dispatch run under ``shard_map`` on it);
        ``interpret`` runs the Pallas kernels (splash, megablox) in Pallas' interpreter (tests on
        CPU). Returns the model."""
        if impl not in IMPLS:
            raise ValueError(f"model.attention {impl!r}: expected one of {', '.join(IMPLS)}")
        for layer in self.layers:
            attn = layer.self_attn
            attn.impl, attn.mesh, attn.interpret = impl, mesh, interpret
            if layer.sparse:  # MoE layers dispatch each device's own rows on the mesh
                layer.mlp.mesh, layer.mlp.interpret = mesh, interpret
        return self

    def use_experts(self, kernel: str = "auto", dispatch: str = "weights") -> Decoder:
        """MoE layers' grouped matmul (``model.moe_kernel``: ``moe.KERNELS`` or ``auto``, chosen by
        the platform of the mesh ``use_attention`` set, else JAX's default backend) and expert
        dispatch (``model.expert_dispatch``). Returns the model; a dense model is unchanged."""
        for layer in self.layers:
            if layer.sparse:
                moe = layer.mlp
                mesh = moe.mesh
                platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
                moe.kernel, moe.dispatch = kernel_for(kernel, platform, moe.interpret), dispatch
        return self

    @property
    def attention(self) -> str:
        """The attention implementation the layers use (``use_attention`` sets it)."""
        return self.layers[0].self_attn.impl

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        mask: jax.Array | None = None,
        cache: list[LayerCache] | None = None,
        cache_index: jax.Array | int = 0,
        last_only: bool = False,
    ) -> tuple[jax.Array, list[LayerCache] | None]:
        """Logits (fp32, [B, T, vocab]) and the updated cache.

        Without ``cache``: ``mask`` [B, T] marks real tokens (1) vs padding (0); attention is causal
        over the sequence. With ``cache`` (length S): this call's tokens are written at slots
        ``cache_index .. cache_index+T-1`` and ``mask`` [B, S] marks which slots hold real tokens
        (all rows share slot indices: ragged batches are left-padded).
        ``last_only`` computes logits for the last position only ([B, 1, vocab]): a prefill needs
        no more, and the LM head dominates a small model's cost.
        """
        x, new_cache = self.hidden(tokens, positions, mask, cache, cache_index)
        return self.logits(x[:, -1:] if last_only else x), new_cache

    def hidden(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        mask: jax.Array | None = None,
        cache: list[LayerCache] | None = None,
        cache_index: jax.Array | int = 0,
    ) -> tuple[jax.Array, list[LayerCache] | None]:
        """The final normed hidden states [B, T, hidden] (what the LM head reads) and the updated
        cache; arguments as ``__call__``. Losses take these and apply the head in chunks."""
        x, new_cache, _ = self.hidden_routed(tokens, positions, mask, cache, cache_index)
        return x, new_cache

    def hidden_routed(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        mask: jax.Array | None = None,
        cache: list[LayerCache] | None = None,
        cache_index: jax.Array | int = 0,
        routes: jax.Array | None = None,
        replay: jax.Array | None = None,
    ) -> tuple[jax.Array, list[LayerCache] | None, Routes | None]:
        """``hidden`` and, for an MoE model, the ``Routes`` taken (None for a dense one).

        ``routes`` [B, T, n_moe_layers, k] with ``replay`` [B, T] (bool): on the marked tokens
        every sparse layer uses the given experts instead of its router's choice (routing
        replay); the gate weights stay the current router's."""
        b, t = tokens.shape
        x = jnp.take(self.embed_tokens[...], tokens, axis=0).astype(self.dtype)
        cos, sin = rope_tables(jnp.asarray(inverse_frequencies(self.cfg)), positions)
        if cache is None:
            valid = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
            attn_mask = AttnMask(jnp.arange(t), valid)
        else:
            attn_mask = AttnMask(cache_index + jnp.arange(t), mask.astype(bool))
        new_cache = [] if cache is not None else None
        routings: list[Routing] = []
        for i, layer in enumerate(self.layers):
            forced = None
            if layer.sparse and routes is not None:
                j = len(routings)
                forced = Forced(routes[:, :, j].reshape(b * t, -1), replay.reshape(b * t).astype(bool))
            if self.remat != "none" and cache is None:
                run = nnx.remat(lambda blk, *a: blk(*a), policy=REMAT_POLICIES[self.remat])
                x, c, routing = run(layer, x, cos, sin, attn_mask, None, cache_index, forced)
            else:
                x, c, routing = layer(
                    x, cos, sin, attn_mask, None if cache is None else cache[i], cache_index, forced
                )
            if routing is not None:
                routings.append(routing)
            if new_cache is not None:
                new_cache.append(c)
        return self.norm(x), new_cache, self._routes(routings, b, t, mask, training=cache is None)

    @staticmethod
    def _routes(
        routings: list[Routing], b: int, t: int, valid: jax.Array | None, training: bool
    ) -> Routes | None:
        if not routings:
            return None
        experts = jnp.stack([r.experts.reshape(b, t, -1) for r in routings], axis=2)
        if not training:
            return Routes(experts, jnp.zeros((), jnp.float32))
        v = jnp.ones((b * t,), jnp.float32) if valid is None else valid.reshape(b * t)
        stats: list[BalanceStats] = [balance_stats(r, v) for r in routings]
        return Routes(experts, balance_loss(stats))

    def head(self) -> tuple[jax.Array, bool]:
        """The LM head's weight in the compute dtype and whether it is the (tied) embedding
        ([vocab, hidden]) rather than a [hidden, vocab] kernel; ``lm_logits`` applies it."""
        if self.lm_head is None:
            return self.embed_tokens[...].astype(self.dtype), True
        return self.lm_head.kernel[...].astype(self.dtype), False

    def logits(self, x: jax.Array) -> jax.Array:
        """fp32 logits [..., vocab] of hidden states ``x`` [..., hidden]."""
        return lm_logits(x, *self.head())

    def init_cache(self, batch: int, length: int, dtype=None) -> list[LayerCache]:
        """An empty KV cache for ``batch`` sequences of up to ``length`` tokens."""
        shape = (batch, length, self.cfg.num_key_value_heads, self.cfg.head_dim)
        dt = dtype or self.dtype
        return [
            LayerCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for _ in range(self.cfg.num_hidden_layers)
        ]


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Position ids for a padded batch: 0, 1, ... over real tokens (left or right padding)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
