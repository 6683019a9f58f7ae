"""The optimiser, the train state and one jitted, micro-batched, sharded update step.

A ``Learner`` owns pure pytrees (params, optimiser state, step, RNG) so checkpoints and weight
swaps are plain tree operations; the model object is rebuilt from them on demand. Losses are
functions ``loss_fn(model, batch, denom) -> (loss, sums)``: ``denom`` is the whole batch's
normaliser, so micro-batch losses add up to the full-batch loss and accumulated gradients equal
one big batch's; ``sums`` are additive statistics (token counts, clipped tokens ...), or maxima
for keys ending in ``_max``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from eigen_jax.feed import Build, feed, take
from eigen_jax.model import Decoder
from eigen_jax.train_config import OptimSection

Batch = dict[str, jax.Array]
LossFn = Callable[[Decoder, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def learning_rate(cfg: OptimSection, total_steps: int) -> optax.Schedule:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio * lr`` at ``total_steps``."""
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.lr)
    else:
        decay = max(total_steps - cfg.warmup_steps, 1)
        after = optax.cosine_decay_schedule(cfg.lr, decay, alpha=cfg.min_lr_ratio)
    if cfg.warmup_steps == 0:
        return after
    warm = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warm, after], [cfg.warmup_steps])


def make_optimizer(cfg: OptimSection, total_steps: int) -> optax.GradientTransformation:
    """AdamW with the configured schedule, after global-norm clipping."""
    adam = optax.adamw(
        learning_rate(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adam) if cfg.grad_clip else adam


class TrainState(NamedTuple):
    params: nnx.State
    opt_state: Any
    step: jax.Array
    rng: jax.Array
    """Raw key data (uint32): stages derive per-step sampling seeds from it, so a resumed run
    samples what the uninterrupted one would have."""


def merge_sums(acc: dict[str, Any], new: dict[str, Any], maximum: Callable = jnp.maximum) -> dict[str, Any]:
    """Combine two batches' loss statistics: keys ending in ``_max`` take the maximum, the rest add
    (``maximum=max`` for host floats)."""
    return {k: maximum(acc[k], new[k]) if k.endswith("_max") else acc[k] + new[k] for k in new}


def _split_micro(batch: Batch, n: int) -> Batch:
    return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in batch.items()}


def update_step(graphdef: Any, tx: optax.GradientTransformation, loss_fn: LossFn, micro_batches: int = 1):
    """The pure update ``(state, batch, denom, advance) -> (state, metrics)``: gradients of
    ``loss_fn`` accumulated over ``micro_batches`` (a scan), one optimiser step. What ``Learner``
    jits, and what ``eigen_jax.plan`` compiles ahead of time for a pod."""

    def grads(params: nnx.State, batch: Batch, denom: jax.Array):
        def f(p):
            return loss_fn(nnx.merge(graphdef, p), batch, denom)

        return jax.value_and_grad(f, has_aux=True)(params)

    def step(state: TrainState, batch: Batch, denom: jax.Array, advance: jax.Array):
        n = micro_batches
        if n == 1:
            (loss, sums), g = grads(state.params, batch, denom)
        else:

            def body(carry, micro):
                (loss_mb, s_mb), g_mb = grads(state.params, micro, denom)
                acc, total, s = carry
                return (jax.tree.map(jnp.add, acc, g_mb), total + loss_mb, merge_sums(s, s_mb)), None

            micro = _split_micro(batch, n)
            first = jax.tree.map(lambda x: x[0], micro)
            shapes = jax.eval_shape(lambda: grads(state.params, first, denom))
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            (_, sums0), grads0 = zeros
            (g, loss, sums), _ = jax.lax.scan(body, (grads0, jnp.zeros((), jnp.float32), sums0), micro)
        updates, opt_state = tx.update(g, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(g), **sums}
        return TrainState(params, opt_state, state.step + advance, state.rng), metrics

    return step


class DonatingUpdate:
    """``update_step`` jitted with the optimiser state donated, so Adam's moments (twice the
    parameters' bytes) are updated in place instead of next to a second copy. The parameters are
    not donated: an in-process sampler may still serve the previous weights (its
    ``update_weights`` keeps references to the learner's arrays). ``eigen_jax.plan`` compiles
    this same function."""

    def __init__(self, step: Callable[..., Any]):
        def split(opt_state, rest: TrainState, batch: Batch, denom: jax.Array, advance: jax.Array):
            return step(rest._replace(opt_state=opt_state), batch, denom, advance)

        self._jit = jax.jit(split, donate_argnums=0)

    @staticmethod
    def _args(state: TrainState, *rest: Any) -> tuple[Any, ...]:
        return (state.opt_state, state._replace(opt_state=None), *rest)

    def __call__(self, state: TrainState, batch: Batch, denom: jax.Array, advance: jax.Array):
        return self._jit(*self._args(state, batch, denom, advance))

    def lower(self, state: TrainState, batch: Batch, denom: Any, advance: Any):
        """Ahead-of-time lowering (abstract arguments welcome)."""
        return self._jit.lower(*self._args(state, batch, denom, advance))


