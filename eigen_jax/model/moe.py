"""Sparse mixture-of-experts feed-forward (Qwen3-MoE): a softmax router, top-k experts per token,
each expert a SwiGLU MLP that computes only the tokens routed to it.

Dispatch is sort-based: the (token, expert) assignments are sorted by expert and each expert's
contiguous run goes through one grouped matmul, so compute scales with ``num_experts_per_tok``,
not ``num_experts``, and no token is ever dropped (no capacity factor). Three grouped-matmul
kernels (``KERNELS``, ``model.moe_kernel``): ``jax.lax.ragged_dot`` (XLA's; XLA:CPU and XLA:TPU
expand it into dense per-expert work, XLA:GPU lowers it to cuDNN's grouped matmul where enabled),
the Pallas TPU kernel ``megablox`` (what MaxText uses), whose tiles visit only the routed rows,
and ``tiled``, the same tiling in plain JAX (a loop over row tiles, each times its own expert's
kernel): any backend, the default on CPU.

Routing replay: ``forced`` routes (recorded by the sampler for the tokens it generated) replace
the router's own top-k choice on the rows marked for replay; the gate weights are still the
current router's probabilities of those experts, so the router keeps its gradient (R3).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from eigen_jax.model.config import DecoderConfig
from eigen_jax.model.sharding import BATCH, batch_ways


class Routing(NamedTuple):
    """One MoE layer's routing of N tokens."""

    experts: jax.Array
    """[N, k] int32: the experts each token went to (the router's top-k unless replayed)."""
    weights: jax.Array
    """[N, k] fp32: their gate weights (renormalised over the k when ``norm_topk_prob``)."""
    probs: jax.Array
    """[N, E] fp32: the router's softmax over all experts (for the load-balancing loss)."""


class Forced(NamedTuple):
    """Routes to replay: ``experts`` [N, k] int, used on the rows where ``use`` [N] is true."""

    experts: jax.Array
    use: jax.Array


def route(logits: jax.Array, k: int, norm_topk_prob: bool, forced: Forced | None = None) -> Routing:
    """Top-``k`` softmax routing of router ``logits`` [N, E] (pure; fp32 softmax as HF)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    top_w, top_i = jax.lax.top_k(probs, k)
    if forced is not None:
        top_i = jnp.where(forced.use[:, None], forced.experts.astype(jnp.int32), top_i)
        top_w = jnp.take_along_axis(probs, top_i, axis=-1)
    if norm_topk_prob:
        top_w = top_w / jnp.sum(top_w, axis=-1, keepdims=True)
    return Routing(top_i.astype(jnp.int32), top_w, probs)


KERNELS: tuple[str, ...] = ("ragged_dot", "megablox", "tiled")
TILE_ROWS = 128  # megablox row tile: a tile straddling two experts' runs is computed for both,
# so the waste is up to one tile per expert; 128 keeps it at 25% for 128 experts x 64k rows


def kernel_for(choice: str, platform: str, interpret: bool = False) -> str:
    """``model.moe_kernel`` resolved for a device ``platform``: ``auto`` is megablox on TPU,
    tiled on CPU (BENCHMARKS.md "MoE"), ragged_dot on GPUs (cuDNN's grouped matmul where XLA has
    it; not measured here). Megablox is a TPU kernel; off TPU it runs only in Pallas' interpreter."""
    if choice == "auto":
        return {"tpu": "megablox", "cpu": "tiled"}.get(platform, "ragged_dot")
    if choice not in KERNELS:
        raise ValueError(f"model.moe_kernel {choice!r}: expected auto or one of {', '.join(KERNELS)}")
    if choice == "megablox" and platform != "tpu" and not interpret:
        raise ValueError(
            f"model.moe_kernel megablox is a TPU (Pallas) kernel and this run's devices are "
            f"{platform}: use auto or ragged_dot"
        )
    return choice


def _tile(d: int) -> int:
    """A megablox block size along a contracted / output dimension: the largest of 512, 256, 128
    dividing ``d`` (TPU blocks are multiples of 128 lanes), else the whole dimension."""
    return next((t for t in (512, 256, 128) if d % t == 0), d)


