import numpy as np
import pytest
from hf_models import write_tiny

from eigen_jax.model.hf import load_hf
from eigen_jax.prefix_cache import CachedPrefix, PrefixStore, common_prefix
from eigen_jax.sampler import Sampler
from rollout.engine import SamplingParams

PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [42], [9, 9, 9, 9, 9, 9]]


@pytest.fixture(scope="module", params=["qwen3", "llama3"])
def tiny(request, tmp_path_factory):
    _, path = write_tiny(request.param, tmp_path_factory.mktemp("m"))
    return load_hf(path), request.param


def _entry(tokens, version=0, width=4):
    ids = np.asarray(tokens, np.int32)
    kv = np.ones((2, len(ids), 1, width), np.float32)
    return CachedPrefix(ids, kv, kv.copy(), version)


def test_common_prefix():
    a = np.asarray([1, 2, 3, 4])
    assert common_prefix(a, np.asarray([1, 2, 9])) == 2
    assert common_prefix(a, np.asarray([1, 2])) == 2
    assert common_prefix(a, np.asarray([7])) == 0
    assert common_prefix(a, np.asarray([], np.int64)) == 0


def test_store_longest_prefix_version_extension_and_budget():
    store = PrefixStore(budget_bytes=10**6)
    store.put(_entry([1, 2, 3]))
    store.put(_entry([1, 2, 3, 4, 5]))  # extends the first: it replaces it
    store.put(_entry([1, 7, 7, 7]))
    assert len(store) == 2
    n, e = store.lookup([1, 2, 3, 4, 5, 6], version=0)
    assert n == 5 and e is not None and e.tokens.tolist() == [1, 2, 3, 4, 5]
    # the last prompt token is never taken from the cache (its logits are needed)
    assert store.lookup([1, 2, 3, 4, 5], version=0)[0] == 4
    assert store.lookup([1, 7, 7, 9], version=0)[0] == 3
    assert store.lookup([1, 2, 3, 4, 5, 6], version=1) == (0, None)  # other weights: no reuse
    store.put(_entry([8, 8], version=1))  # a new version drops the old entries
    assert len(store) == 1
    assert store.hit_tokens == 5 + 4 + 3 and store.looked_up_tokens == 6 + 5 + 4 + 6


def test_store_evicts_least_recently_used_to_the_budget():
    one = _entry([1, 2, 3, 4]).nbytes
    store = PrefixStore(budget_bytes=2 * one)
    store.put(_entry([1, 1, 1, 1]))
    store.put(_entry([2, 2, 2, 2]))
    store.lookup([1, 1, 1, 1, 5], version=0)  # touch the first: the second is now the oldest
    store.put(_entry([3, 3, 3, 3]))
    assert store.nbytes <= 2 * one and len(store) == 2
    assert store.lookup([2, 2, 2, 2, 5], version=0)[0] == 0
    assert store.lookup([1, 1, 1, 1, 5], version=0)[0] == 4
    with pytest.raises(ValueError, match="budget must be positive"):
        PrefixStore(0)


