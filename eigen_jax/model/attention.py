"""Causal grouped-query attention, four ways with one meaning.

Every implementation computes softmax(q k^T / sqrt(d) + mask) v for queries at slots ``q_slot``
over keys at slots 0..S-1, a key being visible to a query when its slot is not later and it holds
a real token (``kv_valid``). They differ in memory and in where they run:

- ``dense``: the [B, heads, T, S] score array, materialized (XLA everywhere; exact reference).
- ``blockwise``: pure JAX online softmax over key blocks, one query block at a time, each query
  block recomputed in the backward pass; memory O(block_q x block_k) per head instead of O(T x S),
  any backend, any mask; key blocks wholly in a query block's future are skipped.
- ``splash``: the TPU Pallas kernel (jax.experimental.pallas.ops.tpu.splash_attention), causal
  with padding as segment ids, under ``shard_map`` over the mesh's batch and tensor axes.
- ``cudnn``: cuDNN's fused flash attention (``jax.nn.dot_product_attention``), NVIDIA GPUs only;
  right-padded batches (training batches are), padding given as sequence lengths.

Queries that see no key (padding rows) are the only place they may differ; no loss reads them.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

AttentionImpl = Literal["dense", "blockwise", "splash", "cudnn"]
IMPLS: tuple[str, ...] = ("dense", "blockwise", "splash", "cudnn")
NEG = -1e30  # finite "minus infinity": fully masked rows stay NaN-free
BLOCK = 512  # blockwise / splash tile (MaxText's default); shorter sequences use one tile


class AttnMask(NamedTuple):
    """Which keys each query sees: key slot s is visible to query t when s <= q_slot[t] and
    kv_valid[b, s]."""

    q_slot: jax.Array
    """[T] int: each query's slot on the key axis (0..T-1 without a cache)."""
    kv_valid: jax.Array
    """[B, S] bool: key slots that hold real tokens."""

    def dense(self) -> jax.Array:
        """[B, T, S] bool."""
        s = self.kv_valid.shape[1]
        causal = jnp.arange(s)[None, :] <= self.q_slot[:, None]
        return causal[None] & self.kv_valid[:, None, :]


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: AttnMask,
    impl: str = "dense",
    *,
    mesh: Mesh | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Attention output [B, T, heads, d] (float32) for q [B, T, heads, d], k/v [B, S, kv_heads, d];
    ``impl`` one of ``IMPLS``; ``mesh`` (splash) the mesh the batch is sharded over; ``interpret``
    runs the splash kernel in Pallas' interpreter (tests on CPU)."""
    t, nh, nkv = q.shape[1], q.shape[2], k.shape[2]
    if nh % nkv:
        raise ValueError(f"{nh} query heads do not group over {nkv} key/value heads")
    if impl == "dense":
        return _dense(q, k, v, mask)
    if impl == "blockwise":
        return _blockwise(q, k, v, mask, min(BLOCK, t), min(BLOCK, k.shape[1]))
    if impl == "splash":
        return _splash(q, k, v, mask, mesh, interpret)
    if impl == "cudnn":
        return _cudnn(q, k, v, mask)
    raise ValueError(f"attention {impl!r}: expected one of {', '.join(IMPLS)}")


def _grouped(q: jax.Array, nkv: int) -> jax.Array:
    b, t, nh, d = q.shape
    return q.reshape(b, t, nkv, nh // nkv, d)


def _dense(q, k, v, mask: AttnMask) -> jax.Array:
    b, t, nh, d = q.shape
    qg = _grouped(q, k.shape[2])
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k.astype(q.dtype), preferred_element_type=jnp.float32)
    scores = jnp.where(mask.dense()[:, None, None], scores * d**-0.5, NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(q.dtype), preferred_element_type=jnp.float32)
    return out.reshape(b, t, nh, d)


