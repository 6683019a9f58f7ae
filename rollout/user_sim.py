"""The ``UserSimulator`` interface and a scripted simulator driven by the task's scenario."""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

from rollout.contracts import Message, UserScenario

STOP_TOKENS = ("###STOP###", "###TRANSFER###", "###OUT-OF-SCOPE###")
"""Tokens by which a user simulator ends the conversation (tau²'s)."""


def is_stop(message: Message) -> bool:
    return any(t in (message.content or "") for t in STOP_TOKENS)


@runtime_checkable
class UserSimulator(Protocol):
    """Plays the customer. Sees the conversation from the agent's side; speaks first."""

    async def respond(self, messages: list[Message]) -> Message:
        """The next user message; one containing a stop token ends the episode."""
        ...


def _norm(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


class ScriptedUser:
    """Deterministic user: opens with ``reason_for_call``; answers questions about its
    ``known_info``; says it does not know ``unknown_info``; otherwise considers the matter settled
    and stops. Gives up (stops) after ``patience`` questions it cannot answer."""

    def __init__(self, scenario: UserScenario, patience: int = 3):
        self.scenario = scenario
        self.patience = patience
        self._unanswerable = 0

    async def respond(self, messages: list[Message]) -> Message:
        if not any(m.role == "user" for m in messages):
            return Message(role="user", content=self.scenario.reason_for_call)
        last = next((m for m in reversed(messages) if m.role == "assistant"), None)
        text = (last.content or "") if last else ""
        if "?" in text:
            said = _norm(text)
            answers = [f"My {k} is {v}." for k, v in self.scenario.known_info.items() if _norm(k) in said]
            if answers:
                return Message(role="user", content=" ".join(answers))
            unknown = [u for u in self.scenario.unknown_info if _norm(u) in said]
            if unknown and self._unanswerable < self.patience:
                self._unanswerable += 1
                return Message(role="user", content=f"Sorry, I don't know my {unknown[0]}.")
        return Message(role="user", content="Thanks, that's all. ###STOP###")
