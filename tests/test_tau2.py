"""tau²-bench adapter: tasks convert losslessly, domains behave like tau²'s, and our verifier
gives the same reward as tau²'s own evaluator on gold replays and their near misses."""

import asyncio

import pytest

from eigen_core.contracts import EnvAssertion, Task, Termination, ToolCall, Trajectory
from eigen_core.domain import replay
from eigen_core.domains import get_domain
from eigen_core.domains.tau2 import load_tasks, splits, to_tau2
from eigen_core.domains.tau2._import import tau2_module
from rollout.episode import agent_view, run_episode
from rollout.gold_replay import GoldScript, gold_parties
from verifiers.reward import Verifier
from verifiers.tau2_parity import check_domain, check_task, variants

SPLIT_SIZES = {
    "airline": {"base": 50, "train": 30, "test": 20},
    "retail": {"base": 114, "train": 74, "test": 40},
    "telecom": {"base": 114, "train": 74, "test": 40, "small": 20, "full": 2285},
}


@pytest.mark.parametrize("domain", sorted(SPLIT_SIZES))
def test_every_split_loads_and_round_trips_losslessly(domain):
    registry = tau2_module("registry").registry
    assert set(SPLIT_SIZES[domain]) <= set(splits(domain))
    for split, n in SPLIT_SIZES[domain].items():
        tasks = load_tasks(domain, split)
        assert len(tasks) == n and {t.split for t in tasks} == {split}
    raw = registry.get_tasks_loader(domain)("full" if domain == "telecom" else None)
    ours = load_tasks(domain, "full" if domain == "telecom" else None)
    assert len({t.id for t in ours}) == len(raw)
    for r, t in zip(raw, ours, strict=True):
        again = Task.model_validate_json(t.model_dump_json())  # through our JSONL format
        assert to_tau2(again).model_dump(mode="json") == r.model_dump(mode="json"), r.id


def test_unknown_domain_and_split_are_named():
    with pytest.raises(ValueError, match="unknown tau² domain 'mock'"):
        load_tasks("mock")
    with pytest.raises(ValueError, match="Invalid task split name: nope"):
        load_tasks("airline", "nope")


@pytest.mark.parametrize(
    ("name", "tools", "user_tools"), [("airline", 14, 0), ("retail", 15, 0), ("telecom", 13, 30)]
)
def test_domains_expose_tau2_tools_and_policy(name, tools, user_tools):
    d = get_domain(name)
    assert len(d.tool_schemas()) == tools and len(d.user_tool_schemas()) == user_tools
    assert d.write_tools and d.write_tools <= {s["function"]["name"] for s in d.tool_schemas()}
    assert len(d.policy) > 1000
    assert d.terminal_tools == frozenset()


def test_tool_errors_are_observations_and_envs_are_independent():
    d = get_domain("airline")
    task = load_tasks("airline", "base")[0]
    env = d.make_env(task)
    r = env.call(ToolCall(id="1", name="no_such_tool", arguments={}))
    assert r.error and "not found" in r.content
    r = env.call(ToolCall(id="2", name="get_reservation_details", arguments="{not json"))
    assert r.error and "not valid JSON" in r.content
    r = env.call(ToolCall(id="3", name="get_reservation_details", arguments={"wrong": 1}))
    assert r.error
    r = env.call(ToolCall(id="4", name="toggle_airplane_mode", arguments={}, requestor="user"))
    assert r.error and "User tools not available" in r.content
    before = d.make_env(task).state_hash()
    r = env.call(ToolCall(id="5", name="cancel_reservation", arguments={"reservation_id": "4WQ150"}))
    assert not r.error, r.content
    assert env.state_hash() != before
    assert d.make_env(task).state_hash() == before  # the shared parsed DB was not touched
    assert d.pristine()


def test_user_tools_run_on_the_user_side_and_stay_out_of_the_agents_view():
    d = get_domain("telecom")
    task = load_tasks("telecom", "small")[0]
    agent, user = gold_parties(GoldScript(task))
    traj = asyncio.run(run_episode(task, d, agent, user))
    assert traj.termination is Termination.USER_STOP
    user_calls = [c for m in traj.messages if m.role == "user" for c in m.tool_calls or []]
    assert user_calls and all(c.requestor == "user" for c in user_calls)
    view = agent_view(traj.messages)
    assert not any(m.role == "user" and m.tool_calls for m in view)
    assert len([m for m in view if m.role == "tool"]) == len(traj.tool_calls(("assistant",)))
    # The task's problem is there at the start and fixed after the replayed calls.
    fresh = d.make_env(task)
    assert not all(fresh.check_assertion(a) for a in task.env_assertions)
    fixed, _ = replay(d, task, traj.tool_calls())
    assert all(fixed.check_assertion(a) for a in task.env_assertions)
    broken = EnvAssertion(
        requestor="user",
        name=task.env_assertions[0].name,
        arguments=task.env_assertions[0].arguments,
        assert_value=not task.env_assertions[0].assert_value,
    )
    assert fixed.check_assertion(broken) is False