def _pad_axis(x: jax.Array, axis: int, to: int, value=0) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, to - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def _blockwise(q, k, v, mask: AttnMask, bq: int, bk: int) -> jax.Array:
    """Flash attention's schedule written in JAX: the online softmax keeps a running maximum and
    denominator per query, so no [T, S] array exists; ``jax.checkpoint`` on each query block makes
    the backward pass recompute its scores instead of storing them."""
    b, t, nh, d = q.shape
    s, nkv = k.shape[1], k.shape[2]
    g = nh // nkv
    tq, ts = -(-t // bq) * bq, -(-s // bk) * bk
    qb = _pad_axis(_grouped(q, nkv), 1, tq).reshape(b, tq // bq, bq, nkv, g, d).swapaxes(0, 1)
    slots = _pad_axis(mask.q_slot.astype(jnp.int32), 0, tq, -1).reshape(tq // bq, bq)
    kb = _pad_axis(k.astype(q.dtype), 1, ts).reshape(b, ts // bk, bk, nkv, d).swapaxes(0, 1)
    vb = _pad_axis(v.astype(q.dtype), 1, ts).reshape(b, ts // bk, bk, nkv, d).swapaxes(0, 1)
    valid = _pad_axis(mask.kv_valid, 1, ts, False).reshape(b, ts // bk, bk).swapaxes(0, 1)
    key_slots = jnp.arange(ts).reshape(ts // bk, bk)
    scale = d**-0.5

    @jax.checkpoint
    def query_block(qi: jax.Array, qs: jax.Array) -> jax.Array:
        def step(carry, kv):
            kj, vj, valid_j, slot_j = kv

            def visit(carry):
                acc, top, den = carry
                sc = jnp.einsum("btkgd,bskd->bkgts", qi, kj, preferred_element_type=jnp.float32) * scale
                seen = ((slot_j[None, :] <= qs[:, None])[None] & valid_j[:, None, :])[:, None, None]
                sc = jnp.where(seen, sc, NEG)
                new_top = jnp.maximum(top, sc.max(-1))
                p = jnp.where(seen, jnp.exp(sc - new_top[..., None]), 0.0)
                fix = jnp.exp(top - new_top)
                pv = jnp.einsum(
                    "bkgts,bskd->bkgtd", p.astype(qi.dtype), vj, preferred_element_type=jnp.float32
                )
                return acc * fix[..., None] + pv, new_top, den * fix + p.sum(-1)

            # a key block wholly after every query of this block adds nothing: skip its work
            return jax.lax.cond(slot_j[0] <= qs.max(), visit, lambda c: c, carry), None

        init = (
            jnp.zeros((b, nkv, g, bq, d), jnp.float32),
            jnp.full((b, nkv, g, bq), NEG, jnp.float32),
            jnp.zeros((b, nkv, g, bq), jnp.float32),
        )
        (acc, _, den), _ = jax.lax.scan(step, init, (kb, vb, valid, key_slots))
        out = acc / jnp.maximum(den, 1e-30)[..., None]  # a query that saw nothing gets 0
        return out.transpose(0, 3, 1, 2, 4)  # [b, bq, nkv, g, d]

    out = jax.lax.map(lambda a: query_block(*a), (qb, slots))  # [nq, b, bq, nkv, g, d]
    return out.swapaxes(0, 1).reshape(b, tq, nh, d)[:, :t]


def _platform(mesh: Mesh | None) -> str:
    return mesh.devices.flat[0].platform if mesh is not None else jax.devices()[0].platform


def _splash(q, k, v, mask: AttnMask, mesh: Mesh | None, interpret: bool) -> jax.Array:
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    if not interpret and _platform(mesh) != "tpu":
        raise ValueError(
            f"model.attention: splash is a TPU kernel and this model is on {_platform(mesh)}; "
            "use blockwise (any backend) or cudnn (NVIDIA GPUs)"
        )
    t, nh, d = q.shape[1:]
    s, nkv = k.shape[1], k.shape[2]
    if s != t:
        raise ValueError("splash attention serves full sequences (no KV cache): queries and keys differ")
    block = min(BLOCK, -(-t // 128) * 128)
    tp = -(-t // block) * block
    # Padding as segments: real tokens are segment 1, padding 0, so real queries see only real
    # keys; the causal mask is the kernel's own (whole tiles above the diagonal are skipped).
    seg = _pad_axis(mask.kv_valid.astype(jnp.int32), 1, tp)
    heads = sm.MultiHeadMask([sm.CausalMask((tp, tp)) for _ in range(nh // nkv)])
    sizes = sk.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    kernel = sk.make_splash_mqa(heads, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)

    def local(q, k, v, seg):  # one device's rows and kv heads: [b, t, h, d]
        qg = _grouped(_pad_axis(q, 1, tp) * d**-0.5, k.shape[2]).transpose(0, 2, 3, 1, 4)  # [b,kv,g,t,d]
        kt = _pad_axis(k.astype(q.dtype), 1, tp).transpose(0, 2, 1, 3)  # [b, kv, t, d]
        vt = _pad_axis(v.astype(q.dtype), 1, tp).transpose(0, 2, 1, 3)

        def row(qr, kr, vr, sr):  # over kv heads of one row
            ids = sk.SegmentIds(sr, sr)
            return jax.vmap(lambda qh, kh, vh: kernel(qh, kh, vh, segment_ids=ids))(qr, kr, vr)

        out = jax.vmap(row)(qg, kt, vt, seg)  # [b, kv, g, t, d]
        bl, _, _, _, _ = out.shape
        return out.transpose(0, 3, 1, 2, 4).reshape(bl, tp, -1, d)[:, :t].astype(jnp.float32)

    if mesh is None or mesh.size == 1:
        return local(q, k, v, seg)
    heads_axis = "tensor" if nkv % mesh.shape["tensor"] == 0 else None
    spec = P(("data", "fsdp", "expert"), None, heads_axis, None)  # sharding.BATCH
    rows = P(("data", "fsdp", "expert"), None)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, rows), out_specs=spec, check_vma=False)
    return fn(q, k, v, seg)


def _cudnn(q, k, v, mask: AttnMask) -> jax.Array:
    if _platform(None) != "gpu":
        raise ValueError(
            f"model.attention: cudnn needs an NVIDIA GPU and this process runs on {_platform(None)}; "
            "use blockwise (any backend) or splash (TPU)"
        )
    lengths = mask.kv_valid.sum(-1).astype(jnp.int32)  # right padding: real tokens come first
    out = jax.nn.dot_product_attention(
        q,
        k.astype(q.dtype),
        v.astype(q.dtype),
        is_causal=True,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation="cudnn",
    )
    return out.astype(jnp.float32)