def place_opt_state(
    tx: optax.GradientTransformation, opt_state: Any, params: Any, mesh: Mesh, put: Callable[[Any, Any], Any]
) -> Any:
    """``opt_state`` with each moment placed like its parameter and every other leaf (counts,
    scalars) replicated over ``mesh``; ``put(leaf, sharding)`` does the placing (``jax.device_put``
    for arrays, a ``ShapeDtypeStruct`` for ``eigen_jax.plan``'s abstract state)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = jax.tree.map(lambda p: p.sharding, params)
    return optax.tree_map_params(
        tx, put, opt_state, shardings, transform_non_params=lambda x: put(x, replicated)
    )


class Learner:
    """Trains ``model`` with ``loss_fn``; see the module docstring for the loss contract.

    Args:
        model: the decoder (already sharded over ``mesh`` when one is given).
        tx: the optimiser (``make_optimizer``).
        loss_fn: the loss (``eigen_jax.objectives``).
        micro_batches: gradient-accumulation steps per update; must divide every batch.
        mesh: shards each batch's leading axis over the mesh's (data, fsdp) axes.
        seed: the RNG the state carries.
    """

    def __init__(
        self,
        model: Decoder,
        tx: optax.GradientTransformation,
        loss_fn: LossFn,
        *,
        micro_batches: int = 1,
        mesh: Mesh | None = None,
        seed: int = 0,
    ):
        self.graphdef, params = nnx.split(model)
        self.tx, self.loss_fn, self.micro_batches, self.mesh = tx, loss_fn, micro_batches, mesh
        self.state = TrainState(
            params=params,
            opt_state=jax.jit(tx.init)(params),
            step=jnp.asarray(0, jnp.int32),
            rng=jax.random.key_data(jax.random.key(seed)),
        )
        if mesh is not None:
            self.state = self._placed(self.state, mesh)
        self._update = DonatingUpdate(update_step(self.graphdef, tx, loss_fn, micro_batches))

    def _placed(self, state: TrainState, mesh: Mesh) -> TrainState:
        """Optimiser moments sharded like their parameters, scalars replicated over the mesh.

        ``tx.init`` leaves them uncommitted on one device (a full unsharded copy of the moments),
        and a checkpoint restored with those shardings would pin them there."""
        replicated = NamedSharding(mesh, PartitionSpec())
        return state._replace(
            opt_state=place_opt_state(self.tx, state.opt_state, state.params, mesh, jax.device_put),
            step=jax.device_put(state.step, replicated),
            rng=jax.device_put(state.rng, replicated),
        )

    @property
    def step(self) -> int:
        return int(self.state.step)

    def model(self) -> Decoder:
        """The current weights as a ``Decoder`` (shares arrays with the state; do not mutate)."""
        return nnx.merge(self.graphdef, self.state.params)

    def skip(self) -> None:
        """Advance ``step`` without an update (a stage step that produced nothing to learn from)."""
        self.state = self.state._replace(step=self.state.step + 1)

    def feed(self, n: int, build: Build, trim: int | None = None) -> Batch:
        """The global ``n``-row batch on device, this process building only its devices' rows
        with ``build(rows)`` (``feed.feed``; ``trim``: cut padding columns to a multiple)."""
        return feed(self.mesh, n, build, trim)

    def put(self, batch: dict[str, np.ndarray], trim: int | None = None) -> Batch:
        """A host batch every process holds whole -> device arrays, batch axis sharded over the
        mesh (each process places its rows)."""
        return self.feed(len(next(iter(batch.values()))), take(batch), trim)

    def update(self, batch: Batch, denom: jax.Array, advance: bool = True) -> dict[str, float]:
        """One optimiser step on ``batch`` (already on device); returns its metrics as floats.

        ``advance=False`` leaves ``step`` as it is: stages whose step is several optimiser
        updates (PPO minibatches) advance it on the last one. The LR schedule counts updates."""
        lead = next(iter(batch.values())).shape[0]
        if lead % self.micro_batches:
            n = self.micro_batches
            raise ValueError(f"a batch of {lead} sequences does not split into {n} micro-batches")
        self.state, metrics = self._update(self.state, batch, denom, jnp.asarray(int(advance), jnp.int32))
        return {k: float(v) for k, v in jax.device_get(metrics).items()}
