"""The embedded inference engine: jitted prefill + KV-cache decode over ragged batches.

A whole batch (prefill and every decode step) runs in one compiled call: the decode loop is a
``lax.while_loop`` that stops when every row has finished, so Python never runs per token.
Ragged prompts are left-padded into a bucketed length and batches into bucketed sizes; the
sampling knobs are traced values, so one compilation serves every request of a bucket.

Logprobs are those of softmax(logits / temperature) before top-k/top-p truncation (temperature 1
when greedy), which is what the learner recomputes.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eigen_core.routes import ExpertRoutes, route_rows, width_for
from eigen_jax.model.decoder import Decoder, LayerCache, positions_from_mask
from eigen_jax.prefix_cache import CachedPrefix, PrefixStore
from rollout.engine import ContextOverflow, Generation, SamplingParams
from rollout.lockstep import current_cohort
from rollout.version import PolicyVersion

__all__ = ["ContextOverflow", "Sampler", "bucket"]


def bucket(n: int, minimum: int, step: int | None = None) -> int:
    """Smallest power of two >= max(n, minimum): a handful of shapes covers every request.
    Past ``step`` (a power of two), the smallest multiple of ``step`` instead: a 520-token prompt
    pads to 640, not 1,024 (prefill attention is quadratic in the padded length)."""
    if step is not None and n > step:
        return max(minimum, -(-n // step) * step)
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


class _Knobs(NamedTuple):
    """Per-row sampling knobs, traced (changing them never recompiles)."""

    temperature: jax.Array
    top_p: jax.Array
    top_k: jax.Array


def _filter(logits: jax.Array, top_p: jax.Array, top_k: jax.Array) -> jax.Array:
    """Mask logits outside the top-k / top-p set (rows [B, V]); a no-op when both are off."""

    def apply(lg):
        srt = jnp.sort(lg, axis=-1)[:, ::-1]
        v = lg.shape[-1]
        kth = jnp.take_along_axis(srt, jnp.clip(top_k[:, None] - 1, 0, v - 1), axis=-1)
        lg = jnp.where((top_k[:, None] > 0) & (lg < kth), -jnp.inf, lg)
        probs = jax.nn.softmax(jnp.where((top_k[:, None] > 0) & (srt < kth), -jnp.inf, srt), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
        keep = before < top_p[:, None]
        cutoff = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(lg < cutoff, -jnp.inf, lg)

    needed = jnp.any(top_k > 0) | jnp.any(top_p < 1.0)
    return jax.lax.cond(needed, apply, lambda lg: lg, logits)


def _sample(logits: jax.Array, keys: jax.Array, knobs: _Knobs) -> tuple[jax.Array, jax.Array]:
    """Next token and its logprob per row of ``logits`` [B, V] (fp32)."""
    greedy = knobs.temperature <= 0.0
    temp = jnp.where(greedy, 1.0, knobs.temperature)[:, None]
    scaled = logits / temp
    # Only the chosen token's logprob is needed: logsumexp is ~3x cheaper than a full log_softmax
    # over a 151k vocabulary on CPU (and argmax is slower than top_k there).
    lse = jax.nn.logsumexp(scaled, axis=-1)

    none = jnp.zeros(logits.shape[:1], jnp.int32)

    def draw(_):
        # Inverse-CDF sampling: one uniform per row. (Gumbel-max needs a random number per
        # vocabulary entry, which on CPU costs more than a small model's whole forward pass.)
        # Unnormalised weights suffice (u is scaled by the total); ``lse`` keeps exp in range.
        weights = jnp.exp(_filter(scaled, knobs.top_p, knobs.top_k) - lse[:, None])
        cdf = jnp.cumsum(weights, axis=-1)
        u = jax.vmap(jax.random.uniform)(keys) * cdf[:, -1]
        idx = jax.vmap(lambda c, x: jnp.searchsorted(c, x, side="right"))(cdf, u)
        return jnp.minimum(idx, logits.shape[-1] - 1).astype(jnp.int32)

    def argmax(_):
        return jax.lax.top_k(logits, 1)[1][:, 0].astype(jnp.int32)

    # Each path costs a pass or more over [B, vocab]: run only the ones some row needs.
    drawn = jax.lax.cond(jnp.all(greedy), lambda _: none, draw, None)
    best = jax.lax.cond(jnp.any(greedy), argmax, lambda _: none, None)
    tok = jnp.where(greedy, best, drawn)
    return tok, jnp.take_along_axis(scaled, tok[:, None], axis=-1)[:, 0] - lse


def _joined_cache(model: Decoder, prefix, b: int, length: int) -> list[LayerCache]:
    """Per layer: the cached prefix's KV, then ``length`` empty slots."""
    empty = model.init_cache(b, length)
    return [
        LayerCache(
            jnp.concatenate([pk.astype(e.k.dtype), e.k], 1), jnp.concatenate([pv.astype(e.v.dtype), e.v], 1)
        )
        for (pk, pv), e in zip(prefix, empty, strict=True)
    ]


