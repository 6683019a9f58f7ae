"""Attention implementations and the chunked LM head agree with the dense reference: values and
gradients on ragged (left- and right-padded) batches, with grouped heads, a KV-cache offset, a
sharded mesh, and in the decoder, the sampler and the losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_models import write_tiny

from eigen_jax.model import positions_from_mask
from eigen_jax.model.attention import AttnMask, _blockwise, attend
from eigen_jax.model.hf import load_hf
from eigen_jax.model.sharding import make_mesh, shard_model
from eigen_jax.objectives import SFTLoss, sequence_logprobs_and_entropy
from eigen_jax.ops import head_logprobs, lm_logits
from eigen_jax.sampler import Sampler
from rollout.engine import SamplingParams


def _qkv(b=3, t=37, s=None, nh=4, nkv=2, d=16, seed=0):
    rng = np.random.default_rng(seed)
    s = s or t
    q = jnp.asarray(rng.normal(size=(b, t, nh, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, s, nkv, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, s, nkv, d)), jnp.float32)
    valid = np.ones((b, s), bool)
    valid[1, s - 7 :] = False  # right padding
    valid[2, :5] = False  # left padding
    return q, k, v, valid


def _real_queries(mask: AttnMask) -> np.ndarray:
    """[B, T] queries that are real tokens (the rows every implementation must agree on; what a
    padding query computes is unused, and differs: splash lets it see only padding)."""
    return np.asarray(mask.kv_valid[:, mask.q_slot])


def _probe(fn, mask):
    real = jnp.asarray(_real_queries(mask), jnp.float32)[..., None, None]

    def f(q, k, v):  # a loss over real queries only, not symmetric in the output features
        return (fn(q, k, v) * real * jnp.sin(jnp.arange(16.0))).sum()

    return f


@pytest.mark.parametrize("offset", [0, 9])
def test_blockwise_equals_dense_values_and_gradients(offset):
    # offset > 0: queries at slots offset.. over a longer key axis, as a prefill into a cache
    q, k, v, valid = _qkv(t=37 - offset, s=37)
    mask = AttnMask(offset + jnp.arange(q.shape[1]), jnp.asarray(valid))
    real = _real_queries(mask)

    def small_blocks(q, k, v):  # several query and key blocks, some skipped as all-future
        return _blockwise(q, k, v, mask, 8, 16)

    ref = attend(q, k, v, mask, "dense")
    for fn in (small_blocks, lambda q, k, v: attend(q, k, v, mask, "blockwise")):
        np.testing.assert_allclose(np.asarray(jax.jit(fn)(q, k, v))[real], np.asarray(ref)[real], atol=2e-6)
    g_ref = jax.jit(jax.grad(_probe(lambda *a: attend(*a, mask, "dense"), mask), argnums=(0, 1, 2)))(q, k, v)
    g = jax.jit(jax.grad(_probe(small_blocks, mask), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_splash_kernel_equals_dense_in_interpreter():
    # The TPU kernel's own code, run by Pallas' interpreter: sequences padded to its 128-tiles,
    # padding as segment ids, grouped heads through its multi-query form.
    q, k, v, valid = _qkv(t=150)
    mask = AttnMask(jnp.arange(150), jnp.asarray(valid))
    real = _real_queries(mask)
    ref = attend(q, k, v, mask, "dense")
    got = attend(q, k, v, mask, "splash", interpret=True)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(ref)[real], atol=2e-6)
    g_ref = jax.grad(_probe(lambda *a: attend(*a, mask, "dense"), mask))(q, k, v)
    g = jax.grad(_probe(lambda *a: attend(*a, mask, "splash", interpret=True), mask))(q, k, v)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=2e-5)


def test_kernels_refuse_the_wrong_hardware_by_name():
    q, k, v, valid = _qkv(t=8)
    mask = AttnMask(jnp.arange(8), jnp.asarray(valid))
    with pytest.raises(ValueError, match=r"splash is a TPU kernel.*use blockwise"):
        attend(q, k, v, mask, "splash")
    with pytest.raises(ValueError, match=r"cudnn needs an NVIDIA GPU.*use blockwise"):
        attend(q, k, v, mask, "cudnn")
    with pytest.raises(ValueError, match="expected one of dense, blockwise, splash, cudnn"):
        attend(q, k, v, mask, "flash")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    _, path = write_tiny("qwen3", tmp_path_factory.mktemp("m"))
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 256, (8, 40))
    attn = np.ones((8, 40), np.int32)
    attn[1::2, 29:] = 0  # right-padded rows, as training batches are
    batch = {"tokens": jnp.asarray(tokens), "attn_mask": jnp.asarray(attn), "loss_mask": jnp.asarray(attn)}
    return path, batch


def _loss_and_grads(model, batch):
    def f(m):
        return SFTLoss()(m, batch, SFTLoss().denom(batch))[0]

    loss, grads = nnx.jit(nnx.value_and_grad(f))(model)
    return float(loss), nnx.to_flat_state(grads)


@pytest.mark.parametrize(
    "impl,mesh",
    [("blockwise", None), ("blockwise", (2, 2, 2)), ("splash", (1, 4, 2))],
)
def test_decoder_loss_and_gradients_match_dense(tiny, impl, mesh):
    path, batch = tiny
    ref_loss, ref_grads = _loss_and_grads(load_hf(path), batch)
    model = load_hf(path)
    m = None
    if mesh is not None:
        m = make_mesh(mesh)
        model = shard_model(model, m)
    model.use_attention(impl, m, interpret=impl == "splash")
    assert model.attention == impl
    loss, grads = _loss_and_grads(model, batch)
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    for (name, g), (_, r) in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g[...]), np.asarray(r[...]), atol=2e-5, err_msg=str(name))


def test_chunked_lm_head_equals_whole_values_entropy_and_gradients():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 29, 8)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (3, 29)))
    for tied, shape in ((True, (50, 8)), (False, (8, 50))):
        w = jnp.asarray(rng.normal(size=shape), jnp.float32)

        def f(x, w, chunk, tied=tied):
            lp, ent = head_logprobs(x, (w, tied), targets, 0.7, chunk, entropy=True)
            return lp.sum() + 0.1 * ent.sum(), (lp, ent)

        (_, (lp0, ent0)), g0 = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, w, 0)
        logits = lm_logits(x, w, tied)
        np.testing.assert_allclose(
            np.asarray(lp0),
            np.asarray(jax.nn.log_softmax(logits / 0.7))[np.arange(3)[:, None], np.arange(29), targets],
            atol=1e-5,
        )
        for chunk in (4, 7, 29):  # 7 does not divide 29: the last chunk is padded
            (_, (lp, ent)), g = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, w, chunk)
            # rtol: a few float32 ulps at |logprob| ~ 20 (another summation order per chunk)
            np.testing.assert_allclose(np.asarray(lp), np.asarray(lp0), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(np.asarray(ent), np.asarray(ent0), rtol=1e-6, atol=1e-6)
            for a, b in zip(g, g0, strict=True):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_losses_read_the_model_logits_chunk(tiny):
    path, batch = tiny
    model = load_hf(path)
    scored = nnx.jit(sequence_logprobs_and_entropy)
    lp0, ent0 = scored(model, batch)
    ref_loss, ref_grads = _loss_and_grads(model, batch)
    model.logits_chunk = 8
    lp, ent = scored(model, batch)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(lp0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(ent), np.asarray(ent0), atol=1e-6)
    loss, grads = _loss_and_grads(model, batch)
    assert loss == pytest.approx(ref_loss, abs=1e-6)
    for (_, g), (_, r) in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g[...]), np.asarray(r[...]), atol=1e-6)


def test_sampler_generates_the_same_with_blockwise_prefill(tiny):
    # Left-padded prompts prefill the cache through blockwise attention; decode stays dense.
    path, _ = tiny
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4], list(range(20, 40))]
    outs = []
    for impl in ("dense", "blockwise"):
        sampler = Sampler(load_hf(path).use_attention(impl), pad_id=0)
        res = sampler.generate_batch(prompts, SamplingParams(max_new_tokens=6, temperature=0.0))
        outs.append([(list(r.tokens), np.asarray(r.logprobs)) for r in res])
    for (t0, l0), (t1, l1) in zip(*outs, strict=True):
        assert t0 == t1
        np.testing.assert_allclose(l0, l1, atol=1e-5)


def test_positions_follow_the_mask():  # the decoder's masks assume these positions
    mask = jnp.asarray([[0, 0, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(np.asarray(positions_from_mask(mask)), [[0, 0, 0, 1], [0, 1, 2, 2]])
