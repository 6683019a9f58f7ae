"""pass^k (tau²-bench): the chance that k i.i.d. trials of a task all succeed, averaged over tasks.

With n trials of a task and c successes, the unbiased estimate is C(c, k) / C(n, k) (Yao et al.,
tau-bench). pass^1 is the mean success rate; pass^k falls with k unless the agent is consistent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from math import comb


def pass_hat_k_task(successes: int, trials: int, k: int) -> float:
    """C(c, k) / C(n, k) for one task (requires 1 <= k <= n and 0 <= c <= n)."""
    if not 1 <= k <= trials:
        raise ValueError(f"k must be in 1..{trials} (the trials per task), got {k}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in 0..{trials}, got {successes}")
    return comb(successes, k) / comb(trials, k)


def is_success(reward: float) -> bool:
    """A trial succeeds when its reward is 1 up to 1e-6 (tau²'s ``is_successful``)."""
    return abs(reward - 1.0) <= 1e-6


def pass_hat_k(outcomes: Mapping[str, Sequence[float]], k: int) -> float:
    """Mean over tasks of pass^k; ``outcomes[task_id]`` holds one reward per trial (success as
    ``is_success``). Every task needs at least k trials."""
    if not outcomes:
        raise ValueError("pass_hat_k: no tasks")
    total = 0.0
    for task_id, rewards in outcomes.items():
        if len(rewards) < k:
            raise ValueError(f"task {task_id!r} has {len(rewards)} trials, fewer than k={k}")
        total += pass_hat_k_task(sum(is_success(r) for r in rewards), len(rewards), k)
    return total / len(outcomes)


def pass_hat_ks(outcomes: Mapping[str, Sequence[float]], ks: Iterable[int] | None = None) -> dict[int, float]:
    """``{k: pass^k}`` for k = 1..(fewest trials of any task) unless ``ks`` says which."""
    if ks is None:
        ks = range(1, min(len(r) for r in outcomes.values()) + 1)
    return {k: pass_hat_k(outcomes, k) for k in ks}


def paired_difference(
    a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]]
) -> tuple[float, float]:
    """pass^1 of ``b`` minus that of ``a`` over their common tasks, and its standard error paired
    over tasks: the spread of the per-task differences of success rates, over sqrt(tasks). With
    common trial seeds (``eigen_apps.eval.trials.trial_seed``) pairing removes the task-difficulty
    variance both agents share."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        raise ValueError(f"paired_difference: {len(common)} common tasks, need at least 2")

    def rate(rewards: Sequence[float]) -> float:
        return sum(is_success(r) for r in rewards) / len(rewards)

    d = [rate(b[t]) - rate(a[t]) for t in common]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    return mean, (var / len(d)) ** 0.5
