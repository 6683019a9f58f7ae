import math

import jax.numpy as jnp
import numpy as np

from eigen_jax.ops import next_token_logprobs, token_logprobs


def test_token_logprobs_by_hand():
    logits = jnp.asarray([[0.0, math.log(3.0)], [2.0, 2.0]])
    got = token_logprobs(logits, jnp.asarray([1, 0]))
    np.testing.assert_allclose(got, [math.log(0.75), math.log(0.5)], rtol=1e-6)
    # temperature 2 on [0, ln 9]: softmax([0, ln 3]) again
    got = token_logprobs(jnp.asarray([[0.0, math.log(9.0)]]), jnp.asarray([0]), temperature=2.0)
    np.testing.assert_allclose(got, [math.log(0.25)], rtol=1e-6)


def test_next_token_logprobs_shifts_targets():
    logits = jnp.zeros((1, 3, 4)).at[0, 0, 2].set(10.0)
    tokens = jnp.asarray([[0, 2, 1]])
    got = next_token_logprobs(logits, tokens)
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got[0, 0], 10.0 - math.log(math.exp(10.0) + 3), atol=1e-6)
    np.testing.assert_allclose(got[0, 1], -math.log(4.0), rtol=1e-6)


def test_large_logits_stay_finite():
    got = token_logprobs(jnp.asarray([[1e4, -1e4, 0.0]]), jnp.asarray([1]))
    assert np.isfinite(got).all() and float(got[0]) == -2e4
