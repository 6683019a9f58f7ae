"""The ``Agent`` interface and the model-free agents used to test tasks and verifiers.

``OracleAgent`` plays a task's gold actions the way a good agent would: it asks for what only the
user knows, makes one call per turn, then states the required outputs. ``IdleAgent`` does
nothing. Both are deterministic and work for any domain.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from rollout.contracts import Action, Message, Task, ToolCall


@runtime_checkable
class Agent(Protocol):
    """One episode's agent. Stateful per episode; create a fresh one per episode."""

    async def act(self, messages: list[Message], tools: list[dict[str, Any]]) -> Message:
        """The next assistant message (text and/or tool calls) given the conversation so far."""
        ...


class OracleAgent:
    """Follows a fixed action list (by default the task's gold actions)."""

    def __init__(self, task: Task, actions: list[Action] | None = None, ask_known_info: bool = True):
        self.task = task
        acts = task.gold_actions if actions is None else actions
        self.actions = [a for a in acts if a.requestor == "assistant"]
        known = task.scenario.known_info
        self._to_ask = list(known) if ask_known_info and isinstance(known, dict) else []
        self._next = 0
        self._finished = False

    async def act(self, messages: list[Message], tools: list[dict[str, Any]]) -> Message:
        if self._to_ask:
            key = self._to_ask.pop(0)
            return Message(role="assistant", content=f"Could you please tell me your {key}?")
        if self._next < len(self.actions):
            a = self.actions[self._next]
            self._next += 1
            call = ToolCall(id=f"call_{self._next}", name=a.name, arguments=dict(a.arguments))
            return Message(role="assistant", tool_calls=[call])
        if not self._finished:
            self._finished = True
            outputs = "; ".join(self.task.required_outputs)
            return Message(
                role="assistant", content="All done." + (f" Details: {outputs}." if outputs else "")
            )
        return Message(role="assistant", content="Thank you for contacting us. Goodbye.")


class IdleAgent:
    """Never calls a tool: the do-nothing floor of a benchmark."""

    async def act(self, messages: list[Message], tools: list[dict[str, Any]]) -> Message:
        return Message(role="assistant", content="I'm sorry, I can't help with that.")