def _sample(domain: str, n: int) -> list[Task]:
    """Tasks with writes and required outputs first: the variants then test every component."""
    tasks = load_tasks(domain, "base")
    d = get_domain(domain)
    rich = [t for t in tasks if t.required_outputs and any(a.name in d.write_tools for a in t.gold_actions)]
    return (rich + [t for t in tasks if t not in rich])[:n]


@pytest.mark.parametrize(("domain", "n"), [("airline", 2), ("retail", 3), ("telecom", 25)])
def test_reward_parity_on_a_sample(domain, n):
    d = get_domain(domain)
    verifier = Verifier(d, components=("db", "outputs"))
    results = []
    for task in _sample(domain, n):
        results += asyncio.run(check_task(task, d, verifier))
    assert all(r.ours == 1.0 for r in results if r.variant == "gold")
    disagree = [r for r in results if not r.agrees]
    assert not disagree, disagree[:3]
    # The near misses are real misses: most score 0 (an early stop before any write can still be right).
    misses = [r for r in results if r.variant != "gold"]
    assert sum(r.ours == 0.0 for r in misses) >= 0.7 * len(misses)
    assert {r.variant for r in misses} >= {"drop_write", "wrong_args", "early_stop", "out_of_steps"}
    assert d.pristine()  # no environment's mutation leaked into the shared parsed DB


def test_variants_cover_each_component():
    task = _sample("retail", 1)[0]
    names = [v.name for v in variants(task, get_domain("retail"))]
    assert names == ["gold", "drop_write", "wrong_args", "unsaid_outputs", "early_stop", "out_of_steps"]


def test_a_non_stop_ending_scores_zero_both_ways():
    from verifiers.tau2_eval import tau2_reward

    task = load_tasks("retail", "base")[0]
    traj = Trajectory(task_id=task.id, messages=[], termination=Termination.CONTEXT_OVERFLOW)
    ours = asyncio.run(Verifier(get_domain("retail"), components=("db",)).score(task, traj))
    assert ours.reward == 0.0 == tau2_reward(task, traj).reward


def _chunks(domain: str, split: str, size: int) -> list[tuple[str, str, int, int]]:
    n = SPLIT_SIZES[domain][split]
    return [(domain, split, i, min(i + size, n)) for i in range(0, n, size)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("domain", "split", "start", "stop"),
    _chunks("airline", "base", 10) + _chunks("retail", "base", 20) + _chunks("telecom", "full", 600),
)
def test_reward_parity_on_every_task(domain, split, start, stop):
    results = asyncio.run(check_domain(domain, split, progress=False, start=start, stop=stop))
    assert all(r.ours == 1.0 for r in results if r.variant == "gold")
    disagree = [r for r in results if not r.agrees]
    assert not disagree, disagree[:3]
    assert get_domain(domain).pristine()


def test_copy_on_access_db_behaves_like_a_private_copy():
    from eigen_core.domains.tau2.cow import CowDict, cow_copy

    base = {"a": {"x": [1]}, "b": {"x": [2]}}
    d = CowDict(base)
    d["a"]["x"].append(9)
    for v in d.values():
        v["x"].append(7)
    d.get("b")["x"].append(8)
    d["c"] = {"x": []}
    assert base == {"a": {"x": [1]}, "b": {"x": [2]}}
    assert dict(d.items()) == {"a": {"x": [1, 9, 7]}, "b": {"x": [2, 7, 8]}, "c": {"x": []}}
    assert d.pop("a") == {"x": [1, 9, 7]} and "a" not in d and "a" in base
    # A tau² DB: the copy hashes like the original until changed, and a change stays private.
    dom = get_domain("retail")
    db = dom._db
    copy = cow_copy(db)
    assert copy.get_hash() == db.get_hash()
    uid = next(iter(copy.users))
    copy.users[uid].name.first_name = "Changed"
    assert copy.get_hash() != db.get_hash() and dom.pristine()
