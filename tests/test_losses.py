"""The learner's pure functions against values worked out by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eigen_jax import losses as L


def a(x):
    return jnp.asarray(x, jnp.float32)


def test_group_advantages_by_hand():
    # group 0: rewards 1, 0, 0, 1 -> mean .5, population std .5 -> +1, -1, -1, +1
    # group 1: 1, 1 -> zero variance -> 0, 0 ; group 2: a single member -> 0
    r = a([1, 0, 0, 1, 1, 1, 0])
    g = jnp.asarray([0, 0, 0, 0, 1, 1, 2])
    adv = L.group_advantages(r, g, eps=0.0 + 1e-12)
    np.testing.assert_allclose(adv, [1, -1, -1, 1, 0, 0, 0], atol=1e-6)
    # rewards .2, .8 -> mean .5, std .3, eps .1 -> -.3/.4, .3/.4
    adv = L.group_advantages(a([0.2, 0.8]), jnp.asarray([3, 3]), eps=0.1)
    np.testing.assert_allclose(adv, [-0.75, 0.75], atol=1e-6)
    np.testing.assert_allclose(
        L.group_advantages(a([0.2, 0.8]), jnp.asarray([0, 0]), scale_by_std=False), [-0.3, 0.3], atol=1e-6
    )
    # group ids need not be contiguous or ordered
    adv = L.group_advantages(a([0, 5, 1, 5]), jnp.asarray([1, 0, 1, 0]), eps=1e-12)
    np.testing.assert_allclose(adv, [-1, 0, 1, 0], atol=1e-6)


def test_informative_groups_and_broadcast():
    keep = L.informative_groups(a([1, 0, 1, 1, 0, 0, 0.5]), jnp.asarray([0, 0, 1, 1, 2, 2, 3]))
    assert keep.tolist() == [True, True, False, False, False, False, False]
    out = L.broadcast_to_tokens(a([2.0, -1.0]), jnp.asarray([[0, 1, 1], [1, 0, 0]]))
    np.testing.assert_array_equal(out, [[0, 2, 2], [-1, 0, 0]])


def test_clipped_policy_loss_by_hand():
    old = a([[0.0, 0.0, 0.0, 0.0]])
    # ratios 1.5, 0.5, 1.1, 1.5 with eps 0.4/0.2 -> clip range [0.6, 1.2]
    logp = jnp.log(a([[1.5, 0.5, 1.1, 1.5]]))
    adv = a([[1.0, 1.0, -2.0, -1.0]])
    t = L.clipped_policy_loss(logp, old, adv, jnp.ones((1, 4)), eps_low=0.4, eps_high=0.2)
    # tok0: min(1.5, 1.2) = 1.2 (clipped); tok1: min(.5, .6) = .5 (not clipped)
    # tok2: inside the range, -2.2; tok3: min(-1.5, -1.2) = -1.5 (negative advantage: unclipped)
    np.testing.assert_allclose(t.loss, [[-1.2, -0.5, 2.2, 1.5]], atol=1e-6)
    assert t.clipped.tolist() == [[True, False, False, False]]
    np.testing.assert_allclose(t.ratio, [[1.5, 0.5, 1.1, 1.5]], atol=1e-6)
    # gradient: zero where clipped, r*A w.r.t. logp elsewhere
    g = jax.grad(lambda lp: L.clipped_policy_loss(lp, old, adv, jnp.ones((1, 4)), 0.4, 0.2).loss.sum())(logp)
    np.testing.assert_allclose(g, [[0.0, -0.5, 2.2, 1.5]], atol=1e-6)
    # masked tokens contribute nothing and are not counted as clipped
    t = L.clipped_policy_loss(logp, old, adv, jnp.asarray([[0, 1, 1, 1]]), 0.4, 0.2)
    assert float(t.loss[0, 0]) == 0.0 and not bool(t.clipped[0, 0])


def test_decoupled_policy_loss_by_hand():
    logp = jnp.log(a([[1.0, 1.1, 0.9]]))
    prox = a([[0.0, 0.0, 0.0]])
    behaviour = jnp.log(a([[0.5, 0.1, 1.0]]))  # weights pi_prox/pi_behav = 2, 10, 1
    adv = a([[1.0, 1.0, 1.0]])
    t = L.decoupled_policy_loss(logp, prox, behaviour, adv, jnp.ones((1, 3)), 0.4, 0.4, weight_cap=5.0)
    np.testing.assert_allclose(t.weight, [[2, 10, 1]], rtol=1e-5)
    assert t.mask.tolist() == [[1, 0, 1]]  # weight 10 > cap 5: dropped
    np.testing.assert_allclose(t.loss, [[-2.0, 0.0, -0.9]], atol=1e-5)
    # no cap: the token stays, weighted
    t = L.decoupled_policy_loss(logp, prox, behaviour, adv, jnp.ones((1, 3)), weight_cap=None)
    np.testing.assert_allclose(t.loss, [[-2.0, -11.0, -0.9]], rtol=1e-5)

    # the weight carries no gradient: d/d(behaviour) == 0, d/d(logp) == -w * r * A
    def f(lp, beh):
        return L.decoupled_policy_loss(lp, prox, beh, adv, jnp.ones((1, 3)), weight_cap=None).loss.sum()

    g_lp, g_beh = jax.grad(f, argnums=(0, 1))(logp, behaviour)
    np.testing.assert_allclose(g_beh, 0.0)
    np.testing.assert_allclose(g_lp, [[-2.0, -11.0, -0.9]], rtol=1e-5)
    # on-policy (behaviour == prox): identical to plain clipped PPO
    on = L.decoupled_policy_loss(logp, prox, prox, adv, jnp.ones((1, 3)))
    np.testing.assert_allclose(on.loss, L.clipped_policy_loss(logp, prox, adv, jnp.ones((1, 3))).loss)


def test_aggregation_modes_by_hand():
    per = a([[1, 2, 3, 0], [10, 0, 0, 0], [5, 5, 5, 5]])
    mask = jnp.asarray([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    # token mean: (1+2+3+10)/4 = 4 ; seq-mean-token-mean: (2 + 10)/2 = 6 (empty rows not counted)
    assert float(L.aggregate(per, mask)) == pytest.approx(4.0)
    assert float(L.aggregate(per, mask, "seq_mean_token_mean")) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        L.aggregate(per, mask, "mean")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean"])
def test_micro_batches_sum_to_the_full_batch_loss(mode):
    rng = np.random.default_rng(0)
    per = a(rng.normal(size=(8, 5)))
    mask = jnp.asarray(rng.integers(0, 2, (8, 5)))
    full = L.aggregate(per, mask, mode)
    denom = L.normaliser(mask, mode)
    parts = sum(float(L.aggregate(per[i : i + 2], mask[i : i + 2], mode, denom)) for i in range(0, 8, 2))
    assert parts == pytest.approx(float(full), abs=1e-6)


def test_kl_k3_by_hand():
    logp, ref = a([0.0, 0.0]), a([0.0, math.log(2)])
    # d = 0 -> 0 ; d = ln 2 -> 2 - ln 2 - 1
    np.testing.assert_allclose(L.kl_k3(logp, ref), [0.0, 1 - math.log(2)], atol=1e-6)


def test_masked_cross_entropy_by_hand():
    # vocab 2, logits [0, ln 3] -> p = [1/4, 3/4]
    logits = jnp.broadcast_to(a([0.0, math.log(3)]), (1, 3, 2))
    targets = jnp.asarray([[1, 0, 1]])
    mask = jnp.asarray([[1, 1, 0]])
    expect = (-math.log(0.75) - math.log(0.25)) / 2
    assert float(L.masked_cross_entropy(logits, targets, mask)) == pytest.approx(expect, rel=1e-6)


def test_top_fraction_mask_by_hand():
    ent = jnp.array([[0.1, 2.0, 0.5, 9.0], [1.0, 0.3, 3.0, 0.2]])
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])  # the 9.0 is not a policy token: never selected
    # 7 masked tokens; 0.4 of them -> ceil(2.8) = 3: entropies 3.0, 2.0, 1.0
    got = np.asarray(L.top_fraction_mask(ent, mask, 0.4))
    np.testing.assert_array_equal(got, [[0, 1, 0, 0], [1, 0, 1, 0]])
    np.testing.assert_array_equal(np.asarray(L.top_fraction_mask(ent, mask, 1.0)), mask)
    # a tiny fraction still keeps the single highest-entropy token
    np.testing.assert_array_equal(np.asarray(L.top_fraction_mask(ent, mask, 0.01)).sum(), 1)


def test_token_entropy_by_hand():
    from eigen_jax.ops import token_entropy

    logits = jnp.log(jnp.array([[0.5, 0.5, 0.0 + 1e-30], [1.0, 1e-30, 1e-30]]))
    np.testing.assert_allclose(np.asarray(token_entropy(logits)), [np.log(2), 0.0], atol=1e-5)
    # temperature 2 on [0, log 3] -> probs proportional to [1, sqrt 3]
    p = np.array([1.0, np.sqrt(3)]) / (1 + np.sqrt(3))
    got = float(token_entropy(jnp.array([0.0, np.log(3)]), temperature=2.0))
    np.testing.assert_allclose(got, -(p * np.log(p)).sum(), rtol=1e-5)
