"""pass^k by hand values and by brute force over trial subsets."""

import itertools

import numpy as np
import pytest

from verifiers.passk import pass_hat_k, pass_hat_k_task, pass_hat_ks


def test_hand_values():
    assert pass_hat_k_task(4, 4, 4) == 1.0
    assert pass_hat_k_task(3, 4, 4) == 0.0
    assert pass_hat_k_task(2, 4, 1) == 0.5
    assert pass_hat_k_task(3, 4, 2) == 0.5  # C(3,2)/C(4,2) = 3/6
    assert pass_hat_k_task(0, 4, 1) == 0.0
    outcomes = {"a": [1, 1, 1, 1], "b": [1, 0, 1, 0], "c": [0, 0, 0, 0]}
    assert pass_hat_ks(outcomes) == pytest.approx({1: 0.5, 2: (1 + 1 / 6) / 3, 3: 1 / 3, 4: 1 / 3})


def test_equals_the_mean_over_all_k_subsets_of_trials():
    """C(c,k)/C(n,k) is the share of k-subsets of trials that all succeed."""
    rng = np.random.default_rng(0)
    outcomes = {str(t): rng.integers(0, 2, 5).tolist() for t in range(20)}
    for k in range(1, 6):
        brute = np.mean(
            [
                np.mean([all(r[i] for i in s) for s in itertools.combinations(range(5), k)])
                for r in outcomes.values()
            ]
        )
        assert pass_hat_k(outcomes, k) == pytest.approx(brute)


def test_partial_rewards_are_failures_and_bad_k_is_named():
    assert pass_hat_k({"a": [0.5, 1.0]}, 1) == 0.5
    with pytest.raises(ValueError, match="fewer than k=3"):
        pass_hat_k({"a": [1, 1]}, 3)
    with pytest.raises(ValueError, match="k must be"):
        pass_hat_k_task(1, 2, 0)
