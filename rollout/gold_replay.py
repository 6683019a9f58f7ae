"""A scripted agent and user that act out a task's gold actions, both sides, through the
episode runner: the agent makes its calls, the user makes theirs (tau² telecom's phone) when the
agent asks, the agent states the required outputs, the user stops.

Used to check that a task is solvable and that a verifier scores its gold 1.0, and, with a
changed script (an action dropped, wrong arguments, nothing said, an early stop), that it scores
near misses 0 — the reward parity tests against tau²'s evaluator do exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eigen_core.contracts import Action, Message, Task, ToolCall
from rollout.agents import Agent
from rollout.user_sim import STOP_TOKENS


class GoldScript:
    """The shared plan: actions in order (each performed by its ``requestor``), what the agent
    says at the end, and optionally a point after which the user hangs up early."""

    def __init__(
        self,
        task: Task,
        actions: Sequence[Action] | None = None,
        outputs: Sequence[str] | None = None,
        stop_after: int | None = None,
    ):
        self.task = task
        self.actions = list(task.gold_actions if actions is None else actions)
        self.outputs = list(task.required_outputs if outputs is None else outputs)
        self.stop_after = stop_after
        """Hang up once this many actions are done (None: when everything is done)."""
        self.pos = 0
        self.agent_done = False

    def peek(self) -> Action | None:
        return self.actions[self.pos] if self.pos < len(self.actions) else None

    def take(self) -> ToolCall:
        a = self.actions[self.pos]
        self.pos += 1
        prefix = "call" if a.requestor == "assistant" else "user_call"
        return ToolCall(
            id=f"{prefix}_{self.pos}", name=a.name, arguments=dict(a.arguments), requestor=a.requestor
        )

    def hang_up(self) -> bool:
        return self.stop_after is not None and self.pos >= self.stop_after


class GoldAgent(Agent):
    """The agent side of a ``GoldScript``."""

    def __init__(self, script: GoldScript):
        self.script = script

    async def act(self, messages: list[Message], tools: list[dict[str, Any]]) -> Message:
        s = self.script
        if s.hang_up():
            return Message(role="assistant", content="Is there anything else?")
        a = s.peek()
        if a is not None and a.requestor == "assistant":
            return Message(role="assistant", tool_calls=[s.take()])
        if a is not None:
            return Message(role="assistant", content=f"Please do this on your phone: {a.name}.")
        s.agent_done = True
        said = "; ".join(s.outputs)
        return Message(role="assistant", content="All done." + (f" Details: {said}." if said else ""))


class GoldUser:
    """The user side of a ``GoldScript``: opens with the reason for the call, performs its own
    actions when they come up, stops when the agent is done (or early, if scripted)."""

    def __init__(self, script: GoldScript):
        self.script = script
        self._opened = False

    async def respond(self, messages: list[Message]) -> Message:
        s = self.script
        if not self._opened:
            self._opened = True
            return Message(role="user", content=s.task.scenario.reason_for_call)
        if s.hang_up() or s.agent_done:
            return Message(role="user", content=f"Thank you. {STOP_TOKENS[0]}")
        a = s.peek()
        if a is not None and a.requestor == "user":
            return Message(role="user", tool_calls=[s.take()])
        return Message(role="user", content="Okay, done. Please go on.")


def gold_parties(script: GoldScript) -> tuple[GoldAgent, GoldUser]:
    """The agent and the user of one scripted episode."""
    return GoldAgent(script), GoldUser(script)
