"""pass^k by hand values and by brute force over trial subsets."""

import itertools
from pathlib import Path

import numpy as np
import pytest

from eigen_apps.eval.passk import pass_hat_k, pass_hat_k_task, pass_hat_ks


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


def test_equals_tau2_compute_metrics():
    """tau²'s own pass^k (``compute_metrics`` over a ``Results``) on the same rewards, including
    a reward within its 1e-6 success tolerance."""
    from eigen_core.domains.tau2._import import tau2_module

    sim = tau2_module("data_model.simulation")
    tasks = tau2_module("data_model.tasks")
    metrics = tau2_module("metrics.agent_metrics")
    env_info = tau2_module("environment.environment").EnvironmentInfo
    rng = np.random.default_rng(1)
    outcomes = {str(t): [float(x) for x in rng.integers(0, 2, 4)] for t in range(12)}
    outcomes["0"][1] = 1 - 1e-7
    outcomes["1"][2] = 0.5
    info = sim.Info.model_construct(
        git_commit="",
        num_trials=4,
        max_steps=1,
        max_errors=1,
        seed=0,
        user_info=sim.UserInfo.model_construct(
            implementation="u", llm=None, llm_args=None, global_simulation_guidelines=None
        ),
        agent_info=sim.AgentInfo.model_construct(implementation="a", llm=None, llm_args=None),
        environment_info=env_info.model_construct(domain_name="d", policy="", tool_defs=None),
    )
    task_list = [
        tasks.Task(
            id=t,
            user_scenario=tasks.UserScenario(instructions="x"),
            evaluation_criteria=tasks.EvaluationCriteria(actions=[]),
        )
        for t in outcomes
    ]
    sims = [
        sim.SimulationRun.model_construct(
            id=f"{t}-{i}",
            task_id=t,
            trial=i,
            seed=0,
            reward_info=sim.RewardInfo(reward=r),
            agent_cost=0.0,
            user_cost=0.0,
            termination_reason="user_stop",
            duration=0.0,
            messages=[],
        )
        for t, rs in outcomes.items()
        for i, r in enumerate(rs)
    ]
    theirs = metrics.compute_metrics(
        sim.Results.model_construct(info=info, tasks=task_list, simulations=sims)
    )
    assert pass_hat_ks(outcomes) == pytest.approx(theirs.pass_hat_ks)
    for c in range(5):
        for k in range(1, 5):
            assert pass_hat_k_task(c, 4, k) == metrics.pass_hat_k(4, c, k)


def test_paired_difference_by_hand():
    from eigen_apps.eval.passk import paired_difference

    sft = {"a": [1, 0], "b": [0, 0], "c": [1, 1], "only_sft": [0, 0]}
    rl = {"a": [1, 1], "b": [1, 0], "c": [1, 1]}
    diff, se = paired_difference(sft, rl)  # per task: +0.5, +0.5, 0 (common tasks only)
    assert diff == pytest.approx(1 / 3)
    assert se == pytest.approx((((1 / 6) ** 2 * 2 + (1 / 3) ** 2) / 2 / 3) ** 0.5)
    with pytest.raises(ValueError, match="common tasks"):
        paired_difference({"a": [1]}, {"b": [1]})


def test_learning_curves_of_several_runs_plot_on_one_png(tmp_path):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "plot_heldout", Path(__file__).parents[1] / "tools/plot_heldout.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for name, ys in (("a", [0.2, 0.3]), ("b", [0.25, 0.2])):
        (tmp_path / name / "grpo").mkdir(parents=True)
        rows = "".join(json.dumps({"step": s, "pass^1": y}) + "\n" for s, y in zip((0, 10), ys, strict=True))
        (tmp_path / name / "grpo/heldout.jsonl").write_text(rows)
    out = tmp_path / "curves.png"
    assert (
        tool.main(["--out", str(out), f"a={tmp_path / 'a'}", f"b={tmp_path / 'b/grpo/heldout.jsonl'}"]) == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):  # a curve without the asked pass^k is refused by name
        tool.main(["--out", str(out), "--key", "pass^4", f"a={tmp_path / 'a'}"])
