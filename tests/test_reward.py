import asyncio

from eigen_core.contracts import Message, Termination, Trajectory
from rollout.agents import OracleAgent
from rollout.episode import run_episode
from rollout.user_sim import ScriptedUser
from verifiers.perturb import drop_last_write, perturbations
from verifiers.reward import Verifier, action_credit, missing_outputs


def _score(verifier, task, traj):
    return asyncio.run(verifier.score(task, traj))


def _oracle(task, shop, actions=None):
    return asyncio.run(run_episode(task, shop, OracleAgent(task, actions), ScriptedUser(task.scenario)))


def test_missing_outputs_is_case_and_comma_insensitive():
    msgs = [Message(role="assistant", content="Refund: 1,234.50 USD"), Message(role="user", content="42.00")]
    assert missing_outputs(["1234.50", "usd"], msgs) == []
    assert missing_outputs(["42.00"], msgs) == ["42.00"]  # user text does not count


def test_components_and_reasons(shop, shop_tasks, sandbox):
    v = Verifier(shop, sandbox)
    task = next(t for t in shop_tasks if t.required_outputs and t.forbidden_actions)
    ok = _score(v, task, _oracle(task, shop))
    assert ok.reward == 1.0 and ok.components == {"db": 1.0, "outputs": 1.0, "checker": 1.0}

    for label, actions in perturbations(task, shop.write_tools):
        bad = _score(v, task, _oracle(task, shop, actions))
        assert bad.reward == 0.0 and bad.components["db"] == 0.0 and bad.components["checker"] == 0.0, label
        assert "differs from the gold replay" in bad.reasons["db"]

    traj = _oracle(task, shop)
    silent = traj.model_copy(
        update={
            "messages": [
                m.model_copy(update={"content": "ok"})
                if m.role == "assistant" and m.content and "Details" in m.content
                else m
                for m in traj.messages
            ]
        }
    )
    r = _score(v, task, silent)
    assert r.components == {"db": 1.0, "outputs": 0.0, "checker": 0.0} and r.reward == 0.0
    assert "never said" in r.reasons["outputs"]


def test_only_stops_earn_reward(shop, shop_tasks, sandbox):
    task = shop_tasks[0]
    traj = _oracle(task, shop)
    for term in (Termination.MAX_STEPS, Termination.ERROR, Termination.CONTEXT_OVERFLOW):
        r = _score(Verifier(shop, sandbox), task, traj.model_copy(update={"termination": term}))
        assert r.reward == 0.0 and term.value in r.reasons["termination"]


def test_components_are_configurable(shop, shop_tasks):
    task = next(t for t in shop_tasks if t.required_outputs)
    v = Verifier(shop, components=("db",))
    traj = Trajectory(task_id=task.id, messages=[], termination=Termination.USER_STOP)
    r = _score(v, task, traj)
    assert r.components == {"db": 0.0}
    dropped = drop_last_write(task.gold_actions, shop.write_tools)
    assert dropped is not None and len(dropped) == len(task.gold_actions) - 1


def test_action_credit_counts_gold_writes_and_penalises_stray_ones(shop, shop_tasks):
    w = shop.write_tools
    two = next(t for t in shop_tasks if sum(a.name in w for a in t.gold_actions) == 2 and t.forbidden_actions)
    assert action_credit(two.gold_actions, _oracle(two, shop), w) == 1.0
    # the last write dropped: half the gold writes
    assert action_credit(two.gold_actions, _oracle(two, shop, drop_last_write(two.gold_actions, w)), w) == 0.5
    # every gold write plus a forbidden one: full progress, minus the stray write
    stray = [*two.gold_actions, two.forbidden_actions[0]]
    assert action_credit(two.gold_actions, _oracle(two, shop, stray), w) == 0.0
    # only the stray write
    reads = [a for a in two.gold_actions if a.name not in w]
    assert action_credit(two.gold_actions, _oracle(two, shop, [*reads, two.forbidden_actions[0]]), w) == -1.0
    refuse = next(t for t in shop_tasks if not any(a.name in w for a in t.gold_actions))
    assert action_credit(refuse.gold_actions, _oracle(refuse, shop), w) == 0.0  # nothing to credit
