import asyncio

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_models import write_tiny

from eigen_jax.model import positions_from_mask
from eigen_jax.model.hf import load_hf
from eigen_jax.ops import next_token_logprobs
from eigen_jax.sampler import ContextOverflow, Sampler, _generate
from rollout.engine import InferenceEngine, SamplingParams

PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [42], [9, 9, 9, 9, 9, 9]]


@pytest.fixture(scope="module", params=["qwen3", "llama3", "qwen3-moe"])
def tiny(request, tmp_path_factory):
    hf, path = write_tiny(request.param, tmp_path_factory.mktemp("m"))
    return hf, load_hf(path), path


VARIANT = {"qwen3": "qwen3", "llama": "llama3", "qwen3_moe": "qwen3-moe"}  # model_type -> tiny variant


def _hf_greedy(hf, prompts, n):
    p = max(map(len, prompts))
    ids = torch.zeros((len(prompts), p), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, x in enumerate(prompts):
        ids[r, p - len(x) :] = torch.tensor(x)
        mask[r, p - len(x) :] = 1
    out = hf.generate(
        ids, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[:, p:].tolist()


def _recompute(model, prompt, gen, temperature=1.0):
    seq = jnp.asarray([prompt + gen])
    mask = jnp.ones_like(seq)
    logits, _ = model(seq, positions_from_mask(mask), mask)
    return np.asarray(next_token_logprobs(logits, seq, temperature))[0, len(prompt) - 1 :]


def test_greedy_equals_transformers_generate(tiny):
    hf, model, _ = tiny
    gens = Sampler(model).generate_batch(PROMPTS, SamplingParams(temperature=0, max_new_tokens=20))
    assert [g.tokens for g in gens] == _hf_greedy(hf, PROMPTS, 20)
    assert all(g.finish_reason == "length" and g.version == 0 for g in gens)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_learner_recomputation(tiny, temperature):
    _, model, _ = tiny
    sp = SamplingParams(temperature=temperature, max_new_tokens=24, seed=3)
    for prompt, g in zip(PROMPTS, Sampler(model).generate_batch(PROMPTS, sp), strict=True):
        np.testing.assert_allclose(g.logprobs, _recompute(model, prompt, g.tokens, temperature), atol=1e-4)


def test_stop_tokens_lengths_and_truncation(tiny):
    _, model, _ = tiny
    s = Sampler(model)
    greedy = s.generate_batch(PROMPTS, SamplingParams(temperature=0, max_new_tokens=8))
    stop = greedy[0].tokens[2]
    mixed = [
        SamplingParams(temperature=0, max_new_tokens=8, stop_token_ids=[stop]),
        SamplingParams(temperature=0, max_new_tokens=3),
        SamplingParams(temperature=0, max_new_tokens=8, top_k=1),
        SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=8),
    ]
    out = s.generate_batch(PROMPTS, mixed)
    first = greedy[0].tokens.index(stop)
    assert out[0].tokens == greedy[0].tokens[: first + 1] and out[0].finish_reason == "stop"
    assert out[1].tokens == greedy[1].tokens[:3] and out[1].finish_reason == "length"
    assert out[2].tokens == greedy[2].tokens  # top-k 1 is greedy
    assert out[3].tokens == greedy[3].tokens  # a vanishing nucleus is greedy
    seeded = SamplingParams(temperature=1.0, max_new_tokens=8, seed=11)
    assert s.generate_batch(PROMPTS[:1], seeded)[0] == s.generate_batch(PROMPTS[:1], seeded)[0]


def test_buckets_avoid_recompilation(tiny):
    _, model, _ = tiny
    s = Sampler(model)
    s.generate_batch(PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
    before = _generate._cache_size()
    s.generate_batch(
        [[1, 2], [3], [4, 4]], SamplingParams(temperature=0.9, top_p=0.8, top_k=5, max_new_tokens=16)
    )
    s.generate_batch(
        [[7] * 30, [1, 2, 3], [4]], SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=[3])
    )
    assert _generate._cache_size() == before


def test_weight_swap_bumps_version(tiny, tmp_path):
    hf, model, _ = tiny
    s = Sampler(model)
    before = s.generate_batch(PROMPTS, SamplingParams(temperature=0, max_new_tokens=6))
    _, other_path = write_tiny(VARIANT[hf.config.model_type], tmp_path, seed=1)
    assert s.update_weights(load_hf(other_path)) == 1 and s.version == 1
    after = s.generate_batch(PROMPTS, SamplingParams(temperature=0, max_new_tokens=6))
    assert all(g.version == 1 for g in after) and [g.tokens for g in after] != [g.tokens for g in before]
    with pytest.raises(ValueError, match="do not match"):
        s.update_weights({"not": "weights"})


def test_context_overflow_is_a_clear_error(tiny):
    _, model, _ = tiny
    s = Sampler(model, max_len=40)
    with pytest.raises(ContextOverflow, match="prompt of 30 tokens \\+ max_new_tokens 16 exceeds max_len 40"):
        s.generate_batch([[1] * 30], SamplingParams(max_new_tokens=16))
    assert len(s.generate_batch([[1] * 30], SamplingParams(max_new_tokens=10))[0].tokens) == 10


def test_async_requests_are_batched(tiny):
    _, model, _ = tiny
    s = Sampler(model)
    assert isinstance(s, InferenceEngine)
    sp = [SamplingParams(temperature=0.8, max_new_tokens=7, seed=i) for i in range(len(PROMPTS))]

    async def run():
        return await asyncio.gather(*(s.generate(p, x) for p, x in zip(PROMPTS, sp, strict=True)))

    got = asyncio.run(run())
    assert got == s.generate_batch(PROMPTS, sp)