def tiled_rows(m: int, g: int) -> int:
    """The ``tiled`` kernel's row tile for ``m`` rows in ``g`` runs: about one run's share,
    a power of two from 8 to 128, so padding every run to whole tiles at most doubles the rows."""
    share = max(1, -(-m // g))
    return min(128, max(8, 1 << (share - 1).bit_length()))


def _tile_layout(m: int, g: int, sizes: jax.Array):
    """Where the ``tiled`` kernel puts each row: (tile rows, tiles, slot of each row in the padded
    copy (``tiles * tm``: none), whether a kernel takes the row, each tile's run (``g``: none))."""
    tm = tiled_rows(m, g)
    nt = -(-m // tm) + g  # sum_j ceil(s_j / tm) <= m / tm + g
    ends = jnp.cumsum(sizes[:g])
    tiles = -(-sizes[:g] // tm)
    tile_ends = jnp.cumsum(tiles)
    row = jnp.arange(m)
    run = jnp.searchsorted(ends, row, side="right")  # g: the last run, nobody's here
    taken = run < g
    j = jnp.minimum(run, g - 1)
    slot = jnp.where(taken, (tile_ends[j] - tiles[j]) * tm + row - (ends[j] - sizes[j]), nt * tm)
    owner = jnp.searchsorted(tile_ends, jnp.arange(nt), side="right")
    return tm, nt, slot, taken, owner


def _pad_rows(x: jax.Array, slot: jax.Array, nt: int, tm: int) -> jax.Array:
    return jnp.zeros((nt, tm, x.shape[1]), x.dtype).at[slot // tm, slot % tm].set(x, mode="drop")


def _unpad_rows(y: jax.Array, slot: jax.Array, taken: jax.Array) -> jax.Array:
    y = jnp.take(y.reshape(-1, y.shape[-1]), jnp.where(taken, slot, 0), axis=0)
    return jnp.where(taken[:, None], y, 0.0)


@jax.custom_vjp
def _tiled_matmul(a: jax.Array, w: jax.Array, sizes: jax.Array) -> jax.Array:
    """``grouped_matmul`` in plain JAX for any backend: every run is copied to start on a tile
    boundary, and a loop over the tiles multiplies each by its own run's kernel only; tiles past
    the last taken run are skipped. Work: the routed rows plus at most a tile per run."""
    return _tiled_fwd(a, w, sizes)[0]


def _tiled_fwd(a, w, sizes):
    g = w.shape[0]
    tm, nt, slot, taken, owner = _tile_layout(a.shape[0], g, sizes)
    padded = _pad_rows(a, slot, nt, tm)

    def tile(_, xs):
        t, o = xs
        y = jax.lax.cond(
            o < g,
            lambda: jnp.dot(t, w[jnp.minimum(o, g - 1)], preferred_element_type=jnp.float32),
            lambda: jnp.zeros((tm, w.shape[2]), jnp.float32),
        )
        return None, y

    out = jax.lax.scan(tile, None, (padded, owner))[1]
    return _unpad_rows(out, slot, taken), (padded, w, slot, taken, owner)


def _tiled_bwd(res, dy):
    # written out rather than differentiated: autodiff of the loop would add a zero-filled
    # gradient of every kernel at every tile; here each tile adds into its own kernel only
    padded, w, slot, taken, owner = res
    nt, tm, _ = padded.shape
    g = w.shape[0]
    dyp = _pad_rows(jnp.where(taken[:, None], dy, 0.0), slot, nt, tm)

    def tile(dw, xs):
        t, d, o = xs
        i = jnp.minimum(o, g - 1)

        def grads():
            da = jnp.dot(d, w[i].T.astype(d.dtype), preferred_element_type=jnp.float32)
            dwi = jnp.dot(t.T.astype(jnp.float32), d, preferred_element_type=jnp.float32)
            return da, dw.at[i].add(dwi)

        da, dw = jax.lax.cond(o < g, grads, lambda: (jnp.zeros((tm, w.shape[1]), jnp.float32), dw))
        return dw, da

    dw, da = jax.lax.scan(tile, jnp.zeros(w.shape, jnp.float32), (padded, dyp, owner))
    return _unpad_rows(da, slot, taken).astype(padded.dtype), dw.astype(w.dtype), None


_tiled_matmul.defvjp(_tiled_fwd, _tiled_bwd)


def grouped_matmul(
    a: jax.Array, w: jax.Array, sizes: jax.Array, kernel: str = "ragged_dot", interpret: bool = False
) -> jax.Array:
    """Rows of ``a`` [M, K] in runs of ``sizes`` [G+1] (the last run: rows no kernel here takes),
    run g times ``w[g]`` ([G, K, N]); rows of the last run come out 0. fp32 [M, N]."""
    g = w.shape[0]
    if kernel == "tiled":
        return _tiled_matmul(a, w, sizes)
    if kernel == "ragged_dot":
        y = jax.lax.ragged_dot(a, w, sizes[:g], preferred_element_type=jnp.float32)
        return jnp.where((jnp.arange(a.shape[0]) < jnp.sum(sizes[:g]))[:, None], y, 0.0)
    from jax.experimental.pallas.ops.tpu.megablox import ops  # Pallas: only when asked for

    m = a.shape[0]
    tm = TILE_ROWS if m >= TILE_ROWS else -(-m // 16) * 16
    pad = -m % tm  # megablox tiles whole rows: padding rows join the last (untaken) run
    a = jnp.pad(a, ((0, pad), (0, 0)))
    sizes = sizes.at[g].add(pad)
    tiles = (tm, _tile(a.shape[1]), _tile(w.shape[2]))
    # more group sizes than kernels: megablox computes runs 0..G-1 and zeroes the rest
    y = ops.gmm(a, w, sizes, jnp.float32, tiles, None, None, False, interpret)
    return y[:m]


def grouped_ffn(
    x: jax.Array,
    routing: Routing,
    gate: jax.Array,
    up: jax.Array,
    down: jax.Array,
    dtype,
    first: jax.Array | int | None = None,
    kernel: str = "ragged_dot",
    interpret: bool = False,
) -> jax.Array:
    """sum_j w_j * expert_{e_j}(x) per token: ``x`` [N, H]; expert kernels gate/up [E, H, I],
    down [E, I, H] ([in, out] per expert, as every kernel here). fp32 result [N, H].

    ``first``: the kernels are experts ``first .. first + E - 1`` of a larger set (expert
    parallelism); assignments to any other expert contribute nothing here. ``kernel``: the
    grouped matmul (``KERNELS``); ``interpret`` runs megablox in Pallas' interpreter (CPU tests)."""
    n, k = routing.experts.shape
    e = gate.shape[0]
    flat = routing.experts.reshape(-1)
    weights = routing.weights.reshape(-1)
    if first is not None:  # other devices' experts: one group past the local ones, weight 0
        mine = (flat >= first) & (flat < first + e)
        flat, weights = jnp.where(mine, flat - first, e), jnp.where(mine, weights, 0.0)
    order = jnp.argsort(flat, stable=True)  # assignments grouped by expert
    token = order // k
    sizes = jnp.bincount(flat, length=e + 1).astype(jnp.int32)  # [E + 1]: the last, not ours
    xs = jnp.take(x.astype(dtype), token, axis=0)

    def mm(a, w):
        return grouped_matmul(a, w.astype(dtype), sizes, kernel, interpret)

    h = (jax.nn.silu(mm(xs, gate)) * mm(xs, up)).astype(dtype)
    y = mm(h, down) * jnp.take(weights, order)[:, None]
    return jnp.zeros((n, x.shape[-1]), jnp.float32).at[token].add(y)


class BalanceStats(NamedTuple):
    """Per-layer sums for the Switch-Transformer load-balancing loss (HF's
    ``load_balancing_loss_func``), combined over layers by ``balance_loss``."""

    counts: jax.Array
    """[E]: top-k assignments per expert over the real tokens."""
    prob_sum: jax.Array
    """[E]: router probability per expert summed over the real tokens."""
    rows: jax.Array
    """Scalar: how many real tokens."""


def balance_stats(routing: Routing, valid: jax.Array) -> BalanceStats:
    """``valid`` [N]: 1 on real tokens (padding does not count)."""
    v = valid.astype(jnp.float32)
    e = routing.probs.shape[-1]
    one_hot = jax.nn.one_hot(routing.experts, e, dtype=jnp.float32).sum(1)  # [N, E]
    return BalanceStats((one_hot * v[:, None]).sum(0), (routing.probs * v[:, None]).sum(0), v.sum())


def balance_loss(stats: list[BalanceStats]) -> jax.Array:
    """E * sum_e f_e * P_e with f (assignment share) and P (mean router probability) pooled over
    every MoE layer's tokens, exactly as transformers computes ``aux_loss``."""
    if not stats:
        return jnp.zeros((), jnp.float32)
    rows = sum(s.rows for s in stats)
    counts = sum(s.counts for s in stats) / jnp.maximum(rows, 1.0)
    probs = sum(s.prob_sum for s in stats) / jnp.maximum(rows, 1.0)
    return jnp.sum(counts * probs) * stats[0].counts.shape[0]


class Experts(nnx.Module):
    """``num_experts`` SwiGLU MLPs stored stacked ([E, in, out] kernels): HF's per-expert
    ``experts.{e}.{gate,up,down}_proj.weight`` are slices of these, transposed."""

    def __init__(self, cfg: DecoderConfig, *, param_dtype, rngs: nnx.Rngs):
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size

        def init(shape):
            return nnx.Param(jax.random.normal(rngs.params(), shape, param_dtype) * 0.02)

        self.gate_proj = init((e, h, i))
        self.up_proj = init((e, h, i))
        self.down_proj = init((e, i, h))


class Router(nnx.Module):
    """The router's [hidden, experts] kernel (HF: ``mlp.gate.weight``, transposed)."""

    def __init__(self, cfg: DecoderConfig, *, param_dtype, rngs: nnx.Rngs):
        shape = (cfg.hidden_size, cfg.num_experts)
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), shape, param_dtype) * 0.02)


class SparseMoE(nnx.Module):
    """Router (``gate``, HF's name) and experts of one MoE layer.

    ``mesh`` (set by ``Decoder.use_attention``): with one, each device routes its own rows
    (``shard_map`` over the batch axes), by ``dispatch`` (``model.expert_dispatch``):
    ``weights`` gathers the layer's experts from the ``expert`` and ``fsdp`` axes (one layer at a
    time, as FSDP gathers any weight) and computes the device's own rows; ``rows`` keeps the
    device's slice of the experts, gathers the rows of its ``expert`` group, computes the
    assignments to its own experts and sums the partial outputs back onto each row's device
    (all-gather in, reduce-scatter out: Megatron's "allgather" dispatcher). Either way experts
    stay split over ``tensor`` (each device computes its slice of every expert's hidden units;
    one all-reduce). Without a mesh, XLA partitions the whole-batch sort as it sees fit.
    """

    def __init__(self, cfg: DecoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.gate = Router(cfg, param_dtype=param_dtype, rngs=rngs)
        self.experts = Experts(cfg, param_dtype=param_dtype, rngs=rngs)
        self.k, self.norm, self.dtype = cfg.num_experts_per_tok, cfg.norm_topk_prob, dtype
        self.mesh: Mesh | None = None
        self.dispatch = "weights"  # or "rows" (``model.expert_dispatch``)
        self.kernel, self.interpret = "ragged_dot", False  # ``model.moe_kernel``, resolved

    def __call__(self, x: jax.Array, forced: Forced | None = None) -> tuple[jax.Array, Routing]:
        """``x`` [B, T, H] -> (output [B, T, H], routing of the B*T tokens)."""
        b, t, _ = x.shape
        ex = self.experts
        weights = (self.gate.kernel[...], ex.gate_proj[...], ex.up_proj[...], ex.down_proj[...])
        k = self.k
        fe = jnp.zeros((b, t, k), jnp.int32) if forced is None else forced.experts.reshape(b, t, k)
        fu = jnp.zeros((b, t), bool) if forced is None else forced.use.reshape(b, t)
        sharded = self.mesh is not None and self.mesh.size > 1
        per_device = sharded and b % batch_ways(self.mesh) == 0
        # rows that do not split: XLA partitions the call itself, and cannot split a Pallas one
        kernel = "ragged_dot" if sharded and not per_device else self.kernel
        run = functools.partial(
            _moe_rows,
            k=k,
            norm=self.norm,
            dtype=self.dtype,
            replay=forced is not None,
            kernel=kernel,
            interpret=self.interpret,
        )
        if per_device:
            run = _on_mesh(run, self.mesh, weights, self.dispatch)
        y, experts, gate_w, probs = run(x, *weights, fe, fu)
        routing = Routing(experts.reshape(b * t, k), gate_w.reshape(b * t, k), probs.reshape(b * t, -1))
        return y, routing


def _moe_rows(
    x,
    router,
    gate,
    up,
    down,
    forced_experts,
    forced_use,
    *,
    k,
    norm,
    dtype,
    replay,
    kernel,
    interpret,
    tensor=None,
    expert=None,
):
    """One MoE layer on rows ``x`` [b, t, H]: (output, experts [b, t, k], their weights, probs).
    ``tensor``: the mesh axis the experts' hidden units are split over (partial sums added);
    ``expert``: the axis the experts themselves are split over (this device holds a contiguous
    slice): the rows of the axis' devices are gathered, each device computes the assignments to
    its own experts, and the partial outputs are summed back onto the rows' own devices."""
    b, t, h = x.shape
    flat = x.reshape(b * t, h)
    logits = jnp.dot(flat.astype(dtype), router.astype(dtype), preferred_element_type=jnp.float32)
    forced = Forced(forced_experts.reshape(b * t, k), forced_use.reshape(b * t)) if replay else None
    r = route(logits, k, norm, forced)
    if expert is None:
        y = grouped_ffn(flat, r, gate, up, down, dtype, kernel=kernel, interpret=interpret)
    else:
        gather = functools.partial(jax.lax.all_gather, axis_name=expert, tiled=True)
        group = Routing(gather(r.experts), gather(r.weights), r.probs)  # probs: not needed here
        first = jax.lax.axis_index(expert) * gate.shape[0]
        y_all = grouped_ffn(gather(flat), group, gate, up, down, dtype, first, kernel, interpret)
        y = jax.lax.psum_scatter(y_all, expert, scatter_dimension=0, tiled=True)
    if tensor is not None:
        y = jax.lax.psum(y, tensor)
    return (
        y.astype(dtype).reshape(b, t, h),
        r.experts.reshape(b, t, k),
        r.weights.reshape(b, t, k),
        r.probs.reshape(b, t, -1),
    )


def _on_mesh(run, mesh: Mesh, weights: tuple[jax.Array, ...], dispatch: str):
    """``run`` per device over its rows (batch over ``BATCH``), experts split over ``tensor``
    where it divides their hidden size."""
    n_experts, inter = weights[1].shape[0], weights[1].shape[2]
    split = mesh.shape["tensor"] > 1 and inter % mesh.shape["tensor"] == 0
    axis = "tensor" if split else None
    ep = (
        "expert"
        if dispatch == "rows" and mesh.shape["expert"] > 1 and n_experts % mesh.shape["expert"] == 0
        else None
    )
    rows3, rows2 = P(BATCH, None, None), P(BATCH, None)
    in_specs = (rows3, P(), P(ep, None, axis), P(ep, None, axis), P(ep, axis, None), rows3, rows2)
    out_specs = (rows3, rows3, rows3, rows3)
    local = functools.partial(run, tensor=axis, expert=ep)
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
