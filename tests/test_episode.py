import asyncio

from eigen_core.contracts import Message, Termination, ToolCall, UserScenario
from rollout.agents import Agent, IdleAgent, OracleAgent
from rollout.episode import run_episode
from rollout.user_sim import ScriptedUser, is_stop


def _run(task, domain, agent, **kw):
    return asyncio.run(run_episode(task, domain, agent, ScriptedUser(task.scenario), **kw))


def test_oracle_episode_shape(shop, shop_tasks):
    task = shop_tasks[0]
    traj = _run(task, shop, OracleAgent(task), group_id="g", sample_index=3)
    assert traj.termination == Termination.USER_STOP and traj.error is None
    assert (traj.task_id, traj.group_id, traj.sample_index) == (task.id, "g", 3)
    roles = [m.role for m in traj.messages]
    assert roles[:4] == ["system", "user", "assistant", "user"]
    assert traj.messages[0].content == shop.policy
    assert traj.messages[1].content == task.scenario.reason_for_call
    assert "customer id" in traj.messages[2].content
    assert task.scenario.known_info["customer id"] in traj.messages[3].content
    assert [(c.name, c.arguments) for c in traj.tool_calls()] == [
        (a.name, a.arguments) for a in task.gold_actions
    ]
    assert is_stop(traj.messages[-1])
    tool_msgs = [m for m in traj.messages if m.role == "tool"]
    assert len(tool_msgs) == len(task.gold_actions) and not any(
        m.content.startswith("Error") for m in tool_msgs
    )
    assert set(traj.timings) == {"agent", "user", "env", "total"}


def test_idle_episode_ends_by_user_stop(shop, shop_tasks):
    traj = _run(shop_tasks[0], shop, IdleAgent())
    assert traj.termination == Termination.USER_STOP
    assert traj.tool_calls() == []


class _Chatty(Agent):
    async def act(self, messages, tools):
        return Message(role="assistant", tool_calls=[ToolCall(id="x", name="get_order", arguments="{oops")])


class _Broken(Agent):
    async def act(self, messages, tools):
        raise RuntimeError("engine down")


class _Transfer(Agent):
    async def act(self, messages, tools):
        return Message(
            role="assistant",
            tool_calls=[ToolCall(id="t", name="transfer_to_human", arguments={"summary": "help"})],
        )


def test_max_steps_error_and_terminal_tool(shop, shop_tasks):
    task = shop_tasks[0]
    traj = _run(task, shop, _Chatty(), max_steps=4)
    assert traj.termination == Termination.MAX_STEPS
    assert sum(m.role == "assistant" for m in traj.messages) == 4
    assert all(
        m.content.startswith("Error: arguments are not valid JSON") for m in traj.messages if m.role == "tool"
    )

    traj = _run(task, shop, _Broken())
    assert traj.termination == Termination.ERROR and traj.error == "RuntimeError: engine down"

    traj = _run(task, shop, _Transfer())
    assert traj.termination == Termination.AGENT_STOP


def test_scripted_user_answers_only_what_it_knows():
    scenario = UserScenario(
        reason_for_call="Cancel O1.", known_info={"customer id": "C1"}, unknown_info=["email"]
    )
    user = ScriptedUser(scenario, patience=1)

    def say(text):
        msgs = [Message(role="user", content="x"), Message(role="assistant", content=text)]
        return asyncio.run(user.respond(msgs)).content

    assert asyncio.run(user.respond([])).content == "Cancel O1."
    assert say("What is your Customer-ID?") == "My customer id is C1."
    assert say("And your email?") == "Sorry, I don't know my email."
    assert "###STOP###" in say("And your email?")  # patience exhausted
    assert "###STOP###" in say("Your order is cancelled.")
    assert "###STOP###" in say("Anything else I can help with?")