def _forward(model: Decoder, route_dtype):
    """One cached forward: the last position's logits, the cache, and (``route_dtype``: an MoE
    model recording) the experts taken, [B, T, layers, k]."""

    def forward(tokens, pos, mask, cache, index):
        x, cache, routes = model.hidden_routed(tokens, pos, mask, cache, index)
        taken = None if route_dtype is None else routes.experts.astype(route_dtype)
        return model.logits(x[:, -1:]), cache, taken

    return forward


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new", "return_cache", "route_dtype"))
def _generate(
    graphdef, state, prefix, prefix_mask, prompt, prompt_mask, keys, knobs, stop_ids, max_new_per_row,
    live, max_new, return_cache=False, route_dtype=None,
):  # fmt: skip
    """Prefill ``prompt`` [B, P] after the cached ``prefix`` (per layer (k, v) [B, C, kv, hd],
    real slots in ``prefix_mask`` [B, C]; C may be 0), then decode up to ``max_new`` tokens.
    Cache slots: [0, C) prefix, [C, C+P) prompt, [C+P, C+P+max_new) generated tokens.
    ``route_dtype`` (an MoE model): also return the experts of every prompt position
    [B, P, layers, k] and of every generated token [B, max_new, layers, k] in that dtype."""
    model = nnx.merge(graphdef, state)
    b, p = prompt.shape
    c = prefix_mask.shape[1]
    cache = _joined_cache(model, prefix, b, p + max_new)
    mask = jnp.concatenate([prefix_mask, prompt_mask, jnp.zeros((b, max_new), jnp.int32)], axis=1)
    positions = jnp.sum(prefix_mask, axis=1, keepdims=True) + positions_from_mask(prompt_mask)
    forward = _forward(model, route_dtype)
    logits, cache, prompt_routes = forward(prompt, positions, mask, cache, c)
    first = c + p  # slot of the first generated token
    n_moe, top_k = len(model.cfg.moe_layers), max(model.cfg.num_experts_per_tok, 1)
    out_routes = None if route_dtype is None else jnp.zeros((b, max_new, n_moe, top_k), route_dtype)
    state0 = dict(
        i=0,
        logits=logits[:, -1],
        cache=cache,
        mask=mask,
        pos=positions[:, -1] + 1,
        done=~live,
        stopped=jnp.zeros((b,), bool),
        n=jnp.zeros((b,), jnp.int32),
        tok=jnp.zeros((b, max_new), jnp.int32),
        lp=jnp.zeros((b, max_new), jnp.float32),
        routes=out_routes,
    )

    def cond(s):
        return (s["i"] < max_new) & ~jnp.all(s["done"])

    def body(s):
        i = s["i"]
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
        tok, lp = _sample(s["logits"], step_keys, knobs)
        active = ~s["done"]
        tok = jnp.where(active, tok, 0)
        hit_stop = active & jnp.any(tok[:, None] == stop_ids, axis=-1)
        n = s["n"] + active
        done = s["done"] | hit_stop | (n >= max_new_per_row)
        # Every sampled token, the stop token included, runs through the model: the cache then
        # holds the KV of the whole served sequence (what the prefix cache keeps).
        mask = s["mask"].at[:, first + i].set(active.astype(jnp.int32))
        logits, cache, taken = forward(tok[:, None], s["pos"][:, None], mask, s["cache"], first + i)
        return dict(
            i=i + 1,
            logits=logits[:, -1],
            cache=cache,
            mask=mask,
            pos=s["pos"] + 1,
            done=done,
            stopped=s["stopped"] | hit_stop,
            n=n,
            tok=s["tok"].at[:, i].set(tok),
            lp=s["lp"].at[:, i].set(jnp.where(active, lp, 0.0)),
            routes=None if taken is None else s["routes"].at[:, i].set(taken[:, 0]),
        )

    s = jax.lax.while_loop(cond, body, state0)
    routes = None if route_dtype is None else (prompt_routes, s["routes"])
    return s["tok"], s["lp"], s["n"], s["stopped"], (s["cache"] if return_cache else None), routes