def test_lockstep_cohorts_stores_hold_one_budget_together_and_shrink_as_members_end():
    """Cohort stores are children of the engine's: each gets its cohort's share of the budget,
    the engine counts them in total_nbytes while they live, and a cohort's store shrinks with
    its live members (evicting the least recently used), so cohorts whose shares add up to 1
    never hold more than one budget."""
    import asyncio

    from rollout import lockstep

    one = _entry([1, 2, 3, 4]).nbytes
    engine = PrefixStore(budget_bytes=8 * one)
    first, second = engine.child(0.5), engine.child(0.5)
    for i in range(6):
        first.put(_entry([10 + i] * 4))
        second.put(_entry([20 + i] * 4))
    assert first.nbytes == second.nbytes == 4 * one and engine.total_nbytes == 8 * one
    assert engine.child(1e-9) is None  # a share too small to hold a byte

    class Engine:
        policy_version = None

        def new_prefix_store(self, share=1.0):
            self.store = engine.child(share)
            return self.store

        def generate_batch(self, prompts, sampling, *, version=None, prefix_store=None):
            for p in prompts:
                prefix_store.put(_entry([p[0]] * 4))
            return [None] * len(prompts)

    async def run():
        eng = Engine()
        cohort = lockstep.Cohort(4, cache_share=0.5)
        sizes = []

        async def member(j):
            await cohort.submit(eng, [30 + j], None)
            sizes.append((j, eng.store.budget // one, len(eng.store)))

        tasks = [
            asyncio.create_task(lockstep.member(j, lambda j=j: member(j)), context=lockstep.in_cohort(cohort))
            for j in range(4)
        ]
        await asyncio.gather(*tasks)
        return sizes, eng.store

    sizes, store = asyncio.run(run())
    assert store.budget == 0 and len(store) == 0  # every member ended: nothing held
    assert sorted(b for _, b, _ in sizes) == [
        1,
        2,
        3,
        4,
    ]  # 4 of 8 at the start, a quarter less per member ended
    del first, second, store
    import gc

    gc.collect()
    assert engine.total_nbytes == 0  # dropped stores no longer count


def _turns(sampler, sp, continuations):
    """Three turns of a token-exact transcript per row: prompt, sampled tokens, continuation..."""
    transcripts = [list(p) for p in PROMPTS]
    outs = []
    for cont in continuations:
        gens = sampler.generate_batch(transcripts, sp)
        outs.append(gens)
        transcripts = [t + g.tokens + cont for t, g in zip(transcripts, gens, strict=True)]
    return outs


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_turns_equal_full_prefills(tiny, temperature):
    model, _ = tiny
    sp = SamplingParams(temperature=temperature, max_new_tokens=12, seed=5)
    conts = [[3, 1, 4], [1, 5, 9, 2, 6], []]
    cached = Sampler(model, prefix_cache_mb=64)
    plain = Sampler(model)
    got, want = _turns(cached, sp, conts), _turns(plain, sp, conts)
    for g_turn, w_turn in zip(got, want, strict=True):
        for g, w in zip(g_turn, w_turn, strict=True):
            assert g.tokens == w.tokens and g.finish_reason == w.finish_reason
            np.testing.assert_allclose(g.logprobs, w.logprobs, atol=1e-4)
    store = cached.prefix_cache
    assert store is not None and store.hit_rate > 0.5  # later turns prefilled only their new tokens
    assert len(store) == len(PROMPTS)  # one entry per transcript: each turn's replaced the last


def test_a_diverging_prompt_reuses_only_the_common_prefix(tiny):
    model, _ = tiny
    sp = SamplingParams(temperature=0, max_new_tokens=8)
    cached = Sampler(model, prefix_cache_mb=64)
    long = list(range(3, 40))
    cached.generate_batch([long], sp)
    assert cached.prefix_cache is not None
    forked = [*long[:20], 99, 98, 97]  # e.g. a re-rendered prompt that differs after 20 tokens
    got = cached.generate_batch([forked], sp)[0]
    want = Sampler(model).generate_batch([forked], sp)[0]
    assert got.tokens == want.tokens
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)
    assert cached.prefix_cache.hit_tokens == 20


def test_weight_swap_drops_the_cache(tiny, tmp_path):
    model, kind = tiny
    sp = SamplingParams(temperature=0, max_new_tokens=8)
    cached = Sampler(model, prefix_cache_mb=64)
    gen = cached.generate_batch(PROMPTS[1:2], sp)[0]
    other = load_hf(write_tiny(kind, tmp_path, seed=1)[1])
    cached.update_weights(other, version=0)  # same public version, new weights
    assert len(cached.prefix_cache) == 0
    nxt = PROMPTS[1] + gen.tokens + [4, 2]
    got = cached.generate_batch([nxt], sp)[0]
    assert got.tokens == Sampler(other).generate_batch([nxt], sp)[0].tokens
