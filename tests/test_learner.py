"""The update step: micro-batches and meshes change nothing but speed; schedules; checkpoints."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from eigen_jax.checkpoint import Checkpointer
from eigen_jax.learner import Learner, learning_rate, make_optimizer
from eigen_jax.model import Decoder, DecoderConfig
from eigen_jax.model.sharding import make_mesh, shard_model
from eigen_jax.objectives import GRPOLoss, SFTLoss
from eigen_jax.train_config import OptimSection

CFG = DecoderConfig(
    family="qwen3",
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    qk_norm=True,
    tie_word_embeddings=True,
)


def _model():
    return Decoder(CFG, rngs=nnx.Rngs(0))


def _batch(n=8, t=12, seed=0):
    rng = np.random.default_rng(seed)
    attn = np.ones((n, t), np.int32)
    for r in range(n):
        attn[r, t - rng.integers(0, 5) :] = 0  # right padding, ragged
    loss = (rng.random((n, t)) < 0.6).astype(np.int32) * attn
    return {
        "tokens": rng.integers(0, 97, (n, t)).astype(np.int32),
        "attn_mask": attn,
        "loss_mask": loss,
        "advantages": rng.normal(size=n).astype(np.float32),
        "behaviour_logp": (-rng.random((n, t)) * 3).astype(np.float32),
        "prox_logp": (-rng.random((n, t)) * 3).astype(np.float32),
    }


def _params(learner):
    leaves = jax.tree_util.tree_leaves_with_path(learner.state)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def _run(loss_fn, micro=1, mesh=None, steps=2, tx=None):
    model = _model()
    if mesh is not None:
        model = shard_model(model, mesh)
    # SGD by default: updates linear in the gradient, so equal updates mean equal gradients (Adam
    # would turn rounding noise in near-zero gradients into full-size steps).
    tx = tx or optax.sgd(0.5)
    learner = Learner(model, tx, loss_fn, micro_batches=micro, mesh=mesh)
    out = []
    for s in range(steps):
        batch = learner.put(_batch(seed=s))
        out.append(learner.update(batch, loss_fn.denom(batch)))
    return learner, out


@pytest.mark.parametrize("loss_fn", [SFTLoss(), SFTLoss("seq_mean_token_mean"), GRPOLoss(weight_cap=2.0)])
def test_micro_batches_equal_one_big_batch(loss_fn):
    ref, ref_m = _run(loss_fn)
    for micro in (2, 4):
        got, got_m = _run(loss_fn, micro=micro)
        for a, b in zip(ref_m, got_m, strict=True):
            assert a.keys() == b.keys()
            for k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
        pa, pb = _params(ref), _params(got)
        for k in pa:
            np.testing.assert_allclose(pb[k], pa[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert ref.step == 2 and ref_m[0]["tokens"] == float(_batch()["loss_mask"][:, 1:].sum())


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 4, 2), (8, 1, 1)])
def test_sharded_updates_match_single_device(shape):
    ref, ref_m = _run(GRPOLoss())
    got, got_m = _run(GRPOLoss(), micro=1, mesh=make_mesh(shape))
    assert got_m[1]["loss"] == pytest.approx(ref_m[1]["loss"], rel=1e-5, abs=1e-6)
    pa, pb = _params(ref), _params(got)
    for k in pa:
        np.testing.assert_allclose(pb[k], pa[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_grpo_on_policy_first_step_is_the_policy_gradient():
    # prox == behaviour == current policy: ratio 1, weight 1, nothing clipped or capped
    model = _model()
    learner = Learner(model, make_optimizer(OptimSection(), 1), GRPOLoss())
    batch = learner.put(_batch())
    from eigen_jax.objectives import sequence_logprobs

    lp = jax.jit(sequence_logprobs)(model, batch)
    batch = {**batch, "prox_logp": lp, "behaviour_logp": lp}
    m = learner.update(batch, GRPOLoss().denom(batch))
    assert m["clipped_tokens"] == 0 and m["kept_tokens"] == m["tokens"]
    assert m["weight_sum"] == pytest.approx(m["tokens"]) and m["ratio_sum"] == pytest.approx(m["tokens"])


def test_learning_rate_schedules():
    const = learning_rate(OptimSection(lr=1.0, warmup_steps=4), 20)
    assert [float(const(s)) for s in (0, 2, 4, 19)] == [0.0, 0.5, 1.0, 1.0]
    cos = learning_rate(OptimSection(lr=1.0, schedule="cosine", min_lr_ratio=0.1), 10)
    assert float(cos(0)) == pytest.approx(1.0) and float(cos(10)) == pytest.approx(0.1)
    assert float(cos(5)) == pytest.approx(0.1 + 0.9 * 0.5)


def test_checkpoint_round_trip_keeps_last_n(tmp_path):
    learner, _ = _run(SFTLoss(), steps=1, tx=make_optimizer(OptimSection(), 10))
    ck = Checkpointer(tmp_path / "ck", keep=2)
    for _ in range(3):
        ck.save(learner.state, {"data": {"next_index": learner.step}})
        learner.update(learner.put(_batch(seed=9)), SFTLoss().denom(learner.put(_batch(seed=9))))
    assert ck.latest_step() == 3 and sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["2", "3"]
    fresh, _ = _run(SFTLoss(), steps=1, tx=make_optimizer(OptimSection(), 10))
    state, meta = ck.restore(fresh.state)
    assert meta == {"data": {"next_index": 3}} and int(state.step) == 3
    # restored step 3, then the same update as the original run made after saving step 3
    fresh.state = state
    batch = fresh.put(_batch(seed=9))
    fresh.update(batch, SFTLoss().denom(batch))
    a, b = _params(fresh), _params(learner)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sharded_state_survives_a_checkpoint(tmp_path):
    """On a mesh, Adam's moments live sharded like their parameters (not as one full copy on a
    single device), scalars are replicated, and a restored state updates like the original."""
    mesh = make_mesh((1, -1, 1))
    learner, _ = _run(SFTLoss(), mesh=mesh, steps=0, tx=make_optimizer(OptimSection(), 10))
    spec = {
        jax.tree_util.keystr(p): v.sharding for p, v in jax.tree_util.tree_leaves_with_path(learner.state)
    }
    assert all(len(s.device_set) == len(jax.devices()) for s in spec.values())
    mu = next(k for k in spec if ".mu" in k and "q_proj" in k)
    assert spec[mu] == spec[mu.replace("opt_state[1][0].mu", "params")]
    ck = Checkpointer(tmp_path / "ck")
    ck.save(learner.state, {"data": {}})
    fresh, _ = _run(SFTLoss(), mesh=mesh, steps=0, tx=make_optimizer(OptimSection(), 10))
    fresh.state, _ = ck.restore(fresh.state)
    for lr in (learner, fresh):
        batch = lr.put(_batch(seed=3))
        lr.update(batch, SFTLoss().denom(batch))
    a, b = _params(fresh), _params(learner)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_trimming_trailing_padding_changes_nothing():
    """SFT batches are cut to the longest row (in 128-column steps): the same update as the
    full-width batch, fewer columns."""
    from eigen_jax.feed import trim_padding

    b = _batch(n=4, t=300)
    b["attn_mask"][:, 140:] = 0  # every row ends by column 140
    b["loss_mask"] *= b["attn_mask"]
    cut = trim_padding(b, 128)
    assert all(v.shape == (4, 256) for v in cut.values() if v.ndim == 2)
    assert cut["advantages"].shape == (4,)
    assert trim_padding(cut, 128)["tokens"].shape == (4, 256)
    narrow = {k: v[:, :100] if v.ndim == 2 else v for k, v in b.items()}
    assert trim_padding(narrow, 128)["tokens"].shape == (4, 100)
    outs = []
    for batch in (b, cut):
        learner = Learner(_model(), optax.sgd(0.5), SFTLoss())
        put = learner.put(batch)
        outs.append((learner.update(put, SFTLoss().denom(put)), _params(learner)))
    (m_full, p_full), (m_cut, p_cut) = outs
    assert m_cut["loss"] == pytest.approx(m_full["loss"], rel=1e-5)
    for k in p_full:
        np.testing.assert_allclose(p_cut[k], p_full[k], rtol=1e-5, atol=1e-6)


def test_per_token_arrays_share_one_alignment():
    """Entry t of every per-token array is about token t: ``sequence_logprobs`` [N, T] holds
    log p(token t | tokens < t) (column 0 zero) and ``target_mask`` never selects token 0."""
    from eigen_jax.model import positions_from_mask
    from eigen_jax.objectives import sequence_logprobs, target_mask

    model, batch = _model(), _batch()
    batch["loss_mask"][:, 0] = 1
    lp = np.asarray(sequence_logprobs(model, batch))
    assert lp.shape == batch["tokens"].shape and not lp[:, 0].any()
    logits, _ = model(batch["tokens"], positions_from_mask(batch["attn_mask"]), batch["attn_mask"])
    full = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    r, t = 2, 5
    assert lp[r, t] == pytest.approx(full[r, t - 1, batch["tokens"][r, t]], abs=1e-5)
    m = np.asarray(target_mask(batch))
    assert m.shape == lp.shape and not m[:, 0].any()
    np.testing.assert_array_equal(m[:, 1:], (batch["loss_mask"] * batch["attn_mask"])[:, 1:])


def test_checkpoints_on_a_bucket_without_its_client_say_what_to_install(tmp_path):
    import importlib.util

    from eigen_jax.checkpoint import CheckpointError

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here: this covers the message for when it is missing")
    want = r"gs://bucket/run/sft: .*gcsfs.*pip install 'eigen-jax\[gcs\]'"
    with pytest.raises(CheckpointError, match=want):
        Checkpointer("gs://bucket/run/sft")
    # a plain path is made absolute, as before
    assert Checkpointer(tmp_path / "ck").directory.is_absolute()


def test_the_update_donates_the_optimiser_state_not_the_weights():
    """Adam's moments are updated in place; the weights an in-process sampler may still serve
    stay readable after the update."""
    learner = Learner(_model(), make_optimizer(OptimSection(lr=1e-2), 10), SFTLoss())
    params, moments = learner.state.params, learner.state.opt_state
    batch = learner.put(_batch())
    learner.update(batch, SFTLoss().denom(batch))
    assert all(x.is_deleted() for x in jax.tree.leaves(moments))
    old = jax.tree.leaves(params)
    assert not any(x.is_deleted() for x in old)
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(old, jax.tree.leaves(learner.state.params), strict=True)
    )
