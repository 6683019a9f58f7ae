"""The last rule differences with tau²'s evaluator, each with a parity case that catches it:
the device sync after a replayed conversation, the free DB check of a task with neither actions
nor env assertions, and the refusal of a conversation whose tool outputs do not replay."""

import asyncio

import pytest

from eigen_core.contracts import Message
from eigen_core.domain import ReplayMismatch
from eigen_core.domains import get_domain
from eigen_core.domains.tau2 import from_tau2, load_tasks, to_tau2
from rollout.episode import run_episode
from rollout.gold_replay import GoldScript, gold_parties
from verifiers.reward import Verifier
from verifiers.tau2_eval import tau2_reward


def _gold_trajectory(task):
    agent, user = gold_parties(GoldScript(task))
    return asyncio.run(run_episode(task, get_domain(task.domain), agent, user, max_steps=200))


def _both(task, traj):
    ours = asyncio.run(Verifier(get_domain(task.domain), components=("db", "outputs")).score(task, traj))
    return ours.reward, float(tau2_reward(task, traj).reward)


def _writing_task(domain="retail"):
    d = get_domain(domain)
    return next(
        t for t in load_tasks(domain, "train") if any(a.name in d.write_tools for a in t.gold_actions)
    )


@pytest.mark.parametrize(("criteria", "expected"), [(None, 1.0), ([], 0.0)])
def test_no_actions_and_no_env_assertions_pass_the_db_check_as_in_tau2(criteria, expected):
    """tau² passes the environment check when both lists are null, and compares DBs when they
    are empty; a trajectory that writes tells the two apart."""
    base = _writing_task()
    raw = to_tau2(base).model_dump(mode="json")
    raw["evaluation_criteria"].update(actions=criteria, env_assertions=criteria, reward_basis=["DB"])
    task = from_tau2(raw, "retail", "train")
    assert _both(task, _gold_trajectory(base)) == (expected, expected)


def test_a_conversation_whose_tool_outputs_do_not_replay_is_refused_as_tau2_refuses_it():
    task = _writing_task("airline")
    traj = _gold_trajectory(task)
    assert _both(task, traj) == (1.0, 1.0)
    i = next(i for i, m in enumerate(traj.messages) if m.role == "tool")
    edited = list(traj.messages)
    edited[i] = Message(role="tool", content='{"edited": true}', tool_call_id=edited[i].tool_call_id)
    traj = traj.model_copy(update={"messages": edited})
    with pytest.raises(ValueError, match="Expected"):
        tau2_reward(task, traj)
    with pytest.raises(ReplayMismatch, match=r"tool call 0 .* recorded '\{\"edited\": true\}'"):
        _both(task, traj)


def test_the_device_is_synced_after_a_replay_whose_last_call_failed_as_in_tau2(monkeypatch):
    """A write that changes the agent's DB and then fails skips the per-call sync; tau² syncs
    once more after replaying the conversation, and so must we (the user's device then sees the
    refuelled data: the env assertions pass)."""
    from tau2.domains.telecom.tools import TelecomTools

    original = TelecomTools.refuel_data

    def refuel_then_fail(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise ValueError("failed after the write")

    task = next(
        t
        for t in load_tasks("telecom", "full")
        if [a.name for a in t.gold_actions] == ["refuel_data"] and t.reward_basis == ["env_assertions"]
    )
    traj = _gold_trajectory(task)
    assert _both(task, traj) == (1.0, 1.0)
    monkeypatch.setattr(TelecomTools, "refuel_data", refuel_then_fail)
    failed = _gold_trajectory(task)
    last = [m for m in failed.messages if m.role == "tool"][-1]
    assert last.content.startswith("Error: failed after the write")
    ours, theirs = _both(task, failed)
    assert ours == theirs == 1.0