class Sampler:
    """In-process ``InferenceEngine`` over a ``Decoder``.

    Args:
        model: the decoder whose current weights are served (``update_weights`` swaps them).
        pad_id: token id used for padding rows and columns (never attended to).
        min_prompt_bucket, min_batch_bucket, min_new_bucket: smallest padded shapes.
        prompt_step: prompts longer than this pad to a multiple of it rather than to a power of
            two (None: powers of two throughout).
        seed: seed of the engine's own sampling stream.
        prefix_cache_mb: host memory for the KV of served sequences (``PrefixStore``), so a
            multi-turn transcript prefills only its new tokens; 0 turns prefix caching off.
        max_len: longest prompt + completion served (default: the model's
            ``max_position_embeddings``); longer requests raise ``ContextOverflow``.
        policy_version: the process's ``PolicyVersion``, set by every weight swap (default: its
            own).
        keep_versions: how many of the latest weight versions stay servable by ``version`` (a
            lockstep cohort, ``rollout.lockstep``, runs wholly on the version it was pinned to).
        record_routes: (MoE models) return with every generation the experts each token went to
            (``Generation.routes``: the prompt's and the completion's; a prefix-cache hit's as
            recorded when they were computed), for routing replay in the learner.
    """

    def __init__(
        self,
        model: Decoder,
        *,
        pad_id: int = 0,
        min_prompt_bucket: int = 32,
        min_batch_bucket: int = 1,
        min_new_bucket: int = 16,
        prompt_step: int | None = 128,
        seed: int = 0,
        max_len: int | None = None,
        prefix_cache_mb: float = 0.0,
        policy_version: PolicyVersion | None = None,
        keep_versions: int = 1,
        record_routes: bool = False,
    ):
        if record_routes and not model.cfg.moe_layers:
            raise ValueError("record_routes: the model has no MoE layers (routes exist only in MoE models)")
        self.route_width = width_for(model.cfg.num_experts) if record_routes else None
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, got {keep_versions}")
        self.graphdef, state = nnx.split(model)
        self.cfg = model.cfg
        self._kv_dtype = np.dtype(model.dtype)  # the KV cache holds activations (compute dtype)
        self.pad_id = pad_id
        self.prompt_step = prompt_step
        self.min_prompt_bucket, self.min_batch_bucket, self.min_new_bucket = (
            min_prompt_bucket,
            min_batch_bucket,
            min_new_bucket,
        )
        # Weights and their version change together (one attribute), so a batch that starts
        # while another thread swaps weights labels its tokens with the version that made them.
        self.policy_version = policy_version or PolicyVersion()
        """The process's policy version: written here, when weights are swapped."""
        self._served: tuple[nnx.State, int] = (state, self.policy_version.value)
        # Counts weight swaps (the public version may repeat): what prefix-cache entries are
        # tagged with, so KV computed by other weights is never reused.
        self._weights_id = 0
        self.keep_versions = keep_versions
        # version -> (weights, weights id): the latest ``keep_versions`` swaps, for pinned batches
        self._versions: dict[int, tuple[nnx.State, int]] = {self.policy_version.value: (state, 0)}
        self._batch_lock = threading.Lock()  # one batch at a time, whichever thread asks
        self.prefix_cache = PrefixStore(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
        self.max_len = max_len or model.cfg.max_position_embeddings
        self._key = jax.random.key(seed)
        self._queue: list[tuple[list[int], SamplingParams, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    @property
    def version(self) -> int:
        return self._served[1]

    @property
    def state(self) -> nnx.State:
        """The weights new requests are served with."""
        return self._served[0]

    def update_weights(self, model_or_state: Decoder | nnx.State, version: int | None = None) -> int:
        """Swap in new weights (same architecture); returns the new version: ``version`` when
        given (e.g. the learner's step), else the old one + 1."""
        state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state
        if jax.tree.structure(state) != jax.tree.structure(self.state):
            raise ValueError("update_weights: the new weights do not match the model's structure")
        new_version = self.version + 1 if version is None else version
        self._served = (state, new_version)
        self._weights_id += 1
        self._versions[new_version] = (state, self._weights_id)
        for old in sorted(self._versions)[: -self.keep_versions]:
            del self._versions[old]
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        self.policy_version.set(new_version)
        return new_version

    @staticmethod
    def compiled_programs() -> int:
        """Generation programs compiled so far (one per prompt/prefix/batch shape bucket), process
        wide: the soak watches it beside resident memory, since each program holds host memory.
        -1 where this JAX does not expose jit's cache size."""
        size = getattr(_generate, "_cache_size", None)
        return int(size()) if callable(size) else -1

    def new_prefix_store(self, share: float = 1.0) -> PrefixStore | None:
        """An empty prefix cache of ``share`` of this engine's budget (a lockstep cohort's own:
        what it finds there does not depend on what other cohorts ran)."""
        return self.prefix_cache.child(share) if self.prefix_cache is not None else None

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: Sequence[SamplingParams] | SamplingParams,
        *,
        version: int | None = None,
        prefix_store: PrefixStore | None = None,
    ) -> list[Generation]:
        """Complete every prompt (one compiled call per bucket; blocks until all are done).

        ``version``: serve that weight version (one of the last ``keep_versions``) instead of
        the current one; ``prefix_store``: use that prefix cache instead of the engine's."""
        if not prompts:
            return []
        with self._batch_lock:
            return self._generate_batch(prompts, sampling, version, prefix_store)

    def _generate_batch(self, prompts, sampling, version, store) -> list[Generation]:
        params = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)
        if len(params) != len(prompts) or any(len(p) == 0 for p in prompts):
            raise ValueError("generate_batch: one SamplingParams per prompt, and no empty prompt")
        for x, sp in zip(prompts, params, strict=True):
            if len(x) + sp.max_new_tokens > self.max_len:
                raise ContextOverflow(
                    f"prompt of {len(x)} tokens + max_new_tokens {sp.max_new_tokens} "
                    f"exceeds max_len {self.max_len}"
                )
        state, version, weights_id = self._weights(version)
        store = self.prefix_cache if store is None else store
        hits = [store.lookup(x, weights_id) if store is not None else (0, None) for x in prompts]
        if store is not None and store is not self.prefix_cache and self.prefix_cache is not None:
            # a cohort's own store: the engine's hit rate still counts every prompt it served
            self.prefix_cache.looked_up_tokens += sum(len(x) for x in prompts)
            self.prefix_cache.hit_tokens += sum(c for c, _ in hits)
        news = [x[c:] for x, (c, _) in zip(prompts, hits, strict=True)]
        b = bucket(len(prompts), self.min_batch_bucket)
        reused = max(c for c, _ in hits)
        cpre = bucket(reused, 128) if reused else 0
        p = bucket(max(len(x) for x in news), self.min_prompt_bucket, self.prompt_step)
        n = bucket(max(sp.max_new_tokens for sp in params), self.min_new_bucket)
        tok = np.full((b, p), self.pad_id, np.int32)
        msk = np.zeros((b, p), np.int32)
        for r, x in enumerate(news):
            tok[r, p - len(x) :] = x  # left padding: every row's last prompt token is in the last column
            msk[r, p - len(x) :] = 1
        prefix, prefix_mask = self._prefix_arrays(hits, b, cpre)
        keys, knobs, stops, max_rows = self._sampling_arrays(params, b)
        live = np.arange(b) < len(params)
        route_dtype = None if self.route_width is None else (np.uint8 if self.route_width == 1 else np.int16)
        out_tok, out_lp, lengths, stopped, cache, routes = jax.device_get(
            _generate(
                self.graphdef,
                state,
                prefix,
                jnp.asarray(prefix_mask),
                jnp.asarray(tok),
                jnp.asarray(msk),
                keys,
                knobs,
                jnp.asarray(stops),
                jnp.asarray(max_rows),
                jnp.asarray(live),
                max_new=n,
                return_cache=store is not None,
                route_dtype=route_dtype,
            )
        )
        gens = [
            Generation(
                tokens=out_tok[r, : lengths[r]].tolist(),
                logprobs=out_lp[r, : lengths[r]].tolist(),
                finish_reason="stop" if stopped[r] else "length",
                version=version,
                routes=None
                if routes is None
                else self._routes(routes, r, len(news[r]), int(lengths[r]), hits[r]),
            )
            for r in range(len(prompts))
        ]
        if store is not None:
            self._keep(store, cache, prompts, hits, gens, cpre, p, weights_id)
        return gens

    def _routes(self, routes, r: int, computed: int, generated: int, hit) -> ExpertRoutes:
        """Row ``r``'s routes: those its prefix-cache ``hit`` kept (if any), its ``computed``
        prompt tokens (the last columns: left padding), then its ``generated`` tokens."""
        prompt, decoded = routes
        taken = np.concatenate([prompt[r, prompt.shape[1] - computed :], decoded[r, :generated]]).astype(
            np.int32
        )
        used, entry = hit
        if used and entry is not None and entry.routes is not None:
            taken = np.concatenate([entry.routes[:used].astype(np.int32), taken])
        return ExpertRoutes.from_array(taken, self.route_width)

    def _weights(self, version: int | None) -> tuple[nnx.State, int, int]:
        """(weights, version, weights id) of ``version`` (None: the current ones)."""
        if version is None:
            state, version = self._served
            return state, version, self._weights_id
        if version not in self._versions:
            raise ValueError(
                f"weights of version {version} are gone (kept: {sorted(self._versions)}); a pinned "
                "batch needs keep_versions to cover the oldest version still in flight"
            )
        state, weights_id = self._versions[version]
        return state, version, weights_id

    def _sampling_arrays(self, params: list[SamplingParams], b: int):
        """Per row of a batch of ``b``: PRNG keys, sampling knobs, stop ids and token budgets
        (padding rows: one greedy token, never kept)."""
        k = max(1, max(len(sp.stop_token_ids) for sp in params))
        stops = np.full((b, k), -1, np.int32)
        for r, sp in enumerate(params):
            stops[r, : len(sp.stop_token_ids)] = sp.stop_token_ids
        keys = []
        for sp in params:
            if sp.seed is None:
                self._key, sub = jax.random.split(self._key)
            else:
                sub = jax.random.key(sp.seed)
            keys.append(sub)
        keys += [jax.random.key(0)] * (b - len(params))
        pad_rows = b - len(params)
        knobs = _Knobs(
            temperature=jnp.asarray([sp.temperature for sp in params] + [1.0] * pad_rows, jnp.float32),
            top_p=jnp.asarray([sp.top_p for sp in params] + [1.0] * pad_rows, jnp.float32),
            top_k=jnp.asarray([sp.top_k for sp in params] + [0] * pad_rows, jnp.int32),
        )
        max_rows = np.asarray([sp.max_new_tokens for sp in params] + [1] * pad_rows, np.int32)
        return jnp.stack(keys), knobs, stops, max_rows

    def _prefix_arrays(self, hits: list[tuple[int, CachedPrefix | None]], b: int, cpre: int):
        """Per layer (k, v) [b, cpre, kv_heads, head_dim] holding each row's cached prefix
        right-aligned, and the [b, cpre] mask of its real slots."""
        c = self.cfg
        shape = (b, cpre, c.num_key_value_heads, c.head_dim)
        ks = [np.zeros(shape, self._kv_dtype) for _ in range(c.num_hidden_layers)]
        vs = [np.zeros(shape, self._kv_dtype) for _ in range(c.num_hidden_layers)]
        mask = np.zeros((b, cpre), np.int32)
        for r, (used, entry) in enumerate(hits):
            if entry is None:
                continue
            for layer in range(c.num_hidden_layers):
                ks[layer][r, cpre - used :] = entry.k[layer, :used]
                vs[layer][r, cpre - used :] = entry.v[layer, :used]
            mask[r, cpre - used :] = 1
        return [(jnp.asarray(k), jnp.asarray(v)) for k, v in zip(ks, vs, strict=True)], mask

    def _keep(self, store, cache, prompts, hits, gens, cpre: int, p: int, weights_id: int) -> None:
        """Store each row's whole served sequence (prompt + sampled tokens) with its KV."""
        for r, (x, (used, _), g) in enumerate(zip(prompts, hits, gens, strict=True)):
            new = len(x) - used
            slots = np.r_[cpre - used : cpre, cpre + p - new : cpre + p, cpre + p : cpre + p + len(g.tokens)]
            k = np.stack([layer.k[r, slots] for layer in cache])
            v = np.stack([layer.v[r, slots] for layer in cache])
            ids = np.asarray(list(x) + g.tokens, np.int32)
            store.put(CachedPrefix(ids, k, v, weights_id, route_rows(g.routes, len(ids))))

    async def generate(self, prompt_tokens: list[int], sampling: SamplingParams) -> Generation:
        """Queue one request; requests that arrive while a batch runs form the next batch (inside
        a lockstep cohort: the cohort's next batch)."""
        cohort = current_cohort.get()
        if cohort is not None:
            return await cohort.submit(self, list(prompt_tokens), sampling)
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((list(prompt_tokens), sampling, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            await asyncio.sleep(0)  # let concurrent callers enqueue before the batch is cut
            batch, self._queue = self._queue, []
            try:
                gens = await asyncio.to_thread(
                    self.generate_batch, [b[0] for b in batch], [b[1] for b in batch]
                )
            except Exception as e:  # fail these requests, keep the engine serving
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, _, fut), gen in zip(batch, gens, strict=True):
                if not fut.done():
                    fut.set_result(gen)
